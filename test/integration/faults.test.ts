/**
 * Injected faults through the real path: the exported `attest` function under the local
 * functions host, the composition root's adapters (MAA client over HTTP, the Key Vault SDK, Table
 * Storage, Storage Queues) against the local MAA and Key Vault servers, whose fault modes the
 * tests set per route, and Azurite's Table endpoint behind a TCP proxy that the tests reset and
 * restart. Agents are light simulated agents speaking the protocol over the bus.
 *
 * What must hold: a transient fault is retried (inside the invocation, then by redelivery) and
 * the attestation then succeeds; a persistent one ends in the dead-letter queue with a reason,
 * and the agent gets a signed result carrying the typed error; a storage restart mid-run loses
 * no record; no key is released twice (counted on the local Key Vault).
 */
import { randomUUID } from "node:crypto";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { attest } from "../../functions/attest.js";
import { resetComposition } from "../../functions/composition/root.js";
import { startLocalStack, type LocalStack } from "../../local/stack.js";
import { startLocalFunctionsHost, type LocalFunctionsHost } from "../../adapters/local/functions-host.js";
import { createStorageQueueBus, type StorageQueueBus } from "../../adapters/storage-queue/bus.js";
import { createKeyVaultKeyStore } from "../../adapters/keyvault/key-store.js";
import { localKeyVaultCredential } from "../../adapters/local/keyvault/credential.js";
import { createMaaClient } from "../../adapters/maa/client.js";
import { createTableStateStore } from "../../adapters/state/table.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../core/evidence/simulated/sevsnp.js";
import { buildMaaSnpEnvelope } from "../../core/evidence/sevsnp/index.js";
import { renderReleasePolicy } from "../../core/policy/index.js";
import { withRetry } from "../../core/retry.js";
import type { StateStore } from "../../core/ports/state.js";
import { createRuntimeKey, type RuntimeKey } from "../../agent/runtime-key.js";
import { azuriteConnectionString, uniqueTableName } from "../support/storage.js";
import { LightAgent } from "../support/light-agent.js";
import { startTcpProxy, tableEndpointOf, tableEndpointThrough, type TcpProxy } from "../support/tcp-proxy.js";

const HOST_DATA = "3c".repeat(32);
const KEYS = ["faults-a", "faults-b"] as const;
// Service Bus's default: a storage restart on a busy machine can outlast a few quick redeliveries.
const MAX_DELIVERIES = 10;

let stack: LocalStack;
let platform: SimulatedSnpPlatform;
let runtimeKey: RuntimeKey;
let bus: StorageQueueBus;
let host: LocalFunctionsHost;
let proxy: TcpProxy;
let state: StateStore;
const agents: LightAgent[] = [];

function agent(keys: readonly string[] = KEYS): LightAgent {
  const made = new LightAgent(
    {
      platform,
      runtimeKey,
      controlKeys: stack.controlKeys,
      requests: bus,
      openInbox: (agentId) => bus.openAgentInbox(agentId),
    },
    `faults-${randomUUID().slice(0, 12)}`,
    { hostData: HOST_DATA, keys },
  );
  agents.push(made);
  return made;
}

/** Successful releases and release calls that reached the vault's engine. */
const vault = () => {
  const stats = stack.vault.stats();
  return { calls: stats.calls, released: stats.released };
};

beforeAll(async () => {
  platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  runtimeKey = await createRuntimeKey();
  const direct = azuriteConnectionString();
  proxy = await startTcpProxy(tableEndpointOf(direct));
  const tableName = uniqueTableName("faults");
  stack = await startLocalStack({
    // State goes through the proxy; the bus talks to Azurite directly.
    storageConnectionString: tableEndpointThrough(direct, proxy),
    platform,
    complianceStatus: "azure-compliant-uvm",
    appraisalPolicy: JSON.stringify({ sevsnpvm: { hostData: [HOST_DATA] } }),
    tableName,
    maxDeliveryCount: MAX_DELIVERIES,
  });
  const requestsQueue = `faults${randomUUID().slice(0, 8)}`;
  Object.assign(process.env, stack.settings, { SHIELD_BUS_CONNECTION: direct });
  await resetComposition();
  bus = createStorageQueueBus({
    connectionString: direct,
    requestsQueue,
    maxDeliveryCount: MAX_DELIVERIES,
    lockDurationMs: 2_000,
    minPollMs: 20,
    maxPollMs: 100,
  });
  host = startLocalFunctionsHost({
    functionName: "attest",
    handler: attest,
    receiver: bus.openRequestReceiver(),
    maxDeliveryCount: MAX_DELIVERIES,
    concurrency: 4,
  });
  const keyStore = createKeyVaultKeyStore({
    vaultUrl: stack.keyVault.url,
    credential: localKeyVaultCredential(stack.keyVault.accessToken),
  });
  const releasePolicy = renderReleasePolicy({
    authority: stack.maa.url,
    measurements: { sevsnpvm: { hostData: [HOST_DATA] } },
  });
  for (const name of KEYS)
    await keyStore.createKey(name, { keyType: "oct-HSM", keySize: 256, releasePolicy });
  state = await createTableStateStore({ connectionString: direct, tableName });
}, 60_000);

afterEach(() => {
  stack.maa.faults.clear();
  stack.keyVault.faults.clear();
  proxy.setMode({ kind: "pass" });
});

afterAll(async () => {
  await host?.stop();
  for (const a of agents) await a.close();
  await resetComposition();
  await bus?.close();
  await stack?.close();
  await proxy?.close();
});

/** One attestation under the faults set; it must end trusted with one release per key. */
async function trustedOnce(made = agent()): Promise<void> {
  const before = vault();
  const { result } = await made.attest();
  expect(result.verdict).toBe("trusted");
  expect(result.keys.map((k) => k.name)).toEqual([...KEYS]);
  expect(vault().released - before.released).toBe(KEYS.length);
}

describe("transient MAA faults are retried and the attestation succeeds", () => {
  it("429 with Retry-After, twice", async () => {
    stack.maa.faults.inject("attestSevSnpVm", { kind: "throttle", retryAfterSeconds: 0 }, { times: 2 });
    const faultsBefore = stack.maa.faults.count();
    await trustedOnce();
    expect(stack.maa.faults.count() - faultsBefore).toBe(2);
  });

  it("503 and a connection reset", async () => {
    stack.maa.faults.inject("attestSevSnpVm", { kind: "unavailable" }, { times: 1 });
    stack.maa.faults.inject("attestSevSnpVm", { kind: "reset" }, { times: 1 });
    const faultsBefore = stack.maa.faults.count();
    await trustedOnce();
    expect(stack.maa.faults.count() - faultsBefore).toBe(2);
  });

  it("latency on every call", async () => {
    stack.maa.faults.inject("*", { kind: "latency", ms: 150 });
    await trustedOnce();
  });

  it("a restart of the attestation service during the request", async () => {
    stack.maa.faults.inject("attestSevSnpVm", { kind: "restart", downMs: 500 }, { times: 1 });
    const faultsBefore = stack.maa.faults.count();
    await trustedOnce();
    expect(stack.maa.faults.count() - faultsBefore).toBe(1);
  });

  it("a hung request ends in ERR_TIMEOUT at the client's timeout and is retried", async () => {
    // The composition's MAA client waits 30 s; the same client with a short timeout shows the
    // mapping and the retry without waiting that long.
    const client = createMaaClient({ instanceUrl: stack.maa.url, timeoutMs: 300 });
    const report = platform.signReport({
      reportData: runtimeKey.runtimeData.reportData.subarray(0, 32),
      hostData: Buffer.from(HOST_DATA, "hex"),
    });
    const envelope = buildMaaSnpEnvelope({ report, vcek: platform.leafPem, chain: platform.chainPem });
    const call = () =>
      client.attestSevSnp({ report: envelope, runtimeData: Buffer.from(runtimeKey.runtimeData.bytes) });
    stack.maa.faults.inject("attestSevSnpVm", { kind: "timeout" }, { times: 1 });
    await expect(call()).rejects.toMatchObject({ code: "ERR_TIMEOUT", transient: true });
    stack.maa.faults.inject("attestSevSnpVm", { kind: "timeout" }, { times: 1 });
    const attempts: string[] = [];
    const token = await withRetry(call, {
      attempts: 3,
      baseDelayMs: 10,
      onRetry: (_attempt, error) => attempts.push((error as { code: string }).code),
    });
    expect(token.split(".")).toHaveLength(3);
    expect(attempts).toEqual(["ERR_TIMEOUT"]);
  });
});

describe("transient Key Vault faults are retried and nothing is released twice", () => {
  it("503, 429 with Retry-After and a reset on release", async () => {
    stack.keyVault.faults.inject("release", { kind: "unavailable" }, { times: 1 });
    stack.keyVault.faults.inject("release", { kind: "throttle", retryAfterSeconds: 0 }, { times: 1 });
    stack.keyVault.faults.inject("release", { kind: "reset" }, { times: 1 });
    const before = vault();
    await trustedOnce();
    // The faults answered before the engine: every call that reached it released, once per key.
    expect(vault().calls - before.calls).toBe(KEYS.length);
  });

  it("a signing outage after the keys were released: redelivery re-sends the stored answer", async () => {
    const made = agent();
    const before = vault();
    const abandonedBefore = host.stats().abandoned;
    // The challenge is signed; then the vault's sign operation fails long enough that the first
    // delivery of the attestation request gives up after its releases were stored.
    const { result } = await made.attest({
      afterChallenge: () => {
        stack.keyVault.faults.inject("sign", { kind: "unavailable" }, { times: 6 });
      },
    });
    expect(result.verdict).toBe("trusted");
    expect(host.stats().abandoned).toBeGreaterThan(abandonedBefore);
    expect(vault().calls - before.calls).toBe(KEYS.length);
    expect(vault().released - before.released).toBe(KEYS.length);
    await made.drain(500);
    expect([...made.resultsByRequest.values()]).toEqual([1]);
  });

  it("latency on every vault call", async () => {
    stack.keyVault.faults.inject("*", { kind: "latency", ms: 100 });
    await trustedOnce();
  });

  it("a restart of the vault during a release", async () => {
    stack.keyVault.faults.inject("release", { kind: "restart", downMs: 400 }, { times: 1 });
    const before = vault();
    await trustedOnce();
    expect(vault().calls - before.calls).toBe(KEYS.length);
  });
});

describe("persistent faults end in the dead-letter queue, and the agent is told", () => {
  async function deadLettered(requestId: string) {
    const deadline = Date.now() + 20_000;
    for (;;) {
      const letters = await bus.openRequestReceiver().readDeadLetters();
      const mine = letters.find((d) => (d.body as { requestId?: string }).requestId === requestId);
      if (mine !== undefined) return mine;
      if (Date.now() > deadline) throw new Error("not dead-lettered");
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  it("Key Vault unavailable on every release: no key released, the typed error in the result", async () => {
    stack.keyVault.faults.inject("release", { kind: "unavailable" });
    const before = vault();
    const { result } = await agent().attest();
    expect(result.verdict).toBe("error");
    if (result.verdict === "trusted") return;
    expect(result.denial.code).toBe("ERR_UPSTREAM_UNAVAILABLE");
    expect(result.keys).toEqual([]);
    const letter = await deadLettered(result.requestId);
    expect(letter.reason).toBe("ERR_UPSTREAM_UNAVAILABLE");
    expect(letter.deliveryCount).toBe(MAX_DELIVERIES);
    expect(vault().calls).toBe(before.calls);
  });

  it("every connection to MAA reset: ERR_NETWORK after the last delivery", async () => {
    stack.maa.faults.inject("attestSevSnpVm", { kind: "reset" });
    const before = vault();
    const { result } = await agent().attest();
    expect(result.verdict).toBe("error");
    if (result.verdict === "trusted") return;
    expect(result.denial.code).toBe("ERR_NETWORK");
    const letter = await deadLettered(result.requestId);
    expect(letter.reason).toBe("ERR_NETWORK");
    expect(letter.description).toMatch(/dead-letter/);
    expect(vault().calls).toBe(before.calls);
  });
});

describe("storage faults (Azurite's Table endpoint behind the proxy)", () => {
  it("a storage restart mid-run loses no record and releases nothing twice", async () => {
    const made = Array.from({ length: 6 }, () => agent());
    const before = vault();
    const cutBefore = proxy.stats().cut;
    // The first challenge to arrive restarts storage: the other agents' requests are in flight
    // then, and the connection that wrote that challenge is open (kept alive) and cut.
    let restarted: Promise<void> | undefined;
    const runs = made.map((a) =>
      a.attest({
        timeoutMs: 60_000,
        afterChallenge: () => {
          restarted ??= proxy.restart(600);
        },
      }),
    );
    await new Promise((resolve) => setTimeout(resolve, 100));
    await restarted;
    await new Promise((resolve) => setTimeout(resolve, 300));
    proxy.resetAll();
    const rounds = await Promise.all(runs);
    expect(proxy.stats().cut).toBeGreaterThan(cutBefore);
    for (const [i, { result }] of rounds.entries()) {
      expect(result.verdict, result.verdict === "trusted" ? "" : JSON.stringify(result.denial)).toBe(
        "trusted",
      );
      const record = await state.getAttestation(made[i]!.agentId, result.requestId);
      expect(record?.verdict).toBe("trusted");
      const holdings = await state.listHoldingsByAgent(made[i]!.agentId);
      expect(holdings.map((h) => h.keyName).sort()).toEqual([...KEYS].sort());
      expect((await state.getAgent(made[i]!.agentId))?.status).toBe("trusted");
    }
    await host.idle();
    // Every release the vault made was delivered: one per key per agent, none twice.
    expect(vault().released - before.released).toBe(made.length * KEYS.length);
  }, 90_000);

  it("a blackholed storage connection is given up on and retried", async () => {
    const made = agent();
    proxy.setMode({ kind: "blackhole" });
    const run = made.attest({ timeoutMs: 60_000 });
    await new Promise((resolve) => setTimeout(resolve, 500));
    proxy.resetAll();
    proxy.setMode({ kind: "pass" });
    const { result } = await run;
    expect(result.verdict).toBe("trusted");
  }, 90_000);
});
