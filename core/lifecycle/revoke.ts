/**
 * Revoking and reinstating agents. An agent is revoked when it misses a re-attestation deadline
 * (ERR_CHALLENGE_MISSED), when an answer that proved it speaks for the agent is denied (the
 * denial's code), or when an operator says so. Revocation:
 *
 * 1. is recorded in the agent's audit chain (once per cause, however often it is retried);
 * 2. tells the agent, signed, that every key version it holds is revoked (`key-event revoked`),
 *    and marks those holdings revoked — the agent wipes them at once;
 * 3. queues a rotation of each of those keys that is set to rotate on revocation, so that data
 *    written from now on uses a version the revoked agent never had;
 * 4. sets the agent `revoked` with the cause's code: `attest` refuses it from then on.
 *
 * The side effects come before the status change so that a failure part-way leaves the agent
 * still due (the timer tries again next tick) or the request still unanswered (redelivery
 * does); every step is idempotent, so repeating them is harmless.
 *
 * Only an operator reinstates a revoked agent (`shield agent reinstate`, or the admin HTTP
 * endpoint); that too is audited. A reinstated agent is `untrusted` until it attests again.
 */
import { createHash } from "node:crypto";
import { ShieldError, type ShieldErrorCode } from "../errors.js";
import type { AgentSender } from "../control/signed.js";
import { makeKeyEvent, makeRotateKey } from "../messages/index.js";
import type { RotationQueue } from "../ports/bus.js";
import type { Clock } from "../ports/clock.js";
import type { Logger } from "../ports/logger.js";
import type { AgentRecord, AgentState, KeyHolding, StateStore } from "../ports/state.js";
import { changeAgent } from "../state/agents.js";
import type { KeyLifecycles } from "./keys.js";

export interface RevocationPorts {
  readonly state: StateStore;
  readonly agents: AgentSender;
  readonly rotations: RotationQueue;
  readonly clock: Clock;
  readonly logger: Logger;
}

export type RevocationCause =
  /** A `reattest` challenge's deadline passed unanswered. */
  | { readonly kind: "missed"; readonly nonce: string; readonly deadline: Date }
  /** An answer to the agent's own challenge, with evidence MAA verified, was denied. */
  | { readonly kind: "denied"; readonly requestId: string; readonly code: ShieldErrorCode }
  | { readonly kind: "operator"; readonly operator: string; readonly requestId: string };

export interface RevocationOutcome {
  /** False when the agent was already revoked and nothing was left to do. */
  readonly changed: boolean;
  readonly code: string;
  readonly keysRevoked: number;
  readonly rotationsQueued: number;
}

/** The audit partition of a key: the tamper-evident record of who received which version. */
export const keyAuditPartition = (keyName: string): string => `key-${keyName}`;
/** The audit partition of an agent's attestations and standing. */
export const agentAuditPartition = (agentId: string): string => `agent-${agentId}`;

const digest = (text: string): string => createHash("sha256").update(text, "utf8").digest("hex").slice(0, 40);

function codeOf(cause: RevocationCause): string {
  switch (cause.kind) {
    case "missed":
      return "ERR_CHALLENGE_MISSED";
    case "denied":
      return cause.code;
    case "operator":
      return "ERR_AGENT_REVOKED_BY_OPERATOR";
  }
}

/** A stable id for one cause: the same missed nonce, denied request or operator request. */
function causeId(cause: RevocationCause): string {
  switch (cause.kind) {
    case "missed":
      return `missed:${digest(cause.nonce)}`;
    case "denied":
      return `denied:${cause.requestId}`;
    case "operator":
      return `operator:${cause.requestId}`;
  }
}

function withoutEtag(agent: AgentRecord): AgentState {
  const { etag: _etag, ...rest } = agent;
  return rest;
}

export function createRevoker(ports: RevocationPorts, lifecycles: KeyLifecycles) {
  const { state, agents, rotations, clock, logger } = ports;

  async function revoke(agentId: string, cause: RevocationCause): Promise<RevocationOutcome> {
    const now = clock.now();
    const code = codeOf(cause);
    const id = causeId(cause);
    const before = await state.getAgent(agentId);
    if (before === undefined) throw new ShieldError("ERR_CONFIG", `no agent ${agentId} is known`);
    await state.appendAudit(agentAuditPartition(agentId), {
      at: now,
      kind: "agent-revoked",
      subject: agentId,
      ...(cause.kind === "missed" ? {} : { requestId: cause.requestId }),
      details: {
        code,
        cause: cause.kind,
        ...(cause.kind === "missed" ? { deadline: cause.deadline.toISOString() } : {}),
        ...(cause.kind === "operator" ? { operator: cause.operator } : {}),
      },
      eventId: `agent-revoked:${id}`,
    });

    const held = (await state.listHoldingsByAgent(agentId)).filter((h) => h.revokedAt === undefined);
    for (const holding of held) await revokeHolding(holding, code, now);
    let rotationsQueued = 0;
    for (const [keyName, keyVersion] of newestHeldPerKey(held)) {
      if (!lifecycles(keyName).revokeByRotation) continue;
      await rotations.enqueueRotation(
        makeRotateKey({
          keyName,
          keyVersion,
          reason: "revocation",
          sourceEventId: `revocation-${digest(`${agentId}\n${keyName}\n${keyVersion}`)}`,
          sentAt: now,
        }),
      );
      rotationsQueued += 1;
    }

    let changed = false;
    await changeAgent(state, agentId, (current) => {
      changed = false;
      if (current === undefined) return undefined;
      if (current.status === "revoked" && current.challenge === undefined) return undefined;
      changed = true;
      const { challenge: _dropped, statusReason: _old, ...rest } = withoutEtag(current);
      return { ...rest, status: "revoked", statusReason: code, updatedAt: now };
    });
    logger("warn", "agent revoked", {
      agentId,
      code,
      cause: cause.kind,
      keysRevoked: held.length,
      rotationsQueued,
    });
    return { changed: changed || held.length > 0, code, keysRevoked: held.length, rotationsQueued };
  }

  /** Tells the agent, marks the holding revoked, and records it in the key's chain. */
  async function revokeHolding(holding: KeyHolding, code: string, now: Date): Promise<void> {
    const { agentId, keyName, keyVersion } = holding;
    await agents.sendToAgent(
      agentId,
      makeKeyEvent({ agentId, event: "revoked", keyName, keyVersion, sentAt: now }),
    );
    await state.recordHolding({ ...holding, revokedAt: now });
    await state.appendAudit(keyAuditPartition(keyName), {
      at: now,
      kind: "key-revoked",
      subject: agentId,
      requestId: holding.requestId,
      details: { keyVersion, code },
      eventId: `key-revoked:${agentId}:${keyVersion}`,
    });
  }

  /** An operator's act: a revoked agent may attest again (it is `untrusted` until it does). */
  async function reinstate(
    agentId: string,
    by: { operator: string; requestId: string },
  ): Promise<{ changed: boolean; previousReason?: string }> {
    const now = clock.now();
    const current = await state.getAgent(agentId);
    if (current === undefined) throw new ShieldError("ERR_CONFIG", `no agent ${agentId} is known`);
    if (current.status !== "revoked") return { changed: false };
    const previousReason = current.statusReason;
    await state.appendAudit(agentAuditPartition(agentId), {
      at: now,
      kind: "agent-reinstated",
      subject: agentId,
      requestId: by.requestId,
      details: { operator: by.operator, previousCode: previousReason ?? null },
      eventId: `agent-reinstated:${by.requestId}`,
    });
    let changed = false;
    await changeAgent(state, agentId, (record) => {
      changed = false;
      if (record?.status !== "revoked") return undefined;
      changed = true;
      const { statusReason: _reason, challenge: _challenge, ...rest } = withoutEtag(record);
      return { ...rest, status: "untrusted", updatedAt: now };
    });
    logger("warn", "agent reinstated", { agentId, operator: by.operator });
    return { changed, ...(previousReason === undefined ? {} : { previousReason }) };
  }

  return { revoke, reinstate };
}

export type Revoker = ReturnType<typeof createRevoker>;

/** For each key, the newest version the agent held (by release time): the one to rotate away from. */
function newestHeldPerKey(holdings: readonly KeyHolding[]): Map<string, string> {
  const newest = new Map<string, KeyHolding>();
  for (const holding of holdings) {
    const seen = newest.get(holding.keyName);
    if (seen === undefined || holding.releasedAt.getTime() > seen.releasedAt.getTime()) {
      newest.set(holding.keyName, holding);
    }
  }
  return new Map([...newest].map(([name, holding]) => [name, holding.keyVersion]));
}
