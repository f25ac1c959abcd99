/**
 * The re-attestation tick (the `reattest` timer function). Each tick does two things, each from
 * an index of agents ordered by time (StateStore `listAgentsDue`), so it reads only what is due,
 * oldest first, and never the whole table:
 *
 * 1. **deadlines**: agents whose `reattest` challenge deadline passed without a validated answer
 *    are revoked with ERR_CHALLENGE_MISSED (revoke.ts). Not one tick early: a deadline counts as
 *    missed only once it is strictly in the past.
 * 2. **due**: trusted agents whose attestation ends within `marginSeconds` get a challenge —
 *    the pending challenge is written first, then the signed `challenge` is sent
 *    (challenge.ts, reason `reattest`).
 *
 * Both are limited per tick (`budget`). After downtime (the timer's `isPastDue`, or simply more
 * agents due than the budget) the work spreads over ticks: a challenged agent leaves the due
 * index, so the next tick takes the next-oldest, and no agent waits more than
 * `ceil(due / budget)` ticks. Deadlines are handled before new challenges and have a budget of
 * their own, so a backlog of challenges never delays a revocation.
 *
 * One agent's failure (a transient Key Vault or bus error) is logged and counted, and the tick
 * goes on; the agent is still due and is tried again next tick.
 */
import { isShieldError } from "../errors.js";
import type { Clock } from "../ports/clock.js";
import type { Logger } from "../ports/logger.js";
import type { AgentRecord, StateStore } from "../ports/state.js";
import type { ChallengeIssuer } from "../attest/challenge.js";
import type { Revoker } from "./revoke.js";
import { noMetrics, type ShieldMetrics } from "../ports/metrics.js";

export interface ReattestConfig {
  /** Challenges sent per tick at most (default 100). */
  readonly budget?: number;
  /** Revocations for missed deadlines per tick at most (default: the budget). */
  readonly revocationBudget?: number;
  /**
   * Challenge an agent this long before its attestation ends (default: the challenge's answer
   * time plus a minute), so a prompt answer renews it before it lapses.
   */
  readonly marginSeconds: number;
}

export interface ReattestPorts {
  readonly state: StateStore;
  readonly challenges: ChallengeIssuer;
  readonly revoker: Revoker;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Missed deadlines (default: none recorded). */
  readonly metrics?: ShieldMetrics;
}

export interface TickReport {
  readonly at: Date;
  readonly challenged: number;
  readonly revoked: number;
  readonly failed: number;
  /** True when the budget was used up: more may be due than this tick handled. */
  readonly saturated: boolean;
  readonly pastDue: boolean;
}

export const DEFAULT_REATTEST_BUDGET = 100;

export function createReattestTick(ports: ReattestPorts, config: ReattestConfig) {
  const budget = config.budget ?? DEFAULT_REATTEST_BUDGET;
  const revocationBudget = config.revocationBudget ?? budget;
  for (const [name, value] of [
    ["budget", budget],
    ["revocationBudget", revocationBudget],
  ] as const) {
    if (!Number.isSafeInteger(value) || value < 1 || value > 1000) {
      throw new TypeError(`${name} must be an integer in 1..1000`);
    }
  }
  if (!Number.isSafeInteger(config.marginSeconds) || config.marginSeconds < 0) {
    throw new TypeError("marginSeconds must be a non-negative integer");
  }
  const { state, challenges, revoker, clock, logger } = ports;
  const metrics = ports.metrics ?? noMetrics;

  return async function tick(timer: { isPastDue?: boolean } = {}): Promise<TickReport> {
    const now = clock.now();
    let failed = 0;
    const attempt = async (agent: AgentRecord, what: string, run: () => Promise<unknown>) => {
      try {
        await run();
        return true;
      } catch (error) {
        failed += 1;
        logger("warn", `re-attestation: could not ${what}; tried again next tick`, {
          agentId: agent.agentId,
          code: isShieldError(error) ? error.code : "ERR_INTERNAL",
        });
        return false;
      }
    };

    let revoked = 0;
    const missed = await state.listAgentsDue("deadline", now, revocationBudget);
    for (const agent of missed) {
      const challenge = agent.challenge;
      if (challenge === undefined) continue;
      const done = await attempt(agent, "revoke", () =>
        revoker.revoke(agent.agentId, {
          kind: "missed",
          nonce: challenge.nonce,
          deadline: challenge.deadline,
        }),
      );
      if (done) {
        revoked += 1;
        metrics.missedDeadline({ tee: agent.tee });
      }
    }

    let challenged = 0;
    const horizon = new Date(now.getTime() + config.marginSeconds * 1000);
    const due = await state.listAgentsDue("attest", horizon, budget);
    for (const agent of due) {
      const done = await attempt(agent, "challenge", () => challenges.issue(agent, "reattest"));
      if (done) challenged += 1;
    }

    const saturated = missed.length >= revocationBudget || due.length >= budget;
    const report: TickReport = {
      at: now,
      challenged,
      revoked,
      failed,
      saturated,
      pastDue: timer.isPastDue === true,
    };
    if (challenged + revoked + failed > 0 || report.pastDue) {
      logger(saturated ? "warn" : "info", "re-attestation tick", {
        challenged,
        revoked,
        failed,
        saturated: String(saturated),
        pastDue: String(report.pastDue),
      });
    }
    return report;
  };
}
