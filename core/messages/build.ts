/**
 * Builders for outgoing messages. Each takes domain values (times as `Date`), fills in `type`
 * and `version`, and checks the result against the same schema receivers use, so nothing is
 * sent that the other side would refuse. A message that fails its schema here is a bug in the
 * caller and throws `TypeError`; the one exception is denial text, which often quotes claim
 * values of any length and is clamped to the schema's bounds instead, so that a denial can
 * always be delivered.
 */
import type { ShieldError, Violation } from "../errors.js";
import { MAX_DENIAL_VIOLATIONS } from "./fields.js";
import { formatPath } from "./parse.js";
import {
  V1_SCHEMAS,
  type AttestationRequest,
  type AttestationResult,
  type ChallengeRequest,
  type Challenge,
  type Denial,
  type KeyEvent,
  type MessageByType,
  type MessageType,
  type PolicyUpdate,
  type ReleasedKey,
  type RotateKey,
} from "./v1.js";

type Fields<M, Times extends keyof M> = Omit<M, "type" | "version" | Times> & { readonly [K in Times]: Date };

function build<T extends MessageType>(type: T, fields: object): MessageByType[T] {
  const candidate = { type, version: 1, ...fields };
  const result = V1_SCHEMAS[type].safeParse(candidate);
  if (!result.success) {
    const where = result.error.issues
      .map((issue) => `${formatPath(issue.path)}: ${issue.message}`)
      .join("; ");
    throw new TypeError(`invalid ${type} message: ${where}`);
  }
  return result.data;
}

function iso(at: Date, name: string): string {
  if (!(at instanceof Date) || Number.isNaN(at.getTime()))
    throw new TypeError(`${name} must be a valid Date`);
  return at.toISOString();
}

export function makeChallengeRequest(fields: Fields<ChallengeRequest, "sentAt">): ChallengeRequest {
  return build("challenge-request", { ...fields, sentAt: iso(fields.sentAt, "sentAt") });
}

export function makeAttestationRequest(fields: Fields<AttestationRequest, "sentAt">): AttestationRequest {
  return build("attestation-request", { ...fields, sentAt: iso(fields.sentAt, "sentAt") });
}

export interface TrustedResultFields {
  readonly agentId: string;
  readonly requestId: string;
  readonly requestDigest?: string;
  readonly keys: readonly ReleasedKey[];
  readonly attestedUntil: Date;
  readonly sentAt: Date;
}

export interface FailedResultFields {
  readonly agentId: string;
  readonly requestId: string;
  readonly requestDigest?: string;
  /** `denied`: the evidence or the policy said no. `error`: the request could not be completed. */
  readonly verdict: "denied" | "error";
  readonly denial: Denial;
  readonly sentAt: Date;
}

export function makeAttestationResult(fields: TrustedResultFields | FailedResultFields): AttestationResult {
  const common = {
    agentId: fields.agentId,
    requestId: fields.requestId,
    ...(fields.requestDigest === undefined ? {} : { requestDigest: fields.requestDigest }),
    sentAt: iso(fields.sentAt, "sentAt"),
  };
  if ("denial" in fields) {
    return build("attestation-result", {
      ...common,
      verdict: fields.verdict,
      keys: [],
      denial: clampDenial(fields.denial),
    });
  }
  return build("attestation-result", {
    ...common,
    verdict: "trusted",
    keys: fields.keys.map((key) => ({
      name: key.name,
      version: key.version,
      releaseResponse: key.releaseResponse,
    })),
    attestedUntil: iso(fields.attestedUntil, "attestedUntil"),
  });
}

/** The part of an error that may be sent to an agent: code, message, violations. */
export function denialFromError(error: ShieldError): Denial {
  return clampDenial({ code: error.code, message: error.message, violations: [...error.violations] });
}

export function makeChallenge(fields: Fields<Challenge, "deadline" | "sentAt">): Challenge {
  return build("challenge", {
    ...fields,
    deadline: iso(fields.deadline, "deadline"),
    sentAt: iso(fields.sentAt, "sentAt"),
  });
}

export function makeKeyEvent(fields: Fields<KeyEvent, "sentAt">): KeyEvent {
  return build("key-event", { ...fields, sentAt: iso(fields.sentAt, "sentAt") });
}

export function makePolicyUpdate(fields: Fields<PolicyUpdate, "sentAt">): PolicyUpdate {
  return build("policy-update", { ...fields, sentAt: iso(fields.sentAt, "sentAt") });
}

export function makeRotateKey(fields: Fields<RotateKey, "sentAt">): RotateKey {
  return build("rotate-key", { ...fields, sentAt: iso(fields.sentAt, "sentAt") });
}

// eslint-disable-next-line no-control-regex -- replacing control characters is the point
const CONTROL = /[\u0000-\u001f\u007f]/g;

/** Shortens text to `max` characters (marking the cut) and replaces control characters. */
function clampText(text: string, max: number, fallback = "-"): string {
  const clean = String(text).replace(CONTROL, " ");
  if (clean.length === 0) return fallback;
  return clean.length <= max ? clean : `${clean.slice(0, max - 1)}…`;
}

function clampDenial(denial: Denial): Denial {
  const violations: Violation[] = denial.violations.slice(0, MAX_DENIAL_VIOLATIONS).map((v) => ({
    field: clampText(v.field, 256),
    expected: clampText(v.expected, 1024, ""),
    actual: clampText(v.actual, 1024, ""),
  }));
  return { code: denial.code, message: clampText(denial.message, 512), violations };
}
