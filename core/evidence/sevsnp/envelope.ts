/**
 * The SEV-SNP evidence envelope Microsoft Azure Attestation takes as the `report` of an
 * `attest/SevSnpVm` request, as the confidential-containers SKR sidecar builds it:
 *
 *   base64url(JSON{ "SnpReport":     base64url(1184-byte report),
 *                   "VcekCertChain": base64url(PEM VCEK, then PEM ASK/ASVK and ARK),
 *                   "Endorsements"?: base64url(JSON{ "Uvm": [ base64url(COSE_Sign1) ] }) })
 *
 * The sidecar writes Go's `base64.URLEncoding` (with `=` padding); both padded and unpadded
 * forms are read. Parsing only takes the envelope apart: nothing in it is trusted until the
 * verifier has checked the report against the chain.
 */
import type { X509Certificate } from "node:crypto";
import { z } from "zod";
import { ShieldError } from "../../errors.js";
import { derToPem, loadCertificate, pemToDerList } from "../../x509/certificate.js";
import { SNP_REPORT_SIZE } from "./report.js";

/** Upper bounds that keep a hostile envelope from costing more than a real one. */
export const MAA_SNP_ENVELOPE_LIMITS = Object.freeze({
  /** Characters of the outer base64url string. */
  envelopeChars: 512 * 1024,
  /** Certificates in VcekCertChain (VCEK + ASK + ARK, with room for an ASVK). */
  certificates: 8,
  /** Entries in Endorsements.Uvm. */
  uvmEndorsements: 8,
  /** Bytes of one UVM endorsement (real ones are about 10 KiB). */
  uvmEndorsementBytes: 128 * 1024,
});

export interface MaaSnpEnvelope {
  /** The raw report, exactly 1184 bytes (not yet parsed or verified). */
  readonly report: Buffer;
  /** The first certificate of VcekCertChain. */
  readonly vcek: X509Certificate;
  /** The remaining certificates, in envelope order. */
  readonly chain: readonly X509Certificate[];
  /** UVM reference-info endorsements (COSE_Sign1), when present. */
  readonly endorsements?: { readonly uvm: readonly Buffer[] };
}

export interface MaaSnpEnvelopeInput {
  readonly report: Uint8Array;
  readonly vcek: X509Certificate | string;
  /** ASK/ASVK then ARK, as certificates or one PEM bundle. */
  readonly chain: readonly X509Certificate[] | string;
  readonly uvmEndorsements?: readonly Uint8Array[];
}

const OuterSchema = z.object({
  SnpReport: z.string().min(1),
  VcekCertChain: z.string().min(1),
  // The sidecar's struct has no omitempty on some versions, so "" means "none".
  Endorsements: z.string().optional(),
});

const EndorsementsSchema = z.object({ Uvm: z.array(z.string()).default([]) });

/**
 * Takes an envelope apart. Throws ERR_INPUT_TOO_LARGE or ERR_EVIDENCE_MALFORMED for the envelope
 * itself, and ERR_EVIDENCE_CHAIN for a certificate in VcekCertChain that does not parse or whose
 * public key does not decode.
 */
export function parseMaaSnpEnvelope(envelope: string): MaaSnpEnvelope {
  if (typeof envelope !== "string") throw new TypeError("envelope must be a string");
  if (envelope.length > MAA_SNP_ENVELOPE_LIMITS.envelopeChars) {
    throw new ShieldError("ERR_INPUT_TOO_LARGE", "SEV-SNP envelope is too large");
  }
  const outer = OuterSchema.safeParse(parseJson(decodeBase64Url(envelope, "envelope"), "envelope"));
  if (!outer.success) throw malformed("envelope lacks SnpReport or VcekCertChain");

  const report = decodeBase64Url(outer.data.SnpReport, "SnpReport");
  if (report.length !== SNP_REPORT_SIZE) {
    throw malformed(`SnpReport must be ${SNP_REPORT_SIZE} bytes, got ${report.length}`);
  }
  const certificates = pemToDerList(
    decodeBase64Url(outer.data.VcekCertChain, "VcekCertChain").toString("latin1"),
  );
  if (certificates.length === 0) throw malformed("VcekCertChain holds no certificate");
  if (certificates.length > MAA_SNP_ENVELOPE_LIMITS.certificates)
    throw malformed("VcekCertChain has too many certificates");
  const [vcek, ...chain] = certificates.map((der) => loadCertificate(der, "ERR_EVIDENCE_CHAIN"));

  const endorsements = parseEndorsements(outer.data.Endorsements);
  return Object.freeze({
    report,
    vcek: vcek!,
    chain: Object.freeze(chain),
    ...(endorsements === undefined ? {} : { endorsements }),
  });
}

/** Builds an envelope the way the sidecar does (padded base64url, PEM chain, optional UVM). */
export function buildMaaSnpEnvelope(input: MaaSnpEnvelopeInput): string {
  if (!(input.report instanceof Uint8Array) || input.report.length !== SNP_REPORT_SIZE) {
    throw new TypeError(`report must be ${SNP_REPORT_SIZE} bytes`);
  }
  const pem = (cert: X509Certificate | string): string =>
    typeof cert === "string" ? cert : derToPem(cert.raw);
  const chainPem = typeof input.chain === "string" ? input.chain : input.chain.map(pem).join("");
  const vcekPem = pem(input.vcek);
  const bundle = (vcekPem.endsWith("\n") ? vcekPem : `${vcekPem}\n`) + chainPem;
  const outer: Record<string, string> = {
    SnpReport: encodeBase64Url(input.report),
    VcekCertChain: encodeBase64Url(Buffer.from(bundle, "latin1")),
  };
  const uvm = input.uvmEndorsements ?? [];
  if (uvm.length > 0) {
    const json = JSON.stringify({ Uvm: uvm.map((u) => encodeBase64Url(u)) });
    outer.Endorsements = encodeBase64Url(Buffer.from(json, "utf8"));
  }
  return encodeBase64Url(Buffer.from(JSON.stringify(outer), "utf8"));
}

function parseEndorsements(encoded: string | undefined): { readonly uvm: readonly Buffer[] } | undefined {
  if (encoded === undefined || encoded === "") return undefined;
  const parsed = EndorsementsSchema.safeParse(
    parseJson(decodeBase64Url(encoded, "Endorsements"), "Endorsements"),
  );
  if (!parsed.success) throw malformed("Endorsements is not {Uvm: [...]}");
  if (parsed.data.Uvm.length > MAA_SNP_ENVELOPE_LIMITS.uvmEndorsements)
    throw malformed("too many UVM endorsements");
  const uvm = parsed.data.Uvm.map((entry) => {
    const bytes = decodeBase64Url(entry, "Endorsements.Uvm");
    if (bytes.length === 0 || bytes.length > MAA_SNP_ENVELOPE_LIMITS.uvmEndorsementBytes) {
      throw malformed("UVM endorsement size is out of range");
    }
    return bytes;
  });
  return Object.freeze({ uvm: Object.freeze(uvm) });
}

const BASE64URL = /^[A-Za-z0-9_-]*$/;

/** Strict base64url: URL alphabet only, optional `=` padding of the right length. */
function decodeBase64Url(text: string, what: string): Buffer {
  const body = text.replace(/={1,2}$/, "");
  const padded = body.length !== text.length;
  if (!BASE64URL.test(body) || body.length % 4 === 1 || (padded && text.length % 4 !== 0)) {
    throw malformed(`${what} is not base64url`);
  }
  return Buffer.from(body, "base64url");
}

/** Padded base64url, as Go's `base64.URLEncoding` writes it. */
function encodeBase64Url(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("base64").replaceAll("+", "-").replaceAll("/", "_");
}

function parseJson(bytes: Buffer, what: string): unknown {
  try {
    return JSON.parse(bytes.toString("utf8")) as unknown;
  } catch {
    throw malformed(`${what} is not JSON`);
  }
}

function malformed(message: string): ShieldError {
  return new ShieldError("ERR_EVIDENCE_MALFORMED", message);
}
