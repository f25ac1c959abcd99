/**
 * The rotate use case against the local Key Vault engine (through the guarded local key store)
 * and the in-memory state store: what it checks on a new version, the version limit, the lease
 * per key, and idempotency by source event.
 */
import { randomBytes } from "node:crypto";
import { beforeEach, describe, expect, it } from "vitest";
import { createMemoryStateStore, type MemoryStateStore } from "../../../adapters/state/memory.js";
import { createLocalKeyVault, type LocalKeyVault } from "../../../adapters/local/keyvault/engine.js";
import { createLocalKeyStore } from "../../../adapters/local/keyvault/key-store.js";
import { createRotation } from "../../../core/lifecycle/rotate.js";
import { parseKeyLifecycles } from "../../../core/lifecycle/keys.js";
import { makeRotateKey, type RotateKey } from "../../../core/messages/index.js";
import { fixedClock } from "../../../core/ports/clock.js";
import type { KeyStore } from "../../../core/ports/key-store.js";
import { parseReleasePolicy, renderReleasePolicy, samePolicyMeaning } from "../../../core/policy/index.js";
import { ShieldError } from "../../../core/errors.js";
import { createTestControlPlane } from "../../support/control.js";

const ISSUER = "https://maa.test";
const clock = fixedClock(new Date("2026-12-07T00:00:00.000Z"));
const policy = renderReleasePolicy({
  authority: ISSUER,
  measurements: { sevsnpvm: { hostData: ["ab".repeat(32)] } },
});
const other = renderReleasePolicy({
  authority: ISSUER,
  measurements: { sevsnpvm: { hostData: ["ab".repeat(32), "cd".repeat(32)] } },
});

let vault: LocalKeyVault;
let keys: KeyStore;
let state: MemoryStateStore;
let sent: string[];

function rotation(store: KeyStore = keys, maxVersions?: number, lockWaitSeconds = 0.2) {
  const control = createTestControlPlane();
  return createRotation(
    {
      state,
      keys: store,
      agents: control.channel({
        sendToAgent: (agentId, message) => Promise.resolve(void sent.push(`${agentId}:${message.type}`)),
      }),
      rotations: { enqueueRotation: () => Promise.resolve() },
      clock,
      logger: () => undefined,
    },
    {
      lifecycles: parseKeyLifecycles({}).lifecycles,
      lockWaitSeconds,
      ...(maxVersions === undefined ? {} : { maxVersions }),
    },
  );
}

const message = (fields: Partial<Omit<RotateKey, "sentAt">> = {}) =>
  makeRotateKey({
    keyName: "k",
    reason: "manual",
    sourceEventId: `e-${randomBytes(4).toString("hex")}`,
    sentAt: clock.now(),
    ...fields,
  });
const delivery = { messageId: "m", deliveryCount: 1 };

beforeEach(async () => {
  vault = await createLocalKeyVault({
    vaultUrl: "https://vault.test",
    masterKey: randomBytes(32),
    clock,
    tokenKeys: () => {
      throw new ShieldError("ERR_TOKEN_ISSUER", "no releases in this test");
    },
  });
  keys = createLocalKeyStore(vault);
  state = createMemoryStateStore();
  sent = [];
  await keys.createKey("k", { keyType: "oct-HSM", keySize: 256, releasePolicy: policy });
});

describe("rotate", () => {
  it("re-applies the managed policy when the vault does not carry it to the new version", async () => {
    // A vault whose rotation gives the new version another policy (Key Vault documents neither way).
    const forgetful: KeyStore = {
      ...keys,
      rotate: async (name) => {
        const rotated = await keys.rotate(name);
        await vault.updateKey(name, rotated.version, {
          releasePolicy: {
            contentType: "application/json; charset=utf-8",
            data: Buffer.from(
              JSON.stringify({
                version: "1.0.0",
                anyOf: [
                  {
                    authority: ISSUER,
                    allOf: [
                      { claim: "x-ms-sevsnpvm-hostdata", equals: "cd".repeat(32) },
                      { claim: "x-ms-attestation-type", equals: "sevsnpvm" },
                      { claim: "x-ms-sevsnpvm-is-debuggable", equals: false },
                    ],
                  },
                ],
              }),
            ).toString("base64url"),
          },
        });
        return keys.getKey(name, rotated.version);
      },
    };
    const outcome = await rotation(forgetful).handle(message(), delivery);
    expect(outcome).toMatchObject({ outcome: "rotated", settlement: { action: "complete" } });
    const read = await keys.getKey("k", outcome.version);
    expect(samePolicyMeaning(read.releasePolicy!, policy)).toBe(true);
  });

  it("rotates once per source event, however often it is delivered", async () => {
    const m = message();
    const handler = rotation();
    await handler.handle(m, delivery);
    const again = await handler.handle(m, { messageId: "m", deliveryCount: 2 });
    expect(again.outcome).toBe("duplicate");
    expect(await keys.listVersions("k")).toHaveLength(2);
  });

  it("a near-expiry event for a version already superseded makes nothing new", async () => {
    const first = await keys.getKey("k");
    const handler = rotation();
    await handler.handle(message({ reason: "near-expiry", keyVersion: first.version }), delivery);
    const second = await handler.handle(message({ reason: "expired", keyVersion: first.version }), delivery);
    expect(second.outcome).toBe("unchanged");
    expect(await keys.listVersions("k")).toHaveLength(2);
  });

  it("refuses at the version limit with ERR_KEY_VERSION_LIMIT, makes nothing, and does not retry", async () => {
    const handler = rotation(keys, 3);
    await handler.handle(message(), delivery);
    await handler.handle(message(), delivery);
    const refused = await handler.handle(message(), delivery);
    expect(refused).toMatchObject({
      outcome: "refused",
      code: "ERR_KEY_VERSION_LIMIT",
      settlement: { action: "complete" },
    });
    expect(await keys.listVersions("k")).toHaveLength(3);
    expect((await state.listAudit("key-k")).map((e) => e.kind)).toContain("key-rotation-failed");
  });

  it("disables a version that is not exportable and never announces it", async () => {
    const stubborn: KeyStore = {
      ...keys,
      getKey: async (name, version) => {
        const info = await keys.getKey(name, version);
        return version !== undefined && info.version !== (await keys.listVersions(name))[0]!.version
          ? { ...info, exportable: false }
          : info;
      },
    };
    await state.recordHolding({
      agentId: "a1",
      keyName: "k",
      keyVersion: (await keys.getKey("k")).version,
      measurement: { tee: "sevsnp", hostData: "ab".repeat(32) },
      releasedAt: clock.now(),
      requestId: "r1",
    });
    const outcome = await rotation(stubborn).handle(message(), delivery);
    expect(outcome).toMatchObject({ outcome: "refused", code: "ERR_KEY_VERSION_UNSAFE" });
    const [, made] = await keys.listVersions("k");
    expect(made?.enabled).toBe(false);
    expect(sent).toEqual([]);
  });

  it("adopts a version made outside Shield with another policy: fixed to the managed policy", async () => {
    const handler = rotation();
    await handler.handle(message(), delivery); // managed from here on
    const outside = await keys.rotate("k");
    await keys.updateReleasePolicy("k", outside.version, other);
    const outcome = await handler.handle(
      message({ reason: "new-version", keyVersion: outside.version }),
      delivery,
    );
    expect(outcome).toMatchObject({ outcome: "adopted", version: outside.version });
    expect(samePolicyMeaning((await keys.getKey("k", outside.version)).releasePolicy!, policy)).toBe(true);
    expect((await state.getManagedKey("k"))?.versions.map((v) => v.origin)).toEqual([
      "initial",
      "rotated",
      "adopted",
    ]);
  });

  it("one key at a time: a second invocation while one holds the key is left for redelivery", async () => {
    let release: () => void = () => undefined;
    const slow: KeyStore = {
      ...keys,
      rotate: async (name) => {
        await new Promise<void>((resolve) => (release = resolve));
        return keys.rotate(name);
      },
    };
    const handler = rotation(slow);
    const first = handler.handle(message(), delivery);
    await new Promise((resolve) => setTimeout(resolve, 20));
    const second = await handler.handle(message(), delivery);
    expect(second.settlement.action).toBe("retry");
    release();
    expect((await first).outcome).toBe("rotated");
    expect(await keys.listVersions("k")).toHaveLength(2);
  });

  it("waits for a busy key instead of burning a delivery: the second rotation runs once the first lets go", async () => {
    let release: () => void = () => undefined;
    let calls = 0;
    const slow: KeyStore = {
      ...keys,
      rotate: async (name) => {
        if (calls++ === 0) await new Promise<void>((resolve) => (release = resolve));
        return keys.rotate(name);
      },
    };
    const handler = rotation(slow, undefined, 30);
    const first = handler.handle(message(), delivery);
    await new Promise((resolve) => setTimeout(resolve, 20));
    const second = handler.handle({ ...message(), sourceEventId: "other-event" }, delivery);
    await new Promise((resolve) => setTimeout(resolve, 100));
    release();
    expect((await first).outcome).toBe("rotated");
    expect((await second).settlement.action).toBe("complete");
  });

  it("records and completes a malformed message", async () => {
    const outcome = await rotation().handle({ type: "rotate-key", version: 1, keyName: "k" }, delivery);
    expect(outcome).toMatchObject({
      outcome: "rejected",
      code: "ERR_MESSAGE_SCHEMA",
      settlement: { action: "complete" },
    });
    expect((await state.listAudit("intake")).at(-1)).toMatchObject({ kind: "message-rejected" });
    expect(await keys.listVersions("k")).toHaveLength(1);
  });
});

describe("samePolicyMeaning", () => {
  it("treats Key Vault's normalised form (reordered, booleans as strings) as the same policy", () => {
    const json = {
      version: "1.0.0",
      anyOf: [
        {
          authority: ISSUER,
          allOf: [
            { claim: "x-ms-sevsnpvm-is-debuggable", equals: false },
            { claim: "x-ms-attestation-type", equals: "sevsnpvm" },
          ],
        },
      ],
    };
    const kv = {
      anyOf: [
        {
          allOf: [
            { equals: "sevsnpvm", claim: "x-ms-attestation-type" },
            { claim: "x-ms-sevsnpvm-is-debuggable", equals: "false" },
          ],
          authority: `${ISSUER}/`,
        },
      ],
      version: "1.0.0",
    };
    expect(samePolicyMeaning(parse(json), parse(kv))).toBe(true);
    expect(samePolicyMeaning(policy, other)).toBe(false);
  });
});

function parse(value: unknown) {
  return parseReleasePolicy(value);
}
