/**
 * The one place every release-policy write passes through on its way to a key store (DESIGN §6
 * rule 6). Both key-store adapters wrap themselves with {@link guardReleasePolicyWrites}, so
 * neither can write a policy that lets a debuggable or untyped TEE have a key:
 *
 * - `createKey`: the policy must be safe on its own (ERR_POLICY_UNSAFE); a missing policy is
 *   ERR_CONFIG, since Key Vault would otherwise copy the previous version's unchecked policy.
 * - `rotate`: the new version carries the current version's policy, so that policy must be safe
 *   before the rotation (ERR_POLICY_UNSAFE, nothing written); the new version's policy is
 *   checked again afterwards, in case the vault gave it another one — then it is given the
 *   checked policy before the error is reported, so it never stays releasable under another.
 * - `updateReleasePolicy`: the version's current policy is read and the change checked against
 *   it (ERR_POLICY_UNSAFE_CHANGE), then the new policy must be safe on its own (ERR_POLICY_UNSAFE).
 *
 * Reads and releases pass through untouched.
 */
import { ShieldError } from "../errors.js";
import type { CreateKeyOptions, KeyStore, KeyVersionInfo } from "../ports/key-store.js";
import { assertSafePolicyChange, assertSafeReleasePolicy, checkSafeReleasePolicy } from "./diff.js";
import type { ReleasePolicy } from "./release-policy.js";

export function guardReleasePolicyWrites(store: KeyStore): KeyStore {
  if (typeof store?.createKey !== "function") throw new TypeError("store must be a KeyStore");
  return {
    createKey(name: string, options: CreateKeyOptions): Promise<KeyVersionInfo> {
      return Promise.resolve().then(() => {
        const policy: ReleasePolicy | undefined = options?.releasePolicy;
        if (policy === undefined) {
          throw new ShieldError("ERR_CONFIG", "an exportable key needs a release policy");
        }
        assertSafeReleasePolicy(policy);
        return store.createKey(name, options);
      });
    },

    getKey: (name, version) => store.getKey(name, version),
    listVersions: (name) => store.listVersions(name),
    release: (name, attestationToken, options) => store.release(name, attestationToken, options),
    setEnabled: (name, version, enabled) => store.setEnabled(name, version, enabled),

    async rotate(name: string): Promise<KeyVersionInfo> {
      const current = await store.getKey(name);
      if (current.releasePolicy !== undefined) assertSafeReleasePolicy(current.releasePolicy);
      const rotated = await store.rotate(name);
      // A policy changed between the read and the rotation, or not carried over by the vault:
      // the version exists by now, and the error says so, so that it is not announced to agents.
      const violations =
        rotated.releasePolicy === undefined ? [] : checkSafeReleasePolicy(rotated.releasePolicy);
      if (violations.length > 0) {
        // The new version exists and would release under that policy: give it the policy that
        // was checked, then report.
        if (current.releasePolicy !== undefined) {
          await store.updateReleasePolicy(name, rotated.version, current.releasePolicy);
        }
        throw new ShieldError(
          "ERR_POLICY_UNSAFE",
          `rotated version ${rotated.version} carries an unsafe release policy`,
          { violations },
        );
      }
      return rotated;
    },

    async updateReleasePolicy(name: string, version: string, policy: ReleasePolicy): Promise<KeyVersionInfo> {
      if (typeof version !== "string" || version === "") {
        throw new ShieldError("ERR_CONFIG", "a key version is required to update its release policy");
      }
      if (policy === undefined || policy === null) throw new TypeError("policy is required");
      const current = await store.getKey(name, version);
      if (current.releasePolicy !== undefined) assertSafePolicyChange(current.releasePolicy, policy);
      assertSafeReleasePolicy(policy);
      return store.updateReleasePolicy(name, version, policy);
    },
  };
}
