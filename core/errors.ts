/**
 * Typed errors for every failure the trust core can report.
 *
 * One base class, a stable `code` per failure kind, and a fixed split between terminal failures
 * (bad evidence, bad token, policy denial: recorded and answered, never retried) and transient
 * ones (network, throttling: retried or redelivered). Messages are short and never carry key,
 * token or evidence bytes; structured `violations` say which check failed, what was expected
 * and what was seen, and hold only claim values (measurements, SVNs, flags), never secrets.
 */

/** Every code, with whether a retry could change the outcome. */
const CODES = {
  // input shape
  ERR_INPUT_MALFORMED: { transient: false },
  ERR_INPUT_TOO_LARGE: { transient: false },
  ERR_MESSAGE_SCHEMA: { transient: false },
  ERR_MESSAGE_VERSION: { transient: false },
  // hardware evidence
  ERR_EVIDENCE_MALFORMED: { transient: false },
  ERR_EVIDENCE_VERSION: { transient: false },
  ERR_EVIDENCE_SIGNATURE: { transient: false },
  ERR_EVIDENCE_CHAIN: { transient: false },
  ERR_EVIDENCE_UNTRUSTED_ROOT: { transient: false },
  ERR_EVIDENCE_CERT_EXPIRED: { transient: false },
  ERR_EVIDENCE_TCB_MISMATCH: { transient: false },
  ERR_EVIDENCE_CHIP_MISMATCH: { transient: false },
  ERR_EVIDENCE_REPORT_DATA: { transient: false },
  ERR_EVIDENCE_BINDING: { transient: false },
  ERR_EVIDENCE_UNSUPPORTED: { transient: false },
  // MAA tokens
  ERR_TOKEN_MALFORMED: { transient: false },
  ERR_TOKEN_ALG: { transient: false },
  ERR_TOKEN_KID: { transient: false },
  ERR_TOKEN_SIGNATURE: { transient: false },
  ERR_TOKEN_ISSUER: { transient: false },
  ERR_TOKEN_EXPIRED: { transient: false },
  ERR_TOKEN_NOT_YET_VALID: { transient: false },
  ERR_TOKEN_NONCE: { transient: false },
  ERR_TOKEN_RUNTIME_DATA: { transient: false },
  ERR_TOKEN_CLAIMS: { transient: false },
  ERR_JWKS_MALFORMED: { transient: false },
  ERR_JWKS_UNAVAILABLE: { transient: true },
  // appraisal and release policy
  ERR_APPRAISAL_DENIED: { transient: false },
  ERR_POLICY_MALFORMED: { transient: false },
  ERR_POLICY_VERSION: { transient: false },
  ERR_POLICY_DENIED: { transient: false },
  ERR_POLICY_UNSAFE_CHANGE: { transient: false },
  ERR_POLICY_UNSAFE: { transient: false },
  ERR_AGENT_REVOKED: { transient: false },
  // freshness: every attestation answers a challenge the control plane issued to that agent
  ERR_CHALLENGE_UNKNOWN: { transient: false },
  ERR_CHALLENGE_EXPIRED: { transient: false },
  ERR_CHALLENGE_USED: { transient: false },
  ERR_CHALLENGE_MISMATCH: { transient: false },
  ERR_REQUEST_REPLAYED: { transient: false },
  // the lifecycle: re-attestation, revocation, rotation
  /** A re-attestation challenge's deadline passed without a validated answer. */
  ERR_CHALLENGE_MISSED: { transient: false },
  /** An operator revoked the agent. */
  ERR_AGENT_REVOKED_BY_OPERATOR: { transient: false },
  /** The key has as many versions as the store allows (Managed HSM: 100); nothing was created. */
  ERR_KEY_VERSION_LIMIT: { transient: false },
  /** A key version that cannot be released as Shield needs it (not exportable, policy not fixable). */
  ERR_KEY_VERSION_UNSAFE: { transient: false },
  /** A Key Vault event (Event Grid or CloudEvents) that does not parse. */
  ERR_EVENT_MALFORMED: { transient: false },
  // signed control messages (functions → agents)
  ERR_CONTROL_MALFORMED: { transient: false },
  ERR_CONTROL_ALG: { transient: false },
  ERR_CONTROL_KID: { transient: false },
  ERR_CONTROL_SIGNATURE: { transient: false },
  ERR_CONTROL_AUDIENCE: { transient: false },
  ERR_CONTROL_EXPIRED: { transient: false },
  ERR_CONTROL_REPLAYED: { transient: false },
  /** A result that is not bound to the request it claims to answer (requestDigest). */
  ERR_CONTROL_UNBOUND: { transient: false },
  // key wrapping and release responses
  ERR_WRAP_ALGORITHM: { transient: false },
  ERR_WRAP_INTEGRITY: { transient: false },
  ERR_RELEASE_RESPONSE_MALFORMED: { transient: false },
  ERR_RELEASE_RESPONSE_SIGNATURE: { transient: false },
  ERR_RELEASE_RESPONSE_NONCE: { transient: false },
  // the agent's encryption API (keys stay in the agent; see agent/encryption.ts)
  ERR_CIPHERTEXT_MALFORMED: { transient: false },
  /** Tampered ciphertext, or other associated data than at encryption: indistinguishable on purpose. */
  ERR_CIPHERTEXT_INTEGRITY: { transient: false },
  ERR_KEY_VERSION_UNKNOWN: { transient: false },
  ERR_KEY_VERSION_REVOKED: { transient: false },
  /** Older than the minimum decryption version configured for the key. */
  ERR_KEY_VERSION_RETIRED: { transient: false },
  /** Not a 256-bit symmetric key: only those encrypt, decrypt and derive blind-index keys. */
  ERR_KEY_UNSUPPORTED: { transient: false },
  // the agent's PostgreSQL proxy (agent/pg-proxy/): refused rather than let plaintext through
  /** A statement that names a protected table or column in a form the proxy cannot rewrite. */
  ERR_PROXY_UNSAFE_STATEMENT: { transient: false },
  /** The proxy's key is revoked, not held yet, or the agent failed: no statement runs. */
  ERR_PROXY_KEY_UNAVAILABLE: { transient: true },
  /** A stored value of a protected column that does not decrypt (not ciphertext, tampered). */
  ERR_PROXY_STORED_VALUE: { transient: false },
  /** The application's credential for the proxy was wrong, or its startup asked what the proxy refuses. */
  ERR_PROXY_AUTH: { transient: false },
  /** A protocol message the proxy does not support or that does not parse. */
  ERR_PROXY_PROTOCOL: { transient: false },
  // I/O at the edges
  ERR_IO: { transient: false },
  ERR_NETWORK: { transient: true },
  ERR_THROTTLED: { transient: true },
  ERR_UPSTREAM_UNAVAILABLE: { transient: true },
  ERR_TIMEOUT: { transient: true },
  ERR_CONFLICT: { transient: true },
  ERR_CONFIG: { transient: false },
  // an unexpected failure: treated as transient so it is retried, reported, and never releases
  ERR_INTERNAL: { transient: true },
  // deployments: the webhook, policy rollouts and retirement
  ERR_WEBHOOK_UNAUTHENTICATED: { transient: false },
  ERR_WEBHOOK_SIGNATURE: { transient: false },
  ERR_WEBHOOK_TIMESTAMP: { transient: false },
  ERR_WEBHOOK_REPLAYED: { transient: false },
  ERR_WEBHOOK_TOKEN: { transient: false },
  ERR_WEBHOOK_TOKEN_AUDIENCE: { transient: false },
  ERR_WEBHOOK_TOKEN_EXPIRED: { transient: false },
  ERR_WEBHOOK_NOT_ALLOWED: { transient: false },
  ERR_DEPLOY_UNKNOWN_KEY: { transient: false },
  ERR_DEPLOYMENT_UNKNOWN: { transient: false },
  ERR_POLICY_IMMUTABLE: { transient: false },
  ERR_POLICY_READBACK: { transient: false },
  ERR_MEASUREMENT_RETIRED: { transient: false },
} as const satisfies Record<string, { transient: boolean }>;

export type ShieldErrorCode = keyof typeof CODES;

/** One failed check: which field, what the policy wanted, what the evidence said. */
export interface Violation {
  /** The claim, field or clause that failed, in the domain's words (`hostData`, `x-ms-sevsnpvm-vmpl`). */
  readonly field: string;
  readonly expected: string;
  readonly actual: string;
}

export interface ShieldErrorOptions {
  readonly violations?: readonly Violation[];
  readonly cause?: unknown;
}

export class ShieldError extends Error {
  override readonly name: string = "ShieldError";
  readonly code: ShieldErrorCode;
  /** True when a retry or redelivery could succeed (network, throttling, upstream 5xx). */
  readonly transient: boolean;
  readonly violations: readonly Violation[];

  constructor(code: ShieldErrorCode, message: string, options: ShieldErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.transient = CODES[code].transient;
    this.violations = options.violations ?? [];
  }

  /** The shape that may cross a trust boundary: code, message, violations. No stack, no cause. */
  toJSON(): { code: ShieldErrorCode; message: string; violations?: readonly Violation[] } {
    return this.violations.length > 0
      ? { code: this.code, message: this.message, violations: this.violations }
      : { code: this.code, message: this.message };
  }
}

export function isShieldError(value: unknown): value is ShieldError {
  return value instanceof ShieldError;
}

export function isTransientCode(code: ShieldErrorCode): boolean {
  return CODES[code].transient;
}

export function isShieldErrorCode(value: string): value is ShieldErrorCode {
  return Object.hasOwn(CODES, value);
}
