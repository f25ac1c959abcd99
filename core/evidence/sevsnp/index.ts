/**
 * AMD SEV-SNP evidence: parse a report (raw or inside an MAA envelope), verify it to a trusted
 * AMD root, read its claims. `verifySnpEvidence` is the one-call form; long-lived callers build
 * one verifier with `createSnpVerifier` so that verified certificate chains are cached.
 */
import { parseMaaSnpEnvelope } from "./envelope.js";
import {
  createSnpVerifier,
  type SnpVerification,
  type SnpVerifierOptions,
  type SnpVerifyInput,
} from "./verify.js";

export {
  SNP_REPORT_SIZE,
  SNP_REPORT_VERSIONS,
  SNP_SIGNATURE_ALGO_ECDSA_P384_SHA384,
  SNP_SIGNED_LENGTH,
  decodeSnpPolicy,
  decodeSnpTcb,
  encodeSnpReport,
  encodeSnpTcb,
  isSnpReport,
  parseSnpReport,
  snpProductFromCpuid,
  writeSnpSignature,
  type SnpCpuid,
  type SnpFirmwareVersion,
  type SnpGuestPolicy,
  type SnpPlatformInfo,
  type SnpProduct,
  type SnpReport,
  type SnpReportFields,
  type SnpTcbInput,
  type SnpTcbLayout,
  type SnpTcbVersion,
} from "./report.js";
export { snpClaims } from "./claims.js";
export {
  MAA_SNP_ENVELOPE_LIMITS,
  buildMaaSnpEnvelope,
  parseMaaSnpEnvelope,
  type MaaSnpEnvelope,
  type MaaSnpEnvelopeInput,
} from "./envelope.js";
export {
  createSnpVerifier,
  spkiSha256,
  type SnpTrustedRoots,
  type SnpVerification,
  type SnpVerifier,
  type SnpVerifierOptions,
  type SnpVerifyInput,
} from "./verify.js";
export { AMD_ARK_FINGERPRINTS, amdRootsTrust } from "./amd-roots.js";
export type { SevSnpClaims } from "../types.js";

/** Evidence for `verifySnpEvidence`: an MAA `report` envelope, or its parts. */
export type SnpEvidence = string | Pick<SnpVerifyInput, "report" | "vcek" | "chain">;

export type VerifySnpEvidenceOptions = Omit<SnpVerifierOptions, "chainCacheSize"> &
  Omit<SnpVerifyInput, "report" | "vcek" | "chain">;

/**
 * Verifies one piece of SEV-SNP evidence with a fresh verifier (no cache); see
 * `createSnpVerifier` for the checks. A string is read as an MAA envelope first
 * (ERR_EVIDENCE_MALFORMED when it is not one).
 */
export function verifySnpEvidence(evidence: SnpEvidence, options: VerifySnpEvidenceOptions): SnpVerification {
  const { trustedRoots, ...input } = options;
  const parts = typeof evidence === "string" ? parseMaaSnpEnvelope(evidence) : evidence;
  return createSnpVerifier({ trustedRoots, chainCacheSize: 0 }).verify({
    ...input,
    report: parts.report,
    vcek: parts.vcek,
    chain: parts.chain,
  });
}
