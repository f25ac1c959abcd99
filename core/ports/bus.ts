/**
 * The message bus ports: Azure Service Bus in Azure, Azure Storage Queues (Azurite) in the
 * embedded default, in-process queues in unit tests. Messages are the versioned contracts of
 * core/messages; the bus moves JSON bodies and never inspects or logs them.
 *
 * Results, challenges and key events go to one agent at a time: on Service Bus that is the
 * session whose id is the agent id on `attestation-results`; other transports give each agent its
 * own queue. Delivery is at least once everywhere, so every receiver must be idempotent.
 */
import type { AttestationRequest, AttestationResult, Challenge, KeyEvent } from "../messages/index.js";

export type AgentMessage = AttestationResult | Challenge | KeyEvent;

/** Functions → agents. */
export interface AgentChannel {
  /** Sends to the agent's session (Service Bus) or queue (local transports). */
  sendToAgent(agentId: string, message: AgentMessage): Promise<void>;
}

/** A received message: its body (untrusted, unparsed) and how often it has been delivered. */
export interface ReceivedMessage {
  readonly body: unknown;
  readonly messageId: string;
  readonly deliveryCount: number;
}

/** Agents → functions. */
export interface RequestChannel {
  sendRequest(request: AttestationRequest): Promise<void>;
}

/** An agent's own inbox. */
export interface AgentInbox {
  /**
   * Waits up to `timeoutMs` for the next message for this agent; undefined on timeout. The
   * message is settled (removed) once the returned promise resolves: the agent processes
   * messages idempotently, so a crash between receive and processing costs one re-attestation.
   */
  receive(timeoutMs: number): Promise<ReceivedMessage | undefined>;
  close(): Promise<void>;
}
