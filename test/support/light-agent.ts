/**
 * A light simulated agent for fault tests and the scale simulation: the agent's protocol over a
 * real bus (Storage Queues or Service Bus), without the agent process. It asks for a challenge,
 * verifies the signed challenge against the pinned control-plane key as the agent does, answers
 * with simulated SEV-SNP evidence bound to its runtime key and the nonce, and waits for the
 * signed result. Every message it receives is verified and counted, so callers can check that
 * every request was answered exactly once.
 */
import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import type { RuntimeKey } from "../../agent/runtime-key.js";
import { controlKeySet, verifyControlMessage, type ControlKeySet } from "../../core/control/signed.js";
import type { SimulatedSnpPlatform } from "../../core/evidence/simulated/sevsnp.js";
import {
  makeAttestationRequest,
  makeChallengeRequest,
  requestBinding,
  type AttestationResult,
  type Challenge,
} from "../../core/messages/index.js";
import type { AgentInbox, AgentMessage, RequestChannel } from "../../core/ports/bus.js";

export interface LightAgentSetup {
  readonly platform: SimulatedSnpPlatform;
  readonly runtimeKey: RuntimeKey;
  readonly controlKeys: { readonly keys: readonly Readonly<Record<string, string>>[] };
  readonly requests: RequestChannel;
  openInbox(agentId: string): AgentInbox;
}

export interface AttestationRound {
  readonly result: AttestationResult;
  /** Challenge request sent → result verified. */
  readonly latencyMs: number;
}

export class LightAgent {
  /** Results received per request id (a redelivered answer counts again). */
  readonly resultsByRequest = new Map<string, number>();
  /** Messages that did not verify (must stay 0). */
  unverified = 0;
  private readonly inbox: AgentInbox;
  private readonly keys: ControlKeySet;
  private readonly waiting: AgentMessage[] = [];

  constructor(
    private readonly setup: LightAgentSetup,
    readonly agentId: string,
    private readonly options: {
      readonly hostData: string;
      readonly keys: readonly string[];
      workload?: string;
    },
  ) {
    this.inbox = setup.openInbox(agentId);
    this.keys = controlKeySet(setup.controlKeys);
  }

  /** One whole attestation: challenge request, challenge, evidence, result. */
  async attest(
    options: { timeoutMs?: number; afterChallenge?: () => void | Promise<void> } = {},
  ): Promise<AttestationRound> {
    const timeoutMs = options.timeoutMs ?? 30_000;
    const started = performance.now();
    const deadline = Date.now() + timeoutMs;
    const workload = this.options.workload ?? "orders";
    await this.setup.requests.sendRequest(
      makeChallengeRequest({ agentId: this.agentId, workload, tee: "sevsnp", sentAt: new Date() }),
    );
    const challenge = await this.next((m): m is Challenge => m.type === "challenge", deadline);
    await options.afterChallenge?.();
    const requestId = `req-${randomUUID()}`;
    const keys = [...this.options.keys];
    const bound = this.setup.runtimeKey.bindToNonce(
      challenge.nonce,
      requestBinding({ agentId: this.agentId, requestId, workload, tee: "sevsnp", keys }),
    );
    const report = this.setup.platform.signReport({
      reportData: bound.reportData.subarray(0, 32),
      hostData: Buffer.from(this.options.hostData, "hex"),
    });
    await this.setup.requests.sendRequest(
      makeAttestationRequest({
        agentId: this.agentId,
        requestId,
        workload,
        tee: "sevsnp",
        evidence: {
          tee: "sevsnp",
          format: "raw",
          report: report.toString("base64url"),
          vcekChain: this.setup.platform.leafPem + this.setup.platform.chainPem,
        },
        runtimeData: bound.base64url,
        challenge: challenge.nonce,
        keys,
        sentAt: new Date(),
      }),
    );
    const result = await this.next(
      (m): m is AttestationResult => m.type === "attestation-result" && m.requestId === requestId,
      deadline,
    );
    return { result, latencyMs: performance.now() - started };
  }

  /** Reads (and verifies) what has arrived within `ms`, e.g. a late duplicate answer. */
  async drain(ms: number): Promise<void> {
    const until = Date.now() + ms;
    while (Date.now() < until) {
      const message = await this.receiveOne(Math.max(1, until - Date.now()));
      if (message !== undefined) this.waiting.push(message);
    }
  }

  close(): Promise<void> {
    return this.inbox.close();
  }

  private async next<T extends AgentMessage>(
    wanted: (m: AgentMessage) => m is T,
    deadline: number,
  ): Promise<T> {
    for (;;) {
      const index = this.waiting.findIndex(wanted);
      if (index >= 0) return this.waiting.splice(index, 1)[0] as T;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`agent ${this.agentId}: no answer in time`);
      const message = await this.receiveOne(Math.min(left, 5_000));
      if (message !== undefined) this.waiting.push(message);
    }
  }

  private async receiveOne(timeoutMs: number): Promise<AgentMessage | undefined> {
    const received = await this.inbox.receive(timeoutMs);
    if (received === undefined) return undefined;
    try {
      const { message } = await verifyControlMessage(received.body, {
        keys: this.keys,
        agentId: this.agentId,
        at: new Date(),
      });
      if (message.type === "attestation-result") {
        this.resultsByRequest.set(message.requestId, (this.resultsByRequest.get(message.requestId) ?? 0) + 1);
      }
      return message;
    } catch {
      this.unverified++;
      return undefined;
    }
  }
}
