import { describe, expect, it } from "vitest";
import { ShieldError } from "../../../core/errors.js";
import type { KeyStore, KeyVersionInfo } from "../../../core/ports/key-store.js";
import {
  guardReleasePolicyWrites,
  parseReleasePolicy,
  renderReleasePolicy,
  type ReleasePolicy,
} from "../../../core/policy/index.js";

const MAA = "https://sharedeus.eus.attest.azure.net";
const safe = renderReleasePolicy({
  authority: MAA,
  measurements: { sevsnpvm: { hostData: ["ab".repeat(32)] } },
});
const unsafe = parseReleasePolicy({
  version: "1.0.0",
  anyOf: [{ authority: MAA, allOf: [{ claim: "x-ms-sevsnpvm-hostdata", equals: "ab".repeat(32) }] }],
});

function version(v: string, releasePolicy: ReleasePolicy): KeyVersionInfo {
  return {
    name: "k",
    version: v,
    id: `https://v.vault.azure.net/keys/k/${v}`,
    keyType: "oct-HSM",
    exportable: true,
    enabled: true,
    releasePolicy,
  };
}

/** A store that records the writes it is asked to make. */
function recordingStore(current: KeyVersionInfo, rotated: KeyVersionInfo) {
  const writes: string[] = [];
  const updates: { version: string; policy: unknown }[] = [];
  const store: KeyStore = {
    createKey: (_name, options) => {
      writes.push("create");
      return Promise.resolve(version("2", options.releasePolicy));
    },
    getKey: () => Promise.resolve(current),
    listVersions: () => Promise.resolve([current]),
    release: () => Promise.resolve("released"),
    setEnabled: () => Promise.resolve(current),
    rotate: () => {
      writes.push("rotate");
      return Promise.resolve(rotated);
    },
    updateReleasePolicy: (_name, v, policy) => {
      writes.push("update");
      updates.push({ version: v, policy });
      return Promise.resolve(version(v, policy));
    },
  };
  return { store, writes, updates };
}

async function codeOf(promise: Promise<unknown>): Promise<string> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ShieldError);
  return (error as ShieldError).code;
}

describe("guardReleasePolicyWrites", () => {
  it("passes safe writes, reads and releases through", async () => {
    const { store, writes } = recordingStore(version("1", safe), version("2", safe));
    const guarded = guardReleasePolicyWrites(store);
    await guarded.createKey("k", { keyType: "oct-HSM", releasePolicy: safe });
    await guarded.rotate("k");
    await guarded.updateReleasePolicy("k", "1", safe);
    expect(writes).toEqual(["create", "rotate", "update"]);
    expect(await guarded.release("k", "t", { encryption: "RSA_AES_KEY_WRAP_256" })).toBe("released");
  });

  it("refuses a missing policy on create as a configuration error, before any write", async () => {
    const { store, writes } = recordingStore(version("1", safe), version("2", safe));
    const missing = undefined as unknown as ReleasePolicy;
    expect(
      await codeOf(
        guardReleasePolicyWrites(store).createKey("k", { keyType: "oct-HSM", releasePolicy: missing }),
      ),
    ).toBe("ERR_CONFIG");
    expect(writes).toEqual([]);
  });

  it("says so when the rotated version came back with an unsafe policy", async () => {
    // The current version was safe when read; the vault gave the new one another policy.
    const { store, writes, updates } = recordingStore(version("1", safe), version("2", unsafe));
    const error = await guardReleasePolicyWrites(store)
      .rotate("k")
      .catch((e: unknown) => e as ShieldError);
    expect(error).toBeInstanceOf(ShieldError);
    expect((error as ShieldError).code).toBe("ERR_POLICY_UNSAFE");
    expect((error as ShieldError).message).toContain("rotated version 2");
    expect((error as ShieldError).violations).toHaveLength(2);
    // The new version got the policy that was checked, before the error was reported.
    expect(writes).toEqual(["rotate", "update"]);
    expect(updates).toEqual([{ version: "2", policy: safe }]);
  });

  it("refuses an update without a version before reading or writing", async () => {
    const { store, writes } = recordingStore(version("1", safe), version("2", safe));
    expect(await codeOf(guardReleasePolicyWrites(store).updateReleasePolicy("k", "", safe))).toBe(
      "ERR_CONFIG",
    );
    expect(writes).toEqual([]);
  });
});
