/**
 * Intel SGX DCAP v3 evidence: parse a quote, verify it to a trusted root, read its claims.
 * `verifySgxEvidence` is the one-call form; long-lived callers build one verifier with
 * `createSgxVerifier` so that verified PCK chains are cached across quotes.
 */
import {
  createSgxVerifier,
  type SgxVerification,
  type SgxVerifierOptions,
  type SgxVerifyInput,
} from "./verify.js";

export {
  MAX_SGX_QUOTE_BYTES,
  SGX_ATTESTATION_KEY_ECDSA_P256,
  SGX_CERT_DATA_PCK_CHAIN,
  SGX_QUOTE_VERSION,
  isSgxQuote,
  parseSgxQuote,
  type ParseSgxQuoteOptions,
  type SgxCertificationData,
  type SgxQuote,
  type SgxQuoteHeader,
  type SgxQuoteSignatureData,
  type SgxReportBody,
} from "./quote.js";
export { sgxClaims, type SgxClaims } from "./claims.js";
export {
  createSgxVerifier,
  spkiFingerprint,
  type SgxTrustedRoots,
  type SgxVerification,
  type SgxVerifier,
  type SgxVerifierOptions,
  type SgxVerifyInput,
} from "./verify.js";
export { INTEL_SGX_ROOT_FINGERPRINTS, intelRootsTrust } from "./intel-roots.js";

export type VerifySgxEvidenceOptions = Omit<SgxVerifierOptions, "chainCacheSize"> &
  Omit<SgxVerifyInput, "quote">;

/** Verifies one quote with a fresh verifier (no cache); see `createSgxVerifier` for the checks. */
export function verifySgxEvidence(quote: Uint8Array, options: VerifySgxEvidenceOptions): SgxVerification {
  const { trustedRoots, ...input } = options;
  return createSgxVerifier({ trustedRoots, chainCacheSize: 0 }).verify({ ...input, quote });
}
