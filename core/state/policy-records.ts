/**
 * The one encoding both PolicyStateStore adapters use: each record is checked against a schema
 * before it is written (a wrong shape is a caller bug, `TypeError`; a record too large for one
 * Table property is `ERR_INPUT_TOO_LARGE`), stored as JSON text with dates as ISO strings, and
 * parsed back with the same schema, so the in-memory store and Table Storage accept, refuse and
 * return exactly the same things.
 */
import { z } from "zod";
import { ShieldError } from "../errors.js";
import {
  IDENTIFIER_PATTERN,
  KEY_NAME_PATTERN,
  KEY_VERSION_PATTERN,
  measurement,
} from "../messages/fields.js";
import type { DeploymentState, KeyPolicyState } from "../ports/policy-state.js";

/** One Table Storage string property holds 32 K UTF-16 characters. */
export const POLICY_RECORD_MAX_CHARS = 32_000;
/** Delivery ids: UUIDs, GitHub's delivery GUIDs, and the identifier charset. */
export const DELIVERY_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;

const date = z.coerce.date().refine((d) => !Number.isNaN(d.getTime()), "a valid date");
const id = z.string().regex(IDENTIFIER_PATTERN);
const keyName = z.string().regex(KEY_NAME_PATTERN);

const keyPolicyState = z.object({
  keyName,
  allowed: z
    .array(
      z.object({
        measurement,
        addedAt: date,
        deploymentId: id,
        retireAt: date.optional(),
      }),
    )
    .max(256),
  retired: z.array(z.object({ measurement, retiredAt: date })).max(256),
  updatedAt: date,
});

const deploymentState = z.object({
  deploymentId: id,
  status: z.enum(["queued", "applying", "applied", "failed"]),
  keys: z.array(keyName).min(1).max(32),
  add: z.array(measurement).max(16),
  retire: z.array(measurement).max(64),
  graceSeconds: z.number().int().min(0),
  requestedBy: z.string().min(1).max(300),
  createdAt: date,
  updatedAt: date,
  progress: z
    .array(
      z.object({
        keyName,
        status: z.enum(["pending", "applied", "failed"]),
        versions: z
          .array(
            z.object({
              version: z.string().regex(KEY_VERSION_PATTERN),
              outcome: z.enum(["updated", "unchanged", "immutable", "not-releasable"]),
            }),
          )
          .max(100),
        error: z.object({ code: z.string().max(64), message: z.string().max(500) }).optional(),
      }),
    )
    .max(32),
});

function encode<T>(schema: z.ZodType<T>, value: unknown, what: string): string {
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new TypeError(`${what} is malformed: ${parsed.error.issues[0]?.message ?? ""}`);
  const text = JSON.stringify(parsed.data);
  if (text.length > POLICY_RECORD_MAX_CHARS) {
    throw new ShieldError("ERR_INPUT_TOO_LARGE", `${what} exceeds ${POLICY_RECORD_MAX_CHARS} characters`);
  }
  return text;
}

function decode<T>(schema: z.ZodType<T>, text: unknown, what: string): T {
  const parsed = typeof text === "string" ? schema.safeParse(JSON.parse(text)) : undefined;
  if (parsed === undefined || !parsed.success) {
    throw new ShieldError("ERR_IO", `stored ${what} is unreadable`);
  }
  return parsed.data;
}

export const encodeKeyPolicy = (state: KeyPolicyState): string => encode(keyPolicyState, state, "key policy");
export const decodeKeyPolicy = (text: unknown): KeyPolicyState => decode(keyPolicyState, text, "key policy");
export const encodeDeployment = (state: DeploymentState): string =>
  encode(deploymentState, state, "deployment");
export const decodeDeployment = (text: unknown): DeploymentState =>
  decode(deploymentState, text, "deployment");

export function checkPolicyKeyName(name: string): void {
  if (typeof name !== "string" || !KEY_NAME_PATTERN.test(name)) throw new TypeError("invalid key name");
}

export function checkDeploymentId(deploymentId: string): void {
  if (typeof deploymentId !== "string" || !IDENTIFIER_PATTERN.test(deploymentId))
    throw new TypeError("invalid deployment id");
}

export function checkDeliveryId(deliveryId: string): void {
  if (typeof deliveryId !== "string" || !DELIVERY_ID_PATTERN.test(deliveryId))
    throw new TypeError("invalid delivery id");
}

export function checkLeaseHolder(holder: string): void {
  if (typeof holder !== "string" || !IDENTIFIER_PATTERN.test(holder)) throw new TypeError("invalid holder");
}
