/**
 * Read-modify-write of one agent under optimistic concurrency: read the agent and its ETag,
 * compute the new state, write it only if nobody changed it meanwhile, and on a lost race read
 * again and recompute. Attest and re-attest both change agents this way.
 */
import { isShieldError } from "../errors.js";
import type { AgentDueKind, AgentRecord, AgentState, StateStore } from "../ports/state.js";

/**
 * When the re-attestation timer next has something to do with an agent, and what: the deadline
 * of an unanswered `reattest` challenge (missed past it), else the end of a trusted agent's
 * attestation (challenge it before then). Revoked, untrusted and new agents have no schedule.
 * Both adapters index agents by this, so it must depend on the stored state only.
 */
export function agentSchedule(agent: AgentState): { kind: AgentDueKind; at: Date } | undefined {
  const challenge = agent.challenge;
  if (agent.status !== "revoked" && challenge?.reason === "reattest" && challenge.answeredBy === undefined) {
    return { kind: "deadline", at: challenge.deadline };
  }
  if (agent.status === "trusted" && agent.attestedUntil !== undefined) {
    return { kind: "attest", at: agent.attestedUntil };
  }
  return undefined;
}

export interface ChangeAgentOptions {
  /** Total tries before the last ERR_CONFLICT is thrown. */
  readonly attempts?: number;
}

/**
 * Applies `change` to the agent's current record (undefined when it does not exist yet) and
 * stores the result. `change` returning undefined means "no write"; the current record is
 * returned as is. `change` may run more than once and must not have side effects.
 */
export async function changeAgent(
  store: StateStore,
  agentId: string,
  change: (current: AgentRecord | undefined) => AgentState | undefined,
  options: ChangeAgentOptions = {},
): Promise<AgentRecord | undefined> {
  const attempts = options.attempts ?? 3;
  if (!Number.isSafeInteger(attempts) || attempts < 1)
    throw new TypeError("attempts must be a positive integer");
  for (let attempt = 1; ; attempt += 1) {
    const current = await store.getAgent(agentId);
    const next = change(current);
    if (next === undefined) return current;
    if (next.agentId !== agentId) throw new TypeError("change must keep the agent id");
    try {
      return current === undefined
        ? await store.createAgent(next)
        : await store.updateAgent(next, current.etag);
    } catch (error) {
      if (attempt >= attempts || !isShieldError(error) || error.code !== "ERR_CONFLICT") throw error;
    }
  }
}
