/**
 * The messages that cross the bus and the webhook (DESIGN §8): their types, the single parser
 * every consumer uses on untrusted bodies, and builders for producers.
 */
export {
  DEFAULT_MAX_MESSAGE_BYTES,
  SUPPORTED_MESSAGE_VERSIONS,
  parseMessage,
  parseAttestationRequest,
  parseAttestationResult,
  parseChallengeRequest,
  parseChallenge,
  parseKeyEvent,
  parsePolicyUpdate,
  parseRotateKey,
  type ParseOptions,
} from "./parse.js";
export {
  denialFromError,
  makeAttestationRequest,
  makeAttestationResult,
  makeChallengeRequest,
  makeChallenge,
  makeKeyEvent,
  makePolicyUpdate,
  makeRotateKey,
  type FailedResultFields,
  type TrustedResultFields,
} from "./build.js";
export {
  JWS_COMPACT,
  MESSAGE_TYPES,
  ROTATION_REASONS,
  type AttestationRequest,
  type AttestationResult,
  type Challenge,
  type ChallengeRequest,
  type Denial,
  type FailedResult,
  type KeyEvent,
  type Message,
  type MessageByType,
  type MessageType,
  type PolicyUpdate,
  type ReleasedKey,
  type RotateKey,
  type RotationReason,
  type TrustedResult,
} from "./v1.js";
export { canonicalJson, requestBinding, requestDigest, type RequestBindingFields } from "./digest.js";
export {
  EVIDENCE_LIMITS,
  type Evidence,
  type EvidenceFormat,
  type SevSnpMaaReportEvidence,
  type SevSnpRawEvidence,
  type SgxDcapQuoteEvidence,
} from "./evidence.js";
export {
  IDENTIFIER_PATTERN,
  KEY_NAME_PATTERN,
  KEY_VERSION_PATTERN,
  MAX_KEYS_PER_REQUEST,
  sameMeasurement,
  type Measurement,
  type TeeKind,
} from "./fields.js";
