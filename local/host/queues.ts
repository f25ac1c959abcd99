/**
 * Where the local host's queue triggers read from and its queue outputs write to, per
 * transport, as the Functions host's Service Bus and Storage Queue extensions do:
 *
 * - Service Bus (`@azure/service-bus`, against the local endpoint or a namespace): peek-lock
 *   receives; complete on return, abandon on throw, and the broker dead-letters a message
 *   abandoned `MaxDeliveryCount` times (`MaxDeliveryCountExceeded`), as the host leaves poison
 *   messages to Service Bus. Session-enabled queues are read a session at a time: a receiver
 *   accepts the next free session and reads it until it stays idle for `sessionIdleTimeout`.
 *   Trigger metadata carries what the Node worker hands on, camel-cased: `deliveryCount` (1 on
 *   the first delivery, as the .NET SDK counts), `messageId`, `sessionId`, `enqueuedTimeUtc`,
 *   `sequenceNumber`, `lockToken`, `contentType`, `applicationProperties`, ….
 * - Storage Queues (Azurite): Service Bus triggers and outputs map to the Storage Queue of the
 *   same name (the embedded default's fastest transport); peek-lock is the visibility timeout;
 *   there are no sessions; on the last allowed delivery a failing message is dead-lettered with
 *   the error's code as the reason (`<queue>-deadletter`); a Storage Queue trigger's poison
 *   queue is `<queue>-poison`, its metadata `dequeueCount`, `id`, `insertionTime`.
 */
import type {
  ServiceBusClient,
  ServiceBusReceivedMessage,
  ServiceBusReceiver,
  ServiceBusSender,
} from "@azure/service-bus";
import { isShieldError } from "../../core/errors.js";
import { textFromBytes, type LockedMessage } from "../../core/ports/bus.js";
import { createStorageQueueBus, type StorageQueueBus } from "../../adapters/storage-queue/bus.js";
import { createQueueServiceClient, encodeMessageText } from "../../adapters/storage-queue/queues.js";

/** One delivery to a queue-triggered function. */
export interface QueueDelivery {
  /** The trigger input as the Node worker gives it: a JSON body parsed, else its text. */
  readonly input: unknown;
  readonly triggerMetadata: Record<string, unknown>;
  readonly deliveryCount: number;
  readonly messageId: string;
  complete(): Promise<void>;
  /** The function failed: the message is delivered again (or dead-lettered, see `final`). */
  fail(error: unknown): Promise<"abandoned" | "dead-lettered">;
}

export interface QueueSource {
  /** Waits up to `timeoutMs` for the next delivery. */
  receive(timeoutMs: number): Promise<QueueDelivery | undefined>;
  close(): Promise<void>;
}

export interface QueueSink {
  send(queueName: string, message: unknown): Promise<void>;
  close(): Promise<void>;
}

/** What the Node worker makes of a body: JSON parsed when it parses, else the text. */
export function triggerInput(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

function errorCode(error: unknown): string {
  return isShieldError(error) ? error.code : error instanceof Error ? error.name : "Error";
}

function errorDescription(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

// ---------------------------------------------------------------- Storage Queues

export interface StorageQueueTransportOptions {
  readonly connectionString: string;
  /** Deliveries before a failing message is dead-lettered. */
  readonly maxDeliveryCount: number;
  /** Visibility timeout of a received message (the lock), ms. */
  readonly lockDurationMs?: number;
  /** Where dead letters go: `<queue>-deadletter` for Service Bus triggers, `<queue>-poison` for Storage Queue triggers. */
  readonly deadLetterQueue?: string;
  readonly minPollMs?: number;
  readonly maxPollMs?: number;
}

function storageDelivery(message: LockedMessage, maxDeliveryCount: number): QueueDelivery {
  const text = typeof message.body === "string" ? message.body : JSON.stringify(message.body);
  return {
    input: typeof message.body === "string" ? triggerInput(text) : message.body,
    deliveryCount: message.deliveryCount,
    messageId: message.messageId,
    triggerMetadata: {
      deliveryCount: message.deliveryCount,
      dequeueCount: message.deliveryCount,
      messageId: message.messageId,
      id: message.messageId,
      enqueuedTimeUtc: message.enqueuedAt.toISOString(),
      insertionTime: message.enqueuedAt.toISOString(),
    },
    complete: () => message.complete(),
    async fail(error) {
      if (message.deliveryCount >= maxDeliveryCount) {
        await message.deadLetter(errorCode(error), errorDescription(error));
        return "dead-lettered";
      }
      await message.abandon();
      return "abandoned";
    },
  };
}

export function storageQueueSource(queueName: string, options: StorageQueueTransportOptions): QueueSource {
  const bus: StorageQueueBus = createStorageQueueBus({
    connectionString: options.connectionString,
    requestsQueue: queueName,
    maxDeliveryCount: options.maxDeliveryCount,
    minPollMs: options.minPollMs ?? 20,
    maxPollMs: options.maxPollMs ?? 250,
    ...(options.deadLetterQueue === undefined ? {} : { deadLetterQueue: options.deadLetterQueue }),
    ...(options.lockDurationMs === undefined ? {} : { lockDurationMs: options.lockDurationMs }),
  });
  const receiver = bus.openRequestReceiver();
  return {
    async receive(timeoutMs) {
      const message = await receiver.receive(timeoutMs);
      return message === undefined ? undefined : storageDelivery(message, options.maxDeliveryCount);
    },
    async close() {
      await receiver.close();
      await bus.close();
    },
  };
}

export function storageQueueSink(connectionString: string): QueueSink {
  const service = createQueueServiceClient({ connectionString });
  const created = new Map<string, Promise<unknown>>();
  return {
    async send(queueName, message) {
      const queue = service.getQueueClient(queueName);
      let ready = created.get(queueName);
      if (ready === undefined) {
        ready = queue.createIfNotExists();
        created.set(queueName, ready);
      }
      await ready;
      const text = typeof message === "string" ? message : JSON.stringify(message);
      await queue.sendMessage(encodeMessageText(Buffer.from(text, "utf8")));
    },
    close: () => Promise.resolve(),
  };
}

// ---------------------------------------------------------------- Service Bus

export interface ServiceBusTransportOptions {
  readonly client: ServiceBusClient;
  readonly sessions: boolean;
  /** host.json `sessionIdleTimeout`: how long a session receiver waits before letting the session go. */
  readonly sessionIdleTimeoutMs?: number;
}

function camelCaseKeys(value: unknown): unknown {
  if (value === null || typeof value !== "object" || Array.isArray(value) || value instanceof Date)
    return value;
  const out: Record<string, unknown> = {};
  for (const [key, inner] of Object.entries(value as Record<string, unknown>)) {
    out[key.charAt(0).toLowerCase() + key.slice(1)] = camelCaseKeys(inner);
  }
  return out;
}

function bodyText(body: unknown): string {
  if (typeof body === "string") return body;
  if (body instanceof Uint8Array) return textFromBytes(body);
  return JSON.stringify(body);
}

function serviceBusDelivery(receiver: ServiceBusReceiver, message: ServiceBusReceivedMessage): QueueDelivery {
  // The JavaScript SDK counts earlier deliveries; the .NET extension (and so the worker) counts this one.
  const deliveryCount = (message.deliveryCount ?? 0) + 1;
  const messageId = message.messageId === undefined ? "" : String(message.messageId);
  const text = bodyText(message.body);
  return {
    input: triggerInput(text),
    deliveryCount,
    messageId,
    triggerMetadata: {
      deliveryCount,
      messageId,
      ...(message.sessionId === undefined ? {} : { sessionId: message.sessionId }),
      ...(message.enqueuedTimeUtc === undefined
        ? {}
        : { enqueuedTimeUtc: message.enqueuedTimeUtc.toISOString() }),
      ...(message.expiresAtUtc === undefined || message.expiresAtUtc.getUTCFullYear() > 9999
        ? {}
        : { expiresAtUtc: message.expiresAtUtc.toISOString() }),
      ...(message.sequenceNumber === undefined ? {} : { sequenceNumber: String(message.sequenceNumber) }),
      ...(message.lockToken === undefined ? {} : { lockToken: message.lockToken }),
      ...(message.contentType === undefined ? {} : { contentType: message.contentType }),
      ...(message.correlationId === undefined ? {} : { correlationId: String(message.correlationId) }),
      ...(message.subject === undefined ? {} : { subject: message.subject, label: message.subject }),
      applicationProperties: camelCaseKeys(message.applicationProperties ?? {}),
      userProperties: camelCaseKeys(message.applicationProperties ?? {}),
    },
    complete: () => receiver.completeMessage(message),
    async fail() {
      // Poison messages are Service Bus's to handle: it dead-letters at MaxDeliveryCount.
      await receiver.abandonMessage(message);
      return "abandoned";
    },
  };
}

/** A queue without sessions: one peek-lock receiver shared by the host's workers. */
function plainSource(queueName: string, client: ServiceBusClient): QueueSource {
  const receiver = client.createReceiver(queueName, {
    receiveMode: "peekLock",
    maxAutoLockRenewalDurationInMs: 5 * 60_000,
    skipParsingBodyAsJson: true,
  });
  const closing = new AbortController();
  return {
    async receive(timeoutMs) {
      if (closing.signal.aborted) return undefined;
      let messages: ServiceBusReceivedMessage[];
      try {
        messages = await receiver.receiveMessages(1, {
          maxWaitTimeInMs: Math.max(1, timeoutMs),
          abortSignal: closing.signal,
        });
      } catch (error) {
        if (closing.signal.aborted) return undefined;
        throw error;
      }
      const message = messages[0];
      return message === undefined ? undefined : serviceBusDelivery(receiver, message);
    },
    async close() {
      closing.abort();
      await receiver.close().catch(() => undefined);
    },
  };
}

/**
 * A session-enabled queue: each worker holds at most one session, accepted as the next free
 * one with messages, and reads it until it is idle; messages of one session are never handled
 * by two workers, and never two at a time.
 */
function sessionSource(queueName: string, options: ServiceBusTransportOptions): QueueSource {
  const idleMs = options.sessionIdleTimeoutMs ?? 1_000;
  const closing = new AbortController();
  const open = new Set<ServiceBusReceiver>();
  // One receiver per worker: the host's workers each call receive() on their own source.
  let current: ServiceBusReceiver | undefined;
  const release = async () => {
    const receiver = current;
    current = undefined;
    if (receiver !== undefined) {
      open.delete(receiver);
      await receiver.close().catch(() => undefined);
    }
  };
  return {
    async receive(timeoutMs) {
      if (closing.signal.aborted) return undefined;
      const deadline = Date.now() + timeoutMs;
      if (current === undefined) {
        try {
          const receiver = await options.client.acceptNextSession(queueName, {
            receiveMode: "peekLock",
            maxAutoLockRenewalDurationInMs: 5 * 60_000,
            skipParsingBodyAsJson: true,
            abortSignal: closing.signal,
          });
          current = receiver;
          open.add(receiver);
        } catch {
          // No free session with messages (or the endpoint is busy): wait, then look again.
          const left = deadline - Date.now();
          if (left > 0 && !closing.signal.aborted)
            await new Promise((r) => setTimeout(r, Math.min(left, 250)));
          return undefined;
        }
      }
      const receiver = current;
      let messages: ServiceBusReceivedMessage[];
      try {
        messages = await receiver.receiveMessages(1, {
          maxWaitTimeInMs: Math.max(1, Math.min(idleMs, timeoutMs)),
          abortSignal: closing.signal,
        });
      } catch (error) {
        await release();
        if (closing.signal.aborted) return undefined;
        throw error;
      }
      const message = messages[0];
      if (message === undefined) {
        await release(); // idle: let the session go so another worker (or a later message) can take it
        return undefined;
      }
      return serviceBusDelivery(receiver, message);
    },
    async close() {
      closing.abort();
      for (const receiver of [...open]) await receiver.close().catch(() => undefined);
      open.clear();
      current = undefined;
    },
  };
}

export function serviceBusSource(queueName: string, options: ServiceBusTransportOptions): QueueSource {
  return options.sessions ? sessionSource(queueName, options) : plainSource(queueName, options.client);
}

export function serviceBusSink(client: ServiceBusClient): QueueSink {
  const senders = new Map<string, ServiceBusSender>();
  return {
    async send(queueName, message) {
      let sender = senders.get(queueName);
      if (sender === undefined) {
        sender = client.createSender(queueName);
        senders.set(queueName, sender);
      }
      const text = typeof message === "string" ? message : JSON.stringify(message);
      await sender.sendMessages({
        body: Buffer.from(text, "utf8"),
        contentType: "application/json",
      });
    },
    async close() {
      for (const sender of senders.values()) await sender.close().catch(() => undefined);
      senders.clear();
    },
  };
}
