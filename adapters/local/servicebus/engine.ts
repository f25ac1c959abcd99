/**
 * The queues of the local Service Bus-compatible endpoint, apart from AMQP: what a message is
 * while it waits, while it is locked and once it is dead-lettered, following Service Bus's
 * documented semantics ("Message transfers, locks, and settlement", "Message sessions",
 * "Dead-letter queues", "Message expiration"):
 *
 * - each queue numbers its messages (sequence numbers from 1) and keeps them in that order;
 * - a peek-lock delivery locks the message for the queue's lock duration under a fresh lock
 *   token; complete removes it, abandon unlocks it with its delivery count one higher, and so
 *   does a lock that runs out; a message whose delivery count reaches the queue's
 *   `maxDeliveryCount` moves to `<queue>/$deadletterqueue` with `DeadLetterReason`
 *   `MaxDeliveryCountExceeded`; dead-lettering on demand keeps the given reason and description;
 * - a message whose time to live has passed is never delivered again and is dropped (the queue
 *   default `DeadLetteringOnMessageExpiration = false`);
 * - on a session-enabled queue a receiver first locks a session: one receiver per session, the
 *   lock lasting the lock duration until renewed; it receives only that session's messages,
 *   whose locks are the session's; when the session lock ends, the link is told and those
 *   messages are released as by a lock that ran out.
 *
 * The delivery count here is the AMQP header's: deliveries that did not end in settlement
 * (0 on the first delivery), as Service Bus sends it. Failures carry the AMQP error condition
 * and the description Service Bus gives, so that the SDK maps them to its own error codes.
 */
import { randomUUID } from "node:crypto";
import { MAX_DELIVERY_COUNT_EXCEEDED } from "../../../core/ports/bus.js";
import type { Clock } from "../../../core/ports/clock.js";

export const DEAD_LETTER_QUEUE_SUFFIX = "/$deadletterqueue";

export interface QueueSettings {
  readonly name: string;
  /** Sessions enabled (`RequiresSession`); default false. */
  readonly requiresSession?: boolean;
  /** `LockDuration` in ms; default 60 000 (Service Bus's PT1M), at most 300 000. */
  readonly lockDurationMs?: number;
  /** `MaxDeliveryCount`; default 10. */
  readonly maxDeliveryCount?: number;
  /** `DefaultMessageTimeToLive` in ms; default: unlimited. */
  readonly defaultMessageTimeToLiveMs?: number;
}

/** An AMQP error as the endpoint sends it: a condition and Service Bus's description. */
export class BrokerError extends Error {
  constructor(
    readonly condition: string,
    description: string,
  ) {
    super(description);
    this.name = "BrokerError";
  }
}

export interface StoredMessage {
  readonly sequenceNumber: number;
  /** The encoded AMQP message as the sender sent it (bare message, its sections re-encoded). */
  readonly encoded: Buffer;
  readonly sessionId: string | undefined;
  readonly messageId: string | undefined;
  readonly enqueuedAt: Date;
  /** Epoch ms after which the message is expired; Infinity for none. */
  readonly expiresAt: number;
  deliveryCount: number;
  /** Set once the message is in a dead-letter queue. */
  deadLetter?: { readonly reason: string; readonly description: string };
  lock?: MessageLock;
}

export interface MessageLock {
  /** The lock token (a UUID in its usual text form). */
  readonly token: string;
  lockedUntil: number;
  readonly owner: Consumer;
  timer?: NodeJS.Timeout;
}

/** A receiving link as the queue sees it. */
export interface Consumer {
  /** The session this link holds; undefined on a queue without sessions. */
  readonly sessionId: string | undefined;
  /** How many more messages the link may be given now. */
  credit(): number;
  /** Hands one locked message to the link. */
  deliver(message: StoredMessage, lock: MessageLock): void;
  /** The link's session lock ended (expired): it must detach with session-lock-lost. */
  sessionLost(): void;
}

export type Settlement =
  | { readonly kind: "complete" }
  | { readonly kind: "abandon" }
  | { readonly kind: "dead-letter"; readonly reason: string; readonly description: string };

interface SessionLock {
  readonly owner: Consumer;
  lockedUntil: number;
  timer: NodeJS.Timeout;
}

const DEFAULT_LOCK_MS = 60_000;
const MAX_LOCK_MS = 300_000;

export const LOCK_LOST =
  "The lock supplied is invalid. Either the lock expired, or the message has already been removed from the queue, or was received by a different receiver instance.";
export const SESSION_LOCK_LOST =
  "The session lock has expired on the MessageSession. Accept a new MessageSession.";

export class EntityQueue {
  readonly name: string;
  readonly requiresSession: boolean;
  readonly lockDurationMs: number;
  readonly maxDeliveryCount: number;
  readonly defaultTtlMs: number;
  /** Undefined on a dead-letter queue (nothing is dead-lettered from there). */
  readonly deadLetterQueue: EntityQueue | undefined;
  readonly #clock: Clock;
  readonly #messages: StoredMessage[] = [];
  readonly #consumers = new Set<Consumer>();
  readonly #locks = new Map<string, StoredMessage>();
  readonly #sessions = new Map<string, SessionLock>();
  #nextSequence: () => number;

  constructor(settings: QueueSettings, clock: Clock, deadLetterOf?: EntityQueue) {
    this.name = deadLetterOf === undefined ? settings.name : `${settings.name}${DEAD_LETTER_QUEUE_SUFFIX}`;
    this.requiresSession = deadLetterOf === undefined && settings.requiresSession === true;
    this.lockDurationMs = checkLockDuration(settings.lockDurationMs ?? DEFAULT_LOCK_MS);
    this.maxDeliveryCount = settings.maxDeliveryCount ?? 10;
    if (!Number.isSafeInteger(this.maxDeliveryCount) || this.maxDeliveryCount < 1) {
      throw new TypeError("maxDeliveryCount must be an integer >= 1");
    }
    this.defaultTtlMs = settings.defaultMessageTimeToLiveMs ?? Number.POSITIVE_INFINITY;
    this.#clock = clock;
    let sequence = 0;
    // A dead-letter queue keeps the sequence numbers its messages had.
    this.#nextSequence = () => ++sequence;
    this.deadLetterQueue = deadLetterOf === undefined ? new EntityQueue(settings, clock, this) : undefined;
  }

  /** Appends a message; `timeToLiveMs` is the sender's, capped by the queue's default. */
  enqueue(input: {
    encoded: Buffer;
    sessionId: string | undefined;
    messageId: string | undefined;
    timeToLiveMs: number | undefined;
  }): StoredMessage {
    if (this.requiresSession && (input.sessionId === undefined || input.sessionId === "")) {
      throw new BrokerError(
        "amqp:not-allowed",
        "The SessionId was not set on a message, and it cannot be sent to the entity. Entities that have session support enabled can only receive messages that have the SessionId set to a valid value.",
      );
    }
    const now = this.#clock.now();
    const ttl = Math.min(input.timeToLiveMs ?? Number.POSITIVE_INFINITY, this.defaultTtlMs);
    const message: StoredMessage = {
      sequenceNumber: this.#nextSequence(),
      encoded: input.encoded,
      sessionId: input.sessionId,
      messageId: input.messageId,
      enqueuedAt: now,
      expiresAt: now.getTime() + ttl,
      deliveryCount: 0,
    };
    this.#messages.push(message);
    this.pump();
    return message;
  }

  attach(consumer: Consumer): void {
    this.#consumers.add(consumer);
  }

  /** The link is gone: a session it held is released (its messages unlocked); message locks stay. */
  detach(consumer: Consumer): void {
    this.#consumers.delete(consumer);
    const sessionId = consumer.sessionId;
    if (sessionId !== undefined && this.#sessions.get(sessionId)?.owner === consumer) {
      this.#endSession(sessionId);
    }
  }

  /**
   * Locks a session for a link: the named one, or (undefined) the first unlocked session with a
   * message waiting. Refused with session-cannot-be-locked when another link holds it or none is
   * free.
   */
  acceptSession(sessionId: string | undefined, owner: Consumer): { sessionId: string; lockedUntil: number } {
    if (!this.requiresSession) {
      throw new BrokerError(
        "amqp:not-allowed",
        "It is not possible for an entity that does not require sessions to create a session receiver.",
      );
    }
    const chosen = sessionId ?? this.#freeSessionWithMessages();
    if (chosen === undefined) {
      throw new BrokerError("com.microsoft:timeout", "No unlocked session with messages is available.");
    }
    const held = this.#sessions.get(chosen);
    if (held !== undefined && held.lockedUntil > this.#clock.now().getTime()) {
      throw new BrokerError(
        "com.microsoft:session-cannot-be-locked",
        `The requested session '${chosen}' cannot be accepted. It may be locked by another receiver.`,
      );
    }
    if (held !== undefined) this.#endSession(chosen);
    const lockedUntil = this.#clock.now().getTime() + this.lockDurationMs;
    this.#sessions.set(chosen, {
      owner,
      lockedUntil,
      timer: this.#sessionTimer(chosen, this.lockDurationMs),
    });
    return { sessionId: chosen, lockedUntil };
  }

  /** `com.microsoft:renew-session-lock`: only the link holding the session may renew it. */
  renewSessionLock(sessionId: string, associatedLink: (consumer: Consumer) => boolean): number {
    const held = this.#sessions.get(sessionId);
    if (held === undefined || !associatedLink(held.owner)) {
      throw new BrokerError("com.microsoft:session-lock-lost", SESSION_LOCK_LOST);
    }
    clearTimeout(held.timer);
    held.lockedUntil = this.#clock.now().getTime() + this.lockDurationMs;
    held.timer = this.#sessionTimer(sessionId, this.lockDurationMs);
    for (const message of this.#locks.values()) {
      if (message.sessionId === sessionId && message.lock !== undefined) {
        message.lock.lockedUntil = held.lockedUntil;
      }
    }
    return held.lockedUntil;
  }

  /** Gives waiting messages to links with credit, oldest first. */
  pump(): void {
    for (const consumer of this.#consumers) {
      while (consumer.credit() > 0) {
        const message = this.#nextFor(consumer);
        if (message === undefined) break;
        consumer.deliver(message, this.#lock(message, consumer));
      }
    }
  }

  /** Settles a locked message by its lock token; a lock that is gone is message-lock-lost. */
  settle(token: string, settlement: Settlement): void {
    const message = this.#locked(token);
    this.#unlock(message);
    switch (settlement.kind) {
      case "complete":
        this.#remove(message);
        break;
      case "abandon":
        this.#redeliver(message);
        break;
      case "dead-letter":
        this.#moveToDeadLetters(message, settlement.reason, settlement.description);
        break;
    }
    this.pump();
  }

  /** `com.microsoft:renew-lock`: extends a message lock by the lock duration. */
  renewLock(token: string): number {
    const message = this.#locked(token);
    if (message.sessionId !== undefined && this.requiresSession) {
      throw new BrokerError(
        "amqp:not-allowed",
        "The renew lock operation is not supported for session-enabled entities; renew the session lock.",
      );
    }
    const lock = message.lock!;
    lock.lockedUntil = this.#clock.now().getTime() + this.lockDurationMs;
    clearTimeout(lock.timer);
    lock.timer = this.#lockTimer(message, this.lockDurationMs);
    return lock.lockedUntil;
  }

  /** `com.microsoft:peek-message`: messages from a sequence number on, locked or not, none removed. */
  peek(fromSequenceNumber: number, count: number, sessionId?: string): StoredMessage[] {
    this.#dropExpired();
    return this.#messages
      .filter(
        (message) =>
          message.sequenceNumber >= fromSequenceNumber &&
          (sessionId === undefined || message.sessionId === sessionId),
      )
      .slice(0, count);
  }

  /** Waiting messages (locked or not), for tests and status output. */
  get size(): number {
    return this.#messages.length;
  }

  close(): void {
    for (const message of this.#locks.values()) clearTimeout(message.lock?.timer);
    for (const session of this.#sessions.values()) clearTimeout(session.timer);
    this.#locks.clear();
    this.#sessions.clear();
    this.#consumers.clear();
    this.deadLetterQueue?.close();
  }

  /** Receives a dead-lettered message (keeps its sequence number, count and enqueue time). */
  #acceptDeadLetter(message: StoredMessage): void {
    this.#messages.push(message);
    this.#messages.sort((a, b) => a.sequenceNumber - b.sequenceNumber);
    this.pump();
  }

  #nextFor(consumer: Consumer): StoredMessage | undefined {
    this.#dropExpired();
    if (this.requiresSession) {
      const session = consumer.sessionId === undefined ? undefined : this.#sessions.get(consumer.sessionId);
      if (session === undefined || session.owner !== consumer) return undefined;
    }
    return this.#messages.find(
      (message) =>
        message.lock === undefined && (!this.requiresSession || message.sessionId === consumer.sessionId),
    );
  }

  #lock(message: StoredMessage, owner: Consumer): MessageLock {
    const session = message.sessionId === undefined ? undefined : this.#sessions.get(message.sessionId);
    const inSession = this.requiresSession && session !== undefined;
    const lock: MessageLock = {
      token: randomUUID(),
      lockedUntil: inSession ? session.lockedUntil : this.#clock.now().getTime() + this.lockDurationMs,
      owner,
    };
    // Messages of a session are held by the session's lock, not by a timer of their own.
    if (!inSession) lock.timer = this.#lockTimer(message, this.lockDurationMs);
    message.lock = lock;
    this.#locks.set(lock.token, message);
    return lock;
  }

  #locked(token: string): StoredMessage {
    const message = this.#locks.get(token);
    if (message === undefined || message.lock === undefined) {
      throw new BrokerError("com.microsoft:message-lock-lost", LOCK_LOST);
    }
    return message;
  }

  #unlock(message: StoredMessage): void {
    if (message.lock === undefined) return;
    clearTimeout(message.lock.timer);
    this.#locks.delete(message.lock.token);
    delete message.lock;
  }

  /** After an abandon or a lost lock: one more delivery counted, dead-lettered at the maximum. */
  #redeliver(message: StoredMessage): void {
    message.deliveryCount += 1;
    if (this.deadLetterQueue !== undefined && message.deliveryCount >= this.maxDeliveryCount) {
      this.#moveToDeadLetters(
        message,
        MAX_DELIVERY_COUNT_EXCEEDED,
        `Message could not be consumed after ${this.maxDeliveryCount} delivery attempts.`,
      );
    }
  }

  #moveToDeadLetters(message: StoredMessage, reason: string, description: string): void {
    const deadLetters = this.deadLetterQueue;
    if (deadLetters === undefined) {
      throw new BrokerError("amqp:not-allowed", "A message in a dead-letter queue cannot be dead-lettered.");
    }
    this.#remove(message);
    message.deadLetter = { reason, description };
    deadLetters.#acceptDeadLetter(message);
  }

  #remove(message: StoredMessage): void {
    const at = this.#messages.indexOf(message);
    if (at >= 0) this.#messages.splice(at, 1);
  }

  #dropExpired(): void {
    const now = this.#clock.now().getTime();
    for (let index = this.#messages.length - 1; index >= 0; index--) {
      const message = this.#messages[index]!;
      if (message.lock === undefined && message.expiresAt <= now) this.#messages.splice(index, 1);
    }
  }

  #lockTimer(message: StoredMessage, ms: number): NodeJS.Timeout {
    const timer = setTimeout(() => {
      if (message.lock === undefined) return;
      this.#unlock(message);
      this.#redeliver(message);
      this.pump();
    }, ms);
    timer.unref();
    return timer;
  }

  #sessionTimer(sessionId: string, ms: number): NodeJS.Timeout {
    const timer = setTimeout(() => {
      const held = this.#sessions.get(sessionId);
      if (held === undefined) return;
      this.#endSession(sessionId);
      held.owner.sessionLost();
    }, ms);
    timer.unref();
    return timer;
  }

  /** Releases a session and the messages locked under it, as lost locks. */
  #endSession(sessionId: string): void {
    const held = this.#sessions.get(sessionId);
    if (held === undefined) return;
    clearTimeout(held.timer);
    this.#sessions.delete(sessionId);
    for (const message of [...this.#locks.values()]) {
      if (message.sessionId !== sessionId) continue;
      this.#unlock(message);
      this.#redeliver(message);
    }
    this.pump();
  }

  #freeSessionWithMessages(): string | undefined {
    const now = this.#clock.now().getTime();
    for (const message of this.#messages) {
      if (message.sessionId === undefined || message.lock !== undefined) continue;
      const held = this.#sessions.get(message.sessionId);
      if (held === undefined || held.lockedUntil <= now) return message.sessionId;
    }
    return undefined;
  }
}

function checkLockDuration(ms: number): number {
  if (!Number.isSafeInteger(ms) || ms < 1 || ms > MAX_LOCK_MS) {
    throw new TypeError(`lockDurationMs must be an integer from 1 to ${MAX_LOCK_MS}`);
  }
  return ms;
}
