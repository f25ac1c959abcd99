/**
 * Azure Storage Queues as the embedded default's bus: queue names, the client, the wire encoding
 * and the mapping of the service's errors to ShieldError codes. This is the one file that knows
 * the shapes of `@azure/storage-queue`; bus.ts builds the bus ports on top of it.
 *
 * Queue names (3..63 characters: lowercase letters, digits and single hyphens, starting and
 * ending with a letter or digit):
 *
 * | queue                       | default name                       |
 * |-----------------------------|------------------------------------|
 * | requests                    | `attestation-requests`             |
 * | requests' dead letters      | `attestation-requests-deadletter`  |
 * | one agent's messages        | `agent-` + first 40 hex of sha256(agentId) |
 *
 * Agent ids allow characters queue names do not (`.`, `_`, `:`, capitals), so an agent's queue
 * is named by a hash of its id: 160 bits make a collision between two agents unthinkable.
 *
 * Bodies are stored base64-encoded (UTF-8 JSON inside), the encoding the Functions queue trigger
 * expects by default. Text that is not base64 (a producer writing raw JSON or anything else) is
 * taken as it is, so nothing put on a queue makes the adapter throw.
 */
import { isLoopbackUrlHost } from "../loopback.js";
import { createHash } from "node:crypto";
import { QueueServiceClient, isRestError } from "@azure/storage-queue";
import type { TokenCredential } from "@azure/core-auth";
import { ShieldError } from "../../core/errors.js";
import { REQUESTS_QUEUE } from "../../core/ports/bus.js";

/** Where the queues live: Azurite (connection string) or an account with a managed identity. */
export type StorageQueueConnection =
  | { readonly connectionString: string }
  /** `https://<account>.queue.core.windows.net` and e.g. DefaultAzureCredential. */
  | { readonly accountUrl: string; readonly credential: TokenCredential };

/** A Storage message holds at most 64 KiB of text. */
export const STORAGE_QUEUE_MAX_MESSAGE_CHARS = 64 * 1024;
/**
 * Largest body accepted, in bytes of JSON: its base64 (4/3 larger) must fit in a message with
 * room to spare for the dead-letter envelope (reason, description, times) wrapped around it.
 * An attestation request with real SEV-SNP evidence (report, VCEK chain, UVM endorsement) is
 * about 24 KB.
 */
export const STORAGE_QUEUE_MAX_BODY_BYTES = 45 * 1024;

export const DEFAULT_AGENT_QUEUE_PREFIX = "agent-";
const QUEUE_NAME = /^(?=.{3,63}$)[a-z0-9]+(?:-[a-z0-9]+)*$/;
const AGENT_HASH_HEX = 40;

export function isQueueName(name: string): boolean {
  return typeof name === "string" && QUEUE_NAME.test(name);
}

export function checkQueueName(name: string, what: string): string {
  if (!isQueueName(name)) {
    throw new ShieldError(
      "ERR_CONFIG",
      `${what} must be 3..63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit`,
    );
  }
  return name;
}

/** The queue that holds one agent's messages: the prefix, then 40 hex of sha256(agentId). */
export function agentQueueName(agentId: string, prefix: string = DEFAULT_AGENT_QUEUE_PREFIX): string {
  const digest = createHash("sha256").update(agentId, "utf8").digest("hex").slice(0, AGENT_HASH_HEX);
  return `${prefix}${digest}`;
}

/** Checks an agent queue prefix once, on a sample name, so every later name is valid. */
export function checkAgentQueuePrefix(prefix: string): string {
  if (typeof prefix !== "string" || !isQueueName(`${prefix}${"0".repeat(AGENT_HASH_HEX)}`)) {
    throw new ShieldError(
      "ERR_CONFIG",
      `agent queue prefix must be lowercase letters, digits and single hyphens, at most ${63 - AGENT_HASH_HEX} characters`,
    );
  }
  return prefix;
}

export function defaultDeadLetterQueue(requestsQueue: string = REQUESTS_QUEUE): string {
  return `${requestsQueue}-deadletter`;
}

/**
 * Builds the service client. Plain `http` only for a loopback endpoint (Azurite); anything
 * else must be `https`. Errors never repeat the connection string, which may hold an account key.
 */
export function createQueueServiceClient(connection: StorageQueueConnection): QueueServiceClient {
  let client: QueueServiceClient;
  let url: URL;
  try {
    client =
      "connectionString" in connection
        ? QueueServiceClient.fromConnectionString(connection.connectionString)
        : new QueueServiceClient(connection.accountUrl, connection.credential);
    url = new URL(client.url);
  } catch {
    throw new ShieldError("ERR_CONFIG", "queue storage connection settings are invalid");
  }
  if (url.protocol === "https:") return client;
  if (url.protocol === "http:" && isLoopbackUrlHost(url.hostname)) return client;
  throw new ShieldError("ERR_CONFIG", "queue storage endpoint must use https (plain http only on loopback)");
}

/** A body as it is stored: base64 of its UTF-8 JSON. */
export function encodeMessageText(body: Buffer): string {
  return body.toString("base64");
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * Stored text back to body text: base64 that decodes to UTF-8 is decoded; anything else (raw
 * JSON from a producer that does not encode, or garbage) is kept as it is.
 */
export function decodeMessageText(text: string): string {
  if (text.length === 0 || !BASE64.test(text)) return text;
  try {
    return UTF8.decode(Buffer.from(text, "base64"));
  } catch {
    return text;
  }
}

const UTF8 = new TextDecoder("utf-8", { fatal: true });

export function isAbortError(error: unknown): boolean {
  return error instanceof Error && error.name === "AbortError";
}

/**
 * Maps a Storage failure to a ShieldError: transient for what a retry can fix (network,
 * throttling, 5xx), ERR_CONFLICT for a lost lock (a stale pop receipt), ERR_CONFIG for access
 * and missing queues. The message names the operation and the service's status and code only.
 */
export function storageError(operation: string, error: unknown): ShieldError {
  if (error instanceof ShieldError) return error;
  if (!isRestError(error)) {
    return new ShieldError("ERR_NETWORK", `${operation}: queue storage could not be reached`, {
      cause: error,
    });
  }
  const status = error.statusCode ?? 0;
  const code = typeof error.code === "string" ? error.code : "";
  const said = `${operation}: queue storage answered ${status}${code === "" ? "" : ` ${code}`}`;
  const options = { cause: error };
  if (status === 0)
    return new ShieldError("ERR_NETWORK", `${operation}: queue storage could not be reached`, options);
  if (code === "MessageNotFound" || code === "PopReceiptMismatch") {
    return new ShieldError(
      "ERR_CONFLICT",
      `${operation}: the message lock was lost; it will be delivered again`,
      options,
    );
  }
  if (status === 429 || code === "ServerBusy") return new ShieldError("ERR_THROTTLED", said, options);
  if (status === 408) return new ShieldError("ERR_TIMEOUT", said, options);
  if (status >= 500) return new ShieldError("ERR_UPSTREAM_UNAVAILABLE", said, options);
  if (status === 413 || code === "RequestBodyTooLarge" || code === "MessageTooLarge") {
    return new ShieldError("ERR_INPUT_TOO_LARGE", said, options);
  }
  if (status === 401 || status === 403 || status === 404) return new ShieldError("ERR_CONFIG", said, options);
  return new ShieldError("ERR_IO", said, options);
}
