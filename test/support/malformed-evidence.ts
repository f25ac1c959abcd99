/**
 * Evidence whose certificates or keys do not decode, built with the project's own certificate
 * builder and correctly signed, so that the only thing wrong is the key: a SEV-SNP chain whose
 * VCEK (or ASK) holds a P-384 point off the curve, an SGX PCK chain whose leaf holds a P-256
 * point off the curve, and a raw attestation key off the curve. Node parses such certificates
 * and fails only when their key is read.
 */
import { createPublicKey, generateKeyPairSync, type KeyObject, type X509Certificate } from "node:crypto";
import { buildCertificate, type DistinguishedName } from "../../core/x509/certificate.js";
import { SIMULATED_SGX_NAMES } from "../../core/evidence/simulated/sgx.js";

const NOT_BEFORE = new Date("2020-01-01T00:00:00Z");
const NOT_AFTER = new Date("2049-12-31T23:59:59Z");

/** The public key's SubjectPublicKeyInfo with the last byte of y flipped: the point leaves the curve. */
export function offCurveSpki(curve: "P-256" | "P-384"): { spki: Buffer; point: Buffer } {
  const { publicKey } = generateKeyPairSync("ec", { namedCurve: curve });
  const spki = publicKey.export({ type: "spki", format: "der" });
  spki[spki.length - 1]! ^= 0x01;
  // An uncompressed point: 0x04 ‖ x ‖ y at the end of the BIT STRING.
  const point = spki.subarray(spki.length - (curve === "P-256" ? 65 : 97));
  if (decodes(() => createPublicKey({ key: spki, format: "der", type: "spki" }))) {
    throw new Error("the flipped point is on the curve: run again");
  }
  return { spki, point: Buffer.from(point) };
}

/** x ‖ y of a P-256 point off the curve, as an SGX quote carries its attestation key. */
export function offCurveP256Point(): Buffer {
  return offCurveSpki("P-256").point.subarray(1);
}

function decodes(f: () => unknown): boolean {
  try {
    f();
    return true;
  } catch {
    return false;
  }
}

const amd = (cn: string): DistinguishedName => [
  ["O", "Shield-ACC malformed evidence"],
  ["CN", cn],
];

export interface MalformedSnpChain {
  readonly ark: X509Certificate;
  readonly ask: X509Certificate;
  /** A well-formed VCEK signed by `ask` (its issuer is the name `offCurveAsk` carries too). */
  readonly vcek: X509Certificate;
  /** Signed by `ask`; its SubjectPublicKeyInfo holds a P-384 point off the curve. */
  readonly offCurveVcek: X509Certificate;
  /** Signed by `ark`; its key is the same off-curve point (an ASK must be RSA, but must first decode). */
  readonly offCurveAsk: X509Certificate;
  /** The bytes of the bad point, to check that no error repeats them. */
  readonly point: Buffer;
}

/** An ARK → ASK chain in AMD's names, and certificates under it whose keys do not decode. */
export function malformedSnpChain(): MalformedSnpChain {
  const arkKeys = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const askKeys = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const { spki, point } = offCurveSpki("P-384");
  const vcekKey = generateKeyPairSync("ec", { namedCurve: "P-384" }).publicKey;
  const cert = (
    subject: string,
    issuer: string,
    serialNumber: bigint,
    publicKey: KeyObject,
    signingKey: KeyObject,
    extra: { isCa?: boolean; subjectPublicKeyInfo?: Buffer } = {},
  ) =>
    buildCertificate({
      subject: amd(subject),
      issuer: amd(issuer),
      serialNumber,
      notBefore: NOT_BEFORE,
      notAfter: NOT_AFTER,
      publicKey,
      signingKey,
      signatureAlgorithm: "rsa-pss-sha384",
      ...extra,
    });
  const ark = cert("ARK-Milan", "ARK-Milan", 1n, arkKeys.publicKey, arkKeys.privateKey, { isCa: true });
  const ask = cert("SEV-Milan", "ARK-Milan", 2n, askKeys.publicKey, arkKeys.privateKey, { isCa: true });
  const vcek = cert("SEV-VCEK", "SEV-Milan", 3n, vcekKey, askKeys.privateKey);
  const offCurveVcek = cert("SEV-VCEK", "SEV-Milan", 4n, vcekKey, askKeys.privateKey, {
    subjectPublicKeyInfo: spki,
  });
  const offCurveAsk = cert("SEV-Milan", "ARK-Milan", 5n, vcekKey, arkKeys.privateKey, {
    isCa: true,
    subjectPublicKeyInfo: spki,
  });
  return { ark, ask, vcek, offCurveVcek, offCurveAsk, point };
}

export interface MalformedSgxChain {
  /** PCK leaf (off-curve key, signed by the CA), PCK Platform CA, root. */
  readonly pckChain: readonly X509Certificate[];
  readonly root: X509Certificate;
  readonly point: Buffer;
}

/** An SGX root → Platform CA chain whose PCK leaf holds a P-256 point off the curve. */
export function malformedSgxChain(): MalformedSgxChain {
  const rootKeys = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const caKeys = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const { spki, point } = offCurveSpki("P-256");
  const common = { notBefore: NOT_BEFORE, notAfter: NOT_AFTER, signatureAlgorithm: "ecdsa-sha256" } as const;
  const root = buildCertificate({
    ...common,
    subject: SIMULATED_SGX_NAMES.root,
    issuer: SIMULATED_SGX_NAMES.root,
    serialNumber: 1n,
    publicKey: rootKeys.publicKey,
    signingKey: rootKeys.privateKey,
    isCa: true,
  });
  const ca = buildCertificate({
    ...common,
    subject: SIMULATED_SGX_NAMES.platformCa,
    issuer: SIMULATED_SGX_NAMES.root,
    serialNumber: 2n,
    publicKey: caKeys.publicKey,
    signingKey: rootKeys.privateKey,
    isCa: true,
  });
  const pck = buildCertificate({
    ...common,
    subject: SIMULATED_SGX_NAMES.pck,
    issuer: SIMULATED_SGX_NAMES.platformCa,
    serialNumber: 3n,
    publicKey: caKeys.publicKey,
    subjectPublicKeyInfo: spki,
    signingKey: caKeys.privateKey,
  });
  return { pckChain: [pck, ca, root], root, point };
}

/** Every way `bytes` could appear in an error: hex (either case), base64, base64url. */
export function textForms(bytes: Uint8Array): string[] {
  const b = Buffer.from(bytes);
  return [b.toString("hex"), b.toString("hex").toUpperCase(), b.toString("base64"), b.toString("base64url")];
}
