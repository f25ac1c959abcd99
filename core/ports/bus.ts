/**
 * The message bus ports: Azure Service Bus in Azure, Azure Storage Queues (Azurite) in the
 * embedded default, in-process queues in unit tests. Messages are the versioned contracts of
 * core/messages; the bus moves JSON bodies and never inspects or logs them.
 *
 * Results, challenges and key events go to one agent at a time: on Service Bus that is the
 * session whose id is the agent id on `attestation-results`; other transports give each agent its
 * own queue. They travel signed (core/control): the body is the compact JWS, so whoever can
 * write to an agent's queue can delay it but never steer it. Delivery is at least once
 * everywhere, so every receiver must be idempotent.
 *
 * Requests are received with peek-lock semantics as Service Bus has them: a received request is
 * locked, not removed, until it is completed, abandoned (delivered again, its delivery count one
 * higher) or dead-lettered; past `maxDeliveryCount` deliveries the transport dead-letters it with
 * the reason `MaxDeliveryCountExceeded`. In Azure the Functions host does the receiving; the
 * local transports give the embedded default's functions host the same behaviour.
 *
 * This module also fixes the wire form every transport shares: a body is the UTF-8 JSON text of
 * one message, and a received body is handed on as the JSON object it encodes or, when it is not
 * one, as the raw text, so the receiver's parser can refuse it, record it and settle it.
 */
import { createHash } from "node:crypto";
import { ShieldError } from "../errors.js";
import {
  IDENTIFIER_PATTERN,
  JWS_COMPACT,
  type AttestationRequest,
  type AttestationResult,
  type Challenge,
  type ChallengeRequest,
  type KeyEvent,
  type RotateKey,
} from "../messages/index.js";

/** What the functions tell an agent (before signing). */
export type AgentMessage = AttestationResult | Challenge | KeyEvent;
export type AgentMessageType = AgentMessage["type"];
export const AGENT_MESSAGE_TYPES: readonly AgentMessageType[] = [
  "attestation-result",
  "challenge",
  "key-event",
];

/** What agents send to the functions. */
export type AgentRequest = ChallengeRequest | AttestationRequest;

/** A control message as it travels: signed by the control plane for one agent (core/control). */
export interface SignedAgentMessage {
  readonly type: AgentMessageType;
  readonly agentId: string;
  /** The signed message id (`jti`), unique per signing; the transport's message id derives from it. */
  readonly messageId: string;
  /** The compact JWS: the body on the wire, as UTF-8 text. */
  readonly jws: string;
}

/** Queue names as deployed (Bicep) and as the local transports use them by default. */
export const REQUESTS_QUEUE = "attestation-requests";
export const RESULTS_QUEUE = "attestation-results";
/** `rotate-key` work: on Service Bus a session-enabled queue, session id = key name. */
export const ROTATE_KEY_QUEUE = "rotate-key";
/** Service Bus's default for a queue's MaxDeliveryCount. */
export const DEFAULT_MAX_DELIVERY_COUNT = 10;
/** The dead-letter reason Service Bus gives a message delivered too often. */
export const MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded";

/** Functions → agents: the transport. Only signed messages travel on it. */
export interface AgentChannel {
  /** Sends to the agent's session (Service Bus) or queue (local transports). */
  sendToAgent(agentId: string, message: SignedAgentMessage): Promise<void>;
}

/** A received message: its body (untrusted, unparsed) and how often it has been delivered. */
export interface ReceivedMessage {
  /**
   * The JSON object the body encodes, or the body's raw text when it is not a JSON object.
   * Untrusted: parse it with core/messages before looking inside.
   */
  readonly body: unknown;
  /** The transport's id for the message (for logs; Storage Queues assign their own). */
  readonly messageId: string;
  /** 1 on the first delivery. */
  readonly deliveryCount: number;
  readonly enqueuedAt: Date;
}

/**
 * Functions → the rotate function: `rotate-key` work items (revocations, Key Vault events,
 * schedules). On Service Bus each goes to the session named after its key, so one key's
 * rotations run one at a time; the rotate use case serialises them itself too, with a lease in
 * state, so a transport without sessions is just as safe.
 */
export interface RotationQueue {
  enqueueRotation(message: RotateKey): Promise<void>;
}

/** Agents → functions. */
export interface RequestChannel {
  sendRequest(request: AgentRequest): Promise<void>;
}

/** An agent's own inbox. */
export interface AgentInbox {
  /**
   * Waits up to `timeoutMs` for the next message for this agent; undefined on timeout or when
   * the inbox is closed while waiting. The message is settled (removed) before the promise
   * resolves; should settling fail, the message comes again later. The agent processes
   * messages idempotently, so a crash between receive and processing costs one re-attestation.
   */
  receive(timeoutMs: number): Promise<ReceivedMessage | undefined>;
  close(): Promise<void>;
}

/** A request held under a lock until it is settled, as a Service Bus peek-lock receive gives it. */
export interface LockedMessage extends ReceivedMessage {
  /** Removes the message: it was handled (including a recorded refusal). */
  complete(): Promise<void>;
  /** Releases the lock: the message is delivered again, its delivery count one higher. */
  abandon(): Promise<void>;
  /** Moves the message to the dead-letter queue with a reason and a description (no secrets). */
  deadLetter(reason: string, description: string): Promise<void>;
  /** Extends the lock by the transport's lock duration, for handlers that run long. */
  renewLock(): Promise<void>;
}

/** A dead-lettered message as operators and tests read it. */
export interface DeadLetter {
  /** As in ReceivedMessage: the JSON object, or the raw text. */
  readonly body: unknown;
  readonly messageId: string;
  readonly reason: string;
  readonly description: string;
  /** Deliveries before it was dead-lettered. */
  readonly deliveryCount: number;
  readonly enqueuedAt: Date;
  readonly deadLetteredAt: Date;
  /**
   * Set when the body did not fit beside the reason (Storage Queues' 64 KiB; only a foreign
   * message can be that large): `body` is then undefined and this identifies it.
   */
  readonly bodyOmitted?: { readonly sha256: string; readonly bytes: number };
}

/** The request queue's receiving end, for the embedded default's local functions host. */
export interface RequestReceiver {
  /**
   * Waits up to `timeoutMs` for the next request and locks it; undefined on timeout or when the
   * receiver is closed while waiting. A request already delivered `maxDeliveryCount` times is
   * dead-lettered (`MaxDeliveryCountExceeded`) instead of being returned.
   */
  receive(timeoutMs: number): Promise<LockedMessage | undefined>;
  /** The dead-letter queue, oldest first (Storage Queues show at most the first 32). */
  readDeadLetters(): Promise<DeadLetter[]>;
  close(): Promise<void>;
}

/** Both ends of a local transport in one object: the embedded default and unit tests. */
export interface LocalBus extends RequestChannel, AgentChannel {
  openRequestReceiver(): RequestReceiver;
  openAgentInbox(agentId: string): AgentInbox;
  close(): Promise<void>;
}

/** Longest dead-letter reason and description kept (Service Bus allows more; nobody needs it). */
export const DEAD_LETTER_LIMITS = { reasonChars: 128, descriptionChars: 1024 } as const;

/**
 * The message id a transport that lets the sender choose one gives a request: the request id of
 * an attestation request (a resend is then a duplicate), a digest of agent and time for a
 * challenge request.
 */
export function requestMessageId(request: AgentRequest): string {
  if (request.type === "attestation-request") return request.requestId;
  const digest = createHash("sha256")
    .update(JSON.stringify([request.agentId, request.sentAt]))
    .digest("hex")
    .slice(0, 40);
  return `challenge-request-${digest}`;
}

/**
 * The transport message id of a message to an agent: its signed id, prefixed with the type so
 * logs stay readable. The signed id is chosen by the control plane (never by an agent), so no
 * agent can make another agent's message look like a duplicate.
 */
export function agentMessageId(message: SignedAgentMessage): string {
  return `${message.type}-${message.messageId}`;
}

/**
 * The body as sent: UTF-8 JSON of the message (or the text of a signed one), refused with ERR_INPUT_TOO_LARGE above
 * `maxBytes` (the transport's limit) so that the sender learns of it, not the receiver.
 */
export function serializeBody(message: object | string, maxBytes: number): Buffer {
  const bytes = Buffer.from(typeof message === "string" ? message : JSON.stringify(message), "utf8");
  if (bytes.length > maxBytes) {
    throw new ShieldError("ERR_INPUT_TOO_LARGE", "message is too large for the bus", {
      violations: [{ field: "body", expected: `at most ${maxBytes} bytes`, actual: `${bytes.length} bytes` }],
    });
  }
  return bytes;
}

/**
 * A received body as the port hands it on: the JSON object the text encodes, else the text
 * itself. Text over `maxBytes` is not parsed at all (the receiver's parser refuses it by size).
 * Never throws: a malformed body is the receiver's to record and settle.
 */
export function bodyFromText(text: string, maxBytes: number): unknown {
  if (text.length > maxBytes) return text;
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === "object" && value !== null && !Array.isArray(value) ? value : text;
  } catch {
    return text;
  }
}

const UTF8 = new TextDecoder("utf-8", { fatal: true });

/** Bytes as text for `bodyFromText`; bytes that are not UTF-8 become base64 so nothing is lost. */
export function textFromBytes(bytes: Uint8Array): string {
  try {
    return UTF8.decode(bytes);
  } catch {
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
  }
}

// eslint-disable-next-line no-control-regex -- replacing control characters is the point
const CONTROL = /[\u0000-\u001f\u007f]/g;

/** A dead-letter reason and description cut to DEAD_LETTER_LIMITS, control characters removed. */
export function clampDeadLetterText(
  reason: string,
  description: string,
): { reason: string; description: string } {
  if (typeof reason !== "string" || typeof description !== "string") {
    throw new TypeError("deadLetter: reason and description must be strings");
  }
  const clean = (text: string, max: number): string => text.replace(CONTROL, " ").slice(0, max);
  return {
    reason: clean(reason, DEAD_LETTER_LIMITS.reasonChars),
    description: clean(description, DEAD_LETTER_LIMITS.descriptionChars),
  };
}

/** A signed message id (a UUID in practice) short enough that `<type>-<id>` fits Service Bus's 128. */
export const MAX_SIGNED_MESSAGE_ID_CHARS = 64;

/**
 * Checks the arguments of `sendToAgent` (caller misuse → TypeError): the agent id is a valid
 * identifier (it becomes a session id or a queue name), the message is signed, and it is
 * addressed to this agent, so a result can never be posted to the wrong agent.
 */
export function checkAgentMessage(agentId: string, message: SignedAgentMessage): void {
  checkAgentId(agentId);
  if (typeof message !== "object" || message === null)
    throw new TypeError("sendToAgent: message must be an object");
  if (!AGENT_MESSAGE_TYPES.includes(message.type)) {
    throw new TypeError("sendToAgent: message must be an attestation-result, challenge or key-event");
  }
  if (typeof message.jws !== "string" || !JWS_COMPACT.test(message.jws)) {
    throw new TypeError("sendToAgent: message must be signed (a compact JWS)");
  }
  if (
    typeof message.messageId !== "string" ||
    message.messageId.length > MAX_SIGNED_MESSAGE_ID_CHARS ||
    !IDENTIFIER_PATTERN.test(message.messageId)
  ) {
    throw new TypeError(
      `sendToAgent: messageId must be an identifier of at most ${MAX_SIGNED_MESSAGE_ID_CHARS} characters`,
    );
  }
  if (message.agentId !== agentId) {
    throw new TypeError(`sendToAgent: the ${message.type} message is addressed to another agent`);
  }
}

export function checkAgentId(agentId: string): void {
  if (typeof agentId !== "string" || !IDENTIFIER_PATTERN.test(agentId)) {
    throw new TypeError(
      "agentId must be 1..128 characters of A-Z a-z 0-9 . _ : - starting with a letter or digit",
    );
  }
}

export function checkRequest(request: AgentRequest): void {
  if (typeof request !== "object" || request === null) {
    throw new TypeError("sendRequest: request must be a message");
  }
  if (request.type === "challenge-request") {
    checkAgentId(request.agentId);
    return;
  }
  if (request.type !== "attestation-request" || typeof request.requestId !== "string") {
    throw new TypeError("sendRequest: request must be a challenge-request or attestation-request message");
  }
}

/** Checks a receive timeout: a finite number of milliseconds, zero or more (caller misuse → TypeError). */
export function checkTimeout(timeoutMs: number): void {
  if (typeof timeoutMs !== "number" || !Number.isFinite(timeoutMs) || timeoutMs < 0) {
    throw new TypeError("receive: timeoutMs must be a finite number >= 0");
  }
}
