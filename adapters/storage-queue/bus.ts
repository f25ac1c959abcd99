/**
 * The bus on Azure Storage Queues (Azurite in the embedded default), with Service Bus's
 * peek-lock semantics rebuilt from what Storage offers: a receive hides a message for the lock
 * duration (its visibility timeout), `dequeueCount` is the delivery count, complete deletes the
 * message with its pop receipt, abandon makes it visible again, and dead-lettering writes the
 * message with its reason into `<requests>-deadletter` and then deletes it. A request received
 * more than `maxDeliveryCount` times is dead-lettered with `MaxDeliveryCountExceeded` instead of
 * being returned, as the broker would.
 *
 * Storage has no push, so receivers poll, backing off between empty receives (50 ms doubling to
 * 1 s by default) and stopping at their timeout or when closed. Queues are created on first use.
 */
import { createHash } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import type {
  DequeuedMessageItem,
  PeekedMessageItem,
  QueueClient,
  QueueServiceClient,
} from "@azure/storage-queue";
import { ShieldError } from "../../core/errors.js";
import { systemClock, type Clock } from "../../core/ports/clock.js";
import { silentLogger, type Logger } from "../../core/ports/logger.js";
import {
  DEFAULT_MAX_DELIVERY_COUNT,
  MAX_DELIVERY_COUNT_EXCEEDED,
  REQUESTS_QUEUE,
  ROTATE_KEY_QUEUE,
  agentMessageId,
  bodyFromText,
  checkAgentId,
  checkAgentMessage,
  checkRequest,
  checkTimeout,
  clampDeadLetterText,
  requestMessageId,
  serializeBody,
  type AgentInbox,
  type AgentRequest,
  type SignedAgentMessage,
  type DeadLetter,
  type LocalBus,
  type LockedMessage,
  type ReceivedMessage,
  type RequestReceiver,
  type RotationQueue,
} from "../../core/ports/bus.js";
import type { RotateKey } from "../../core/messages/index.js";
import {
  DEFAULT_AGENT_QUEUE_PREFIX,
  STORAGE_QUEUE_MAX_BODY_BYTES,
  STORAGE_QUEUE_MAX_MESSAGE_CHARS,
  agentQueueName,
  checkAgentQueuePrefix,
  checkQueueName,
  createQueueServiceClient,
  decodeMessageText,
  defaultDeadLetterQueue,
  encodeMessageText,
  isAbortError,
  storageError,
  type StorageQueueConnection,
} from "./queues.js";

export type { StorageQueueConnection } from "./queues.js";

export type StorageQueueBusOptions = StorageQueueConnection & {
  /** Default `attestation-requests`. */
  readonly requestsQueue?: string;
  /** Default `<requestsQueue>-deadletter`. */
  readonly deadLetterQueue?: string;
  /** Where `enqueueRotation` sends `rotate-key` work (default `rotate-key`). */
  readonly rotationQueue?: string;
  /** Default `agent-`; at most 23 characters. */
  readonly agentQueuePrefix?: string;
  /** Deliveries before a request is dead-lettered (default 10, as Service Bus). */
  readonly maxDeliveryCount?: number;
  /** How long a received request stays hidden (default 60 s); whole seconds, at least 1. */
  readonly lockDurationMs?: number;
  /** Pause between empty receives: starts at `minPollMs` (default 50), doubles up to `maxPollMs` (default 1000). */
  readonly minPollMs?: number;
  readonly maxPollMs?: number;
  /** Stamps dead-letter times. */
  readonly clock?: Clock;
  readonly logger?: Logger;
};

/** How long an agent's message stays hidden between its receive and its deletion. */
const INBOX_VISIBILITY_SECONDS = 30;
/** Storage's longest visibility timeout: 7 days. */
const MAX_VISIBILITY_SECONDS = 7 * 24 * 3600;
/** Peek returns at most 32 messages and cannot page. */
const PEEK_LIMIT = 32;
const ENVELOPE_KIND = "shield-dead-letter";

function lockLost(operation: string): ShieldError {
  return new ShieldError("ERR_CONFLICT", `${operation}: the message was already settled`);
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

export class StorageQueueBus implements LocalBus, RotationQueue {
  readonly requestsQueue: string;
  readonly rotationQueue: string;
  readonly deadLetterQueue: string;
  readonly agentQueuePrefix: string;
  readonly maxBodyBytes = STORAGE_QUEUE_MAX_BODY_BYTES;
  readonly #maxDeliveryCount: number;
  readonly #lockSeconds: number;
  readonly #minPollMs: number;
  readonly #maxPollMs: number;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #lifetime = new AbortController();
  readonly #queues = new Map<string, Promise<QueueClient>>();
  readonly #service: QueueServiceClient;

  constructor(options: StorageQueueBusOptions) {
    this.requestsQueue = checkQueueName(options.requestsQueue ?? REQUESTS_QUEUE, "requests queue name");
    this.rotationQueue = checkQueueName(options.rotationQueue ?? ROTATE_KEY_QUEUE, "rotation queue name");
    this.deadLetterQueue = checkQueueName(
      options.deadLetterQueue ?? defaultDeadLetterQueue(this.requestsQueue),
      "dead-letter queue name",
    );
    this.agentQueuePrefix = checkAgentQueuePrefix(options.agentQueuePrefix ?? DEFAULT_AGENT_QUEUE_PREFIX);
    this.#maxDeliveryCount = positiveInteger(
      options.maxDeliveryCount,
      DEFAULT_MAX_DELIVERY_COUNT,
      "maxDeliveryCount",
    );
    const lockDurationMs = positiveInteger(options.lockDurationMs, 60_000, "lockDurationMs");
    this.#lockSeconds = Math.min(MAX_VISIBILITY_SECONDS, Math.max(1, Math.ceil(lockDurationMs / 1000)));
    this.#minPollMs = positiveInteger(options.minPollMs, 50, "minPollMs");
    this.#maxPollMs = Math.max(this.#minPollMs, positiveInteger(options.maxPollMs, 1000, "maxPollMs"));
    this.#clock = options.clock ?? systemClock;
    this.#log = options.logger ?? silentLogger;
    // Fails on bad settings now, not at the first send; no request is made.
    this.#service = createQueueServiceClient(options);
  }

  /** The queue that holds `agentId`'s messages. */
  agentQueue(agentId: string): string {
    checkAgentId(agentId);
    return agentQueueName(agentId, this.agentQueuePrefix);
  }

  async sendRequest(request: AgentRequest): Promise<void> {
    checkRequest(request);
    const body = serializeBody(request, this.maxBodyBytes);
    await this.#send(this.requestsQueue, body, requestMessageId(request));
  }

  /** `rotate-key` work, for a receiver opened on a bus whose requests queue is the rotation queue. */
  async enqueueRotation(message: RotateKey): Promise<void> {
    const body = serializeBody(message, this.maxBodyBytes);
    await this.#send(this.rotationQueue, body, message.sourceEventId);
  }

  async sendToAgent(agentId: string, message: SignedAgentMessage): Promise<void> {
    checkAgentMessage(agentId, message);
    const body = serializeBody(message.jws, this.maxBodyBytes);
    await this.#send(this.agentQueue(agentId), body, agentMessageId(message));
  }

  openRequestReceiver(): RequestReceiver {
    this.#checkOpen();
    const own = new AbortController();
    const signal = AbortSignal.any([own.signal, this.#lifetime.signal]);
    return {
      receive: (timeoutMs) => this.#receiveRequest(timeoutMs, signal),
      readDeadLetters: () => this.readDeadLetters(),
      close: () => {
        own.abort();
        return Promise.resolve();
      },
    };
  }

  openAgentInbox(agentId: string): AgentInbox {
    const name = this.agentQueue(agentId);
    this.#checkOpen();
    const own = new AbortController();
    const signal = AbortSignal.any([own.signal, this.#lifetime.signal]);
    return {
      receive: (timeoutMs) => this.#receiveForAgent(name, timeoutMs, signal),
      close: () => {
        own.abort();
        return Promise.resolve();
      },
    };
  }

  /** The dead-letter queue, oldest first; Storage lets a peek see at most the first 32. */
  async readDeadLetters(): Promise<DeadLetter[]> {
    const queue = await this.#queue(this.deadLetterQueue);
    let items: PeekedMessageItem[];
    try {
      items = (await queue.peekMessages({ numberOfMessages: PEEK_LIMIT })).peekedMessageItems;
    } catch (error) {
      throw this.#failed("read dead letters", this.deadLetterQueue, error);
    }
    return items.map(readDeadLetter);
  }

  /** Stops every receiver (waiting receives resolve undefined); sends after close are refused. */
  close(): Promise<void> {
    this.#lifetime.abort();
    return Promise.resolve();
  }

  #checkOpen(): void {
    if (this.#lifetime.signal.aborted) throw new TypeError("the storage queue bus is closed");
  }

  /** The queue's client, the queue created once per process on first use. */
  #queue(name: string): Promise<QueueClient> {
    this.#checkOpen();
    let queue = this.#queues.get(name);
    if (queue === undefined) {
      const client = this.#service.getQueueClient(name);
      queue = client.createIfNotExists().then(
        () => client,
        (error: unknown) => {
          this.#queues.delete(name);
          throw storageError("create queue", error);
        },
      );
      this.#queues.set(name, queue);
    }
    return queue;
  }

  #failed(operation: string, queueName: string, error: unknown): ShieldError {
    const failure = storageError(operation, error);
    // A queue deleted behind our back is created again on the next use.
    if (failure.code === "ERR_CONFIG") this.#queues.delete(queueName);
    return failure;
  }

  async #send(queueName: string, body: Buffer, messageId: string): Promise<void> {
    const queue = await this.#queue(queueName);
    try {
      await queue.sendMessage(encodeMessageText(body));
    } catch (error) {
      throw this.#failed("send", queueName, error);
    }
    this.#log("debug", "bus message sent", { queue: queueName, messageId, bytes: body.length });
  }

  /** Receives one message, hiding it for `visibilitySeconds`; polls with backoff until `timeoutMs`. */
  async #poll(
    queueName: string,
    timeoutMs: number,
    visibilitySeconds: number,
    signal: AbortSignal,
  ): Promise<{ queue: QueueClient; item: DequeuedMessageItem } | undefined> {
    const deadline = Date.now() + timeoutMs;
    let delay = this.#minPollMs;
    for (;;) {
      if (signal.aborted) return undefined;
      let queue: QueueClient;
      let item: DequeuedMessageItem | undefined;
      try {
        queue = await this.#queue(queueName);
        const response = await queue.receiveMessages({
          numberOfMessages: 1,
          visibilityTimeout: visibilitySeconds,
          abortSignal: signal,
        });
        item = response.receivedMessageItems[0];
      } catch (error) {
        if (signal.aborted || isAbortError(error)) return undefined;
        throw this.#failed("receive", queueName, error);
      }
      if (item !== undefined) return { queue, item };
      const remaining = deadline - Date.now();
      if (remaining <= 0 || !(await pause(Math.min(delay, remaining), signal))) return undefined;
      delay = Math.min(delay * 2, this.#maxPollMs);
    }
  }

  async #receiveRequest(timeoutMs: number, signal: AbortSignal): Promise<LockedMessage | undefined> {
    checkTimeout(timeoutMs);
    if (signal.aborted) throw new TypeError("receive: the request receiver is closed");
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const received = await this.#poll(
        this.requestsQueue,
        Math.max(0, deadline - Date.now()),
        this.#lockSeconds,
        signal,
      );
      if (received === undefined) return undefined;
      const { queue, item } = received;
      if (item.dequeueCount > this.#maxDeliveryCount) {
        // Delivered max times already: this delivery is refused, as the broker refuses it.
        await this.#deadLetter(queue, item, item.popReceipt, {
          reason: MAX_DELIVERY_COUNT_EXCEEDED,
          description: `delivered ${this.#maxDeliveryCount} times without being completed`,
          deliveryCount: item.dequeueCount - 1,
        });
        continue;
      }
      this.#log("debug", "bus message received", {
        queue: this.requestsQueue,
        messageId: item.messageId,
        deliveryCount: item.dequeueCount,
      });
      return this.#lock(queue, item);
    }
  }

  #lock(queue: QueueClient, item: DequeuedMessageItem): LockedMessage {
    let popReceipt = item.popReceipt;
    let settled = false;
    const settle = async (operation: string, action: () => Promise<void>): Promise<void> => {
      if (settled) throw lockLost(operation);
      try {
        await action();
      } catch (error) {
        throw this.#failed(operation, this.requestsQueue, error);
      }
      settled = true;
      this.#log("debug", `bus message ${operation}`, {
        queue: this.requestsQueue,
        messageId: item.messageId,
      });
    };
    return {
      ...received(item),
      complete: () =>
        settle("complete", async () => {
          await queue.deleteMessage(item.messageId, popReceipt);
        }),
      abandon: () =>
        settle("abandon", async () => {
          await queue.updateMessage(item.messageId, popReceipt, undefined, 0);
        }),
      deadLetter: async (reason, description) => {
        const text = clampDeadLetterText(reason, description);
        await settle("dead-letter", () =>
          this.#deadLetter(queue, item, popReceipt, { ...text, deliveryCount: item.dequeueCount }),
        );
      },
      renewLock: async () => {
        if (settled) throw lockLost("renew lock");
        try {
          const response = await queue.updateMessage(
            item.messageId,
            popReceipt,
            undefined,
            this.#lockSeconds,
          );
          if (response.popReceipt !== undefined) popReceipt = response.popReceipt;
        } catch (error) {
          throw this.#failed("renew lock", this.requestsQueue, error);
        }
      },
    };
  }

  /**
   * Writes the message and why into the dead-letter queue, then deletes it. Should the delete
   * fail, the message comes back and may be dead-lettered twice: the dead-letter queue is for
   * reading, never for replay, so a copy too many is harmless.
   */
  async #deadLetter(
    queue: QueueClient,
    item: DequeuedMessageItem,
    popReceipt: string,
    why: { reason: string; description: string; deliveryCount: number },
  ): Promise<void> {
    const envelope = deadLetterText(item, why, this.#clock.now());
    const deadLetters = await this.#queue(this.deadLetterQueue);
    try {
      await deadLetters.sendMessage(envelope);
    } catch (error) {
      throw this.#failed("dead-letter", this.deadLetterQueue, error);
    }
    try {
      await queue.deleteMessage(item.messageId, popReceipt);
    } catch (error) {
      throw this.#failed("dead-letter", this.requestsQueue, error);
    }
    this.#log("warn", "bus message dead-lettered", {
      queue: this.requestsQueue,
      messageId: item.messageId,
      reason: why.reason,
      deliveryCount: why.deliveryCount,
    });
  }

  async #receiveForAgent(
    queueName: string,
    timeoutMs: number,
    signal: AbortSignal,
  ): Promise<ReceivedMessage | undefined> {
    checkTimeout(timeoutMs);
    if (signal.aborted) throw new TypeError("receive: the agent inbox is closed");
    const got = await this.#poll(queueName, timeoutMs, INBOX_VISIBILITY_SECONDS, signal);
    if (got === undefined) return undefined;
    try {
      await got.queue.deleteMessage(got.item.messageId, got.item.popReceipt);
    } catch (error) {
      // Handed on anyway: the agent is idempotent and the message will simply come again.
      this.#log("warn", "bus message not deleted after receive", {
        queue: queueName,
        messageId: got.item.messageId,
        code: storageError("delete", error).code,
      });
    }
    this.#log("debug", "bus message received", {
      queue: queueName,
      messageId: got.item.messageId,
      deliveryCount: got.item.dequeueCount,
    });
    return received(got.item);
  }
}

export function createStorageQueueBus(options: StorageQueueBusOptions): StorageQueueBus {
  return new StorageQueueBus(options);
}

function received(item: DequeuedMessageItem): ReceivedMessage {
  return {
    body: bodyFromText(decodeMessageText(item.messageText), STORAGE_QUEUE_MAX_MESSAGE_CHARS),
    messageId: item.messageId,
    deliveryCount: item.dequeueCount,
    enqueuedAt: item.insertedOn,
  };
}

/**
 * The dead-letter queue's message: the original body (as the JSON object it was, or its text)
 * beside the reason, description, counts and times, base64-encoded like every message here. A
 * body too large to fit beside them (only a foreign message can be) is replaced by its sha256
 * and size.
 */
function deadLetterText(
  item: DequeuedMessageItem,
  why: { reason: string; description: string; deliveryCount: number },
  at: Date,
): string {
  const bodyText = decodeMessageText(item.messageText);
  const head = {
    kind: ENVELOPE_KIND,
    reason: why.reason,
    description: why.description,
    messageId: item.messageId,
    deliveryCount: why.deliveryCount,
    enqueuedAt: item.insertedOn.toISOString(),
    deadLetteredAt: at.toISOString(),
  };
  const full = encodeMessageText(
    Buffer.from(JSON.stringify({ ...head, body: bodyFromText(bodyText, STORAGE_QUEUE_MAX_MESSAGE_CHARS) })),
  );
  if (full.length <= STORAGE_QUEUE_MAX_MESSAGE_CHARS) return full;
  const bodyOmitted = {
    sha256: createHash("sha256").update(bodyText, "utf8").digest("hex"),
    bytes: Buffer.byteLength(bodyText, "utf8"),
  };
  return encodeMessageText(Buffer.from(JSON.stringify({ ...head, bodyOmitted })));
}

function readDeadLetter(item: PeekedMessageItem): DeadLetter {
  const value = bodyFromText(decodeMessageText(item.messageText), STORAGE_QUEUE_MAX_MESSAGE_CHARS);
  const envelope = asEnvelope(value);
  if (envelope === undefined) {
    // Something we did not write: shown as it is, with no reason to report.
    return {
      body: value,
      messageId: item.messageId,
      reason: "",
      description: "",
      deliveryCount: 0,
      enqueuedAt: item.insertedOn,
      deadLetteredAt: item.insertedOn,
    };
  }
  return envelope;
}

function asEnvelope(value: unknown): DeadLetter | undefined {
  if (typeof value !== "object" || value === null) return undefined;
  const fields = value as Record<string, unknown>;
  const { kind, reason, description, messageId, deliveryCount, enqueuedAt, deadLetteredAt } = fields;
  if (
    kind !== ENVELOPE_KIND ||
    typeof reason !== "string" ||
    typeof description !== "string" ||
    typeof messageId !== "string" ||
    typeof deliveryCount !== "number" ||
    typeof enqueuedAt !== "string" ||
    typeof deadLetteredAt !== "string"
  ) {
    return undefined;
  }
  const omitted = fields["bodyOmitted"];
  const bodyOmitted =
    typeof omitted === "object" &&
    omitted !== null &&
    typeof (omitted as Record<string, unknown>)["sha256"] === "string" &&
    typeof (omitted as Record<string, unknown>)["bytes"] === "number"
      ? { sha256: (omitted as { sha256: string }).sha256, bytes: (omitted as { bytes: number }).bytes }
      : undefined;
  return {
    body: fields["body"],
    messageId,
    reason,
    description,
    deliveryCount,
    enqueuedAt: new Date(enqueuedAt),
    deadLetteredAt: new Date(deadLetteredAt),
    ...(bodyOmitted === undefined ? {} : { bodyOmitted }),
  };
}
