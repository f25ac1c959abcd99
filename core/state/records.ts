/**
 * The checks every StateStore adapter runs before it writes, so that the in-memory store and
 * Table Storage accept and refuse exactly the same records. Identifiers reuse the message
 * charsets (they become Table keys), digests must be sha256 hex (so a token or evidence can
 * never land in a digest column by mistake), and sizes stay within Table Storage limits.
 * A record of the wrong shape is a caller bug (`TypeError`); one that is merely too big is
 * `ERR_INPUT_TOO_LARGE`. Checks return the record with unknown properties dropped.
 */
import { z } from "zod";
import { ShieldError } from "../errors.js";
import {
  STATE_LIMITS,
  type AgentState,
  type AttestationRecord,
  type AuditEvent,
  type ClaimOptions,
  type KeyHolding,
  type ManagedKeyState,
  type RequestKey,
} from "../ports/state.js";
import { ROTATION_REASONS } from "../messages/v1.js";
import {
  IDENTIFIER_PATTERN,
  KEY_NAME_PATTERN,
  KEY_VERSION_PATTERN,
  measurement,
} from "../messages/fields.js";
import { formatPath } from "../messages/parse.js";

const id = z.string().regex(IDENTIFIER_PATTERN);
const date = z.date().refine((d) => !Number.isNaN(d.getTime()), "a valid Date");
const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, "sha256 as 64 lowercase hex characters");
const code = z.string().regex(/^[A-Za-z0-9_.:-]{1,128}$/, "an error code");
/** Nonces and webhook delivery ids: base64url, UUIDs and the identifier charset. */
const NONCE_PATTERN = /^[A-Za-z0-9._:~-]{1,256}$/;

const agentState = z.object({
  agentId: id,
  workload: id,
  tee: z.enum(["sevsnp", "sgx"]),
  status: z.enum(["new", "trusted", "untrusted", "revoked"]),
  statusReason: code.optional(),
  lastAttestedAt: date.optional(),
  attestedUntil: date.optional(),
  measurement: measurement.optional(),
  challenge: z
    .object({
      nonce: z.string().regex(NONCE_PATTERN),
      issuedAt: date,
      deadline: date,
      answeredBy: id.optional(),
      reason: z.enum(["requested", "reattest"]).optional(),
      sentAt: date.optional(),
    })
    .optional(),
  updatedAt: date,
});

const violationRecord = z.object({
  field: z.string().max(STATE_LIMITS.violationTextChars),
  expected: z.string().max(STATE_LIMITS.violationTextChars),
  actual: z.string().max(STATE_LIMITS.violationTextChars),
});

const attestationRecord = z.object({
  agentId: id,
  requestId: id,
  at: date,
  verdict: z.enum(["trusted", "denied", "error"]),
  reasonCode: code.optional(),
  violations: z.array(violationRecord).max(STATE_LIMITS.violations),
  tokenHash: sha256Hex.optional(),
  claimsDigest: sha256Hex.optional(),
  measurement: measurement.optional(),
  attestedUntil: date.optional(),
  keys: z.array(z.string().regex(KEY_NAME_PATTERN)).max(64),
});

const keyHolding = z.object({
  agentId: id,
  keyName: z.string().regex(KEY_NAME_PATTERN),
  keyVersion: z.string().regex(KEY_VERSION_PATTERN),
  measurement,
  releasedAt: date,
  requestId: id,
  revokedAt: date.optional(),
});

const managedKey = z.object({
  keyName: z.string().regex(KEY_NAME_PATTERN),
  releasePolicy: z.custom<ManagedKeyState["releasePolicy"]>(
    (value) => typeof value === "object" && value !== null && !Array.isArray(value),
    "a release policy object",
  ),
  versions: z
    .array(
      z.object({
        version: z.string().regex(KEY_VERSION_PATTERN),
        createdAt: date,
        origin: z.enum(["initial", "rotated", "adopted"]),
        reason: z.enum(ROTATION_REASONS).optional(),
        sourceEventId: id.optional(),
        retiredAt: date.optional(),
        revokedAt: date.optional(),
      }),
    )
    .max(STATE_LIMITS.keyVersions),
  updatedAt: date,
});

const requestKey = z.object({ scope: id, requestId: id });

const auditEvent = z.object({
  at: date,
  kind: id,
  // eslint-disable-next-line no-control-regex -- excluding control characters is the point
  subject: z.string().regex(/^[^\u0000-\u001f\u007f]{1,256}$/),
  requestId: id.optional(),
  details: z.record(
    z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/),
    z.union([z.string(), z.number().refine(Number.isFinite, "a finite number"), z.boolean(), z.null()]),
  ),
  eventId: z
    .string()
    // eslint-disable-next-line no-control-regex -- excluding control characters is the point
    .regex(/^[^\u0000-\u001f\u007f]+$/)
    .max(STATE_LIMITS.eventIdChars)
    .optional(),
});

function check<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const result = schema.safeParse(value);
  if (!result.success) {
    const tooBig = result.error.issues.some((issue) => issue.code === "too_big");
    const where = result.error.issues
      .map((issue) => `${formatPath(issue.path)}: ${issue.message}`)
      .join("; ");
    if (tooBig) throw new ShieldError("ERR_INPUT_TOO_LARGE", `${what} exceeds a storage limit`);
    throw new TypeError(`invalid ${what}: ${where}`);
  }
  return result.data;
}

export function checkAgentId(agentId: string): void {
  check(id, agentId, "agent id");
}

export function checkAgentState(agent: AgentState): AgentState {
  return check(agentState, agent, "agent");
}

export function checkAttestationRecord(record: AttestationRecord): AttestationRecord {
  return check(attestationRecord, record, "attestation record");
}

export function checkKeyHolding(holding: KeyHolding): KeyHolding {
  return check(keyHolding, holding, "key holding");
}

export function checkManagedKey(key: ManagedKeyState): ManagedKeyState {
  const checked = check(managedKey, key, "managed key");
  if (JSON.stringify(checked.releasePolicy).length > STATE_LIMITS.auditDetailsChars * 2) {
    throw new ShieldError("ERR_INPUT_TOO_LARGE", "the managed release policy exceeds a storage limit");
  }
  return checked;
}

export function checkKeyName(keyName: string, keyVersion?: string): void {
  check(z.string().regex(KEY_NAME_PATTERN), keyName, "key name");
  if (keyVersion !== undefined) check(z.string().regex(KEY_VERSION_PATTERN), keyVersion, "key version");
}

export function checkRequestKey(key: RequestKey): void {
  check(requestKey, key, "request key");
}

export function checkClaimOptions(options: ClaimOptions): void {
  check(z.object({ at: date, leaseUntil: date }), options, "claim options");
  if (options.leaseUntil.getTime() <= options.at.getTime())
    throw new TypeError("leaseUntil must be after at");
}

export function checkNonce(scope: string, nonce: string, options: { at: Date; expiresAt: Date }): void {
  check(id, scope, "nonce scope");
  check(z.string().regex(NONCE_PATTERN), nonce, "nonce");
  check(z.object({ at: date, expiresAt: date }), options, "nonce times");
}

export function checkAuditPartition(partition: string): void {
  check(id, partition, "audit partition");
}

export function checkAuditEvent(event: AuditEvent): AuditEvent {
  const checked = check(auditEvent, event, "audit event");
  const entries = Object.keys(event.details).length;
  if (
    entries > STATE_LIMITS.auditDetailsEntries ||
    JSON.stringify(event.details).length > STATE_LIMITS.auditDetailsChars
  ) {
    throw new ShieldError("ERR_INPUT_TOO_LARGE", "audit details exceed the storage limit");
  }
  return checked;
}

/** Serializes a result message for storage, refusing one larger than the limit. */
export function serializeResult(result: unknown): string {
  const json = JSON.stringify(result);
  if (Buffer.byteLength(json, "utf8") > STATE_LIMITS.resultBytes) {
    throw new ShieldError(
      "ERR_INPUT_TOO_LARGE",
      `result message is larger than ${STATE_LIMITS.resultBytes} bytes`,
    );
  }
  return json;
}

export function checkListLimit(limit: number | undefined): number {
  if (limit === undefined) return STATE_LIMITS.listLimit;
  if (!Number.isSafeInteger(limit) || limit <= 0) throw new TypeError("limit must be a positive integer");
  return Math.min(limit, STATE_LIMITS.listLimit);
}
