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
