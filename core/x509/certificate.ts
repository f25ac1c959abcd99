/**
 * X.509 helpers on top of Node's `crypto.X509Certificate`: loading PEM/DER, reading the
 * extensions Node does not expose, and building certificates for the simulated TEE and for
 * test issuers. Signatures are always made and checked by Node's crypto.
 */
import { X509Certificate, createPublicKey, sign, constants, type KeyObject } from "node:crypto";
import { ShieldError } from "../errors.js";
import {
  Tag,
  bitString,
  boolean,
  decodeOid,
  derNull,
  explicit,
  expectTag,
  integer,
  octetString,
  oid,
  readChildren,
  readElement,
  seq,
  set,
  time,
  utf8String,
} from "./der.js";

export interface CertificateExtension {
  readonly critical: boolean;
  /** The extension's extnValue contents (the bytes inside the OCTET STRING). */
  readonly value: Buffer;
}

const PEM_BLOCK = /-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/g;

/** Splits a PEM bundle into DER certificates, in file order. */
export function pemToDerList(pem: string): Buffer[] {
  const out: Buffer[] = [];
  for (const m of pem.matchAll(PEM_BLOCK)) out.push(Buffer.from(m[1]!.replace(/\s+/g, ""), "base64"));
  return out;
}

export function derToPem(der: Uint8Array): string {
  const b64 = Buffer.from(der).toString("base64");
  return `-----BEGIN CERTIFICATE-----\n${b64.replace(/(.{64})/g, "$1\n").replace(/\n$/, "")}\n-----END CERTIFICATE-----\n`;
}

/**
 * Parses DER as exactly one certificate. Node's `X509Certificate` tries PEM before DER, and some
 * real certificates (MAA's signing certificates embed an SGX quote that carries PEM text) would
 * then be read as the embedded certificate instead; wrapping the DER in PEM ourselves and
 * checking the result's bytes rules that out.
 */
export function certificateFromDer(der: Uint8Array): X509Certificate {
  const cert = new X509Certificate(derToPem(der));
  if (!cert.raw.equals(Buffer.from(der))) throw new TypeError("certificate DER did not round-trip");
  return cert;
}

/** DER certificates start with a SEQUENCE tag; anything else is treated as PEM text. */
function looksLikePem(bytes: Uint8Array | string): boolean {
  return typeof bytes === "string" || bytes[0] !== 0x30;
}

/**
 * The certificate's public key, or undefined when it does not decode. Node decodes the key only
 * when asked, so a certificate can parse while its key (an EC point off the curve, a truncated
 * RSA modulus) cannot: every caller that uses the key of an untrusted certificate asks here.
 */
export function readablePublicKey(cert: X509Certificate): KeyObject | undefined {
  try {
    return cert.publicKey;
  } catch {
    return undefined;
  }
}

export type CertificateErrorCode = "ERR_INPUT_MALFORMED" | "ERR_EVIDENCE_MALFORMED" | "ERR_EVIDENCE_CHAIN";

/**
 * Loads one certificate from PEM or DER bytes. Throws `code` (default ERR_INPUT_MALFORMED) when
 * the bytes are not a certificate or its public key does not decode.
 */
export function loadCertificate(
  bytes: Uint8Array | string,
  code: CertificateErrorCode = "ERR_INPUT_MALFORMED",
): X509Certificate {
  const der = looksLikePem(bytes)
    ? pemToDerList(typeof bytes === "string" ? bytes : Buffer.from(bytes).toString("latin1"))[0]
    : typeof bytes === "string"
      ? undefined
      : Buffer.from(bytes);
  if (der === undefined) throw new ShieldError(code, "no certificate found in input");
  let cert: X509Certificate;
  try {
    cert = certificateFromDer(der);
  } catch (cause) {
    throw new ShieldError(code, "input is not a valid X.509 certificate", { cause });
  }
  if (readablePublicKey(cert) === undefined) {
    throw new ShieldError(code, "certificate public key does not decode");
  }
  return cert;
}

/** Loads every certificate of a PEM bundle (or a single DER certificate); errors as {@link loadCertificate}. */
export function loadCertificates(
  bytes: Uint8Array | string,
  code: CertificateErrorCode = "ERR_INPUT_MALFORMED",
): X509Certificate[] {
  if (!looksLikePem(bytes)) return [loadCertificate(bytes, code)];
  const text = typeof bytes === "string" ? bytes : Buffer.from(bytes).toString("latin1");
  return pemToDerList(text).map((der) => loadCertificate(der, code));
}

/** Extensions by OID, read from the certificate's DER. */
export function readExtensions(cert: X509Certificate | Uint8Array): Map<string, CertificateExtension> {
  const der = cert instanceof X509Certificate ? cert.raw : Buffer.from(cert);
  const certificate = expectTag(readElement(der), Tag.SEQUENCE, "Certificate");
  const tbs = expectTag(readChildren(certificate.value)[0], Tag.SEQUENCE, "TBSCertificate");
  const out = new Map<string, CertificateExtension>();
  for (const field of readChildren(tbs.value)) {
    if (field.tag !== 0xa3) continue;
    const list = expectTag(readChildren(field.value)[0], Tag.SEQUENCE, "Extensions");
    for (const ext of readChildren(list.value)) {
      const parts = readChildren(expectTag(ext, Tag.SEQUENCE, "Extension").value);
      const id = decodeOid(expectTag(parts[0], Tag.OID, "extnID").value);
      const critical = parts.length === 3 && parts[1]!.tag === Tag.BOOLEAN && parts[1]!.value[0] !== 0;
      const value = expectTag(parts[parts.length - 1], Tag.OCTET_STRING, "extnValue").value;
      out.set(id, { critical, value: Buffer.from(value) });
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Building certificates

export type CertSignatureAlgorithm = "rsa-pss-sha384" | "rsa-sha256" | "ecdsa-sha256" | "ecdsa-sha384";

const OID_SHA384 = "2.16.840.1.101.3.4.2.2";

function algorithmIdentifier(alg: CertSignatureAlgorithm): Buffer {
  switch (alg) {
    case "rsa-pss-sha384": {
      const hash = seq(oid(OID_SHA384), derNull());
      return seq(
        oid("1.2.840.113549.1.1.10"),
        seq(explicit(0, hash), explicit(1, seq(oid("1.2.840.113549.1.1.8"), hash)), explicit(2, integer(48))),
      );
    }
    case "rsa-sha256":
      return seq(oid("1.2.840.113549.1.1.11"), derNull());
    case "ecdsa-sha256":
      return seq(oid("1.2.840.10045.4.3.2"));
    case "ecdsa-sha384":
      return seq(oid("1.2.840.10045.4.3.3"));
  }
}

function signTbs(alg: CertSignatureAlgorithm, tbs: Buffer, key: KeyObject): Buffer {
  switch (alg) {
    case "rsa-pss-sha384":
      return sign("sha384", tbs, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 48 });
    case "rsa-sha256":
      return sign("sha256", tbs, key);
    case "ecdsa-sha256":
      return sign("sha256", tbs, key);
    case "ecdsa-sha384":
      return sign("sha384", tbs, key);
  }
}

const NAME_OIDS: Record<string, string> = {
  CN: "2.5.4.3",
  C: "2.5.4.6",
  L: "2.5.4.7",
  ST: "2.5.4.8",
  O: "2.5.4.10",
  OU: "2.5.4.11",
};

/** A distinguished name as ordered `[attribute, value]` pairs, e.g. `[["CN", "ARK-Milan"]]`. */
export type DistinguishedName = readonly (readonly [string, string])[];

function encodeName(name: DistinguishedName): Buffer {
  return seq(
    ...name.map(([attr, value]) => {
      const id = NAME_OIDS[attr];
      if (id === undefined) throw new TypeError(`unknown name attribute ${attr}`);
      return set(seq(oid(id), utf8String(value)));
    }),
  );
}

export interface ExtensionSpec {
  readonly oid: string;
  readonly critical?: boolean;
  /** DER of the extension value (placed inside the OCTET STRING). */
  readonly value: Uint8Array;
}

export interface CertificateSpec {
  readonly subject: DistinguishedName;
  readonly issuer: DistinguishedName;
  readonly serialNumber: bigint;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly publicKey: KeyObject;
  /**
   * SubjectPublicKeyInfo DER to embed instead of `publicKey`'s, taken as given: for tests of
   * certificates whose key does not decode.
   */
  readonly subjectPublicKeyInfo?: Uint8Array;
  readonly signingKey: KeyObject;
  readonly signatureAlgorithm: CertSignatureAlgorithm;
  /** Marks the certificate as a CA (basicConstraints cA=TRUE, keyUsage keyCertSign). */
  readonly isCa?: boolean;
  readonly extensions?: readonly ExtensionSpec[];
}

/** Builds and signs a v3 certificate; returns it parsed by Node. */
export function buildCertificate(spec: CertificateSpec): X509Certificate {
  const publicKey = spec.publicKey.type === "public" ? spec.publicKey : createPublicKey(spec.publicKey);
  const spki =
    spec.subjectPublicKeyInfo === undefined
      ? publicKey.export({ type: "spki", format: "der" })
      : Buffer.from(spec.subjectPublicKeyInfo);
  const extensions: ExtensionSpec[] = [];
  if (spec.isCa) {
    extensions.push({ oid: "2.5.29.19", critical: true, value: seq(boolean(true)) });
    // keyUsage: keyCertSign | cRLSign
    extensions.push({ oid: "2.5.29.15", critical: true, value: Buffer.from([0x03, 0x02, 0x01, 0x06]) });
  }
  extensions.push(...(spec.extensions ?? []));
  const sigAlg = algorithmIdentifier(spec.signatureAlgorithm);
  const tbsParts = [
    explicit(0, integer(2)),
    integer(spec.serialNumber),
    sigAlg,
    encodeName(spec.issuer),
    encodeName(spec.subject),
    seq(time(spec.notBefore), time(spec.notAfter)),
    spki,
  ];
  // Subject and issuer appear in the order issuer, validity, subject.
  const tbs = seq(
    tbsParts[0]!,
    tbsParts[1]!,
    tbsParts[2]!,
    tbsParts[3]!,
    tbsParts[5]!,
    tbsParts[4]!,
    tbsParts[6]!,
    ...(extensions.length > 0
      ? [
          explicit(
            3,
            seq(
              ...extensions.map((e) =>
                e.critical
                  ? seq(oid(e.oid), boolean(true), octetString(e.value))
                  : seq(oid(e.oid), octetString(e.value)),
              ),
            ),
          ),
        ]
      : []),
  );
  const signature = signTbs(spec.signatureAlgorithm, tbs, spec.signingKey);
  return certificateFromDer(seq(tbs, sigAlg, bitString(signature)));
}
