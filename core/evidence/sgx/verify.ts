/**
 * Verifier for Intel SGX DCAP v3 quotes: proves that a quote was signed by a Quoting Enclave
 * on a genuine SGX platform whose PCK certificate chains to a trusted root, and returns the
 * enclave's claims. TCB status, QE identity and CRLs are not evaluated here; in production
 * that is Microsoft Azure Attestation's job, and this verifier backs the CLI, the local
 * attestation server and tests.
 */
import { X509Certificate, createHash, timingSafeEqual, verify, type KeyObject } from "node:crypto";
import { ShieldError, isShieldError, type Violation } from "../../errors.js";
import { readablePublicKey } from "../../x509/certificate.js";
import { sgxClaims, type SgxClaims } from "./claims.js";
import { attestationPublicKey, isSgxQuote, parseSgxQuote, type SgxQuote } from "./quote.js";

/**
 * Roots a PCK chain may end at: certificates, or SHA-256 fingerprints (hex, colons allowed) of
 * a root's SubjectPublicKeyInfo DER.
 */
export type SgxTrustedRoots = readonly (X509Certificate | string)[];

export interface SgxVerifierOptions {
  readonly trustedRoots: SgxTrustedRoots;
  /** How many verified PCK chains to remember (default 256; 0 turns the cache off). */
  readonly chainCacheSize?: number;
}

export interface SgxVerifyInput {
  /** Quote bytes (optionally behind an Open Enclave header), or a quote from `parseSgxQuote`. */
  readonly quote: Uint8Array | SgxQuote;
  /** The moment certificate validity is judged at. */
  readonly at: Date;
  /** 32 bytes: compared with the first 32 bytes of REPORT_DATA; 64 bytes: with all of it. */
  readonly expectedReportData?: Uint8Array;
  /**
   * PCK chain (leaf, PCK Platform/Processor CA, root) to use instead of the quote's own; allows
   * quotes whose certification data is not a PEM chain (types 1–4).
   */
  readonly pckChain?: readonly X509Certificate[];
}

export interface SgxVerification {
  readonly quote: SgxQuote;
  readonly claims: SgxClaims;
}

export interface SgxVerifier {
  verify(input: SgxVerifyInput): SgxVerification;
}

const DEFAULT_CHAIN_CACHE_SIZE = 256;
const PCK_CHAIN_LENGTH = 3;
const P1363 = "ieee-p1363" as const;

/**
 * Creates an SGX DCAP v3 quote verifier. `verify` runs these checks, in order, and throws a
 * `ShieldError` at the first that fails:
 *
 *  1. Parse the quote (Open Enclave header stripped): version 3, an ECDSA P-256 attestation key
 *     that is a point on the curve, every length within the buffer, certification data type 5
 *     unless `pckChain` is given (ERR_EVIDENCE_MALFORMED and others, see `parseSgxQuote`).
 *  2. PCK chain: every certificate's key decodes; three certificates; the root is trusted
 *     (ERR_EVIDENCE_UNTRUSTED_ROOT), a CA, and self-signed; the PCK Platform/Processor CA is a CA
 *     issued and signed by the root; the PCK leaf is issued and signed by that CA
 *     (ERR_EVIDENCE_CHAIN). Successes are cached.
 *  3. Every certificate of the chain is valid at `at` (ERR_EVIDENCE_CERT_EXPIRED).
 *  4. The QE report signature (ECDSA P-256, SHA-256) verifies with the PCK leaf's key
 *     (ERR_EVIDENCE_SIGNATURE).
 *  5. The QE report binds the attestation key: the first 32 bytes of its REPORT_DATA equal
 *     SHA-256(attestation public key ‖ QE authentication data) (ERR_EVIDENCE_BINDING).
 *  6. The quote signature over the header and ISV report body (bytes 0–431) verifies with the
 *     attestation key (ERR_EVIDENCE_SIGNATURE).
 *  7. When `expectedReportData` is given, it equals the ISV report's REPORT_DATA (first 32 or
 *     all 64 bytes) (ERR_EVIDENCE_REPORT_DATA).
 */
export function createSgxVerifier(options: SgxVerifierOptions): SgxVerifier {
  const trustedRoots = trustedRootFingerprints(options.trustedRoots);
  const verifiedChains = new ChainCache(options.chainCacheSize ?? DEFAULT_CHAIN_CACHE_SIZE);
  return {
    verify(input: SgxVerifyInput): SgxVerification {
      checkArguments(input);
      const quote = parseQuote(input); // 1
      const chain = pckChainOf(quote, input.pckChain);
      verifyPckChain(chain, trustedRoots, verifiedChains); // 2
      checkCertificateValidity(chain, input.at); // 3
      verifyQeReportSignature(quote, chain[0]!); // 4
      verifyQeReportBinding(quote); // 5
      verifyQuoteSignature(quote); // 6
      checkReportData(quote, input.expectedReportData); // 7
      return Object.freeze({ quote, claims: sgxClaims(quote) });
    },
  };
}

/** SHA-256 of a certificate's SubjectPublicKeyInfo DER, lowercase hex. */
export function spkiFingerprint(certificate: X509Certificate): string {
  return createHash("sha256")
    .update(certificate.publicKey.export({ type: "spki", format: "der" }))
    .digest("hex");
}

// ---------------------------------------------------------------------------------------------
// Arguments

function trustedRootFingerprints(roots: SgxTrustedRoots): ReadonlySet<string> {
  if (!Array.isArray(roots) || roots.length === 0) {
    throw new TypeError("trustedRoots must name at least one root");
  }
  const out = new Set<string>();
  for (const root of roots as readonly unknown[]) {
    if (root instanceof X509Certificate) {
      if (!hasReadableKey(root)) throw new TypeError("a trusted root certificate has an unreadable key");
      out.add(spkiFingerprint(root));
    } else if (typeof root === "string") {
      const hex = root.replaceAll(":", "").toLowerCase();
      if (!/^[0-9a-f]{64}$/.test(hex)) throw new TypeError("a trusted root fingerprint must be SHA-256 hex");
      out.add(hex);
    } else {
      throw new TypeError("trustedRoots entries must be X509Certificate or fingerprint strings");
    }
  }
  return out;
}

function checkArguments(input: SgxVerifyInput): void {
  if (!(input.at instanceof Date) || Number.isNaN(input.at.getTime())) {
    throw new TypeError("at must be a valid Date");
  }
  const expected = input.expectedReportData;
  if (
    expected !== undefined &&
    (!(expected instanceof Uint8Array) || (expected.length !== 32 && expected.length !== 64))
  ) {
    throw new TypeError("expectedReportData must be 32 or 64 bytes");
  }
  if (input.pckChain !== undefined && !input.pckChain.every((c) => c instanceof X509Certificate)) {
    throw new TypeError("pckChain must be X509Certificate objects");
  }
}

// ---------------------------------------------------------------------------------------------
// 1. Parse

function parseQuote(input: SgxVerifyInput): SgxQuote {
  if (input.quote instanceof Uint8Array) {
    return parseSgxQuote(input.quote, { externalPckChain: input.pckChain !== undefined });
  }
  if (!isSgxQuote(input.quote)) throw new TypeError("quote must be bytes or a quote from parseSgxQuote");
  return input.quote;
}

/** The caller's chain when given, otherwise the quote's own (certification data type 5). */
function pckChainOf(
  quote: SgxQuote,
  override: readonly X509Certificate[] | undefined,
): readonly X509Certificate[] {
  if (override !== undefined && !override.every(hasReadableKey)) {
    throw chainError("a PCK chain certificate's public key does not decode");
  }
  const chain = override ?? quote.signatureData.certificationData.pckChain;
  if (chain === undefined) {
    throw new ShieldError(
      "ERR_EVIDENCE_UNSUPPORTED",
      `SGX certification data type ${quote.signatureData.certificationData.type} carries no PCK chain and none was given`,
    );
  }
  return chain;
}

/** Node decodes a certificate's key lazily, so a parsed certificate may still hold a bad key. */
function hasReadableKey(certificate: X509Certificate): boolean {
  return readablePublicKey(certificate) !== undefined;
}

// ---------------------------------------------------------------------------------------------
// 2. PCK chain

function verifyPckChain(
  chain: readonly X509Certificate[],
  trustedRoots: ReadonlySet<string>,
  verifiedChains: ChainCache,
): void {
  const cacheKey = chainCacheKey(chain);
  if (verifiedChains.has(cacheKey)) return;
  try {
    checkPckChain(chain, trustedRoots);
  } catch (error) {
    // Whatever a hostile certificate makes Node's X.509 code throw is a chain failure, not ours.
    if (isShieldError(error)) throw error;
    throw new ShieldError("ERR_EVIDENCE_CHAIN", "PCK chain certificates cannot be processed", {
      cause: error,
    });
  }
  verifiedChains.add(cacheKey);
}

function checkPckChain(chain: readonly X509Certificate[], trustedRoots: ReadonlySet<string>): void {
  const [pck, pckCa, root] = chain;
  if (chain.length !== PCK_CHAIN_LENGTH || pck === undefined || pckCa === undefined || root === undefined) {
    throw chainError(`PCK chain holds ${chain.length} certificates, expected ${PCK_CHAIN_LENGTH}`);
  }
  const rootFingerprint = spkiFingerprint(root);
  if (!trustedRoots.has(rootFingerprint)) {
    throw new ShieldError("ERR_EVIDENCE_UNTRUSTED_ROOT", "PCK chain does not end at a trusted SGX root", {
      violations: [
        { field: "pckChain.root", expected: "a trusted root SPKI SHA-256", actual: rootFingerprint },
      ],
    });
  }
  if (!root.ca) throw chainError("root certificate is not a CA");
  if (!isSignedBy(root, root)) throw chainError("root certificate is not self-signed");
  if (!pckCa.ca) throw chainError("PCK CA certificate is not a CA");
  if (!isSignedBy(pckCa, root)) throw chainError("PCK CA certificate is not signed by the root");
  if (!isSignedBy(pck, pckCa)) throw chainError("PCK certificate is not signed by the PCK CA");
}

function isSignedBy(subject: X509Certificate, issuer: X509Certificate): boolean {
  try {
    return subject.checkIssued(issuer) && subject.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

function chainCacheKey(chain: readonly X509Certificate[]): string {
  const hash = createHash("sha256");
  for (const cert of chain) hash.update(createHash("sha256").update(cert.raw).digest());
  return hash.digest("hex");
}

function chainError(message: string): ShieldError {
  return new ShieldError("ERR_EVIDENCE_CHAIN", message);
}

/** Remembers verified chains, least recently used dropped first; failures are never stored. */
class ChainCache {
  private readonly entries = new Map<string, true>();
  constructor(private readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 0)
      throw new TypeError("chainCacheSize must be an integer >= 0");
  }

  has(key: string): boolean {
    if (!this.entries.delete(key)) return false;
    this.entries.set(key, true);
    return true;
  }

  add(key: string): void {
    if (this.capacity === 0) return;
    this.entries.set(key, true);
    if (this.entries.size > this.capacity) {
      const oldest = this.entries.keys().next();
      if (oldest.done !== true) this.entries.delete(oldest.value);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Validity

const CHAIN_ROLES = ["pckCertificate", "pckCaCertificate", "rootCertificate"] as const;

function checkCertificateValidity(chain: readonly X509Certificate[], at: Date): void {
  const violations: Violation[] = [];
  chain.forEach((cert, index) => {
    const notBefore = new Date(cert.validFrom);
    const notAfter = new Date(cert.validTo);
    const field = `${CHAIN_ROLES[index] ?? `pckChain[${index}]`}.validity`;
    if (Number.isNaN(notBefore.getTime()) || Number.isNaN(notAfter.getTime())) {
      violations.push({ field, expected: "a readable validity period", actual: "unreadable" });
    } else if (at < notBefore || at > notAfter) {
      violations.push({
        field,
        expected: `${notBefore.toISOString()} .. ${notAfter.toISOString()}`,
        actual: at.toISOString(),
      });
    }
  });
  if (violations.length > 0) {
    throw new ShieldError(
      "ERR_EVIDENCE_CERT_EXPIRED",
      "a PCK chain certificate is not valid at the given time",
      {
        violations,
      },
    );
  }
}

// ---------------------------------------------------------------------------------------------
// 4. QE report signature

function verifyQeReportSignature(quote: SgxQuote, pck: X509Certificate): void {
  const key = readablePublicKey(pck);
  if (key === undefined) throw chainError("PCK certificate's public key does not decode");
  if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1") {
    throw new ShieldError("ERR_EVIDENCE_UNSUPPORTED", "PCK certificate key is not ECDSA P-256");
  }
  const { qeReport, qeReportSignature } = quote.signatureData;
  if (!ecdsaP256Verifies(qeReport.raw, key, qeReportSignature)) {
    throw new ShieldError("ERR_EVIDENCE_SIGNATURE", "QE report signature does not verify with the PCK key");
  }
}

// ---------------------------------------------------------------------------------------------
// 5. QE report binding of the attestation key

function verifyQeReportBinding(quote: SgxQuote): void {
  const { attestationKey, qeAuthData, qeReport } = quote.signatureData;
  const expected = createHash("sha256").update(attestationKey).update(qeAuthData).digest();
  if (!timingSafeEqual(expected, qeReport.reportData.subarray(0, 32))) {
    throw new ShieldError(
      "ERR_EVIDENCE_BINDING",
      "QE report data does not bind the attestation key and QE authentication data",
    );
  }
}

// ---------------------------------------------------------------------------------------------
// 6. Quote signature

function verifyQuoteSignature(quote: SgxQuote): void {
  const { attestationKey, quoteSignature } = quote.signatureData;
  const key = attestationPublicKey(attestationKey);
  // parseSgxQuote refuses such a key already; a pre-parsed quote comes only from it.
  if (key === undefined) {
    throw new ShieldError("ERR_EVIDENCE_MALFORMED", "attestation key is not a point on P-256");
  }
  if (!ecdsaP256Verifies(quote.signedBytes, key, quoteSignature)) {
    throw new ShieldError(
      "ERR_EVIDENCE_SIGNATURE",
      "quote signature does not verify with the attestation key",
    );
  }
}

function ecdsaP256Verifies(data: Buffer, key: KeyObject, signature: Buffer): boolean {
  try {
    return verify("sha256", data, { key, dsaEncoding: P1363 }, signature);
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// 7. REPORT_DATA

function checkReportData(quote: SgxQuote, expected: Uint8Array | undefined): void {
  if (expected === undefined) return;
  const actual = quote.reportBody.reportData.subarray(0, expected.length);
  if (!timingSafeEqual(actual, expected)) {
    throw new ShieldError("ERR_EVIDENCE_REPORT_DATA", "quote REPORT_DATA does not match the expected value", {
      violations: [
        {
          field: expected.length === 32 ? "reportData[0..32]" : "reportData",
          expected: Buffer.from(expected).toString("hex"),
          actual: actual.toString("hex"),
        },
      ],
    });
  }
}
