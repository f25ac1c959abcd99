/**
 * The request queue's receiving end on Azure Service Bus: what the Functions host does with a
 * Service Bus trigger in Azure, for the local functions host and the contract tests. Messages
 * are received peek-locked from `attestation-requests`; complete, abandon, dead-letter and lock
 * renewal go to Service Bus, which counts deliveries and dead-letters a message abandoned
 * `MaxDeliveryCount` times with `MaxDeliveryCountExceeded` by itself.
 *
 * Settling a message twice is a lost lock (ERR_CONFLICT), whether Service Bus says so (the lock
 * ran out) or the SDK does (it refuses a second settlement before asking).
 *
 * Dead letters are read by peeking `<queue>/$deadletterqueue`, which leaves them in place.
 * Service Bus records no time of dead-lettering, so `deadLetteredAt` is the message's enqueue
 * time; the delivery count is the deliveries made, which is the AMQP count of unsettled
 * deliveries plus, for a message a receiver dead-lettered, the delivery it dead-lettered.
 */
import { ShieldError } from "../../core/errors.js";
import { DEFAULT_MAX_MESSAGE_BYTES } from "../../core/messages/index.js";
import {
  MAX_DELIVERY_COUNT_EXCEEDED,
  REQUESTS_QUEUE,
  checkTimeout,
  clampDeadLetterText,
  type DeadLetter,
  type LockedMessage,
  type RequestReceiver,
} from "../../core/ports/bus.js";
import { silentLogger, type Logger } from "../../core/ports/logger.js";
import { decodeBody, messageIdText } from "./bus.js";
import {
  isAbortError,
  serviceBusError,
  serviceBusErrorCode,
  withCallSignal,
  type ServiceBusLockedMessageLike,
  type ServiceBusReceiverLike,
  type ServiceBusReceivingClientLike,
} from "./client.js";

export interface ServiceBusRequestReceiverOptions {
  readonly client: ServiceBusReceivingClientLike;
  /** Default `attestation-requests`. */
  readonly requestsQueue?: string;
  /** Largest body parsed, in bytes (default 256 KiB); larger bodies are handed on as text. */
  readonly maxBodyBytes?: number;
  readonly logger?: Logger;
}

/** Dead-letter reasons Service Bus itself gives when it moves a message between deliveries. */
const BROKER_REASONS = new Set([MAX_DELIVERY_COUNT_EXCEEDED, "TTLExpiredException"]);
const PEEK_BATCH = 32;

export function createServiceBusRequestReceiver(options: ServiceBusRequestReceiverOptions): RequestReceiver {
  return new ServiceBusRequestReceiver(options);
}

class ServiceBusRequestReceiver implements RequestReceiver {
  readonly #client: ServiceBusReceivingClientLike;
  readonly #queue: string;
  readonly #maxBodyBytes: number;
  readonly #log: Logger;
  readonly #closing = new AbortController();
  #receiver: ServiceBusReceiverLike | undefined;

  constructor(options: ServiceBusRequestReceiverOptions) {
    this.#client = options.client;
    this.#queue = options.requestsQueue ?? REQUESTS_QUEUE;
    this.#maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.#log = options.logger ?? silentLogger;
  }

  async receive(timeoutMs: number): Promise<LockedMessage | undefined> {
    checkTimeout(timeoutMs);
    if (this.#closing.signal.aborted) throw new TypeError("receive: the request receiver is closed");
    this.#receiver ??= this.#client.createReceiver(this.#queue, {
      receiveMode: "peekLock",
      // Locks are renewed on request (`renewLock`), never behind the handler's back.
      maxAutoLockRenewalDurationInMs: 0,
      skipParsingBodyAsJson: true,
    });
    const receiver = this.#receiver;
    let messages: ServiceBusLockedMessageLike[];
    try {
      messages = await withCallSignal(this.#closing.signal, (abortSignal) =>
        receiver.receiveMessages(1, { maxWaitTimeInMs: Math.max(1, timeoutMs), abortSignal }),
      );
    } catch (error) {
      if (this.#closing.signal.aborted || isAbortError(error)) return undefined;
      throw serviceBusError("receive", error);
    }
    const message = messages[0];
    if (message === undefined) return undefined;
    this.#log("debug", "bus message received", {
      queue: this.#queue,
      messageId: messageIdText(message.messageId),
      deliveryCount: (message.deliveryCount ?? 0) + 1,
    });
    return this.#locked(receiver, message);
  }

  async readDeadLetters(): Promise<DeadLetter[]> {
    const deadLetters = this.#client.createReceiver(this.#queue, {
      subQueueType: "deadLetter",
      skipParsingBodyAsJson: true,
    });
    const found: DeadLetter[] = [];
    try {
      for (;;) {
        const batch = await deadLetters.peekMessages(PEEK_BATCH);
        found.push(...batch.map((message) => this.#deadLetter(message)));
        if (batch.length < PEEK_BATCH) break;
      }
    } catch (error) {
      throw serviceBusError("read dead letters", error);
    } finally {
      await deadLetters.close().catch(() => undefined);
    }
    return found;
  }

  async close(): Promise<void> {
    this.#closing.abort();
    const receiver = this.#receiver;
    this.#receiver = undefined;
    await receiver?.close().catch(() => undefined);
  }

  #locked(receiver: ServiceBusReceiverLike, message: ServiceBusLockedMessageLike): LockedMessage {
    const messageId = messageIdText(message.messageId);
    let settled = false;
    const settle = async (operation: string, action: () => Promise<void>): Promise<void> => {
      if (settled) {
        throw new ShieldError(
          "ERR_CONFLICT",
          `${operation}: the message was settled already (its lock is gone)`,
        );
      }
      try {
        await action();
        settled = true;
      } catch (error) {
        if (serviceBusErrorCode(error) === "MessageLockLost") settled = true;
        throw serviceBusError(operation, error);
      }
    };
    return {
      body: decodeBody(message.body, this.#maxBodyBytes),
      messageId,
      // The JavaScript SDK reports earlier deliveries (0 on the first); the port counts this one.
      deliveryCount: (message.deliveryCount ?? 0) + 1,
      enqueuedAt: message.enqueuedTimeUtc ?? new Date(0),
      complete: () => settle("complete", () => receiver.completeMessage(message)),
      abandon: () => settle("abandon", () => receiver.abandonMessage(message)),
      deadLetter: async (reason: string, description: string) => {
        const clamped = clampDeadLetterText(reason, description);
        await settle("dead-letter", () =>
          receiver.deadLetterMessage(message, {
            deadLetterReason: clamped.reason,
            deadLetterErrorDescription: clamped.description,
          }),
        );
        this.#log("warn", "bus message dead-lettered", {
          queue: this.#queue,
          messageId,
          reason: clamped.reason,
        });
      },
      renewLock: async () => {
        if (settled) throw new ShieldError("ERR_CONFLICT", "renew lock: the message was settled already");
        try {
          await receiver.renewMessageLock(message);
        } catch (error) {
          throw serviceBusError("renew lock", error);
        }
      },
    };
  }

  #deadLetter(message: ServiceBusLockedMessageLike): DeadLetter {
    const reason = message.deadLetterReason ?? "";
    const earlier = message.deliveryCount ?? 0;
    return {
      body: decodeBody(message.body, this.#maxBodyBytes),
      messageId: messageIdText(message.messageId),
      reason,
      description: message.deadLetterErrorDescription ?? "",
      deliveryCount: BROKER_REASONS.has(reason) ? earlier : earlier + 1,
      enqueuedAt: message.enqueuedTimeUtc ?? new Date(0),
      deadLetteredAt: message.enqueuedTimeUtc ?? new Date(0),
    };
  }
}
