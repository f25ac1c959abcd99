/**
 * The PolicyStateStore contract, run against every adapter: conditional writes, one lease
 * holder per key, deployments as written, and the webhook's replay cache with its expiry.
 */
import { describe, expect, it } from "vitest";
import { ShieldError } from "../../core/errors.js";
import type { DeploymentState, KeyPolicyState, PolicyStateStore } from "../../core/ports/policy-state.js";

const T0 = new Date("2026-03-01T10:00:00.000Z");
const at = (seconds: number) => new Date(T0.getTime() + seconds * 1000);
const HOST_A = "a1".repeat(32);
const HOST_B = "b2".repeat(32);

async function codeOf(promise: Promise<unknown>): Promise<string | undefined> {
  try {
    await promise;
    return undefined;
  } catch (error) {
    return error instanceof ShieldError ? error.code : "not a ShieldError";
  }
}

let counter = 0;
const unique = (prefix: string) => `${prefix}-${Date.now().toString(36)}-${++counter}`;

function keyPolicy(keyName: string, overrides: Partial<KeyPolicyState> = {}): KeyPolicyState {
  return {
    keyName,
    allowed: [{ measurement: { tee: "sevsnp", hostData: HOST_A }, addedAt: T0, deploymentId: "seed" }],
    retired: [],
    updatedAt: T0,
    ...overrides,
  };
}

function deployment(deploymentId: string, createdAt = T0): DeploymentState {
  return {
    deploymentId,
    status: "queued",
    keys: ["orders-key"],
    add: [{ tee: "sevsnp", hostData: HOST_B }],
    retire: [{ tee: "sevsnp", hostData: HOST_A }],
    graceSeconds: 3600,
    requestedBy: "github:contoso/orders",
    createdAt,
    updatedAt: createdAt,
    progress: [{ keyName: "orders-key", status: "pending", versions: [] }],
  };
}

export function definePolicyStateContract(name: string, make: () => Promise<PolicyStateStore>): void {
  describe(`PolicyStateStore contract: ${name}`, () => {
    it("stores a key's appraisal policy and returns it as written, dates as dates", async () => {
      const store = await make();
      const key = unique("k");
      expect(await store.getKeyPolicy(key)).toBeUndefined();
      const written = keyPolicy(key, {
        allowed: [
          {
            measurement: { tee: "sevsnp", hostData: HOST_A },
            addedAt: T0,
            deploymentId: "seed",
            retireAt: at(60),
          },
          { measurement: { tee: "sevsnp", hostData: HOST_B }, addedAt: T0, deploymentId: "d-1" },
        ],
        retired: [{ measurement: { tee: "sgx", mrenclave: HOST_A }, retiredAt: T0 }],
      });
      const created = await store.createKeyPolicy(written);
      const read = await store.getKeyPolicy(key);
      const { etag, ...state } = read!;
      expect(etag).toBe(created.etag);
      expect(state).toEqual(written);
      expect(read!.allowed[0]!.retireAt).toBeInstanceOf(Date);
      expect((await store.listKeyPolicies()).map((p) => p.keyName)).toContain(key);
    });

    it("refuses a second insert and an update with a stale ETag (ERR_CONFLICT)", async () => {
      const store = await make();
      const key = unique("k");
      const created = await store.createKeyPolicy(keyPolicy(key));
      expect(await codeOf(store.createKeyPolicy(keyPolicy(key)))).toBe("ERR_CONFLICT");
      const updated = await store.updateKeyPolicy(keyPolicy(key, { updatedAt: at(1) }), created.etag);
      expect(updated.etag).not.toBe(created.etag);
      expect(await codeOf(store.updateKeyPolicy(keyPolicy(key, { updatedAt: at(2) }), created.etag))).toBe(
        "ERR_CONFLICT",
      );
      expect((await store.getKeyPolicy(key))!.updatedAt).toEqual(at(1));
    });

    it("gives a key's lease to one holder at a time, and to another once it expired or was released", async () => {
      const store = await make();
      const key = unique("k");
      const window = { at: T0, leaseUntil: at(30) };
      const claims = await Promise.all(
        ["h1", "h2", "h3", "h4"].map((holder) => store.acquireKeyLease(key, holder, window)),
      );
      expect(claims.filter(Boolean)).toHaveLength(1);
      const winner = ["h1", "h2", "h3", "h4"][claims.indexOf(true)]!;
      const loser = winner === "h1" ? "h2" : "h1";
      expect(await store.acquireKeyLease(key, winner, window)).toBe(true);
      expect(await store.acquireKeyLease(key, loser, { at: at(10), leaseUntil: at(40) })).toBe(false);
      expect(await store.acquireKeyLease(key, loser, { at: at(31), leaseUntil: at(60) })).toBe(true);
      await store.releaseKeyLease(key, winner); // no longer the holder: changes nothing
      expect(await store.acquireKeyLease(key, winner, { at: at(32), leaseUntil: at(60) })).toBe(false);
      await store.releaseKeyLease(key, loser);
      expect(await store.acquireKeyLease(key, winner, { at: at(33), leaseUntil: at(60) })).toBe(true);
    });

    it("stores deployments, updates them conditionally and lists the newest first", async () => {
      const store = await make();
      const first = unique("d");
      const second = unique("d");
      const created = await store.createDeployment(deployment(first, T0));
      await store.createDeployment(deployment(second, at(5)));
      expect(await codeOf(store.createDeployment(deployment(first)))).toBe("ERR_CONFLICT");
      const { etag: _etag, ...read } = (await store.getDeployment(first))!;
      expect(read).toEqual(deployment(first, T0));
      const applied = {
        ...deployment(first, T0),
        status: "applied" as const,
        progress: [
          {
            keyName: "orders-key",
            status: "applied" as const,
            versions: [{ version: "v1", outcome: "updated" as const }],
          },
        ],
      };
      await store.updateDeployment(applied, created.etag);
      expect(await codeOf(store.updateDeployment(applied, created.etag))).toBe("ERR_CONFLICT");
      expect((await store.getDeployment(first))!.status).toBe("applied");
      const listed = (await store.listDeployments()).map((d) => d.deploymentId);
      expect(listed.indexOf(second)).toBeLessThan(listed.indexOf(first));
      expect(await store.getDeployment(unique("none"))).toBeUndefined();
    });

    it("remembers a delivery id until it expires: a replay inside the window is refused, one after it is new", async () => {
      const store = await make();
      const delivery = unique("delivery");
      const window = { at: T0, expiresAt: at(600) };
      const uses = await Promise.all([1, 2, 3].map(() => store.rememberDelivery(delivery, window)));
      expect(uses.filter((use) => use === "new")).toHaveLength(1);
      expect(await store.rememberDelivery(delivery, { at: at(599), expiresAt: at(1200) })).toBe("replayed");
      expect(await store.rememberDelivery(delivery, { at: at(601), expiresAt: at(1200) })).toBe("new");
      expect(await store.rememberDelivery(delivery, { at: at(700), expiresAt: at(1300) })).toBe("replayed");
    });

    it("refuses malformed records before writing anything", async () => {
      const store = await make();
      const key = unique("k");
      await expect(
        store.createKeyPolicy({
          ...keyPolicy(key),
          allowed: [
            { measurement: { tee: "sevsnp", hostData: "XYZ" } as never, addedAt: T0, deploymentId: "seed" },
          ],
        }),
      ).rejects.toThrow(TypeError);
      expect(await store.getKeyPolicy(key)).toBeUndefined();
      await expect(store.rememberDelivery("bad id/with slash", { at: T0, expiresAt: at(1) })).rejects.toThrow(
        TypeError,
      );
    });
  });
}
