/**
 * The bus on Azure Service Bus, through `@azure/service-bus`:
 *
 * - `createServiceBusAgentChannel` (functions → agents): one message per call on
 *   `attestation-results`, its session id the agent id;
 * - `createServiceBusRequestChannel` (agent → functions): `attestation-requests`, message id =
 *   request id;
 * - `createServiceBusAgentInbox` (the agent): accepts its own session and receives from it.
 *
 * Every message carries its UTF-8 JSON as the body bytes, `contentType: application/json`, a
 * message id derived from the message (so duplicate detection on the queue, when enabled,
 * recognizes a second send), and `applicationProperties { type, version }` for routing and
 * metrics: never anything from inside the body.
 *
 * The agent holds its session for as long as it runs. Session locks last the queue's lock
 * duration (at most 5 minutes) and the SDK renews them only for a bounded time, so the inbox
 * renews the lock itself: it waits in slices no longer than 20 s (nor half of what is left of
 * the lock) and renews before any slice that could outlive the lock. A lost session is accepted
 * again on the next receive.
 */
import { DEFAULT_MAX_MESSAGE_BYTES } from "../../core/messages/index.js";
import { silentLogger, type Logger } from "../../core/ports/logger.js";
import {
  REQUESTS_QUEUE,
  RESULTS_QUEUE,
  ROTATE_KEY_QUEUE,
  type RotationQueue,
  agentMessageId,
  bodyFromText,
  checkAgentId,
  checkAgentMessage,
  checkRequest,
  checkTimeout,
  requestMessageId,
  serializeBody,
  textFromBytes,
  type AgentChannel,
  type AgentInbox,
  type AgentRequest,
  type SignedAgentMessage,
  type ReceivedMessage,
  type RequestChannel,
} from "../../core/ports/bus.js";
import {
  LazyServiceBusClient,
  isAbortError,
  serviceBusError,
  serviceBusErrorCode,
  withCallSignal,
  type ServiceBusConnection,
  type ServiceBusReceivedMessageLike,
  type ServiceBusSenderLike,
  type ServiceBusSessionReceiverLike,
} from "./client.js";

export type { ServiceBusConnection } from "./client.js";

interface CommonOptions {
  /** Largest body sent, in bytes of JSON (default 256 KiB, Service Bus Standard's message size). */
  readonly maxBodyBytes?: number;
  readonly logger?: Logger;
}

export type ServiceBusAgentChannelOptions = ServiceBusConnection &
  CommonOptions & {
    /** Default `attestation-results` (sessions enabled). */
    readonly resultsQueue?: string;
  };

export type ServiceBusRequestChannelOptions = ServiceBusConnection &
  CommonOptions & {
    /** Default `attestation-requests`. */
    readonly requestsQueue?: string;
  };

export type ServiceBusAgentInboxOptions = ServiceBusConnection &
  Pick<CommonOptions, "logger"> & {
    readonly agentId: string;
    /** Default `attestation-results`. */
    readonly resultsQueue?: string;
    /** Largest body parsed, in bytes (default 256 KiB); larger bodies are handed on as text. */
    readonly maxBodyBytes?: number;
  };

/** A channel that also releases what it opened. */
export interface Closable {
  close(): Promise<void>;
}

const CONTENT_TYPE = "application/json";
/** A signed control message: the compact JWS text (RFC 7515 §9.2.1 media type). */
const SIGNED_CONTENT_TYPE = "application/jose";
/** Longest single wait for messages; the session lock is renewed between waits. */
const RECEIVE_SLICE_MS = 20_000;
/** Renew when the session lock would end less than this after the next wait. */
const LOCK_MARGIN_MS = 10_000;

const QUEUE_NAME = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,259}$/;

function checkQueueName(name: string, what: string): string {
  if (typeof name !== "string" || !QUEUE_NAME.test(name)) {
    throw new TypeError(`${what} must be a Service Bus queue name`);
  }
  return name;
}

function maxBytes(value: number | undefined): number {
  if (value === undefined) return DEFAULT_MAX_MESSAGE_BYTES;
  if (!Number.isSafeInteger(value) || value < 1)
    throw new TypeError("maxBodyBytes must be a positive integer");
  return value;
}

/** One sender on one queue, created on first send. */
class LazySender {
  readonly #client: LazyServiceBusClient;
  readonly #queue: string;
  #sender: Promise<ServiceBusSenderLike> | undefined;

  constructor(client: LazyServiceBusClient, queue: string) {
    this.#client = client;
    this.#queue = queue;
  }

  async send(message: Parameters<ServiceBusSenderLike["sendMessages"]>[0]): Promise<void> {
    if (this.#sender === undefined) {
      this.#sender = this.#client.get().then((client) => client.createSender(this.#queue));
      this.#sender.catch(() => {
        this.#sender = undefined;
      });
    }
    let sender: ServiceBusSenderLike;
    try {
      sender = await this.#sender;
    } catch (error) {
      throw serviceBusError("send", error);
    }
    try {
      await sender.sendMessages(message);
    } catch (error) {
      throw serviceBusError("send", error);
    }
  }

  async close(): Promise<void> {
    const sender = this.#sender;
    this.#sender = undefined;
    try {
      if (sender !== undefined) await (await sender).close();
    } finally {
      await this.#client.close();
    }
  }
}

/** Functions → agents on `attestation-results`, session id = agent id. */
export function createServiceBusAgentChannel(
  options: ServiceBusAgentChannelOptions,
): AgentChannel & Closable {
  const queue = checkQueueName(options.resultsQueue ?? RESULTS_QUEUE, "resultsQueue");
  const limit = maxBytes(options.maxBodyBytes);
  const log = options.logger ?? silentLogger;
  const sender = new LazySender(new LazyServiceBusClient(options), queue);
  return {
    async sendToAgent(agentId: string, message: SignedAgentMessage): Promise<void> {
      checkAgentMessage(agentId, message);
      const body = serializeBody(message.jws, limit);
      const messageId = agentMessageId(message);
      await sender.send({
        body,
        contentType: SIGNED_CONTENT_TYPE,
        messageId,
        sessionId: agentId,
        applicationProperties: { type: message.type, version: 1 },
      });
      log("debug", "bus message sent", { queue, messageId, bytes: body.length });
    },
    close: () => sender.close(),
  };
}

/** Agent → functions on `attestation-requests`, message id = request id. */
export function createServiceBusRequestChannel(
  options: ServiceBusRequestChannelOptions,
): RequestChannel & Closable {
  const queue = checkQueueName(options.requestsQueue ?? REQUESTS_QUEUE, "requestsQueue");
  const limit = maxBytes(options.maxBodyBytes);
  const log = options.logger ?? silentLogger;
  const sender = new LazySender(new LazyServiceBusClient(options), queue);
  return {
    async sendRequest(request: AgentRequest): Promise<void> {
      checkRequest(request);
      const body = serializeBody(request, limit);
      const messageId = requestMessageId(request);
      await sender.send({
        body,
        contentType: CONTENT_TYPE,
        messageId,
        applicationProperties: { type: request.type, version: request.version },
      });
      log("debug", "bus message sent", { queue, messageId, bytes: body.length });
    },
    close: () => sender.close(),
  };
}

/** The agent's own session on `attestation-results`. */
export type ServiceBusRotationQueueOptions = ServiceBusConnection &
  Pick<CommonOptions, "logger"> & {
    /** Default `rotate-key` (session-enabled: session id = key name). */
    readonly queue?: string;
  };

/**
 * Functions → the rotate function on `rotate-key`: session id = key name, so one key's work runs
 * one item at a time; message id = the source event id, so Service Bus duplicate detection (when
 * enabled on the queue) drops a second copy of the same event.
 */
export function createServiceBusRotationQueue(
  options: ServiceBusRotationQueueOptions,
): RotationQueue & Closable {
  const queue = checkQueueName(options.queue ?? ROTATE_KEY_QUEUE, "rotation queue");
  const log = options.logger ?? silentLogger;
  const sender = new LazySender(new LazyServiceBusClient(options), queue);
  return {
    async enqueueRotation(message) {
      const body = serializeBody(message, 16 * 1024);
      await sender.send({
        body,
        contentType: CONTENT_TYPE,
        messageId: message.sourceEventId,
        sessionId: message.keyName,
        applicationProperties: { type: message.type, version: message.version },
      });
      log("debug", "bus message sent", { queue, messageId: message.sourceEventId, bytes: body.length });
    },
    close: () => sender.close(),
  };
}

export function createServiceBusAgentInbox(options: ServiceBusAgentInboxOptions): AgentInbox {
  checkAgentId(options.agentId);
  return new ServiceBusAgentInbox(options);
}

class ServiceBusAgentInbox implements AgentInbox {
  readonly #agentId: string;
  readonly #queue: string;
  readonly #maxBodyBytes: number;
  readonly #log: Logger;
  readonly #client: LazyServiceBusClient;
  readonly #closing = new AbortController();
  #receiver: Promise<ServiceBusSessionReceiverLike> | undefined;

  constructor(options: ServiceBusAgentInboxOptions) {
    this.#agentId = options.agentId;
    this.#queue = checkQueueName(options.resultsQueue ?? RESULTS_QUEUE, "resultsQueue");
    this.#maxBodyBytes = maxBytes(options.maxBodyBytes);
    this.#log = options.logger ?? silentLogger;
    this.#client = new LazyServiceBusClient(options);
  }

  async receive(timeoutMs: number): Promise<ReceivedMessage | undefined> {
    checkTimeout(timeoutMs);
    if (this.#closing.signal.aborted) throw new TypeError("receive: the agent inbox is closed");
    const deadline = Date.now() + timeoutMs;
    let acceptedAgain = false;
    for (;;) {
      if (this.#closing.signal.aborted) return undefined;
      const wanted = Math.max(1, Math.min(RECEIVE_SLICE_MS, deadline - Date.now()));
      let receiver: ServiceBusSessionReceiverLike;
      let messages: ServiceBusReceivedMessageLike[];
      try {
        receiver = await this.#session();
        const lockedUntil = await this.#keepLock(receiver, wanted);
        // A lock shorter than a slice (a queue's LockDuration may be as short as 5 s) is
        // renewed between waits of half of what is left of it.
        const slice =
          lockedUntil === undefined
            ? wanted
            : Math.max(1, Math.min(wanted, Math.floor((lockedUntil - Date.now()) / 2)));
        messages = await withCallSignal(this.#closing.signal, (abortSignal) =>
          receiver.receiveMessages(1, { maxWaitTimeInMs: slice, abortSignal }),
        );
      } catch (error) {
        if (this.#closing.signal.aborted || isAbortError(error)) return undefined;
        // A lost session is accepted again once per receive; a second loss is reported.
        if (serviceBusErrorCode(error) === "SessionLockLost" && !acceptedAgain) {
          acceptedAgain = true;
          await this.#dropSession();
          continue;
        }
        throw serviceBusError("receive", error);
      }
      const message = messages[0];
      if (message !== undefined) return this.#settle(receiver, message);
      if (Date.now() >= deadline) return undefined;
    }
  }

  async close(): Promise<void> {
    this.#closing.abort();
    try {
      await this.#dropSession();
    } finally {
      await this.#client.close();
    }
  }

  /** The session receiver, accepting the agent's session on first use (and after a loss). */
  #session(): Promise<ServiceBusSessionReceiverLike> {
    if (this.#receiver === undefined) {
      this.#receiver = this.#client.get().then((client) =>
        client.acceptSession(this.#queue, this.#agentId, {
          receiveMode: "peekLock",
          // Renewed here instead (see the module comment): the SDK's renewal stops after a bound.
          maxAutoLockRenewalDurationInMs: 0,
          // Raw bytes: the port decides what a body that is not JSON becomes.
          skipParsingBodyAsJson: true,
        }),
      );
      this.#receiver.catch(() => {
        this.#receiver = undefined;
      });
    }
    return this.#receiver;
  }

  async #dropSession(): Promise<void> {
    const receiver = this.#receiver;
    this.#receiver = undefined;
    if (receiver === undefined) return;
    try {
      await (await receiver).close();
    } catch {
      // Already gone: the lock is released when it expires.
    }
  }

  /** Renews the session lock when it could expire during the next wait of `sliceMs`. */
  /**
   * Renews the session lock when it could expire during the next wait of `sliceMs`; returns
   * when the lock ends (undefined when the receiver does not say).
   */
  async #keepLock(receiver: ServiceBusSessionReceiverLike, sliceMs: number): Promise<number | undefined> {
    const lockedUntil = receiver.sessionLockedUntilUtc?.getTime();
    if (lockedUntil !== undefined && lockedUntil - Date.now() > sliceMs + LOCK_MARGIN_MS) return lockedUntil;
    const renewed = await receiver.renewSessionLock();
    return renewed instanceof Date ? renewed.getTime() : receiver.sessionLockedUntilUtc?.getTime();
  }

  async #settle(
    receiver: ServiceBusSessionReceiverLike,
    message: ServiceBusReceivedMessageLike,
  ): Promise<ReceivedMessage> {
    const received: ReceivedMessage = {
      body: decodeBody(message.body, this.#maxBodyBytes),
      messageId: messageIdText(message.messageId),
      // The JavaScript SDK reports earlier deliveries (0 on the first); the port counts this one.
      deliveryCount: (message.deliveryCount ?? 0) + 1,
      enqueuedAt: message.enqueuedTimeUtc ?? new Date(0),
    };
    try {
      await receiver.completeMessage(message);
    } catch (error) {
      // Handed on anyway: the agent is idempotent and the message will simply come again.
      this.#log("warn", "bus message not completed after receive", {
        queue: this.#queue,
        messageId: received.messageId,
        code: serviceBusError("complete", error).code,
      });
      if (serviceBusErrorCode(error) === "SessionLockLost") await this.#dropSession();
    }
    this.#log("debug", "bus message received", {
      queue: this.#queue,
      messageId: received.messageId,
      deliveryCount: received.deliveryCount,
    });
    return received;
  }
}

/**
 * A body as the SDK gives it with JSON parsing off: bytes for a data section (what every sender
 * here writes), anything else for an AMQP value a foreign sender chose, handed on as it is.
 */
export function decodeBody(body: unknown, maxBodyBytes: number): unknown {
  if (body instanceof Uint8Array) return bodyFromText(textFromBytes(body), maxBodyBytes);
  if (typeof body === "string") return bodyFromText(body, maxBodyBytes);
  return body;
}

export function messageIdText(messageId: string | number | Buffer | undefined): string {
  if (typeof messageId === "string") return messageId;
  if (typeof messageId === "number") return String(messageId);
  if (messageId instanceof Uint8Array) return Buffer.from(messageId).toString("hex");
  return "";
}
