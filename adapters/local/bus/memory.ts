/**
 * The bus in one process: requests, per-agent queues and a dead-letter queue held in memory,
 * for unit tests and single-process runs. It keeps the semantics the other transports have —
 * peek-lock with delivery counts, lock expiry, automatic dead-lettering past
 * `maxDeliveryCount`, at-least-once delivery — so that code tested against it behaves the same
 * on Storage Queues and Service Bus. Bodies travel as JSON text, as on a real wire, so no
 * receiver ever shares an object with its sender.
 *
 * Receivers wait on a promise that a send resolves (no polling). Every timer is `unref()`ed and
 * cleared on close, so a closed bus never keeps the process alive.
 */
import { DEFAULT_MAX_MESSAGE_BYTES } from "../../../core/messages/index.js";
import { ShieldError } from "../../../core/errors.js";
import { systemClock, type Clock } from "../../../core/ports/clock.js";
import { silentLogger, type Logger } from "../../../core/ports/logger.js";
import {
  DEFAULT_MAX_DELIVERY_COUNT,
  MAX_DELIVERY_COUNT_EXCEEDED,
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
} from "../../../core/ports/bus.js";

export interface MemoryBusOptions {
  /** Deliveries before a request is dead-lettered (default 10, as Service Bus). */
  readonly maxDeliveryCount?: number;
  /** How long a received request stays locked (default 60 s, Service Bus's default). */
  readonly lockDurationMs?: number;
  /** Largest body accepted, in bytes of JSON (default 256 KiB, Service Bus Standard). */
  readonly maxBodyBytes?: number;
  /** Stamps enqueue and dead-letter times. */
  readonly clock?: Clock;
  readonly logger?: Logger;
}

interface StoredMessage {
  readonly messageId: string;
  readonly text: string;
  readonly enqueuedAt: Date;
  readonly sequence: number;
  deliveryCount: number;
}

interface StoredDeadLetter {
  readonly message: StoredMessage;
  readonly reason: string;
  readonly description: string;
  readonly deadLetteredAt: Date;
}

/** Something that can be closed while its callers wait: closing wakes them. */
class Waitable {
  closed = false;
  readonly #wakers = new Set<() => void>();

  /** Resolves on `wake()`, on close, or after `ms`, whichever comes first. */
  wait(ms: number, also?: Waitable): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#wakers.delete(done);
        if (also !== undefined) also.#wakers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      timer.unref();
      this.#wakers.add(done);
      if (also !== undefined) also.#wakers.add(done);
    });
  }

  wake(): void {
    for (const waker of [...this.#wakers]) waker();
  }

  close(): void {
    this.closed = true;
    this.wake();
  }
}

/** One queue: visible messages in sequence order, and the receivers waiting for one. */
class MemoryQueue extends Waitable {
  readonly #visible: StoredMessage[] = [];

  /** Adds a message in sequence order, so an abandoned message goes back to where it was. */
  put(message: StoredMessage): void {
    let index = this.#visible.length;
    while (index > 0 && (this.#visible[index - 1]?.sequence ?? 0) > message.sequence) index--;
    this.#visible.splice(index, 0, message);
    this.wake();
  }

  take(): StoredMessage | undefined {
    return this.#visible.shift();
  }

  /** Waits up to `timeoutMs` for a message; undefined on timeout or when `owner` closes. */
  async next(timeoutMs: number, owner: Waitable): Promise<StoredMessage | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (owner.closed || this.closed) return undefined;
      const message = this.take();
      if (message !== undefined) return message;
      const remaining = deadline - Date.now();
      if (remaining <= 0) return undefined;
      await this.wait(remaining, owner);
    }
  }
}

function receivedFrom(message: StoredMessage, maxBodyBytes: number): ReceivedMessage {
  return {
    body: bodyFromText(message.text, maxBodyBytes),
    messageId: message.messageId,
    deliveryCount: message.deliveryCount,
    enqueuedAt: new Date(message.enqueuedAt),
  };
}

/** Runs `action` so that whatever it throws becomes a rejection, as an I/O-backed port would. */
function run(action: () => void): Promise<void> {
  return new Promise((resolve) => {
    action();
    resolve();
  });
}

function lockLost(): ShieldError {
  return new ShieldError("ERR_CONFLICT", "the message lock was lost; it will be delivered again");
}

function positiveInteger(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < 1) throw new TypeError(`${name} must be a positive integer`);
  return value;
}

export class MemoryBus implements LocalBus {
  readonly #maxDeliveryCount: number;
  readonly #lockDurationMs: number;
  readonly #maxBodyBytes: number;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #requests = new MemoryQueue();
  readonly #agents = new Map<string, MemoryQueue>();
  readonly #deadLetters: StoredDeadLetter[] = [];
  readonly #lockTimers = new Set<NodeJS.Timeout>();
  readonly #lifetime = new Waitable();
  #sequence = 0;

  constructor(options: MemoryBusOptions = {}) {
    this.#maxDeliveryCount = positiveInteger(
      options.maxDeliveryCount,
      DEFAULT_MAX_DELIVERY_COUNT,
      "maxDeliveryCount",
    );
    this.#lockDurationMs = positiveInteger(options.lockDurationMs, 60_000, "lockDurationMs");
    this.#maxBodyBytes = positiveInteger(options.maxBodyBytes, DEFAULT_MAX_MESSAGE_BYTES, "maxBodyBytes");
    this.#clock = options.clock ?? systemClock;
    this.#log = options.logger ?? silentLogger;
  }

  get maxBodyBytes(): number {
    return this.#maxBodyBytes;
  }

  sendRequest(request: AgentRequest): Promise<void> {
    return run(() => {
      checkRequest(request);
      this.#checkOpen();
      const body = serializeBody(request, this.#maxBodyBytes);
      this.#enqueue(this.#requests, requestMessageId(request), body.toString("utf8"), "requests");
    });
  }

  sendToAgent(agentId: string, message: SignedAgentMessage): Promise<void> {
    return run(() => {
      checkAgentMessage(agentId, message);
      this.#checkOpen();
      const body = serializeBody(message.jws, this.#maxBodyBytes);
      const queue = this.#agentQueue(agentId);
      this.#enqueue(queue, agentMessageId(message), body.toString("utf8"), "agent");
    });
  }

  /** Puts text on the request queue as is, as a foreign or broken sender could. */
  enqueueRawRequest(text: string): void {
    this.#checkOpen();
    this.#enqueue(this.#requests, `raw-${this.#sequence + 1}`, text, "requests");
  }

  /** Puts text on an agent's queue as is, as a foreign or broken sender could. */
  enqueueRawAgentMessage(agentId: string, text: string): void {
    checkAgentId(agentId);
    this.#checkOpen();
    this.#enqueue(this.#agentQueue(agentId), `raw-${this.#sequence + 1}`, text, "agent");
  }

  openRequestReceiver(): RequestReceiver {
    this.#checkOpen();
    const receiver = new Waitable();
    return {
      receive: (timeoutMs) => this.#receiveRequest(timeoutMs, receiver),
      readDeadLetters: () => Promise.resolve(this.#readDeadLetters()),
      close: () => {
        receiver.close();
        return Promise.resolve();
      },
    };
  }

  openAgentInbox(agentId: string): AgentInbox {
    checkAgentId(agentId);
    this.#checkOpen();
    const inbox = new Waitable();
    const queue = this.#agentQueue(agentId);
    return {
      receive: async (timeoutMs) => {
        checkTimeout(timeoutMs);
        if (inbox.closed) throw new TypeError("receive: the agent inbox is closed");
        const message = await queue.next(timeoutMs, inbox);
        if (message === undefined) return undefined;
        message.deliveryCount += 1;
        this.#log("debug", "bus message received", {
          queue: "agent",
          messageId: message.messageId,
          deliveryCount: message.deliveryCount,
        });
        return receivedFrom(message, this.#maxBodyBytes);
      },
      close: () => {
        inbox.close();
        return Promise.resolve();
      },
    };
  }

  /** Wakes every waiting receiver (they get undefined) and stops every lock timer. */
  close(): Promise<void> {
    this.#lifetime.close();
    this.#requests.close();
    for (const queue of this.#agents.values()) queue.close();
    for (const timer of this.#lockTimers) clearTimeout(timer);
    this.#lockTimers.clear();
    return Promise.resolve();
  }

  #checkOpen(): void {
    if (this.#lifetime.closed) throw new TypeError("the memory bus is closed");
  }

  #agentQueue(agentId: string): MemoryQueue {
    let queue = this.#agents.get(agentId);
    if (queue === undefined) {
      queue = new MemoryQueue();
      this.#agents.set(agentId, queue);
    }
    return queue;
  }

  #enqueue(queue: MemoryQueue, messageId: string, text: string, name: string): void {
    this.#sequence += 1;
    queue.put({ messageId, text, enqueuedAt: this.#clock.now(), sequence: this.#sequence, deliveryCount: 0 });
    this.#log("debug", "bus message sent", { queue: name, messageId, bytes: Buffer.byteLength(text) });
  }

  async #receiveRequest(timeoutMs: number, receiver: Waitable): Promise<LockedMessage | undefined> {
    checkTimeout(timeoutMs);
    if (receiver.closed) throw new TypeError("receive: the request receiver is closed");
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const message = await this.#requests.next(Math.max(0, deadline - Date.now()), receiver);
      if (message === undefined) return undefined;
      message.deliveryCount += 1;
      if (message.deliveryCount > this.#maxDeliveryCount) {
        // Delivered max times already: this delivery is refused, as the broker refuses it.
        message.deliveryCount -= 1;
        this.#deadLetter(
          message,
          MAX_DELIVERY_COUNT_EXCEEDED,
          `delivered ${this.#maxDeliveryCount} times without being completed`,
        );
        continue;
      }
      this.#log("debug", "bus message received", {
        queue: "requests",
        messageId: message.messageId,
        deliveryCount: message.deliveryCount,
      });
      return this.#lock(message);
    }
  }

  /** Holds a message under a lock that settling ends and that expires on its own. */
  #lock(message: StoredMessage): LockedMessage {
    let held = true;
    let timer: NodeJS.Timeout | undefined;
    const release = (): void => {
      held = false;
      if (timer !== undefined) {
        clearTimeout(timer);
        this.#lockTimers.delete(timer);
      }
    };
    const startTimer = (): void => {
      if (timer !== undefined) {
        clearTimeout(timer);
        this.#lockTimers.delete(timer);
      }
      timer = setTimeout(() => {
        release();
        this.#log("warn", "bus message lock expired", { queue: "requests", messageId: message.messageId });
        this.#requests.put(message);
      }, this.#lockDurationMs);
      timer.unref();
      this.#lockTimers.add(timer);
    };
    const settle = (): void => {
      if (!held || this.#lifetime.closed) throw lockLost();
      release();
    };
    startTimer();
    return {
      ...receivedFrom(message, this.#maxBodyBytes),
      complete: () =>
        run(() => {
          settle();
          this.#log("debug", "bus message completed", { queue: "requests", messageId: message.messageId });
        }),
      abandon: () =>
        run(() => {
          settle();
          this.#log("debug", "bus message abandoned", { queue: "requests", messageId: message.messageId });
          this.#requests.put(message);
        }),
      deadLetter: (reason, description) =>
        run(() => {
          const text = clampDeadLetterText(reason, description);
          settle();
          this.#deadLetter(message, text.reason, text.description);
        }),
      renewLock: () =>
        run(() => {
          if (!held || this.#lifetime.closed) throw lockLost();
          startTimer();
        }),
    };
  }

  #deadLetter(message: StoredMessage, reason: string, description: string): void {
    this.#deadLetters.push({ message, reason, description, deadLetteredAt: this.#clock.now() });
    this.#log("warn", "bus message dead-lettered", {
      queue: "requests",
      messageId: message.messageId,
      reason,
      deliveryCount: message.deliveryCount,
    });
  }

  #readDeadLetters(): DeadLetter[] {
    return this.#deadLetters.map((entry) => ({
      body: bodyFromText(entry.message.text, this.#maxBodyBytes),
      messageId: entry.message.messageId,
      reason: entry.reason,
      description: entry.description,
      deliveryCount: entry.message.deliveryCount,
      enqueuedAt: new Date(entry.message.enqueuedAt),
      deadLetteredAt: new Date(entry.deadLetteredAt),
    }));
  }
}

export function createMemoryBus(options: MemoryBusOptions = {}): MemoryBus {
  return new MemoryBus(options);
}
