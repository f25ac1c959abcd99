/**
 * The version-1 messages (DESIGN §8), one strict schema each: unknown properties are refused
 * rather than ignored, so nobody can believe a field is honoured when it is not. Every message
 * carries `type`, `version` and `sentAt`. Cross-field rules (evidence matches `tee`, a denial
 * carries no keys, a policy update changes something) are part of the schemas.
 */
import { z } from "zod";
import {
  MAX_DENIAL_VIOLATIONS,
  MAX_GRACE_SECONDS,
  MAX_KEYS_PER_REQUEST,
  MAX_MEASUREMENTS_PER_UPDATE,
  agentId,
  base64url,
  errorCode,
  identifier,
  keyName,
  keyNames,
  keyVersion,
  measurement,
  nonce,
  plainText,
  requestId,
  sameMeasurement,
  teeKind,
  timestamp,
  violation,
} from "./fields.js";
import { evidence } from "./evidence.js";

export const MESSAGE_TYPES = [
  "challenge-request",
  "attestation-request",
  "attestation-result",
  "challenge",
  "key-event",
  "policy-update",
  "rotate-key",
] as const;
export type MessageType = (typeof MESSAGE_TYPES)[number];

const OBJECT = { error: "object" } as const;
const version1 = z.literal(1, { error: "1" });
const messageType = <T extends MessageType>(type: T) => z.literal(type, { error: type });

/** Upper bound on runtime data: a JWK set with one RSA-4096 key and a nonce is about 1 KiB. */
export const MAX_RUNTIME_DATA_CHARS = 16_384;
/** A Key Vault release response (JWS with its x5c chain and the wrapped key) is a few KiB. */
export const MAX_RELEASE_RESPONSE_CHARS = 65_536;
/** A compact JWS (RFC 7515 §7.1): three base64url parts. */
export const JWS_COMPACT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

/** Agent → functions: asks for a challenge to answer (at start, and before every attestation). */
export const challengeRequestSchema = z.strictObject(
  {
    type: messageType("challenge-request"),
    version: version1,
    agentId,
    workload: identifier("workload"),
    tee: teeKind,
    sentAt: timestamp("sentAt"),
  },
  OBJECT,
);

export const attestationRequestSchema = z
  .strictObject(
    {
      type: messageType("attestation-request"),
      version: version1,
      agentId,
      requestId,
      workload: identifier("workload"),
      tee: teeKind,
      evidence,
      runtimeData: base64url("runtime data", MAX_RUNTIME_DATA_CHARS),
      /** The nonce of the signed challenge this request answers; the runtime data carries it too. */
      challenge: nonce,
      keys: keyNames,
      sentAt: timestamp("sentAt"),
    },
    OBJECT,
  )
  .superRefine((message, ctx) => {
    if (message.evidence.tee !== message.tee) {
      ctx.addIssue({ code: "custom", path: ["evidence", "tee"], message: "the same tee as the message" });
    }
  });

const releasedKey = z.strictObject(
  {
    name: keyName,
    version: keyVersion,
    releaseResponse: z
      .string({
        error: `Key Vault release response: compact JWS, at most ${MAX_RELEASE_RESPONSE_CHARS} characters`,
      })
      .max(MAX_RELEASE_RESPONSE_CHARS)
      .regex(JWS_COMPACT),
  },
  OBJECT,
);

export const denialSchema = z.strictObject(
  {
    code: errorCode,
    message: plainText("denial message", 512, 1),
    violations: z
      .array(violation, { error: `array of at most ${MAX_DENIAL_VIOLATIONS} violations` })
      .max(MAX_DENIAL_VIOLATIONS),
  },
  OBJECT,
);

const resultBase = {
  type: messageType("attestation-result"),
  version: version1,
  agentId,
  requestId,
  /**
   * sha256 (base64url) of the canonical request this answers (digest.ts); absent only when the
   * request could not be parsed. Agents act only on results carrying their request's digest.
   */
  requestDigest: z
    .string({ error: "requestDigest: 43 characters of unpadded base64url" })
    .regex(/^[A-Za-z0-9_-]{43}$/)
    .optional(),
  sentAt: timestamp("sentAt"),
};

export const attestationResultSchema = z.discriminatedUnion(
  "verdict",
  [
    z
      .strictObject(
        {
          ...resultBase,
          verdict: z.literal("trusted"),
          keys: z
            .array(releasedKey, { error: `array of at most ${MAX_KEYS_PER_REQUEST} released keys` })
            .max(MAX_KEYS_PER_REQUEST),
          attestedUntil: timestamp("attestedUntil"),
        },
        OBJECT,
      )
      .superRefine((message, ctx) => {
        const seen = new Set<string>();
        message.keys.forEach((key, index) => {
          if (seen.has(key.name)) {
            ctx.addIssue({
              code: "custom",
              path: ["keys", index, "name"],
              message: "a key name not listed before",
            });
          }
          seen.add(key.name);
        });
      }),
    z.strictObject(
      {
        ...resultBase,
        verdict: z.enum(["denied", "error"]),
        // A refused or failed request never carries keys; the empty list keeps the shape uniform.
        keys: z.array(releasedKey, { error: "an empty array" }).max(0),
        denial: denialSchema,
      },
      OBJECT,
    ),
  ],
  { error: "object" },
);

export const challengeSchema = z.strictObject(
  {
    type: messageType("challenge"),
    version: version1,
    agentId,
    nonce,
    deadline: timestamp("deadline"),
    /**
     * `requested`: the answer to a `challenge-request` — an agent uses it only while it waits for
     * one, since anyone can ask in its name. `reattest` (also when absent): the control plane wants
     * this agent to attest again, and a missed deadline counts against it.
     */
    reason: z.enum(["requested", "reattest"], { error: "one of requested, reattest" }).optional(),
    sentAt: timestamp("sentAt"),
  },
  OBJECT,
);

export const keyEventSchema = z.strictObject(
  {
    type: messageType("key-event"),
    version: version1,
    agentId,
    event: z.enum(["rotated", "revoked"], { error: "one of rotated, revoked" }),
    keyName,
    keyVersion,
    sentAt: timestamp("sentAt"),
  },
  OBJECT,
);

const measurements = z
  .array(measurement, { error: `array of at most ${MAX_MEASUREMENTS_PER_UPDATE} measurements` })
  .max(MAX_MEASUREMENTS_PER_UPDATE);

export const policyUpdateSchema = z
  .strictObject(
    {
      type: messageType("policy-update"),
      version: version1,
      deploymentId: identifier("deployment id"),
      keys: keyNames,
      add: measurements,
      retire: measurements,
      graceSeconds: z
        .number({ error: `integer number of seconds, 0..${MAX_GRACE_SECONDS}` })
        .int()
        .min(0)
        .max(MAX_GRACE_SECONDS),
      dryRun: z.boolean({ error: "boolean" }),
      sentAt: timestamp("sentAt"),
    },
    OBJECT,
  )
  .superRefine((message, ctx) => {
    if (message.add.length === 0 && message.retire.length === 0) {
      ctx.addIssue({ code: "custom", path: ["add"], message: "at least one measurement in add or retire" });
    }
    message.retire.forEach((retired, index) => {
      if (message.add.some((added) => sameMeasurement(added, retired))) {
        ctx.addIssue({ code: "custom", path: ["retire", index], message: "a measurement not also in add" });
      }
    });
  });

export const ROTATION_REASONS = [
  "near-expiry",
  "expired",
  "new-version",
  "schedule",
  "revocation",
  "manual",
] as const;

export const rotateKeySchema = z.strictObject(
  {
    type: messageType("rotate-key"),
    version: version1,
    keyName,
    /** The version the triggering event concerns; lets a redelivered event see it was already handled. */
    keyVersion: keyVersion.optional(),
    reason: z.enum(ROTATION_REASONS, { error: `one of ${ROTATION_REASONS.join(", ")}` }),
    sourceEventId: identifier("source event id"),
    sentAt: timestamp("sentAt"),
  },
  OBJECT,
);

export type ChallengeRequest = z.infer<typeof challengeRequestSchema>;
export type AttestationRequest = z.infer<typeof attestationRequestSchema>;
export type AttestationResult = z.infer<typeof attestationResultSchema>;
export type TrustedResult = Extract<AttestationResult, { verdict: "trusted" }>;
export type FailedResult = Extract<AttestationResult, { verdict: "denied" | "error" }>;
export type ReleasedKey = z.infer<typeof releasedKey>;
export type Denial = z.infer<typeof denialSchema>;
export type Challenge = z.infer<typeof challengeSchema>;
export type KeyEvent = z.infer<typeof keyEventSchema>;
export type PolicyUpdate = z.infer<typeof policyUpdateSchema>;
export type RotateKey = z.infer<typeof rotateKeySchema>;
export type RotationReason = (typeof ROTATION_REASONS)[number];

export type Message =
  ChallengeRequest | AttestationRequest | AttestationResult | Challenge | KeyEvent | PolicyUpdate | RotateKey;

export interface MessageByType {
  "challenge-request": ChallengeRequest;
  "attestation-request": AttestationRequest;
  "attestation-result": AttestationResult;
  challenge: Challenge;
  "key-event": KeyEvent;
  "policy-update": PolicyUpdate;
  "rotate-key": RotateKey;
}

/** The version-1 schema of each message type. */
export const V1_SCHEMAS: { readonly [T in MessageType]: z.ZodType<MessageByType[T]> } = {
  "challenge-request": challengeRequestSchema,
  "attestation-request": attestationRequestSchema,
  "attestation-result": attestationResultSchema,
  challenge: challengeSchema,
  "key-event": keyEventSchema,
  "policy-update": policyUpdateSchema,
  "rotate-key": rotateKeySchema,
};
