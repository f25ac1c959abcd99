/**
 * Rollouts and rotations of one key, over the real Key Vault SDK against the local Key
 * Vault-compatible server: a rotation after a rollout makes its version with the new measurement
 * (the release policy Shield keeps for a managed key follows the rollout), one after the
 * retirement does not bring the retired measurement back, and a rotation racing a policy update
 * — in either order — ends with every releasable version and the managed policy agreeing.
 */
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRotation } from "../../core/lifecycle/rotate.js";
import { parseKeyLifecycles } from "../../core/lifecycle/keys.js";
import { makeRotateKey } from "../../core/messages/index.js";
import { policyMeasurements } from "../../core/policy/index.js";
import { systemRandom } from "../../core/ports/clock.js";
import type { KeyStore } from "../../core/ports/key-store.js";
import { createRollout, type Rollout } from "../../core/rollout/rollout.js";
import { createTestControlPlane } from "../support/control.js";
import { NEW_HOST_DATA, OLD_HOST_DATA, startDeployHarness, type DeployHarness } from "../support/deploy.js";

let h: DeployHarness;

beforeAll(async () => {
  h = await startDeployHarness();
});

afterAll(async () => {
  await h?.close();
});

/** A key store whose `method` waits for `open()` before it runs: holds one side of a race. */
function gated(store: KeyStore, method: "rotate" | "updateReleasePolicy") {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  let entered!: () => void;
  const reached = new Promise<void>((resolve) => (entered = resolve));
  const wrapped: KeyStore = {
    createKey: (...a) => store.createKey(...a),
    getKey: (...a) => store.getKey(...a),
    listVersions: (...a) => store.listVersions(...a),
    release: (...a) => store.release(...a),
    rotate: async (name) => {
      if (method === "rotate") {
        entered();
        await gate;
      }
      return store.rotate(name);
    },
    updateReleasePolicy: async (...a) => {
      if (method === "updateReleasePolicy") {
        entered();
        await gate;
      }
      return store.updateReleasePolicy(...a);
    },
    setEnabled: (...a) => store.setEnabled(...a),
  };
  return { store: wrapped, open: () => open(), reached };
}

function rotation(keys: KeyStore = h.keys) {
  const control = createTestControlPlane();
  return createRotation(
    {
      state: h.state,
      keys,
      agents: control.channel({ sendToAgent: () => Promise.resolve() }),
      rotations: { enqueueRotation: () => Promise.resolve() },
      clock: h.clock,
      logger: () => undefined,
    },
    // A short wait for a busy key, so a rotation blocked by the held update is handed back
    // (and the test can open the gate) instead of waiting out the default 30 s.
    { lifecycles: parseKeyLifecycles({}).lifecycles, lockWaitSeconds: 0.2 },
  );
}

/** Rotates now (reason `manual`), taking redeliveries as Service Bus would; the new version. */
async function rotateNow(
  keyName: string,
  keys: KeyStore = h.keys,
  onHandedBack: (code: string | undefined) => void = () => undefined,
): Promise<string> {
  const message = makeRotateKey({
    keyName,
    reason: "manual",
    sourceEventId: `manual-${randomUUID()}`,
    sentAt: h.clock.now(),
  });
  const rotate = rotation(keys);
  for (let delivery = 1; delivery <= 50; delivery++) {
    const outcome = await rotate.handle(message, { messageId: "m", deliveryCount: delivery });
    if (outcome.settlement.action === "complete") {
      expect(outcome.outcome).toBe("rotated");
      return outcome.version!;
    }
    onHandedBack(outcome.code);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error("the rotation never completed");
}

/** Posts a signed deployment of the new measurement and applies its policy-update. */
async function deploy(keyName: string, rollout: Rollout = h.rollout): Promise<string | undefined> {
  const raw = JSON.stringify({
    keys: [keyName],
    add: [{ tee: "sevsnp", hostData: NEW_HOST_DATA }],
    graceSeconds: 3600,
  });
  const answer = await h.handler.post(h.signed(raw), Buffer.from(raw));
  expect(answer.status).toBe(202);
  const message = h.queued.splice(0).find((m) => m.keys.includes(keyName))!;
  return (await rollout.applyPolicyUpdate(message))?.status;
}

async function hostDataOf(keyName: string, version?: string): Promise<string[]> {
  const info = await h.keys.getKey(keyName, version);
  return policyMeasurements(info.releasePolicy!)
    .map((m) => m.value)
    .sort();
}

async function releasableHostData(keyName: string): Promise<string[][]> {
  const out: string[][] = [];
  for (const v of await h.keys.listVersions(keyName)) {
    if (v.enabled && v.releasePolicy !== undefined) out.push(await hostDataOf(keyName, v.version));
  }
  return out;
}

async function managedHostData(keyName: string): Promise<string[]> {
  const managed = await h.state.getManagedKey(keyName);
  return policyMeasurements(managed!.releasePolicy)
    .map((m) => m.value)
    .sort();
}

const both = [OLD_HOST_DATA, NEW_HOST_DATA].sort();

describe("a rotation after a rollout", () => {
  it("carries the new measurement, and after the retirement does not bring the old one back", async () => {
    const key = await h.createKey(2);
    await rotateNow(key); // the key is managed from here on, with the old measurement's policy
    expect(await managedHostData(key)).toEqual([OLD_HOST_DATA]);

    expect(await deploy(key)).toBe("applied");
    expect(await managedHostData(key)).toEqual(both);
    const during = await rotateNow(key);
    expect(await hostDataOf(key, during)).toEqual(both);
    // The rotation did not "repair" the versions the rollout changed back to the old policy.
    expect(await releasableHostData(key)).toEqual(Array(4).fill(both));

    h.clock.advance(3601_000);
    const report = await h.rollout.retireDue();
    expect(report.keys.find((k) => k.keyName === key)?.retired).toEqual([
      { tee: "sevsnp", hostData: OLD_HOST_DATA },
    ]);
    expect(await managedHostData(key)).toEqual([NEW_HOST_DATA]);
    const after = await rotateNow(key);
    expect(await hostDataOf(key, after)).toEqual([NEW_HOST_DATA]);
    expect(await releasableHostData(key)).toEqual(Array(5).fill([NEW_HOST_DATA]));
  });
});

describe("a rotation racing a policy update for one key", () => {
  it("rotation first: the update waits for the key and then reaches the new version too", async () => {
    const key = await h.createKey(2);
    await rotateNow(key);
    const held = gated(h.keys, "rotate");
    const rotating = rotateNow(key, held.store);
    await held.reached; // the rotation holds the key and is about to make its version
    const updating = deploy(key);
    await new Promise((resolve) => setTimeout(resolve, 200)); // let the update ask for the key
    held.open();
    const version = await rotating;
    expect(await updating).toBe("applied");
    expect(await hostDataOf(key, version)).toEqual(both);
    expect(await releasableHostData(key)).toEqual(Array(4).fill(both));
    expect(await managedHostData(key)).toEqual(both);
  });

  it("update first: the rotation is handed back until the update is done, then carries it", async () => {
    const key = await h.createKey(2);
    await rotateNow(key);
    const held = gated(h.keys, "updateReleasePolicy");
    const updating = deploy(key, rolloutOver(held.store));
    await held.reached; // the update holds the key and is about to write the first version
    const handedBack: (string | undefined)[] = [];
    const rotating = rotateNow(key, h.keys, (code) => {
      handedBack.push(code);
      held.open(); // the rotation was refused while the update held the key: let it finish
    });
    const version = await rotating;
    held.open(); // (already open unless the rotation ran while the update held the key)
    expect(await updating).toBe("applied");
    expect(handedBack[0]).toBe("ERR_CONFLICT");
    expect(await hostDataOf(key, version)).toEqual(both);
    expect(await releasableHostData(key)).toEqual(Array(4).fill(both));
    expect(await managedHostData(key)).toEqual(both);
  });
});

/** The harness's rollout over another key store (to hold it mid-write). */
function rolloutOver(keys: KeyStore): Rollout {
  return createRollout(
    {
      keys,
      policyState: h.policyState,
      state: h.state,
      clock: h.clock,
      random: systemRandom,
      logger: () => undefined,
      sleep: (ms) => new Promise((r) => setTimeout(r, Math.min(ms, 20))),
    },
    { seed: h.seed },
  );
}
