/**
 * The scale simulation (scripts/sim.ts) reduced for CI: two function worker processes, a few
 * dozen agents, one re-attestation tick, a deployment racing a rotation of every key that is
 * delivered twice. Every check of the full run must hold here too; `npm run sim` runs it at
 * 1,000 agents.
 */
import { describe, expect, it } from "vitest";
import { runSimulation } from "../../scripts/sim.js";

describe("scale simulation (reduced)", () => {
  it("answers every request exactly once, loses no update and rotates once per event", async () => {
    const report = await runSimulation({
      agents: 24,
      workers: 2,
      ticks: 1,
      concurrency: 12,
      keys: 2,
      updates: 1,
      rotations: 1,
    });
    expect(report.attestations).toBe(48);
    expect(report.checks).toMatchObject({
      unanswered: 0,
      answeredTwice: 0,
      notTrusted: 0,
      unverifiedMessages: 0,
      deadLettered: 0,
      lostUpdates: [],
      extraVersions: { "sim-key-0": 0, "sim-key-1": 0 },
      releasesPerAttestation: 1,
    });
    expect(report.ok).toBe(true);
  }, 120_000);
});
