/**
 * Key Vault's key events, as Event Grid delivers them, turned into `rotate-key` work.
 *
 * Accepted: the Event Grid schema (an array of events, or one event as the Functions Event Grid
 * trigger hands it over) and the CloudEvents 1.0 schema (one structured event, or a batch
 * array), with Key Vault's PascalCase `data` (`Id, VaultName, ObjectType, ObjectName, Version,
 * NBF, EXP`; `NBF`/`EXP` are numbers in the documentation and strings in its examples, and may be
 * missing). The Event Grid subscription-validation event is answered with its code; the
 * CloudEvents handshake (`OPTIONS` with `WebHook-Request-Origin`) is answered by the HTTP
 * function.
 *
 * `KeyNearExpiry` → `near-expiry`, `KeyExpired` → `expired`, `KeyNewVersionCreated` →
 * `new-version`, each with the event id as `sourceEventId` (ids that are not safe identifiers
 * are hashed) and the version the event names. Events about other vaults, other object types,
 * other event types or keys Shield does not manage are counted as ignored, never acted on.
 * Anything that does not parse is ERR_EVENT_MALFORMED, and nothing is queued.
 */
import { createHash } from "node:crypto";
import { z } from "zod";
import { ShieldError } from "../errors.js";
import { IDENTIFIER_PATTERN, KEY_NAME_PATTERN, KEY_VERSION_PATTERN } from "../messages/fields.js";
import { makeRotateKey, type RotateKey, type RotationReason } from "../messages/index.js";
import type { RotationQueue } from "../ports/bus.js";
import type { Clock } from "../ports/clock.js";
import type { Logger } from "../ports/logger.js";
import type { StateStore } from "../ports/state.js";

export const MAX_EVENT_BATCH_BYTES = 1024 * 1024;
export const MAX_EVENTS_PER_BATCH = 100;

export const VALIDATION_EVENT_TYPE = "Microsoft.EventGrid.SubscriptionValidationEvent";
const KEY_EVENT_REASONS: Readonly<Record<string, RotationReason>> = {
  "Microsoft.KeyVault.KeyNearExpiry": "near-expiry",
  "Microsoft.KeyVault.KeyExpired": "expired",
  "Microsoft.KeyVault.KeyNewVersionCreated": "new-version",
};

/** NBF and EXP: unix seconds as a number or a string of digits. */
const unixSeconds = z
  .union([z.number().int().nonnegative(), z.string().regex(/^\s*\d{1,12}\s*$/)])
  .optional();

const keyVaultData = z.object({
  Id: z.string().max(2048).optional(),
  VaultName: z.string().min(1).max(128),
  ObjectType: z.string().min(1).max(64),
  ObjectName: z.string().min(1).max(256),
  Version: z.string().max(128).optional(),
  NBF: unixSeconds,
  EXP: unixSeconds,
});

const eventGridEvent = z.object({
  id: z.string().min(1).max(256),
  eventType: z.string().min(1).max(256),
  subject: z.string().max(1024).optional(),
  eventTime: z.string().max(64).optional(),
  topic: z.string().max(1024).optional(),
  data: z.unknown(),
  dataVersion: z.string().max(64).optional(),
});

const cloudEvent = z.object({
  specversion: z.literal("1.0"),
  id: z.string().min(1).max(256),
  type: z.string().min(1).max(256),
  source: z.string().min(1).max(1024),
  subject: z.string().max(1024).optional(),
  time: z.string().max(64).optional(),
  data: z.unknown(),
});

export interface KeyVaultEvent {
  readonly id: string;
  readonly type: string;
  readonly schema: "eventgrid" | "cloudevents";
  readonly data?: z.infer<typeof keyVaultData>;
  readonly validationCode?: string;
}

export interface EventIntake {
  /** The Event Grid subscription-validation answer, when the batch was that handshake. */
  readonly validationResponse?: string;
  readonly work: readonly RotateKey[];
  readonly ignored: readonly { readonly id: string; readonly why: string }[];
}

function malformed(message: string, field = "body", actual = "invalid"): ShieldError {
  return new ShieldError("ERR_EVENT_MALFORMED", message, {
    violations: [{ field, expected: "an Event Grid or CloudEvents 1.0 Key Vault event", actual }],
  });
}

/** Parses a delivered body (JSON text, bytes or a parsed value) into events. */
export function parseKeyVaultEvents(body: unknown): KeyVaultEvent[] {
  let value = body;
  if (typeof body === "string" || body instanceof Uint8Array) {
    const text = typeof body === "string" ? body : Buffer.from(body).toString("utf8");
    if (Buffer.byteLength(text) > MAX_EVENT_BATCH_BYTES)
      throw malformed("the event batch is too large", "body", "too large");
    try {
      value = JSON.parse(text) as unknown;
    } catch {
      throw malformed("the event body is not JSON", "body", "not JSON");
    }
  }
  const items = Array.isArray(value) ? value : [value];
  if (items.length === 0) throw malformed("the event batch is empty", "body", "empty");
  if (items.length > MAX_EVENTS_PER_BATCH)
    throw malformed("too many events in one batch", "body", String(items.length));
  return items.map((item, index) => parseOne(item, index));
}

function parseOne(item: unknown, index: number): KeyVaultEvent {
  const isCloud = typeof item === "object" && item !== null && "specversion" in item;
  const parsed = isCloud ? cloudEvent.safeParse(item) : eventGridEvent.safeParse(item);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw malformed(
      `event ${index} is not a valid ${isCloud ? "CloudEvents 1.0" : "Event Grid"} event`,
      `[${index}].${issue?.path.join(".") ?? ""}`,
      issue?.message ?? "invalid",
    );
  }
  const event = parsed.data;
  const type = "eventType" in event ? event.eventType : event.type;
  const schema = isCloud ? "cloudevents" : "eventgrid";
  if (type === VALIDATION_EVENT_TYPE) {
    const code = z.object({ validationCode: z.string().min(1).max(256) }).safeParse(event.data);
    if (!code.success)
      throw malformed("the validation event has no validation code", `[${index}].data.validationCode`);
    return { id: event.id, type, schema, validationCode: code.data.validationCode };
  }
  if (!(type in KEY_EVENT_REASONS)) return { id: event.id, type, schema };
  const data = keyVaultData.safeParse(event.data);
  if (!data.success) {
    const issue = data.error.issues[0];
    throw malformed(
      `event ${index}'s Key Vault data is malformed`,
      `[${index}].data.${issue?.path.join(".") ?? ""}`,
      issue?.message ?? "invalid",
    );
  }
  return { id: event.id, type, schema, data: data.data };
}

/** A Key Vault event id as a `sourceEventId`: itself when it is a safe identifier, else a digest. */
export function sourceEventIdOf(id: string): string {
  return IDENTIFIER_PATTERN.test(id)
    ? id
    : `event-${createHash("sha256").update(id, "utf8").digest("hex").slice(0, 40)}`;
}

/**
 * What a batch asks for: rotate-key work for keys of this vault that Shield manages, a
 * validation answer, and what was ignored and why.
 */
export async function keyVaultEventWork(
  events: readonly KeyVaultEvent[],
  options: { vaultName: string; manages: (keyName: string) => Promise<boolean>; at: Date },
): Promise<EventIntake> {
  const work: RotateKey[] = [];
  const ignored: { id: string; why: string }[] = [];
  let validationResponse: string | undefined;
  for (const event of events) {
    if (event.validationCode !== undefined) {
      validationResponse = event.validationCode;
      continue;
    }
    const reason = KEY_EVENT_REASONS[event.type];
    const data = event.data;
    if (reason === undefined || data === undefined) {
      ignored.push({ id: event.id, why: `event type ${event.type.slice(0, 100)}` });
      continue;
    }
    if (data.ObjectType.toLowerCase() !== "key") {
      ignored.push({ id: event.id, why: `object type ${data.ObjectType.slice(0, 40)}` });
      continue;
    }
    if (data.VaultName.trim().toLowerCase() !== options.vaultName.toLowerCase()) {
      ignored.push({ id: event.id, why: "another vault" });
      continue;
    }
    const keyName = data.ObjectName.trim();
    if (!KEY_NAME_PATTERN.test(keyName) || !(await options.manages(keyName))) {
      ignored.push({ id: event.id, why: "a key Shield does not manage" });
      continue;
    }
    const version = data.Version?.trim();
    if (version !== undefined && version !== "" && !KEY_VERSION_PATTERN.test(version)) {
      throw malformed("the event names a malformed key version", "data.Version");
    }
    work.push(
      makeRotateKey({
        keyName,
        reason,
        sourceEventId: sourceEventIdOf(event.id),
        ...(version === undefined || version === "" ? {} : { keyVersion: version }),
        sentAt: options.at,
      }),
    );
  }
  return { ...(validationResponse === undefined ? {} : { validationResponse }), work, ignored };
}

/** The vault's name: the first label of its URL's host (`https://<name>.vault.azure.net`). */
export function vaultNameOf(vaultUrl: string): string {
  const host = new URL(vaultUrl).hostname;
  return host.split(".")[0] ?? host;
}

export interface KeyVaultEventPorts {
  readonly state: StateStore;
  readonly rotations: RotationQueue;
  readonly clock: Clock;
  readonly logger: Logger;
}

/**
 * The Event Grid function's use case: parse, answer a validation, queue the work. A batch that
 * does not parse is recorded (intake audit, with the code only) and refused as a whole with
 * ERR_EVENT_MALFORMED, and nothing is queued; the HTTP function answers 400 (Event Grid does not
 * retry a 400; it dead-letters the delivery where a dead-letter destination is set).
 */
export function createKeyVaultEventHandler(
  ports: KeyVaultEventPorts,
  options: { vaultName: string; managedKeys: readonly string[] },
) {
  const { state, rotations, clock, logger } = ports;
  const named = new Set(options.managedKeys);
  const manages = async (keyName: string) =>
    named.has(keyName) || (await state.getManagedKey(keyName)) !== undefined;
  return async function handleKeyVaultEvents(body: unknown): Promise<EventIntake> {
    const at = clock.now();
    let events: KeyVaultEvent[];
    let intake: EventIntake;
    try {
      events = parseKeyVaultEvents(body);
      intake = await keyVaultEventWork(events, { vaultName: options.vaultName, manages, at });
    } catch (error) {
      if (!(error instanceof ShieldError) || error.code !== "ERR_EVENT_MALFORMED") throw error;
      await state.appendAudit("intake", {
        at,
        kind: "event-rejected",
        subject: "keyvault-events",
        details: {
          code: error.code,
          violations: error.violations.length,
          field: error.violations[0]?.field ?? null,
        },
      });
      logger("warn", "malformed Key Vault event recorded and refused", { code: error.code });
      throw error;
    }
    for (const work of intake.work) await rotations.enqueueRotation(work);
    logger("info", "Key Vault events received", {
      events: events.length,
      queued: intake.work.length,
      ignored: intake.ignored.length,
      validation: intake.validationResponse === undefined ? "no" : "yes",
    });
    return intake;
  };
}
