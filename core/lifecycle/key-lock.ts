/**
 * One lease per key, shared by everything that changes a key's versions or the release policy
 * Shield keeps for it: rotations (core/lifecycle/rotate.ts) and measurement rollouts and
 * retirements (core/rollout). Without one lock for both, a rotation racing a policy update could
 * make its new version from the policy as it was before the update, or "repair" a version the
 * update had just changed back to the old policy.
 *
 * The lease is a request claim in the StateStore (scope `key-lock`, request id = key name):
 * exactly one claimant gets it, it expires by itself if its holder dies, and releasing it early
 * lets the next claimant take it over at once.
 */
import type { RequestLease, StateStore } from "../ports/state.js";

export const KEY_LOCK_SCOPE = "key-lock";

/** The key's lease until `at + leaseMs`, or undefined when someone else holds an unexpired one. */
export async function tryLockKey(
  state: StateStore,
  keyName: string,
  at: Date,
  leaseMs: number,
): Promise<RequestLease | undefined> {
  const claim = await state.claimRequest(
    { scope: KEY_LOCK_SCOPE, requestId: keyName },
    { at, leaseUntil: new Date(at.getTime() + leaseMs) },
  );
  return claim.state === "new" ? claim.lease : undefined;
}

/** Gives the key's lease up; a lease lost meanwhile (expired and taken over) is left alone. */
export async function unlockKey(state: StateStore, lease: RequestLease): Promise<void> {
  await state.releaseRequest(lease).catch(() => undefined);
}

export interface KeyLockWait {
  readonly clock: { now(): Date };
  readonly leaseMs: number;
  /** How long to keep trying while another holder has the key. */
  readonly waitMs: number;
  readonly sleep: (ms: number) => Promise<void>;
  /** 0–255, for jitter between tries. */
  readonly jitter: () => number;
}

/**
 * The key's lease, waiting with backoff (25 ms doubling to 1 s, plus jitter) while another
 * holder has it; undefined when it stays busy for `waitMs`. Callers waiting here rather than
 * failing at once matters on a queue: a redelivery comes back at once, so a handler that gives
 * up immediately burns its delivery count while the key is merely busy.
 */
export async function lockKeyWaiting(
  state: StateStore,
  keyName: string,
  wait: KeyLockWait,
): Promise<RequestLease | undefined> {
  return pollWithBackoff(() => tryLockKey(state, keyName, wait.clock.now(), wait.leaseMs), wait);
}

/**
 * Calls `attempt` until it gives a value, backing off 25 ms doubling to 1 s (plus jitter)
 * between calls; undefined once `waitMs` has passed. Time waited is counted both on the clock
 * and as the sum of the sleeps, so a clock that stands still (a test's) cannot make this wait
 * forever.
 */
export async function pollWithBackoff<T>(
  attempt: () => Promise<T | undefined>,
  wait: Omit<KeyLockWait, "leaseMs">,
): Promise<T | undefined> {
  const started = wait.clock.now().getTime();
  let delay = 25;
  let slept = 0;
  for (;;) {
    const value = await attempt();
    if (value !== undefined) return value;
    if (Math.max(wait.clock.now().getTime() - started, slept) >= wait.waitMs) return undefined;
    const pause = delay + Math.floor(wait.jitter() / 4);
    await wait.sleep(pause);
    slept += pause;
    delay = Math.min(delay * 2, 1_000);
  }
}

export const defaultSleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
