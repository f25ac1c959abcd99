/**
 * The functions' OpenTelemetry metrics, read with the SDK's own reader from a MeterProvider the
 * composition is given, while the exported handlers do real work over the local stack (MAA and
 * Key Vault-compatible servers through the real SDKs, Table Storage and queues on Azurite): one
 * grant and one denial through `attest`, a deployment through `deployments` and
 * `policy-updates`, an operator's rotation through `key-rotate` and `rotate`, and a missed
 * re-attestation deadline through `reattest`, each seen as counters with the right attributes.
 */
import { HttpRequest } from "@azure/functions";
import { randomUUID } from "node:crypto";
import { MeterProvider, MetricReader, type DataPoint, type Histogram } from "@opentelemetry/sdk-metrics";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRuntimeKey, type RuntimeKey } from "../../agent/runtime-key.js";
import { createKeyVaultKeyStore } from "../../adapters/keyvault/key-store.js";
import { localKeyVaultCredential } from "../../adapters/local/keyvault/credential.js";
import { startLocalStack, type LocalStack } from "../../local/stack.js";
import { createStorageQueueBus, type StorageQueueBus } from "../../adapters/storage-queue/bus.js";
import {
  DELIVERY_HEADER,
  SIGNATURE_HEADER,
  TIMESTAMP_HEADER,
  webhookSignature,
} from "../../core/deploy/authenticate.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../core/evidence/simulated/sevsnp.js";
import { renderReleasePolicy } from "../../core/policy/index.js";
import { fixedClock } from "../../core/ports/clock.js";
import { configureComposition, resetComposition } from "../../functions/composition/root.js";
import { policyUpdatesOutput, postDeployment } from "../../functions/deployments.js";
import { rotateKeyNow } from "../../functions/keys-admin.js";
import { policyUpdates } from "../../functions/policy-updates.js";
import { reattest } from "../../functions/reattest.js";
import { rotate } from "../../functions/rotate.js";
import { attestAs as attestAsAgent, invocation } from "../support/attesting-agent.js";
import { azuriteConnectionString, uniqueTableName } from "../support/storage.js";

const HOST_DATA = "7a".repeat(32);
const NEW_HOST_DATA = "8b".repeat(32);
const KEY = `metrics-key-${randomUUID().slice(0, 8)}`;
const SECRET = "metrics-webhook-key-0123456789abcdef";
const run = `${process.pid}${Date.now().toString(36)}`;
const ROTATE_QUEUE = `rotate-metrics-${run}`
  .toLowerCase()
  .replace(/[^a-z0-9-]/g, "")
  .slice(0, 60);

class TestReader extends MetricReader {
  protected onForceFlush(): Promise<void> {
    return Promise.resolve();
  }
  protected onShutdown(): Promise<void> {
    return Promise.resolve();
  }
}

const reader = new TestReader();
const meterProvider = new MeterProvider({ readers: [reader] });
const clock = fixedClock(new Date());
let stack: LocalStack;
let platform: SimulatedSnpPlatform;
let runtimeKey: RuntimeKey;
let bus: StorageQueueBus;
let rotations: StorageQueueBus;

const attestAs = (hostData: string, agentId?: string) =>
  attestAsAgent({ stack, bus, platform, runtimeKey, now: () => clock.now() }, hostData, [KEY], agentId);

/** Every data point of one instrument, as the SDK collected it. */
async function points(name: string): Promise<DataPoint<number | Histogram>[]> {
  const { resourceMetrics, errors } = await reader.collect();
  expect(errors).toEqual([]);
  const metric = resourceMetrics.scopeMetrics
    .flatMap((scope) => scope.metrics)
    .find((m) => m.descriptor.name === name);
  return (metric?.dataPoints ?? []) as DataPoint<number | Histogram>[];
}

/** The sum of a counter over the points whose attributes include `attributes`. */
async function counted(name: string, attributes: Record<string, string>): Promise<number> {
  return (await points(name))
    .filter((p) => Object.entries(attributes).every(([k, v]) => p.attributes[k] === v))
    .reduce((sum, p) => sum + (p.value as number), 0);
}

const timer = {
  isPastDue: false,
  schedule: { adjustForDST: false },
  scheduleStatus: { last: "", next: "", lastUpdated: "" },
};

beforeAll(async () => {
  platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  runtimeKey = await createRuntimeKey();
  const connectionString = azuriteConnectionString();
  stack = await startLocalStack({
    storageConnectionString: connectionString,
    platform,
    complianceStatus: "azure-compliant-uvm",
    appraisalPolicy: JSON.stringify({
      sevsnpvm: { hostData: [HOST_DATA], complianceStatus: ["azure-compliant-uvm"] },
    }),
    tableName: uniqueTableName("metrics"),
  });
  stack.keyVault.secrets.set("metrics-hmac", SECRET);
  Object.assign(process.env, stack.settings, {
    SHIELD_DEPLOY_HMAC_SECRET_NAME: "metrics-hmac",
    SHIELD_ROTATE_KEY_QUEUE: ROTATE_QUEUE,
  });
  configureComposition({ clock, meterProvider });
  await resetComposition();
  bus = createStorageQueueBus({ connectionString });
  rotations = createStorageQueueBus({ connectionString, requestsQueue: ROTATE_QUEUE });
  const keys = createKeyVaultKeyStore({
    vaultUrl: stack.keyVault.url,
    credential: localKeyVaultCredential(stack.keyVault.accessToken),
  });
  const releasePolicy = renderReleasePolicy({
    authority: stack.maa.url,
    measurements: { sevsnpvm: { hostData: [HOST_DATA], complianceStatus: "azure-compliant-uvm" } },
  });
  for (let i = 0; i < 2; i++) await keys.createKey(KEY, { keyType: "oct-HSM", keySize: 256, releasePolicy });
}, 60_000);

afterAll(async () => {
  await resetComposition();
  configureComposition({});
  delete process.env["SHIELD_DEPLOY_HMAC_SECRET_NAME"];
  delete process.env["SHIELD_ROTATE_KEY_QUEUE"];
  await bus?.close();
  await rotations?.close();
  await stack?.close();
  await meterProvider.shutdown();
});

describe("the functions' metrics", () => {
  it("one grant and one denial: attestations by verdict and TEE, the denial by code, the release per key, round trips", async () => {
    expect((await attestAs(HOST_DATA)).verdict).toBe("trusted");
    expect((await attestAs("99".repeat(32))).verdict).toBe("denied");

    expect(await counted("shield.attestations", { verdict: "trusted", tee: "sevsnp" })).toBe(1);
    expect(await counted("shield.attestations", { verdict: "denied", tee: "sevsnp" })).toBe(1);
    expect(await counted("shield.attestations", { verdict: "error" })).toBe(0);
    expect(await counted("shield.denials", { code: "ERR_APPRAISAL_DENIED", tee: "sevsnp" })).toBe(1);
    expect(await counted("shield.key.releases", { key: KEY })).toBe(1);
    const roundTrips = await points("shield.challenge.round_trip");
    expect(roundTrips).toHaveLength(1);
    expect((roundTrips[0]!.value as Histogram).count).toBe(2);
    expect(roundTrips[0]!.attributes).toEqual({ tee: "sevsnp" });
    // No agent id, measurement or token among the attributes.
    const { resourceMetrics } = await reader.collect();
    expect(JSON.stringify(resourceMetrics.scopeMetrics)).not.toContain(HOST_DATA);
  });

  it("a deployment counts one rollout step per key version", async () => {
    const body = JSON.stringify({
      keys: [KEY],
      add: [{ tee: "sevsnp", hostData: NEW_HOST_DATA }],
      graceSeconds: 600,
    });
    const timestamp = String(Math.floor(clock.now().getTime() / 1000));
    const posted = invocation("deployments");
    const answer = await postDeployment(
      new HttpRequest({
        method: "POST",
        url: "http://localhost/api/deployments",
        headers: {
          [SIGNATURE_HEADER]: webhookSignature(SECRET, timestamp, Buffer.from(body)),
          [TIMESTAMP_HEADER]: timestamp,
          [DELIVERY_HEADER]: randomUUID(),
        },
        body: { string: body },
      }),
      posted,
    );
    expect(answer.status).toBe(202);
    await policyUpdates(
      JSON.parse(JSON.stringify(posted.extraOutputs.get(policyUpdatesOutput))),
      invocation("policy-updates"),
    );
    expect(
      await counted("shield.rollout.steps", { key: KEY, step: "policy-update", outcome: "updated" }),
    ).toBe(2);
  });

  it("an operator's rotation counts as a manual rotation, rotated", async () => {
    const response = await rotateKeyNow(
      new HttpRequest({
        method: "POST",
        url: `http://localhost/api/keys/${KEY}/rotate`,
        params: { keyName: KEY },
      }),
      invocation("key-rotate"),
    );
    expect(response.status).toBe(202);
    const receiver = rotations.openRequestReceiver();
    try {
      const message = await receiver.receive(5_000);
      expect(message).toBeDefined();
      await rotate(message!.body, invocation("rotate"));
      await message!.complete();
    } finally {
      await receiver.close();
    }
    expect(await counted("shield.key.rotations", { key: KEY, reason: "manual", outcome: "rotated" })).toBe(1);
  });

  it("re-attestation deadlines missed count once per agent", async () => {
    const agentId = `metrics-agent-${randomUUID().slice(0, 6)}`;
    expect((await attestAs(HOST_DATA, agentId)).verdict).toBe("trusted");
    // Past the attestation period the timer challenges it; the agent stays silent.
    clock.advance(3600_000);
    await reattest(timer, invocation("reattest"));
    expect(await counted("shield.reattest.missed_deadlines", {})).toBe(0);
    clock.advance(3600_000);
    await reattest(timer, invocation("reattest"));
    // Both trusted agents (this one and the first test's) stayed silent; the denied one was never trusted.
    expect(await counted("shield.reattest.missed_deadlines", { tee: "sevsnp" })).toBe(2);
  });
});
