/**
 * Parser for Intel SGX DCAP quotes, version 3, with an ECDSA P-256 attestation key.
 *
 * Turns untrusted bytes into a typed `SgxQuote` and nothing more: every length is checked
 * against the buffer before it is read, the attestation key must be a P-256 point and every
 * certificate must parse with a decodable key, but no signature or certificate is trusted here
 * (that is `verify.ts`). Layout per Intel's DCAP quote library (`sgx_quote_3.h`, `sgx_report.h`):
 * a 48-byte header, the 384-byte ISV enclave report body, a 4-byte signature data length,
 * then the ECDSA signature data. Open Enclave "remote reports" (`oe_report_header_t`: version
 * u32 = 1, type u32 = 2, size u64) in front of the quote are recognised and stripped.
 */
import { createPublicKey, type KeyObject, type X509Certificate } from "node:crypto";
import { ShieldError } from "../../errors.js";
import { loadCertificate, pemToDerList } from "../../x509/certificate.js";

export const SGX_QUOTE_VERSION = 3;
/** `SGX_QL_ALG_ECDSA_P256` in `sgx_quote_3.h`. */
export const SGX_ATTESTATION_KEY_ECDSA_P256 = 2;
/** `PCK_CERT_CHAIN` in `sgx_quote_3.h`: PEM certificates, PCK leaf first. */
export const SGX_CERT_DATA_PCK_CHAIN = 5;
/** Real quotes are about 4.6 KiB; anything this large is not a quote. */
export const MAX_SGX_QUOTE_BYTES = 64 * 1024;

const OE_HEADER_BYTES = 16;
const OE_HEADER_VERSION = 1;
const OE_REPORT_TYPE_SGX_REMOTE = 2;
const HEADER_BYTES = 48;
const REPORT_BODY_BYTES = 384;
/** Header and ISV report body: the bytes the attestation key signs. */
const SIGNED_BYTES = HEADER_BYTES + REPORT_BODY_BYTES;
const ECDSA_P256_SIGNATURE_BYTES = 64;
const ECDSA_P256_PUBLIC_KEY_BYTES = 64;
/** A PCK chain is three certificates; a few more leaves room without allowing abuse. */
const MAX_PEM_CERTIFICATES = 8;

export interface SgxQuoteHeader {
  readonly version: number;
  readonly attestationKeyType: number;
  readonly qeSvn: number;
  readonly pceSvn: number;
  readonly qeVendorId: Buffer;
  /** 20 bytes; Intel's QE puts a platform instance ID in the first 16. */
  readonly userData: Buffer;
}

/** `sgx_report_body_t`. Every field is a view into `raw`. */
export interface SgxReportBody {
  readonly raw: Buffer;
  readonly cpuSvn: Buffer;
  readonly miscSelect: number;
  /** 16 bytes: flags (u64 LE; bit 1 = DEBUG) then XFRM (u64 LE). */
  readonly attributes: Buffer;
  readonly mrEnclave: Buffer;
  readonly mrSigner: Buffer;
  readonly isvProdId: number;
  readonly isvSvn: number;
  readonly reportData: Buffer;
}

export interface SgxCertificationData {
  readonly type: number;
  readonly data: Buffer;
  /** Type 5 only: the certificates in quote order (PCK leaf, PCK Platform/Processor CA, Root CA). */
  readonly pckChain?: readonly X509Certificate[];
}

/** `sgx_ql_ecdsa_sig_data_t` with its trailing authentication and certification data. */
export interface SgxQuoteSignatureData {
  /** ECDSA P-256 over header and report body, r ‖ s big-endian. */
  readonly quoteSignature: Buffer;
  /** Attestation public key, x ‖ y big-endian. */
  readonly attestationKey: Buffer;
  readonly qeReport: SgxReportBody;
  /** ECDSA P-256 over the QE report body by the PCK key, r ‖ s big-endian. */
  readonly qeReportSignature: Buffer;
  readonly qeAuthData: Buffer;
  readonly certificationData: SgxCertificationData;
}

export interface SgxQuote {
  readonly header: SgxQuoteHeader;
  readonly reportBody: SgxReportBody;
  /** Bytes 0–431 of the quote (header and report body), as signed by the attestation key. */
  readonly signedBytes: Buffer;
  readonly signatureData: SgxQuoteSignatureData;
  /** True when the input carried an Open Enclave remote-report header (now stripped). */
  readonly openEnclaveHeader: boolean;
}

export interface ParseSgxQuoteOptions {
  /**
   * Accept certification data types other than 5; the PCK chain must then come from the
   * caller (`pckChain` in verify). Without it such quotes are ERR_EVIDENCE_UNSUPPORTED.
   */
  readonly externalPckChain?: boolean;
}

// Quotes made by this parser. The verifier accepts a pre-parsed quote only from here, so a
// hand-built object can never pair signed bytes with different fields.
const parsedQuotes = new WeakSet<object>();

/** True when `value` is a quote returned by `parseSgxQuote`. */
export function isSgxQuote(value: unknown): value is SgxQuote {
  return typeof value === "object" && value !== null && parsedQuotes.has(value);
}

/**
 * Parses an SGX DCAP v3 quote, with or without an Open Enclave remote-report header.
 * Throws ERR_INPUT_TOO_LARGE, ERR_EVIDENCE_MALFORMED (also for an attestation key that is not a
 * point on P-256), ERR_EVIDENCE_VERSION, ERR_EVIDENCE_UNSUPPORTED, or ERR_EVIDENCE_CHAIN (a PCK
 * chain certificate that does not parse or whose key does not decode); never anything else for
 * any byte string.
 */
export function parseSgxQuote(bytes: Uint8Array, options: ParseSgxQuoteOptions = {}): SgxQuote {
  if (!(bytes instanceof Uint8Array)) throw new TypeError("quote must be a Uint8Array");
  if (bytes.length > MAX_SGX_QUOTE_BYTES) {
    throw new ShieldError("ERR_INPUT_TOO_LARGE", `SGX quote exceeds ${MAX_SGX_QUOTE_BYTES} bytes`);
  }
  // One private copy: every field below is a view into it, so the caller cannot change the
  // bytes behind a parsed quote.
  const input = Buffer.from(bytes);
  const { quoteBytes, openEnclaveHeader } = stripOpenEnclaveHeader(input);
  const reader = new Reader(quoteBytes);

  const header = parseHeader(reader);
  const reportBody = parseReportBody(reader.take(REPORT_BODY_BYTES, "report body"));
  const signedBytes = quoteBytes.subarray(0, SIGNED_BYTES);
  const signatureDataLength = reader.u32("signature data length");
  if (signatureDataLength !== reader.remaining) {
    throw malformed(
      `signature data length ${signatureDataLength} does not match the ${reader.remaining} bytes that follow`,
    );
  }
  const signatureData = parseSignatureData(reader, options);
  if (reader.remaining !== 0) throw malformed("bytes after the certification data");

  const quote: SgxQuote = Object.freeze({
    header,
    reportBody,
    signedBytes,
    signatureData,
    openEnclaveHeader,
  });
  parsedQuotes.add(quote);
  return quote;
}

function stripOpenEnclaveHeader(input: Buffer): { quoteBytes: Buffer; openEnclaveHeader: boolean } {
  // A bare v3 quote starts with version u16 = 3, so a leading u32 = 1 means an OE header.
  if (input.length < 4 || input.readUInt32LE(0) !== OE_HEADER_VERSION) {
    return { quoteBytes: input, openEnclaveHeader: false };
  }
  if (input.length < OE_HEADER_BYTES) throw malformed("truncated Open Enclave report header");
  const reportType = input.readUInt32LE(4);
  if (reportType !== OE_REPORT_TYPE_SGX_REMOTE) {
    throw new ShieldError(
      "ERR_EVIDENCE_UNSUPPORTED",
      `Open Enclave report type ${reportType} is not an SGX remote report`,
    );
  }
  const declared = input.readBigUInt64LE(8);
  const actual = input.length - OE_HEADER_BYTES;
  if (declared !== BigInt(actual)) {
    throw malformed(`Open Enclave report header declares ${declared} bytes, ${actual} follow`);
  }
  return { quoteBytes: input.subarray(OE_HEADER_BYTES), openEnclaveHeader: true };
}

function parseHeader(reader: Reader): SgxQuoteHeader {
  const raw = reader.take(HEADER_BYTES, "header");
  const version = raw.readUInt16LE(0);
  if (version !== SGX_QUOTE_VERSION) {
    throw new ShieldError("ERR_EVIDENCE_VERSION", `SGX quote version ${version} is not supported`, {
      violations: [{ field: "quoteVersion", expected: String(SGX_QUOTE_VERSION), actual: String(version) }],
    });
  }
  const attestationKeyType = raw.readUInt16LE(2);
  if (attestationKeyType !== SGX_ATTESTATION_KEY_ECDSA_P256) {
    throw new ShieldError(
      "ERR_EVIDENCE_UNSUPPORTED",
      `SGX attestation key type ${attestationKeyType} is not supported`,
      {
        violations: [
          {
            field: "attestationKeyType",
            expected: String(SGX_ATTESTATION_KEY_ECDSA_P256),
            actual: String(attestationKeyType),
          },
        ],
      },
    );
  }
  // Bytes 4–7 are reserved (att_key_data_0) and carry nothing for ECDSA keys.
  return Object.freeze({
    version,
    attestationKeyType,
    qeSvn: raw.readUInt16LE(8),
    pceSvn: raw.readUInt16LE(10),
    qeVendorId: raw.subarray(12, 28),
    userData: raw.subarray(28, 48),
  });
}

function parseReportBody(raw: Buffer): SgxReportBody {
  return Object.freeze({
    raw,
    cpuSvn: raw.subarray(0, 16),
    miscSelect: raw.readUInt32LE(16),
    attributes: raw.subarray(48, 64),
    mrEnclave: raw.subarray(64, 96),
    mrSigner: raw.subarray(128, 160),
    isvProdId: raw.readUInt16LE(256),
    isvSvn: raw.readUInt16LE(258),
    reportData: raw.subarray(320, 384),
  });
}

function parseSignatureData(reader: Reader, options: ParseSgxQuoteOptions): SgxQuoteSignatureData {
  const quoteSignature = reader.take(ECDSA_P256_SIGNATURE_BYTES, "quote signature");
  const attestationKey = reader.take(ECDSA_P256_PUBLIC_KEY_BYTES, "attestation key");
  if (attestationPublicKey(attestationKey) === undefined) {
    throw malformed("attestation key is not a point on P-256");
  }
  const qeReport = parseReportBody(reader.take(REPORT_BODY_BYTES, "QE report"));
  const qeReportSignature = reader.take(ECDSA_P256_SIGNATURE_BYTES, "QE report signature");
  const qeAuthData = reader.take(reader.u16("QE authentication data length"), "QE authentication data");
  const type = reader.u16("certification data type");
  const data = reader.take(reader.u32("certification data length"), "certification data");
  let certificationData: SgxCertificationData;
  if (type === SGX_CERT_DATA_PCK_CHAIN) {
    certificationData = Object.freeze({ type, data, pckChain: Object.freeze(parsePemChain(data)) });
  } else if (options.externalPckChain === true) {
    certificationData = Object.freeze({ type, data });
  } else {
    throw new ShieldError(
      "ERR_EVIDENCE_UNSUPPORTED",
      `SGX certification data type ${type} is not supported (expected ${SGX_CERT_DATA_PCK_CHAIN}, a PCK certificate chain)`,
      {
        violations: [
          { field: "certificationDataType", expected: String(SGX_CERT_DATA_PCK_CHAIN), actual: String(type) },
        ],
      },
    );
  }
  return Object.freeze({
    quoteSignature,
    attestationKey,
    qeReport,
    qeReportSignature,
    qeAuthData,
    certificationData,
  });
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** Type 5 data: concatenated PEM certificates; Intel's QE adds a terminating NUL. */
function parsePemChain(data: Buffer): X509Certificate[] {
  let end = data.length;
  while (end > 0 && data[end - 1] === 0) end--;
  const text = data.subarray(0, end).toString("latin1");
  if (text.replace(PEM_CERTIFICATE, "").trim() !== "") {
    throw malformed("certification data holds more than PEM certificates");
  }
  const ders = pemToDerList(text);
  if (ders.length === 0) throw malformed("certification data holds no certificate");
  if (ders.length > MAX_PEM_CERTIFICATES) throw malformed(`more than ${MAX_PEM_CERTIFICATES} certificates`);
  // A certificate that does not parse, or whose key does not decode, is a chain failure.
  return ders.map((der) => loadCertificate(der, "ERR_EVIDENCE_CHAIN"));
}

/** x ‖ y (big-endian) as a P-256 public key; undefined when it is not a point on the curve. */
export function attestationPublicKey(xy: Buffer): KeyObject | undefined {
  if (xy.length !== ECDSA_P256_PUBLIC_KEY_BYTES) return undefined;
  try {
    return createPublicKey({
      key: {
        kty: "EC",
        crv: "P-256",
        x: xy.subarray(0, 32).toString("base64url"),
        y: xy.subarray(32, 64).toString("base64url"),
      },
      format: "jwk",
    });
  } catch {
    return undefined;
  }
}

/** Bounds-checked little-endian reads over the quote bytes. */
class Reader {
  private offset = 0;
  constructor(private readonly bytes: Buffer) {}

  get remaining(): number {
    return this.bytes.length - this.offset;
  }

  take(length: number, field: string): Buffer {
    if (length > this.remaining) throw malformed(`truncated at ${field}`);
    const out = this.bytes.subarray(this.offset, this.offset + length);
    this.offset += length;
    return out;
  }

  u16(field: string): number {
    return this.take(2, field).readUInt16LE(0);
  }

  u32(field: string): number {
    return this.take(4, field).readUInt32LE(0);
  }
}

function malformed(detail: string): ShieldError {
  return new ShieldError("ERR_EVIDENCE_MALFORMED", `malformed SGX quote: ${detail}`);
}
