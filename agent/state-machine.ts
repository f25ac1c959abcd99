/**
 * The agent's trust lifecycle as an explicit state machine. `transition(state, event)` is pure:
 * it returns the next state and the effects the runtime must carry out (start an attestation
 * round, arm the renewal timers, wipe keys, halt), and never touches the bus, the clock or the
 * keys itself, so every state × event pair is a plain table entry with a test.
 *
 * ```
 * starting ──start──▶ attesting ──trusted──▶ trusted ◀──trusted── re-attesting ◀─┐
 *                        ▲  │                 │  ▲                   ▲   │  │    │ failure
 *                        │  │                 │  └ reattest-due, ────┘   │  └────┘ (retry)
 *                        │  │                 │    challenge, rotated    │
 *                        │  ├ denied, failure ┼─▶ failed                 │
 *                        │  └ revoked(current)┴─▶ revoked ◀── denied, ───┤
 *                        │                                revoked(current)
 *                        └──────────── expired (trusted, re-attesting) ──┘
 * any state ──stop──▶ stopped
 * ```
 *
 * Rules behind the table:
 * - keys are held only in `trusted` and `re-attesting`; every way out of those two wipes them;
 * - a denial of the first attestation is final (`failed`): the same enclave produces the same
 *   evidence, so asking again only repeats the denial. A denial of a re-attestation means the
 *   control plane no longer trusts this agent (`revoked`);
 * - a failure on this side during a re-attestation (stale endorsements after a host TCB update,
 *   a sidecar refusing once, an I/O error) is not a verdict: the keys are served until
 *   `attestedUntil` and the round is run again after a capped backoff (`retry`); if it has not
 *   succeeded by then, the lapse wipes the keys, and a failure of the first attestation that
 *   follows is final;
 * - a revocation of the version a key is currently served at withdraws trust from the agent
 *   (`revoked`, every key wiped); a revocation of an older version this agent still keeps after
 *   a rotation wipes only that version;
 * - a lapsed attestation (`attestedUntil` passed without a renewal) wipes the keys and starts
 *   over from `attesting`;
 * - a challenge always starts a round that answers it, replacing any round in flight; a rotation
 *   during a round is remembered and fetched by one more round once the current one ends;
 * - `revoked`, `failed` and `stopped` are terminal: only a restart (new runtime key, new
 *   attestation) leaves them, and `stop` is the one event they still act on.
 */

export const AGENT_STATES = [
  "starting",
  "attesting",
  "trusted",
  "re-attesting",
  "revoked",
  "failed",
  "stopped",
] as const;
export type AgentStateName = (typeof AGENT_STATES)[number];

/** Why a round is run: it shows in logs and decides nothing else. */
export type AttestPurpose = "initial" | "periodic" | "rotation" | "challenge";

export interface AgentState {
  readonly name: AgentStateName;
  /** Until when the last trusted result vouches for this agent (only while keys are held). */
  readonly attestedUntil?: Date;
  /**
   * Why trust ended: a denial or failure code, or the revocation that ended it; in
   * `re-attesting`, the code of the last failed round while it is being run again.
   */
  readonly reason?: string;
  /** A rotation arrived during a round: run one more round when this one ends. */
  readonly refreshPending: boolean;
}

export type AgentEvent =
  | { readonly type: "start" }
  /** The running round's result was trusted and its keys are installed. */
  | { readonly type: "result-trusted"; readonly attestedUntil: Date }
  /** The running round's result was a denial (`code` from the denial). */
  | { readonly type: "result-denied"; readonly code: string }
  /** The running round failed for good on this side (evidence, bus, release response). */
  | { readonly type: "round-failed"; readonly code: string }
  | { readonly type: "reattest-due" }
  | { readonly type: "challenge"; readonly nonce: string; readonly deadline: Date }
  /** A newer version of a configured key exists (only sent when it is not already held). */
  | { readonly type: "key-rotated"; readonly keyName: string; readonly keyVersion: string }
  /** A held version was revoked; `current` says whether it is the version being served. */
  | {
      readonly type: "key-revoked";
      readonly keyName: string;
      readonly keyVersion: string;
      readonly current: boolean;
    }
  | { readonly type: "attestation-expired" }
  | { readonly type: "stop" };

export type AgentEventType = AgentEvent["type"];

export const AGENT_EVENT_TYPES: readonly AgentEventType[] = [
  "start",
  "result-trusted",
  "result-denied",
  "round-failed",
  "reattest-due",
  "challenge",
  "key-rotated",
  "key-revoked",
  "attestation-expired",
  "stop",
];

export type AgentEffect =
  /** Start a round (evidence, request, result), replacing any round in flight. */
  | {
      readonly kind: "attest";
      readonly purpose: AttestPurpose;
      readonly challenge?: { readonly nonce: string; readonly deadline: Date };
    }
  /** (Re)arm the renewal timer and the expiry timer for `attestedUntil`. */
  | { readonly kind: "schedule"; readonly attestedUntil: Date }
  /** Overwrite and drop every held key. */
  | { readonly kind: "wipe-all"; readonly reason: string }
  /** Overwrite and drop one held version. */
  | { readonly kind: "wipe-version"; readonly keyName: string; readonly keyVersion: string }
  /** Run the round that failed again (same purpose and challenge) after a capped backoff. */
  | { readonly kind: "retry" }
  /** Cancel the round in flight and every timer. */
  | { readonly kind: "halt" };

export interface Transition {
  readonly state: AgentState;
  readonly effects: readonly AgentEffect[];
}

export const INITIAL_STATE: AgentState = Object.freeze({ name: "starting", refreshPending: false });

/** States in which keys are held and may be served. */
export function holdsKeys(state: AgentStateName): boolean {
  return state === "trusted" || state === "re-attesting";
}

export function isTerminal(state: AgentStateName): boolean {
  return state === "revoked" || state === "failed" || state === "stopped";
}

const stay = (state: AgentState): Transition => ({ state, effects: [] });

function to(name: AgentStateName, from: AgentState, changes: Partial<AgentState> = {}): AgentState {
  const next: AgentState = { ...from, ...changes, name };
  if (!holdsKeys(name)) {
    // Outside the key-holding states nothing vouches for the agent any more.
    const { attestedUntil: _dropped, ...rest } = next;
    return Object.freeze({ ...rest });
  }
  return Object.freeze(next);
}

function stop(state: AgentState): Transition {
  return {
    state: to("stopped", state, { refreshPending: false }),
    effects: [{ kind: "halt" }, { kind: "wipe-all", reason: "stopped" }],
  };
}

function end(state: AgentState, name: "revoked" | "failed", reason: string): Transition {
  return {
    state: to(name, state, { reason, refreshPending: false }),
    effects: [{ kind: "halt" }, { kind: "wipe-all", reason: name === "revoked" ? "revoked" : "failed" }],
  };
}

function challenge(event: Extract<AgentEvent, { type: "challenge" }>): AgentEffect {
  return {
    kind: "attest",
    purpose: "challenge",
    challenge: { nonce: event.nonce, deadline: event.deadline },
  };
}

function revokedReason(event: Extract<AgentEvent, { type: "key-revoked" }>): string {
  return `key ${event.keyName} version ${event.keyVersion} revoked`;
}

/** A trusted result ends the round; a rotation seen meanwhile asks for one more. */
function trustedResult(current: AgentState, attestedUntil: Date): Transition {
  // Trusted again: whatever ended trust before no longer applies.
  const { reason: _previous, ...state } = current;
  const schedule: AgentEffect = { kind: "schedule", attestedUntil };
  if (state.refreshPending) {
    return {
      state: to("re-attesting", state, { attestedUntil, refreshPending: false }),
      effects: [schedule, { kind: "attest", purpose: "rotation" }],
    };
  }
  return { state: to("trusted", state, { attestedUntil, refreshPending: false }), effects: [schedule] };
}

function fromStarting(state: AgentState, event: AgentEvent): Transition {
  switch (event.type) {
    case "start":
      return { state: to("attesting", state), effects: [{ kind: "attest", purpose: "initial" }] };
    case "stop":
      return stop(state);
    default:
      // Nothing is running yet, so nothing can answer or be answered.
      return stay(state);
  }
}

function fromAttesting(state: AgentState, event: AgentEvent): Transition {
  switch (event.type) {
    case "result-trusted":
      return trustedResult(state, event.attestedUntil);
    case "result-denied":
      return end(state, "failed", event.code);
    case "round-failed":
      return end(state, "failed", event.code);
    case "challenge":
      return { state, effects: [challenge(event)] };
    case "key-rotated":
      return { state: to("attesting", state, { refreshPending: true }), effects: [] };
    case "key-revoked":
      return event.current
        ? end(state, "revoked", revokedReason(event))
        : {
            state,
            effects: [{ kind: "wipe-version", keyName: event.keyName, keyVersion: event.keyVersion }],
          };
    case "stop":
      return stop(state);
    case "start":
    case "reattest-due":
    case "attestation-expired":
      // A round is already running and no attestation is current.
      return stay(state);
  }
}

function fromTrusted(state: AgentState, event: AgentEvent): Transition {
  switch (event.type) {
    case "result-trusted":
      return trustedResult(state, event.attestedUntil);
    case "result-denied":
      return end(state, "revoked", event.code);
    case "reattest-due":
      return { state: to("re-attesting", state), effects: [{ kind: "attest", purpose: "periodic" }] };
    case "challenge":
      return { state: to("re-attesting", state), effects: [challenge(event)] };
    case "key-rotated":
      return { state: to("re-attesting", state), effects: [{ kind: "attest", purpose: "rotation" }] };
    case "key-revoked":
      return event.current
        ? end(state, "revoked", revokedReason(event))
        : {
            state,
            effects: [{ kind: "wipe-version", keyName: event.keyName, keyVersion: event.keyVersion }],
          };
    case "attestation-expired":
      return {
        state: to("attesting", state, { reason: "attestation lapsed" }),
        effects: [
          { kind: "wipe-all", reason: "lapsed" },
          { kind: "attest", purpose: "initial" },
        ],
      };
    case "stop":
      return stop(state);
    case "start":
    case "round-failed":
      // No round is in flight in `trusted`: a late failure of a replaced round changes nothing.
      return stay(state);
  }
}

function fromReattesting(state: AgentState, event: AgentEvent): Transition {
  switch (event.type) {
    case "result-trusted":
      return trustedResult(state, event.attestedUntil);
    case "result-denied":
      return end(state, "revoked", event.code);
    case "round-failed":
      // Keys stay until attestedUntil; the expiry timer armed by the last trusted result stands.
      return { state: to("re-attesting", state, { reason: event.code }), effects: [{ kind: "retry" }] };
    case "challenge":
      return { state, effects: [challenge(event)] };
    case "key-rotated":
      return { state: to("re-attesting", state, { refreshPending: true }), effects: [] };
    case "key-revoked":
      return event.current
        ? end(state, "revoked", revokedReason(event))
        : {
            state,
            effects: [{ kind: "wipe-version", keyName: event.keyName, keyVersion: event.keyVersion }],
          };
    case "attestation-expired":
      // The round in flight carries on and, trusted, brings the keys back.
      return {
        state: to("attesting", state, { reason: "attestation lapsed" }),
        effects: [{ kind: "wipe-all", reason: "lapsed" }],
      };
    case "stop":
      return stop(state);
    case "start":
    case "reattest-due":
      return stay(state);
  }
}

function fromFinal(state: AgentState, event: AgentEvent): Transition {
  if (event.type === "stop" && state.name !== "stopped") return stop(state);
  return stay(state);
}

/** The next state and the effects to carry out, in order. Pure. */
export function transition(state: AgentState, event: AgentEvent): Transition {
  switch (state.name) {
    case "starting":
      return fromStarting(state, event);
    case "attesting":
      return fromAttesting(state, event);
    case "trusted":
      return fromTrusted(state, event);
    case "re-attesting":
      return fromReattesting(state, event);
    case "revoked":
    case "failed":
    case "stopped":
      return fromFinal(state, event);
  }
}
