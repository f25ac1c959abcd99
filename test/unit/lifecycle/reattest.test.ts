/**
 * The re-attestation tick on the in-memory state store, with a clock the test moves: the budget
 * per tick, the spread after downtime, oldest first, and deadlines. Challenges go through the
 * real challenge issuer and the signing channel (a test control plane over the memory bus).
 */
import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { createMemoryStateStore } from "../../../adapters/state/memory.js";
import { createChallengeIssuer } from "../../../core/attest/challenge.js";
import { createReattestTick } from "../../../core/lifecycle/reattest.js";
import { createRevoker } from "../../../core/lifecycle/revoke.js";
import { parseKeyLifecycles } from "../../../core/lifecycle/keys.js";
import { fixedClock, systemRandom } from "../../../core/ports/clock.js";
import type { AgentChannel, SignedAgentMessage } from "../../../core/ports/bus.js";
import type { RotateKey } from "../../../core/messages/index.js";
import { createTestControlPlane } from "../../support/control.js";

const T0 = new Date("2026-12-07T00:00:00.000Z");
const MINUTE = 60_000;

function setup(options: { budget: number; failSendsFor?: Set<string> }) {
  const clock = fixedClock(T0);
  const state = createMemoryStateStore();
  const control = createTestControlPlane();
  const sent: { agentId: string; type: string; at: number }[] = [];
  const transport: AgentChannel = {
    sendToAgent: (agentId: string, message: SignedAgentMessage) => {
      if (options.failSendsFor?.has(agentId)) return Promise.reject(new Error("bus down"));
      sent.push({ agentId, type: message.type, at: clock.now().getTime() });
      return Promise.resolve();
    },
  };
  const agents = control.channel(transport, clock);
  const rotations: RotateKey[] = [];
  const logger = () => undefined;
  const challenges = createChallengeIssuer(
    { state, agents, clock, random: systemRandom, logger },
    { challengeSeconds: 300 },
  );
  const revoker = createRevoker(
    {
      state,
      agents,
      rotations: { enqueueRotation: (m) => Promise.resolve(void rotations.push(m)) },
      clock,
      logger,
    },
    parseKeyLifecycles({}).lifecycles,
  );
  const tick = createReattestTick(
    { state, challenges, revoker, clock, logger },
    { budget: options.budget, marginSeconds: 360 },
  );
  return { clock, state, sent, rotations, tick, challenges };
}

async function trustedAgents(
  state: ReturnType<typeof createMemoryStateStore>,
  count: number,
  until: (i: number) => Date,
  prefix = "agent",
) {
  const ids: string[] = [];
  for (let i = 0; i < count; i += 1) {
    const agentId = `${prefix}-${String(i).padStart(5, "0")}`;
    ids.push(agentId);
    await state.createAgent({
      agentId,
      workload: "orders",
      tee: "sevsnp",
      status: "trusted",
      lastAttestedAt: new Date(until(i).getTime() - 3600_000),
      attestedUntil: until(i),
      measurement: { tee: "sevsnp", hostData: randomBytes(32).toString("hex") },
      updatedAt: T0,
    });
  }
  return ids;
}

describe("reattest tick", () => {
  it("2,000 agents all due after downtime: at most the budget per tick, oldest first, every agent within ceil(2000/budget) ticks", async () => {
    const budget = 100;
    const { clock, state, sent, tick } = setup({ budget });
    // Attestations ran out at different moments during a two-hour outage.
    const ids = await trustedAgents(state, 2000, (i) => new Date(T0.getTime() - 7200_000 + i * 3_000));
    const perTick: number[] = [];
    const challengedAt = new Map<string, number>();
    let ticks = 0;
    while (challengedAt.size < ids.length && ticks < 100) {
      const report = await tick({ isPastDue: ticks === 0 });
      ticks += 1;
      perTick.push(report.challenged);
      for (const s of sent.splice(0)) if (!challengedAt.has(s.agentId)) challengedAt.set(s.agentId, ticks);
      // Every challenged agent answers in time (as a healthy fleet does), so nobody is revoked.
      for (const agentId of [...challengedAt.keys()]) {
        const agent = await state.getAgent(agentId);
        if (agent?.challenge !== undefined && agent.challenge.answeredBy === undefined) {
          const { etag, challenge: _answered, ...rest } = agent;
          await state.updateAgent(
            {
              ...rest,
              lastAttestedAt: clock.now(),
              attestedUntil: new Date(clock.now().getTime() + 3600_000),
            },
            etag,
          );
        }
      }
      clock.advance(MINUTE);
    }
    const bound = Math.ceil(ids.length / budget);
    console.log(
      `reattest spread: ${ids.length} agents, budget ${budget}/tick: all challenged in ${ticks} ticks (bound ${bound}); ` +
        `largest tick ${Math.max(...perTick)}, smallest ${Math.min(...perTick)}`,
    );
    expect(challengedAt.size).toBe(ids.length);
    expect(ticks).toBeLessThanOrEqual(bound);
    expect(Math.max(...perTick)).toBeLessThanOrEqual(budget);
    // Oldest first: the agent whose attestation ended first is challenged no later than any after it.
    const order = ids.map((id) => challengedAt.get(id)!);
    for (let i = 1; i < order.length; i += 1) expect(order[i]!).toBeGreaterThanOrEqual(order[i - 1]!);
  });

  it("revokes a silent agent only once its deadline has passed, and deadlines do not wait behind a challenge backlog", async () => {
    const { clock, state, sent, tick, rotations } = setup({ budget: 5 });
    const [silent] = await trustedAgents(state, 1, () => new Date(T0.getTime() + 100_000));
    await state.recordHolding({
      agentId: silent!,
      keyName: "orders-key",
      keyVersion: "v1",
      measurement: { tee: "sevsnp", hostData: "ab".repeat(32) },
      releasedAt: T0,
      requestId: "req-1",
    });
    clock.set(new Date(T0.getTime() + 100_000 - 360_000 + 1));
    expect((await tick()).challenged).toBe(1);
    const deadline = (await state.getAgent(silent!))!.challenge!.deadline;
    // A backlog of 50 newly due agents arrives.
    await trustedAgents(state, 50, () => new Date(T0.getTime()), "backlog");
    clock.set(deadline);
    await tick();
    expect((await state.getAgent(silent!))?.status).toBe("trusted");
    clock.set(new Date(deadline.getTime() + 1));
    sent.splice(0);
    const report = await tick();
    expect(report).toMatchObject({ revoked: 1, challenged: 5, saturated: true });
    expect(await state.getAgent(silent!)).toMatchObject({
      status: "revoked",
      statusReason: "ERR_CHALLENGE_MISSED",
    });
    expect(sent.filter((s) => s.agentId === silent && s.type === "key-event")).toHaveLength(1);
    expect(rotations).toMatchObject([{ keyName: "orders-key", keyVersion: "v1", reason: "revocation" }]);
    const holdings = await state.listHoldingsByAgent(silent!);
    expect(holdings[0]?.revokedAt).toBeDefined();
    // Again: nothing more is sent or appended.
    const audit = (await state.listAudit(`agent-${silent!}`)).length;
    await tick();
    expect(sent.filter((s) => s.agentId === silent && s.type === "key-event")).toHaveLength(1);
    expect((await state.listAudit(`agent-${silent!}`)).length).toBe(audit);
  });

  it("a challenge that could not be sent is withdrawn, so the agent is not held to it and is tried again", async () => {
    const failSendsFor = new Set(["agent-00000"]);
    const { clock, state, sent, tick } = setup({ budget: 10, failSendsFor });
    await trustedAgents(state, 2, () => new Date(T0.getTime() + 60_000));
    const report = await tick();
    expect(report).toMatchObject({ challenged: 1, failed: 1 });
    expect((await state.getAgent("agent-00000"))?.challenge).toBeUndefined();
    clock.advance(400_000); // past what would have been its deadline
    failSendsFor.clear();
    const again = await tick();
    expect(again.revoked).toBe(1); // agent-00001 got its challenge and let the deadline pass
    expect((await state.getAgent("agent-00000"))?.status).toBe("trusted");
    expect(sent.some((s) => s.agentId === "agent-00000" && s.type === "challenge")).toBe(true);
  });

  it("asking for challenges in an agent's name never moves its re-attestation deadline", async () => {
    const { clock, state, tick, challenges } = setup({ budget: 10 });
    const [agentId] = await trustedAgents(state, 1, () => new Date(T0.getTime() + 60_000));
    await tick();
    const owed = (await state.getAgent(agentId!))!.challenge!;
    expect(owed.reason).toBe("reattest");
    const ask = () =>
      challenges.handleRequest({
        type: "challenge-request",
        version: 1,
        agentId: agentId!,
        workload: "orders",
        tee: "sevsnp",
        sentAt: clock.now().toISOString(),
      });
    // Late in the challenge's life a request gets a new nonce, due by the same deadline.
    clock.set(new Date(owed.deadline.getTime() - 30_000));
    const renewed = await ask();
    expect(renewed.reused).toBe(false);
    expect(renewed.deadline).toEqual(owed.deadline);
    expect((await state.getAgent(agentId!))!.challenge).toMatchObject({
      reason: "reattest",
      deadline: owed.deadline,
    });
    // Past the deadline a request gets nothing, and the tick revokes.
    clock.set(new Date(owed.deadline.getTime() + 1));
    expect((await ask()).suppressed).toBe(true);
    expect((await tick()).revoked).toBe(1);
    expect((await state.getAgent(agentId!))?.status).toBe("revoked");
  });
});
