import { describe, expect, it } from "vitest";
import {
  AGENT_EVENT_TYPES,
  AGENT_STATES,
  INITIAL_STATE,
  holdsKeys,
  isTerminal,
  transition,
  type AgentEffect,
  type AgentEvent,
  type AgentState,
  type AgentStateName,
} from "../../../agent/state-machine.js";

const UNTIL = new Date("2030-01-01T00:00:00Z");
const LATER = new Date("2030-01-01T01:00:00Z");

/** One sample of every event; key-revoked twice, since `current` changes the outcome. */
const EVENTS = {
  start: { type: "start" },
  "result-trusted": { type: "result-trusted", attestedUntil: LATER },
  "result-denied": { type: "result-denied", code: "ERR_APPRAISAL_DENIED" },
  "round-failed": { type: "round-failed", code: "ERR_EVIDENCE_UNSUPPORTED" },
  "reattest-due": { type: "reattest-due" },
  challenge: { type: "challenge", nonce: "bm9uY2Utbm9uY2Utbm9uY2U", deadline: LATER },
  "key-rotated": { type: "key-rotated", keyName: "orders", keyVersion: "v2" },
  "key-revoked(current)": { type: "key-revoked", keyName: "orders", keyVersion: "v1", current: true },
  "key-revoked(older)": { type: "key-revoked", keyName: "orders", keyVersion: "v0", current: false },
  "attestation-expired": { type: "attestation-expired" },
  stop: { type: "stop" },
} as const satisfies Record<string, AgentEvent>;
type EventName = keyof typeof EVENTS;

type Expected = readonly [AgentStateName, readonly string[]];
const STOP: Expected = ["stopped", ["halt", "wipe-all:stopped"]];
const REVOKE: Expected = ["revoked", ["halt", "wipe-all:revoked"]];
const FAIL: Expected = ["failed", ["halt", "wipe-all:failed"]];

/** The specification: every state × event, the next state and the effects in order. */
const TABLE: Record<AgentStateName, Record<EventName, Expected>> = {
  starting: {
    start: ["attesting", ["attest:initial"]],
    "result-trusted": ["starting", []],
    "result-denied": ["starting", []],
    "round-failed": ["starting", []],
    "reattest-due": ["starting", []],
    challenge: ["starting", []],
    "key-rotated": ["starting", []],
    "key-revoked(current)": ["starting", []],
    "key-revoked(older)": ["starting", []],
    "attestation-expired": ["starting", []],
    stop: STOP,
  },
  attesting: {
    start: ["attesting", []],
    "result-trusted": ["trusted", ["schedule"]],
    "result-denied": FAIL,
    "round-failed": FAIL,
    "reattest-due": ["attesting", []],
    challenge: ["attesting", ["attest:challenge"]],
    "key-rotated": ["attesting", []],
    "key-revoked(current)": REVOKE,
    "key-revoked(older)": ["attesting", ["wipe-version"]],
    "attestation-expired": ["attesting", []],
    stop: STOP,
  },
  trusted: {
    start: ["trusted", []],
    "result-trusted": ["trusted", ["schedule"]],
    "result-denied": REVOKE,
    "round-failed": ["trusted", []],
    "reattest-due": ["re-attesting", ["attest:periodic"]],
    challenge: ["re-attesting", ["attest:challenge"]],
    "key-rotated": ["re-attesting", ["attest:rotation"]],
    "key-revoked(current)": REVOKE,
    "key-revoked(older)": ["trusted", ["wipe-version"]],
    "attestation-expired": ["attesting", ["wipe-all:lapsed", "attest:initial"]],
    stop: STOP,
  },
  "re-attesting": {
    start: ["re-attesting", []],
    "result-trusted": ["trusted", ["schedule"]],
    "result-denied": REVOKE,
    "round-failed": ["re-attesting", ["retry"]],
    "reattest-due": ["re-attesting", []],
    challenge: ["re-attesting", ["attest:challenge"]],
    "key-rotated": ["re-attesting", []],
    "key-revoked(current)": REVOKE,
    "key-revoked(older)": ["re-attesting", ["wipe-version"]],
    "attestation-expired": ["attesting", ["wipe-all:lapsed"]],
    stop: STOP,
  },
  revoked: terminal("revoked"),
  failed: terminal("failed"),
  stopped: { ...terminal("stopped"), stop: ["stopped", []] },
};

function terminal(name: AgentStateName): Record<EventName, Expected> {
  const row = Object.fromEntries(
    Object.keys(EVENTS).map((event): [string, Expected] => [event, [name, []]]),
  ) as Record<EventName, Expected>;
  return { ...row, stop: STOP };
}

function stateNamed(name: AgentStateName): AgentState {
  return holdsKeys(name)
    ? { name, attestedUntil: UNTIL, refreshPending: false }
    : { name, refreshPending: false, ...(name === "failed" ? { reason: "ERR_X" } : {}) };
}

function describeEffect(effect: AgentEffect): string {
  switch (effect.kind) {
    case "attest":
      return `attest:${effect.purpose}`;
    case "wipe-all":
      return `wipe-all:${effect.reason}`;
    default:
      return effect.kind;
  }
}

describe("agent state machine", () => {
  it("the table covers every state and every event type", () => {
    expect(Object.keys(TABLE).sort()).toEqual([...AGENT_STATES].sort());
    const sampled = new Set(Object.values(EVENTS).map((event) => event.type));
    expect([...sampled].sort()).toEqual([...AGENT_EVENT_TYPES].sort());
  });

  for (const stateName of AGENT_STATES) {
    for (const eventName of Object.keys(EVENTS) as EventName[]) {
      const [nextName, effects] = TABLE[stateName][eventName];
      it(`${stateName} × ${eventName} → ${nextName} [${effects.join(", ")}]`, () => {
        const before = stateNamed(stateName);
        const snapshot = structuredClone(before);
        const result = transition(before, EVENTS[eventName]);
        expect(result.state.name).toBe(nextName);
        expect(result.effects.map(describeEffect)).toEqual(effects);
        // Pure: the input is untouched, and the output holds no time outside the key-holding states.
        expect(before).toEqual(snapshot);
        if (!holdsKeys(nextName)) expect(result.state.attestedUntil).toBeUndefined();
        if (effects.length === 0 && nextName === stateName && eventName !== "key-rotated") {
          expect(result.state).toBe(before);
        }
      });
    }
  }

  it("starts in `starting` with nothing pending", () => {
    expect(INITIAL_STATE).toEqual({ name: "starting", refreshPending: false });
    expect(Object.isFrozen(INITIAL_STATE)).toBe(true);
  });

  it("names terminal and key-holding states", () => {
    expect(AGENT_STATES.filter(isTerminal)).toEqual(["revoked", "failed", "stopped"]);
    expect(AGENT_STATES.filter(holdsKeys)).toEqual(["trusted", "re-attesting"]);
  });

  it("a trusted result carries its attestedUntil into the state and the schedule", () => {
    const next = transition(stateNamed("attesting"), EVENTS["result-trusted"]);
    expect(next.state.attestedUntil).toEqual(LATER);
    expect(next.effects).toEqual([{ kind: "schedule", attestedUntil: LATER }]);
  });

  it("a challenge effect carries the nonce and the deadline", () => {
    const next = transition(stateNamed("trusted"), EVENTS.challenge);
    expect(next.effects).toEqual([
      { kind: "attest", purpose: "challenge", challenge: { nonce: EVENTS.challenge.nonce, deadline: LATER } },
    ]);
  });

  it("a rotation during a round asks for one more round when it ends trusted", () => {
    for (const running of ["attesting", "re-attesting"] as const) {
      const pending = transition(stateNamed(running), EVENTS["key-rotated"]).state;
      expect(pending).toMatchObject({ name: running, refreshPending: true });
      const next = transition(pending, EVENTS["result-trusted"]);
      expect(next.state).toMatchObject({ name: "re-attesting", refreshPending: false, attestedUntil: LATER });
      expect(next.effects.map(describeEffect)).toEqual(["schedule", "attest:rotation"]);
      // A denial instead forgets it.
      expect(transition(pending, EVENTS["result-denied"]).state.refreshPending).toBe(false);
    }
  });

  it("a denial or failure leaves its code as the reason; trust regained clears it", () => {
    expect(transition(stateNamed("attesting"), EVENTS["result-denied"]).state.reason).toBe(
      "ERR_APPRAISAL_DENIED",
    );
    expect(transition(stateNamed("re-attesting"), EVENTS["round-failed"]).state.reason).toBe(
      "ERR_EVIDENCE_UNSUPPORTED",
    );
    expect(transition(stateNamed("trusted"), EVENTS["key-revoked(current)"]).state.reason).toBe(
      "key orders version v1 revoked",
    );
    const lapsed = transition(stateNamed("trusted"), EVENTS["attestation-expired"]).state;
    expect(lapsed.reason).toBe("attestation lapsed");
    expect(transition(lapsed, EVENTS["result-trusted"]).state.reason).toBeUndefined();
  });

  it("a failed re-attestation keeps the keys and attestedUntil, and runs the round again", () => {
    const next = transition(stateNamed("re-attesting"), EVENTS["round-failed"]);
    expect(next.state).toMatchObject({ name: "re-attesting", attestedUntil: UNTIL });
    expect(next.effects).toEqual([{ kind: "retry" }]);
    // Still serving, the lapse still wipes; the first attestation after it still fails for good.
    const lapsed = transition(next.state, EVENTS["attestation-expired"]);
    expect(lapsed.effects.map(describeEffect)).toEqual(["wipe-all:lapsed"]);
    expect(transition(lapsed.state, EVENTS["round-failed"]).state.name).toBe("failed");
  });

  it("wipe-version names the revoked version", () => {
    expect(transition(stateNamed("trusted"), EVENTS["key-revoked(older)"]).effects).toEqual([
      { kind: "wipe-version", keyName: "orders", keyVersion: "v0" },
    ]);
  });

  it("returns frozen states", () => {
    expect(Object.isFrozen(transition(stateNamed("attesting"), EVENTS["result-trusted"]).state)).toBe(true);
  });
});
