/**
 * The agent's end of the Storage Queue bus over the Queue service's REST API, without the Azure
 * SDK (whose import alone costs the agent about 9 MiB of resident memory). It speaks exactly the
 * wire form of adapters/storage-queue, which the functions side keeps using: the same queue names
 * (`attestation-requests`, and `agent-` + 40 hex of sha256(agentId) per agent), message text that
 * is the base64 of the body's UTF-8 JSON, the same size limit, and an inbox that hides a received
 * message for 30 s and deletes it with its pop receipt before handing it on.
 *
 * Requests are signed with Shared Key (REST API "Authorize with Shared Key", version 2009-09-19
 * and later): `Authorization: SharedKey <account>:<base64 HMAC-SHA256(key, StringToSign)>`. The
 * canonicalized resource is `/<account>` followed by the request URL's whole path, so on a
 * path-style endpoint (Azurite: `http://127.0.0.1:10001/devstoreaccount1/<queue>`) the account
 * name appears twice; Azurite's QueueSharedKeyAuthenticator and the SDK's
 * StorageSharedKeyCredentialPolicy compute it the same way. Plain http is allowed only for a
 * loopback endpoint. Errors name the operation, the status and the service's error code, never
 * the account key or a message body.
 */
import { createHash, createHmac } from "node:crypto";
import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import { setTimeout as sleep } from "node:timers/promises";
import { isLoopbackUrlHost } from "../adapters/loopback.js";
import { ShieldError, type ShieldErrorCode } from "../core/errors.js";
import {
  REQUESTS_QUEUE,
  bodyFromText,
  checkAgentId,
  checkRequest,
  checkTimeout,
  requestMessageId,
  serializeBody,
  type AgentInbox,
  type AgentRequest,
  type ReceivedMessage,
  type RequestChannel,
} from "../core/ports/bus.js";
import { silentLogger, type Logger } from "../core/ports/logger.js";

/** As adapters/storage-queue/queues.ts (which imports the SDK, so it is not imported here). */
export const STORAGE_QUEUE_MAX_MESSAGE_CHARS = 64 * 1024;
export const STORAGE_QUEUE_MAX_BODY_BYTES = 45 * 1024;
export const DEFAULT_AGENT_QUEUE_PREFIX = "agent-";
const AGENT_HASH_HEX = 40;
const QUEUE_NAME = /^(?=.{3,63}$)[a-z0-9]+(?:-[a-z0-9]+)*$/;
/** As the SDK adapter's inbox: hidden this long between receive and delete. */
const INBOX_VISIBILITY_SECONDS = 30;
/** Queue service REST version sent with every request (Azurite accepts it). */
export const STORAGE_API_VERSION = "2021-12-02";
/** A one-message response is at most 64 KiB of text plus the envelope. */
const MAX_RESPONSE_BYTES = 128 * 1024;

/** The Storage emulator's published account, for `UseDevelopmentStorage=true`. */
const DEVELOPMENT_STORAGE = {
  accountName: "devstoreaccount1",
  accountKey: "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
  queueEndpoint: "http://127.0.0.1:10001/devstoreaccount1",
} as const;

export interface StorageQueueAccount {
  readonly accountName: string;
  /** The decoded account key; never logged, never part of an error. */
  readonly accountKey: Buffer;
  /** The queue service endpoint (path-style on Azurite: the account name is its path). */
  readonly queueEndpoint: URL;
}

export interface StorageQueueAgentBusOptions {
  readonly connectionString: string;
  /** Default `attestation-requests`. */
  readonly requestsQueue?: string;
  /** Default `agent-`; at most 23 characters. */
  readonly agentQueuePrefix?: string;
  /** Pause between empty receives: starts at `minPollMs` (default 50), doubles up to `maxPollMs` (default 1000). */
  readonly minPollMs?: number;
  readonly maxPollMs?: number;
  /** Limit for one HTTP request (default 30 s). */
  readonly requestTimeoutMs?: number;
  readonly logger?: Logger;
}

export interface StorageQueueAgentBus {
  readonly requests: RequestChannel;
  /** The agent's own queue; created on first receive. */
  openInbox(agentId: string): AgentInbox;
  /** Stops every inbox (waiting receives resolve undefined); sends after close are refused. */
  close(): Promise<void>;
}

/** The queue that holds one agent's messages: the prefix, then 40 hex of sha256(agentId). */
export function agentQueueName(agentId: string, prefix: string = DEFAULT_AGENT_QUEUE_PREFIX): string {
  const digest = createHash("sha256").update(agentId, "utf8").digest("hex").slice(0, AGENT_HASH_HEX);
  return `${prefix}${digest}`;
}

function checkQueueName(name: string, what: string): string {
  if (typeof name !== "string" || !QUEUE_NAME.test(name)) {
    throw new ShieldError(
      "ERR_CONFIG",
      `${what} must be 3..63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit`,
    );
  }
  return name;
}

function checkAgentQueuePrefix(prefix: string): string {
  if (typeof prefix !== "string" || !QUEUE_NAME.test(`${prefix}${"0".repeat(AGENT_HASH_HEX)}`)) {
    throw new ShieldError(
      "ERR_CONFIG",
      `agent queue prefix must be lowercase letters, digits and single hyphens, at most ${63 - AGENT_HASH_HEX} characters`,
    );
  }
  return prefix;
}

function invalidConnection(): ShieldError {
  return new ShieldError("ERR_CONFIG", "queue storage connection settings are invalid");
}

/**
 * Reads a Storage connection string: `UseDevelopmentStorage=true`, or AccountName and AccountKey
 * with either QueueEndpoint or DefaultEndpointsProtocol/EndpointSuffix. Plain http only on
 * loopback. Errors never repeat the string, which holds the account key.
 */
export function parseStorageConnectionString(connectionString: string): StorageQueueAccount {
  if (typeof connectionString !== "string") throw new TypeError("connectionString must be a string");
  const settings = new Map<string, string>();
  for (const part of connectionString.split(";")) {
    if (part.trim() === "") continue;
    const at = part.indexOf("=");
    if (at <= 0) throw invalidConnection();
    settings.set(part.slice(0, at).trim().toLowerCase(), part.slice(at + 1).trim());
  }
  const development = settings.get("usedevelopmentstorage")?.toLowerCase() === "true";
  const accountName = development ? DEVELOPMENT_STORAGE.accountName : settings.get("accountname");
  const keyText = development ? DEVELOPMENT_STORAGE.accountKey : settings.get("accountkey");
  if (accountName === undefined || !/^[A-Za-z0-9]{1,64}$/.test(accountName)) throw invalidConnection();
  if (keyText === undefined || !/^[A-Za-z0-9+/]+={0,2}$/.test(keyText)) throw invalidConnection();
  const accountKey = Buffer.from(keyText, "base64");
  if (accountKey.length === 0) throw invalidConnection();

  let endpointText = development ? DEVELOPMENT_STORAGE.queueEndpoint : settings.get("queueendpoint");
  if (endpointText === undefined) {
    const protocol = (settings.get("defaultendpointsprotocol") ?? "https").toLowerCase();
    const suffix = settings.get("endpointsuffix") ?? "core.windows.net";
    if (protocol !== "https" && protocol !== "http") throw invalidConnection();
    endpointText = `${protocol}://${accountName}.queue.${suffix}`;
  }
  let queueEndpoint: URL;
  try {
    queueEndpoint = new URL(endpointText);
  } catch {
    throw invalidConnection();
  }
  if (queueEndpoint.search !== "" || queueEndpoint.hash !== "" || queueEndpoint.username !== "") {
    throw invalidConnection();
  }
  const secure = queueEndpoint.protocol === "https:";
  if (!secure && !(queueEndpoint.protocol === "http:" && isLoopbackUrlHost(queueEndpoint.hostname))) {
    throw new ShieldError(
      "ERR_CONFIG",
      "queue storage endpoint must use https (plain http only on loopback)",
    );
  }
  return { accountName, accountKey, queueEndpoint };
}

/** The headers and query of one request as Shared Key signs them. */
export interface SignedRequestParts {
  readonly method: string;
  readonly url: URL;
  /** Header names in lowercase. */
  readonly headers: Readonly<Record<string, string>>;
}

/**
 * StringToSign for Shared Key on the Blob, Queue and File services (version 2009-09-19 and
 * later): the verb, then Content-Encoding, Content-Language, Content-Length (empty when 0),
 * Content-MD5, Content-Type, Date, If-Modified-Since, If-Match, If-None-Match,
 * If-Unmodified-Since and Range, each followed by a newline; then the `x-ms-` headers, lowercase
 * and sorted, as `name:value\n`; then the canonicalized resource: `/<account><URL path>` and,
 * for each query parameter sorted by lowercase name, `\n<name>:<decoded value>`.
 */
export function sharedKeyStringToSign(accountName: string, request: SignedRequestParts): string {
  const header = (name: string): string => request.headers[name] ?? "";
  const contentLength = header("content-length");
  const standard = [
    request.method.toUpperCase(),
    header("content-encoding"),
    header("content-language"),
    contentLength === "0" ? "" : contentLength,
    header("content-md5"),
    header("content-type"),
    header("date"),
    header("if-modified-since"),
    header("if-match"),
    header("if-none-match"),
    header("if-unmodified-since"),
    header("range"),
  ];
  const msHeaders = Object.keys(request.headers)
    .filter((name) => name.startsWith("x-ms-"))
    .sort()
    .map((name) => `${name}:${header(name).replace(/\s+/g, " ").trim()}\n`)
    .join("");
  const query = new Map<string, string[]>();
  for (const [name, value] of request.url.searchParams) {
    const key = name.toLowerCase();
    query.set(key, [...(query.get(key) ?? []), value]);
  }
  const resource =
    `/${accountName}${request.url.pathname}` +
    [...query.keys()]
      .sort()
      .map((key) => `\n${key}:${(query.get(key) ?? []).sort().join(",")}`)
      .join("");
  return `${standard.join("\n")}\n${msHeaders}${resource}`;
}

const XML_ENTITIES: Readonly<Record<string, string>> = {
  lt: "<",
  gt: ">",
  amp: "&",
  quot: '"',
  apos: "'",
};

function malformedResponse(operation: string): ShieldError {
  return new ShieldError("ERR_IO", `${operation}: queue storage answered with an unreadable message list`);
}

function xmlUnescape(text: string, operation: string): string {
  return text.replace(/&([^;&]{1,10});/g, (_, entity: string) => {
    const named = XML_ENTITIES[entity];
    if (named !== undefined) return named;
    const code = /^#x[0-9a-fA-F]{1,6}$/.test(entity)
      ? parseInt(entity.slice(2), 16)
      : /^#[0-9]{1,7}$/.test(entity)
        ? parseInt(entity.slice(1), 10)
        : NaN;
    if (!Number.isInteger(code) || code > 0x10ffff) throw malformedResponse(operation);
    return String.fromCodePoint(code);
  });
}

/** The one element `name` inside `xml`, unescaped; it must occur exactly once. */
function element(xml: string, name: string, operation: string): string {
  const found = [...xml.matchAll(new RegExp(`<${name}>([^<]*)</${name}>`, "g"))];
  if (found.length !== 1 || found[0] === undefined) throw malformedResponse(operation);
  return xmlUnescape(found[0][1] ?? "", operation);
}

/** A message as Get Messages returns it. */
export interface DequeuedMessage {
  readonly messageId: string;
  readonly popReceipt: string;
  readonly dequeueCount: number;
  readonly insertedOn: Date;
  readonly messageText: string;
}

/**
 * Reads a Get Messages response asked for one message: undefined for an empty list, the message
 * otherwise. Anything else (more than one message, a missing or repeated field, a bad count or
 * date, an unknown entity) is refused.
 */
export function parseDequeuedMessages(xml: string, operation = "receive"): DequeuedMessage | undefined {
  if (!/<QueueMessagesList\s*\/>|<QueueMessagesList>[\s\S]*<\/QueueMessagesList>/.test(xml)) {
    throw malformedResponse(operation);
  }
  const messages = xml.match(/<QueueMessage>/g)?.length ?? 0;
  if (messages === 0) return undefined;
  if (messages !== 1) throw malformedResponse(operation);
  const dequeueText = element(xml, "DequeueCount", operation);
  const dequeueCount = /^[0-9]{1,9}$/.test(dequeueText) ? Number(dequeueText) : NaN;
  const insertedOn = new Date(element(xml, "InsertionTime", operation));
  const messageId = element(xml, "MessageId", operation);
  const popReceipt = element(xml, "PopReceipt", operation);
  if (!(dequeueCount >= 1) || Number.isNaN(insertedOn.getTime()) || messageId === "" || popReceipt === "") {
    throw malformedResponse(operation);
  }
  return {
    messageId,
    popReceipt,
    dequeueCount,
    insertedOn,
    messageText: element(xml, "MessageText", operation),
  };
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const UTF8 = new TextDecoder("utf-8", { fatal: true });

/** As the SDK adapter: base64 that decodes to UTF-8 is decoded; any other text is kept as it is. */
function decodeMessageText(text: string): string {
  if (text.length === 0 || !BASE64.test(text)) return text;
  try {
    return UTF8.decode(Buffer.from(text, "base64"));
  } catch {
    return text;
  }
}

/** Maps a status and the service's `x-ms-error-code` to a ShieldError, as the SDK adapter does. */
function statusError(operation: string, status: number, serviceCode: string): ShieldError {
  const said = `${operation}: queue storage answered ${status}${serviceCode === "" ? "" : ` ${serviceCode}`}`;
  let code: ShieldErrorCode = "ERR_IO";
  if (serviceCode === "MessageNotFound" || serviceCode === "PopReceiptMismatch") {
    return new ShieldError(
      "ERR_CONFLICT",
      `${operation}: the message lock was lost; it will be delivered again`,
    );
  }
  if (status === 429 || serviceCode === "ServerBusy") code = "ERR_THROTTLED";
  else if (status === 408) code = "ERR_TIMEOUT";
  else if (status >= 500) code = "ERR_UPSTREAM_UNAVAILABLE";
  else if (status === 413 || serviceCode === "RequestBodyTooLarge" || serviceCode === "MessageTooLarge") {
    code = "ERR_INPUT_TOO_LARGE";
  } else if (status === 401 || status === 403 || status === 404) code = "ERR_CONFIG";
  return new ShieldError(code, said);
}

function positiveInteger(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < 1) throw new TypeError(`${name} must be a positive integer`);
  return value;
}

/** Waits `ms` without keeping the process alive; false when aborted. */
async function pause(ms: number, signal: AbortSignal): Promise<boolean> {
  try {
    await sleep(ms, undefined, { signal, ref: false });
    return true;
  } catch {
    return false;
  }
}

interface RawResponse {
  readonly status: number;
  /** The service's `x-ms-error-code`, or "". */
  readonly errorCode: string;
  readonly text: string;
}

/** Rejects an exchange whose response is larger than any one-message answer can be. */
const TOO_LARGE = new Error("queue storage response too large");

/**
 * One HTTP exchange with node:http(s): the agent never loads fetch's implementation for this,
 * which would cost more memory than the SDK this module replaces.
 */
function exchange(
  url: URL,
  method: string,
  headers: Readonly<Record<string, string>>,
  payload: Buffer | undefined,
  signal: AbortSignal,
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const send = url.protocol === "https:" ? httpsRequest : httpRequest;
    const request = send(url, { method, headers, signal }, (response: IncomingMessage) => {
      const chunks: Buffer[] = [];
      let size = 0;
      response.on("data", (chunk: Buffer) => {
        size += chunk.length;
        if (size > MAX_RESPONSE_BYTES) {
          request.destroy();
          reject(TOO_LARGE);
          return;
        }
        chunks.push(chunk);
      });
      response.on("error", reject);
      response.on("end", () => {
        const code = response.headers["x-ms-error-code"];
        resolve({
          status: response.statusCode ?? 0,
          errorCode: typeof code === "string" ? code : "",
          text: Buffer.concat(chunks).toString("utf8"),
        });
      });
    });
    request.on("error", reject);
    request.end(payload);
  });
}

class RestQueueClient {
  readonly #account: StorageQueueAccount;
  readonly #timeoutMs: number;
  readonly #created = new Map<string, Promise<void>>();

  constructor(account: StorageQueueAccount, timeoutMs: number) {
    this.#account = account;
    this.#timeoutMs = timeoutMs;
  }

  /** One signed request; resolves with the status and body text of a 2xx (or an accepted status). */
  async #call(
    operation: string,
    method: string,
    path: string,
    query: Readonly<Record<string, string>>,
    body: string | undefined,
    signal: AbortSignal | undefined,
    accept: readonly number[] = [],
  ): Promise<RawResponse> {
    const url = new URL(this.#account.queueEndpoint.href);
    url.pathname = `${url.pathname.replace(/\/+$/, "")}/${path}`;
    for (const [name, value] of Object.entries(query)) url.searchParams.set(name, value);
    const payload = body === undefined ? undefined : Buffer.from(body, "utf8");
    const headers: Record<string, string> = {
      "x-ms-date": new Date().toUTCString(),
      "x-ms-version": STORAGE_API_VERSION,
    };
    if (payload !== undefined) {
      // Set here so that what is signed is exactly what is sent.
      headers["content-type"] = "application/xml; charset=utf-8";
      headers["content-length"] = String(payload.length);
    }
    const stringToSign = sharedKeyStringToSign(this.#account.accountName, { method, url, headers });
    const signature = createHmac("sha256", this.#account.accountKey)
      .update(stringToSign, "utf8")
      .digest("base64");
    headers["authorization"] = `SharedKey ${this.#account.accountName}:${signature}`;
    const timeout = AbortSignal.timeout(this.#timeoutMs);
    let response: RawResponse;
    try {
      response = await exchange(
        url,
        method,
        headers,
        payload,
        signal === undefined ? timeout : AbortSignal.any([signal, timeout]),
      );
    } catch (error) {
      if (error === TOO_LARGE) throw malformedResponse(operation);
      // An aborted caller's signal (a closed inbox) is noticed by the caller itself.
      if (timeout.aborted && signal?.aborted !== true) {
        throw new ShieldError("ERR_TIMEOUT", `${operation}: queue storage did not answer in time`);
      }
      throw new ShieldError("ERR_NETWORK", `${operation}: queue storage could not be reached`, {
        cause: error,
      });
    }
    if ((response.status >= 200 && response.status < 300) || accept.includes(response.status)) {
      return response;
    }
    throw statusError(operation, response.status, response.errorCode);
  }

  /** Creates the queue once per process (201 created, 204 or 409 already there). */
  ensureQueue(name: string): Promise<void> {
    let created = this.#created.get(name);
    if (created === undefined) {
      created = this.#call("create queue", "PUT", name, {}, undefined, undefined, [409]).then(
        () => undefined,
        (error: unknown) => {
          this.#created.delete(name);
          throw error;
        },
      );
      this.#created.set(name, created);
    }
    return created;
  }

  /** Forgets a queue that answered as missing or forbidden, so the next use creates it again. */
  forget(name: string, error: unknown): void {
    if (error instanceof ShieldError && error.code === "ERR_CONFIG") this.#created.delete(name);
  }

  async putMessage(queue: string, messageText: string): Promise<void> {
    await this.#call(
      "send",
      "POST",
      `${queue}/messages`,
      {},
      `<?xml version="1.0" encoding="utf-8"?><QueueMessage><MessageText>${messageText}</MessageText></QueueMessage>`,
      undefined,
    );
  }

  async getMessage(
    queue: string,
    visibilitySeconds: number,
    signal: AbortSignal,
  ): Promise<DequeuedMessage | undefined> {
    const { text } = await this.#call(
      "receive",
      "GET",
      `${queue}/messages`,
      { numofmessages: "1", visibilitytimeout: String(visibilitySeconds) },
      undefined,
      signal,
    );
    return parseDequeuedMessages(text);
  }

  async deleteMessage(queue: string, messageId: string, popReceipt: string): Promise<void> {
    await this.#call(
      "delete",
      "DELETE",
      `${queue}/messages/${encodeURIComponent(messageId)}`,
      { popreceipt: popReceipt },
      undefined,
      undefined,
    );
  }
}

/**
 * Opens the agent's side of the Storage Queue bus: a request channel onto the requests queue and
 * inboxes onto agents' own queues. Settings are checked now; no request is made until first use.
 */
export function createStorageQueueAgentBus(options: StorageQueueAgentBusOptions): StorageQueueAgentBus {
  const requestsQueue = checkQueueName(options.requestsQueue ?? REQUESTS_QUEUE, "requests queue name");
  const prefix = checkAgentQueuePrefix(options.agentQueuePrefix ?? DEFAULT_AGENT_QUEUE_PREFIX);
  const minPollMs = positiveInteger(options.minPollMs, 50, "minPollMs");
  const maxPollMs = Math.max(minPollMs, positiveInteger(options.maxPollMs, 1000, "maxPollMs"));
  const timeoutMs = positiveInteger(options.requestTimeoutMs, 30_000, "requestTimeoutMs");
  const log = options.logger ?? silentLogger;
  const client = new RestQueueClient(parseStorageConnectionString(options.connectionString), timeoutMs);
  const lifetime = new AbortController();

  const checkOpen = (): void => {
    if (lifetime.signal.aborted) throw new TypeError("the storage queue bus is closed");
  };

  const sendRequest = async (request: AgentRequest): Promise<void> => {
    checkRequest(request);
    checkOpen();
    const body = serializeBody(request, STORAGE_QUEUE_MAX_BODY_BYTES);
    try {
      await client.ensureQueue(requestsQueue);
      await client.putMessage(requestsQueue, body.toString("base64"));
    } catch (error) {
      client.forget(requestsQueue, error);
      throw error;
    }
    log("debug", "bus message sent", {
      queue: requestsQueue,
      messageId: requestMessageId(request),
      bytes: body.length,
    });
  };

  /** One message, hidden for the inbox's visibility timeout; polls with backoff until `timeoutMs`. */
  const poll = async (
    queue: string,
    timeoutMs: number,
    signal: AbortSignal,
  ): Promise<DequeuedMessage | undefined> => {
    const deadline = Date.now() + timeoutMs;
    let delay = minPollMs;
    for (;;) {
      if (signal.aborted) return undefined;
      let item: DequeuedMessage | undefined;
      try {
        await client.ensureQueue(queue);
        item = await client.getMessage(queue, INBOX_VISIBILITY_SECONDS, signal);
      } catch (error) {
        if (signal.aborted) return undefined;
        client.forget(queue, error);
        throw error;
      }
      if (item !== undefined) return item;
      const remaining = deadline - Date.now();
      if (remaining <= 0 || !(await pause(Math.min(delay, remaining), signal))) return undefined;
      delay = Math.min(delay * 2, maxPollMs);
    }
  };

  const receive = async (
    queue: string,
    timeoutMs: number,
    signal: AbortSignal,
  ): Promise<ReceivedMessage | undefined> => {
    checkTimeout(timeoutMs);
    if (signal.aborted) throw new TypeError("receive: the agent inbox is closed");
    const item = await poll(queue, timeoutMs, signal);
    if (item === undefined) return undefined;
    try {
      await client.deleteMessage(queue, item.messageId, item.popReceipt);
    } catch (error) {
      // Handed on anyway: the agent is idempotent and the message will simply come again.
      log("warn", "bus message not deleted after receive", {
        queue,
        messageId: item.messageId,
        code: error instanceof ShieldError ? error.code : "ERR_INTERNAL",
      });
    }
    log("debug", "bus message received", {
      queue,
      messageId: item.messageId,
      deliveryCount: item.dequeueCount,
    });
    return {
      body: bodyFromText(decodeMessageText(item.messageText), STORAGE_QUEUE_MAX_MESSAGE_CHARS),
      messageId: item.messageId,
      deliveryCount: item.dequeueCount,
      enqueuedAt: item.insertedOn,
    };
  };

  return {
    requests: { sendRequest },
    openInbox(agentId: string): AgentInbox {
      checkAgentId(agentId);
      checkOpen();
      const queue = agentQueueName(agentId, prefix);
      const own = new AbortController();
      const signal = AbortSignal.any([own.signal, lifetime.signal]);
      return {
        receive: (timeoutMs) => receive(queue, timeoutMs, signal),
        close: () => {
          own.abort();
          return Promise.resolve();
        },
      };
    },
    close: () => {
      lifetime.abort();
      return Promise.resolve();
    },
  };
}
