/**
 * The encryption routes of the key API: `POST /v1/{encrypt,decrypt,rewrap,hmac}/{key}`. The key
 * API (key-api.ts) checks `Host` and the bearer token first, exactly as for `/keys/`, then hands
 * the request here; this module reads and checks the body and answers with JSON. The key never
 * appears in an answer: only ciphertext, plaintext the caller sent or is allowed to read, and
 * blind-index values.
 *
 * | route | body | answer |
 * |---|---|---|
 * | `/v1/encrypt/{key}` | `{plaintext, associatedData?}` | `{ciphertext, version}` |
 * | `/v1/decrypt/{key}` | `{ciphertext, associatedData?}` | `{plaintext, version}` |
 * | `/v1/rewrap/{key}` | `{ciphertext, associatedData?, hmacContext?}` | `{ciphertext, version, hmac?}` |
 * | `/v1/hmac/{key}` | `{data, context?}` | `{hmac, version, candidates: [{version, hmac}]}` |
 *
 * `plaintext`, `associatedData` and `data` are standard base64. Each route also takes
 * `{items: [...]}` with up to {@link MAX_BATCH_ITEMS} of those objects and answers `{items:
 * [...]}` in the same order; a batch is all or nothing, and an error names the first failing
 * item (`error.item`, from 0).
 *
 * Before the body is looked at: 404 `unknown-key` for a name that is not configured; 403
 * `revoked` / `failed` when the agent is revoked or failed; 503 `not-ready` with `Retry-After`
 * while the key is not held. Then: 415 `unsupported-media-type` unless `Content-Type` is
 * `application/json`; 413 `too-large` over {@link MAX_BODY_BYTES}; 400 `bad-request` for a body
 * that is not JSON or not of the route's shape (zod, from `unknown`). Per item: 400
 * `bad-ciphertext`, 400 `decryption-failed` (tampered, or other associated data), 404
 * `unknown-version` (a version not held), 403 `revoked` (a revoked version), 403
 * `version-retired` (below the minimum decryption version), 400 `unsupported-key` (not a
 * 256-bit `oct` key). Messages are fixed: never a value from the request.
 */
import type { IncomingMessage } from "node:http";
import { z } from "zod";
import { ShieldError, isShieldError, type ShieldErrorCode } from "../core/errors.js";
import { KEY_NAME_PATTERN } from "../core/messages/fields.js";
import type { AgentStateName } from "./state-machine.js";
import { HMAC_CONTEXT_PATTERN, type KeyOperations } from "./encryption.js";

/** Largest request body read. */
export const MAX_BODY_BYTES = 1024 * 1024;
/** Most values in one batch. */
export const MAX_BATCH_ITEMS = 1000;
/** Largest single plaintext, associated data or hmac input, decoded. */
export const MAX_VALUE_BYTES = 64 * 1024;

export const ENCRYPTION_OPERATIONS = ["encrypt", "decrypt", "rewrap", "hmac"] as const;
export type EncryptionOperation = (typeof ENCRYPTION_OPERATIONS)[number];

/** The `code` of every error body the encryption routes send (besides the key API's own). */
export type EncryptionErrorCode =
  | "bad-request"
  | "unsupported-media-type"
  | "too-large"
  | "unknown-key"
  | "revoked"
  | "failed"
  | "not-ready"
  | "bad-ciphertext"
  | "decryption-failed"
  | "unknown-version"
  | "version-retired"
  | "unsupported-key"
  | "internal";

export interface EncryptionAnswer {
  readonly status: number;
  readonly body: unknown;
  readonly headers?: Readonly<Record<string, string>>;
}

/** What the routes read from the agent. */
export interface EncryptionSource {
  readonly configuredKeys: readonly string[];
  state(): AgentStateName;
}

const base64 = (max: number) =>
  z
    .string()
    .max(Math.ceil(max / 3) * 4)
    .regex(/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/, "standard base64");
const ciphertext = z
  .string()
  .min(1)
  .max(Math.ceil((MAX_VALUE_BYTES + 28) / 3) * 4 + 80);
const context = z.string().regex(HMAC_CONTEXT_PATTERN);

const ITEM_SCHEMAS = {
  encrypt: z.strictObject({
    plaintext: base64(MAX_VALUE_BYTES),
    associatedData: base64(MAX_VALUE_BYTES).optional(),
  }),
  decrypt: z.strictObject({ ciphertext, associatedData: base64(MAX_VALUE_BYTES).optional() }),
  rewrap: z.strictObject({
    ciphertext,
    associatedData: base64(MAX_VALUE_BYTES).optional(),
    hmacContext: context.optional(),
  }),
  hmac: z.strictObject({ data: base64(MAX_VALUE_BYTES), context: context.optional() }),
} as const;

type Items = { [K in EncryptionOperation]: z.infer<(typeof ITEM_SCHEMAS)[K]> };

/** `/v1/{operation}/{key}` → its parts; undefined for any other path. */
export function encryptionRoute(
  path: string,
): { operation: EncryptionOperation; keyName: string } | undefined {
  const match = /^\/v1\/([a-z]+)\/([^/]+)$/.exec(path);
  if (match === null) return undefined;
  const operation = ENCRYPTION_OPERATIONS.find((known) => known === match[1]);
  return operation === undefined ? undefined : { operation, keyName: match[2]! };
}

/** Answers one encryption request; never rejects (every failure is an answer). */
export async function answerEncryption(
  source: EncryptionSource,
  operations: KeyOperations,
  route: { operation: EncryptionOperation; keyName: string },
  request: IncomingMessage,
): Promise<EncryptionAnswer> {
  const refusal = keyRefusal(source, operations, route.keyName);
  if (refusal !== undefined) {
    request.resume();
    return refusal;
  }
  if (!isJson(request.headers["content-type"])) {
    request.resume();
    return failure(415, "unsupported-media-type", "the body must be application/json");
  }
  let body: Buffer;
  try {
    body = await readBody(request, MAX_BODY_BYTES);
  } catch (error) {
    return isShieldError(error) && error.code === "ERR_INPUT_TOO_LARGE"
      ? failure(413, "too-large", `the body is larger than ${MAX_BODY_BYTES} bytes`)
      : failure(400, "bad-request", "the body could not be read");
  }
  let json: unknown;
  try {
    json = JSON.parse(body.toString("utf8"));
  } catch {
    return failure(400, "bad-request", "the body is not JSON");
  }
  return answerParsed(operations, route, json);
}

function answerParsed(
  operations: KeyOperations,
  route: { operation: EncryptionOperation; keyName: string },
  json: unknown,
): EncryptionAnswer {
  const schema = ITEM_SCHEMAS[route.operation];
  const batch = typeof json === "object" && json !== null && "items" in json;
  const parsed = batch
    ? z.strictObject({ items: z.array(schema).min(1).max(MAX_BATCH_ITEMS) }).safeParse(json)
    : schema.safeParse(json);
  if (!parsed.success) {
    const tooMany =
      batch && parsed.error.issues.some((issue) => issue.code === "too_big" && issue.path.length === 1);
    return tooMany
      ? failure(413, "too-large", `a batch holds at most ${MAX_BATCH_ITEMS} items`)
      : failure(400, "bad-request", `the body is not a ${route.operation} request`);
  }
  const items = (
    batch ? (parsed.data as { items: unknown[] }).items : [parsed.data]
  ) as Items[EncryptionOperation][];
  const results: unknown[] = [];
  for (const [index, item] of items.entries()) {
    try {
      results.push(runItem(operations, route, item));
    } catch (error) {
      return itemFailure(error, batch ? index : undefined);
    }
  }
  return { status: 200, body: batch ? { items: results } : results[0] };
}

function runItem(
  operations: KeyOperations,
  { operation, keyName }: { operation: EncryptionOperation; keyName: string },
  item: Items[EncryptionOperation],
): unknown {
  switch (operation) {
    case "encrypt": {
      const { plaintext, associatedData } = item as Items["encrypt"];
      const bytes = decode(plaintext);
      try {
        return operations.encrypt(keyName, bytes, optionalBytes(associatedData));
      } finally {
        bytes.fill(0);
      }
    }
    case "decrypt": {
      const { ciphertext, associatedData } = item as Items["decrypt"];
      const opened = operations.decrypt(keyName, ciphertext, optionalBytes(associatedData));
      // The answer is a string (JSON), which cannot be wiped; the Buffer can.
      const plaintext = opened.plaintext.toString("base64");
      opened.plaintext.fill(0);
      return { plaintext, version: opened.version };
    }
    case "rewrap": {
      const { ciphertext, associatedData, hmacContext } = item as Items["rewrap"];
      return operations.rewrap(keyName, ciphertext, optionalBytes(associatedData), hmacContext);
    }
    case "hmac": {
      const { data, context } = item as Items["hmac"];
      const bytes = decode(data);
      try {
        return operations.hmac(keyName, bytes, context);
      } finally {
        bytes.fill(0);
      }
    }
  }
}

/** Why no operation on `keyName` can run now, or undefined when it can. */
function keyRefusal(
  source: EncryptionSource,
  operations: KeyOperations,
  keyName: string,
): EncryptionAnswer | undefined {
  if (!KEY_NAME_PATTERN.test(keyName) || !source.configuredKeys.includes(keyName)) {
    return failure(404, "unknown-key", "no such key");
  }
  const state = source.state();
  if (state === "revoked" || state === "failed") {
    return failure(403, state, `the agent is ${state}; it serves no keys`);
  }
  if (operations.decryptingVersions(keyName).length === 0) {
    return {
      ...failure(503, "not-ready", `the key is not held yet (agent ${state})`),
      headers: { "Retry-After": "2" },
    };
  }
  return undefined;
}

const ITEM_ERRORS: Partial<Record<ShieldErrorCode, { status: number; code: EncryptionErrorCode }>> = {
  ERR_CIPHERTEXT_MALFORMED: { status: 400, code: "bad-ciphertext" },
  ERR_CIPHERTEXT_INTEGRITY: { status: 400, code: "decryption-failed" },
  ERR_KEY_VERSION_UNKNOWN: { status: 404, code: "unknown-version" },
  ERR_KEY_VERSION_REVOKED: { status: 403, code: "revoked" },
  ERR_KEY_VERSION_RETIRED: { status: 403, code: "version-retired" },
  ERR_KEY_UNSUPPORTED: { status: 400, code: "unsupported-key" },
  ERR_INPUT_TOO_LARGE: { status: 413, code: "too-large" },
};

function itemFailure(error: unknown, item: number | undefined): EncryptionAnswer {
  const mapped = isShieldError(error) ? ITEM_ERRORS[error.code] : undefined;
  if (mapped === undefined) throw error;
  // The ShieldError's message is fixed text of encryption.ts: it carries nothing from the request.
  const body = {
    error: {
      code: mapped.code,
      message: error instanceof ShieldError ? error.message : "",
      ...(item === undefined ? {} : { item }),
    },
  };
  return { status: mapped.status, body };
}

function failure(status: number, code: EncryptionErrorCode, message: string): EncryptionAnswer {
  return { status, body: { error: { code, message } } };
}

function decode(text: string): Buffer {
  const bytes = Buffer.from(text, "base64");
  if (bytes.length > MAX_VALUE_BYTES) {
    bytes.fill(0);
    throw new ShieldError("ERR_INPUT_TOO_LARGE", "value too large");
  }
  return bytes;
}

function optionalBytes(text: string | undefined): Buffer | undefined {
  return text === undefined ? undefined : decode(text);
}

function isJson(contentType: string | undefined): boolean {
  return contentType?.split(";")[0]!.trim().toLowerCase() === "application/json";
}

/** The body, up to `limit` bytes; ERR_INPUT_TOO_LARGE (and the rest discarded) beyond. */
function readBody(request: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(request.headers["content-length"] ?? "0");
  if (Number.isFinite(declared) && declared > limit) {
    request.resume();
    return Promise.reject(new ShieldError("ERR_INPUT_TOO_LARGE", "body too large"));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let refused = false;
    request.on("data", (chunk: Buffer) => {
      if (refused) return;
      size += chunk.length;
      if (size > limit) {
        refused = true;
        for (const seen of chunks) seen.fill(0);
        chunks.length = 0;
        reject(new ShieldError("ERR_INPUT_TOO_LARGE", "body too large"));
        return;
      }
      chunks.push(chunk);
    });
    request.on("end", () => {
      if (refused) return;
      const body = Buffer.concat(chunks);
      for (const seen of chunks) seen.fill(0);
      resolve(body);
    });
    // Also how a client that goes away mid-body ends the wait (Node reports it as an error).
    request.on("error", (error) => {
      for (const seen of chunks) seen.fill(0);
      if (!refused) reject(error);
    });
  });
}
