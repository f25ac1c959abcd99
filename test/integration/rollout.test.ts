/**
 * A measurement rollout end to end: a pipeline's signed `POST /api/deployments` through the
 * exported function (HMAC key read from the local Key Vault's secrets by the real
 * `@azure/keyvault-secrets` client), the queued `policy-update` through the `policy-updates`
 * function, then the `retirement` timer function on the composition's clock, which the test moves
 * past the grace period — over the same adapters the functions use: the real Key Vault SDK against the local server and Table
 * Storage on Azurite. Afterwards exactly the new measurement remains in every version's release
 * policy and in the appraisal policy, an agent running the new image gets its key through the
 * `attest` function, and one still running the old image is denied with ERR_MEASUREMENT_RETIRED.
 */
import { HttpRequest } from "@azure/functions";
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRuntimeKey, type RuntimeKey } from "../../agent/runtime-key.js";
import { createKeyVaultKeyStore } from "../../adapters/keyvault/key-store.js";
import { localKeyVaultCredential } from "../../adapters/local/keyvault/credential.js";
import { startLocalStack, type LocalStack } from "../../local/stack.js";
import { createTablePolicyStateStore } from "../../adapters/state/policy-table.js";
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
import { policyMeasurements, renderReleasePolicy } from "../../core/policy/index.js";
import { fixedClock } from "../../core/ports/clock.js";
import type { KeyStore } from "../../core/ports/key-store.js";
import type { PolicyStateStore } from "../../core/ports/policy-state.js";
import { configureComposition, resetComposition } from "../../functions/composition/root.js";
import { retirement } from "../../functions/retirement.js";
import { getDeployment } from "../../functions/deployment-status.js";
import { policyUpdatesOutput, postDeployment } from "../../functions/deployments.js";
import { policyUpdates } from "../../functions/policy-updates.js";
import { azuriteConnectionString, uniqueTableName } from "../support/storage.js";
import { attestAs as attestAsAgent, invocation } from "../support/attesting-agent.js";

const OLD_HOST_DATA = "3c".repeat(32);
const NEW_HOST_DATA = "4d".repeat(32);
const KEY = `rollout-key-${randomUUID().slice(0, 8)}`;
const SECRET_NAME = "deployments-hmac";
const SECRET = "local-webhook-key-0123456789abcdef";
const APPRAISAL = JSON.stringify({
  sevsnpvm: { hostData: [OLD_HOST_DATA], complianceStatus: ["azure-compliant-uvm"] },
});

let stack: LocalStack;
let platform: SimulatedSnpPlatform;
let runtimeKey: RuntimeKey;
let bus: StorageQueueBus;
let keys: KeyStore;
let policyState: PolicyStateStore;
let tableName: string;

const context = invocation;
/** The composition's clock: the functions (the retirement timer among them) read it. */
const clock = fixedClock(new Date());
const attestAs = (hostData: string) =>
  attestAsAgent({ stack, bus, platform, runtimeKey, now: () => clock.now() }, hostData, [KEY]);

const timer = {
  isPastDue: false,
  schedule: { adjustForDST: false },
  scheduleStatus: { last: "", next: "", lastUpdated: "" },
};

function signedRequest(body: string): HttpRequest {
  const timestamp = String(Math.floor(clock.now().getTime() / 1000));
  return new HttpRequest({
    method: "POST",
    url: "http://localhost/api/deployments",
    headers: {
      "content-type": "application/json",
      [SIGNATURE_HEADER]: webhookSignature(SECRET, timestamp, Buffer.from(body)),
      [TIMESTAMP_HEADER]: timestamp,
      [DELIVERY_HEADER]: randomUUID(),
    },
    body: { string: body },
  });
}

async function hostDataPerVersion(): Promise<string[][]> {
  return (await keys.listVersions(KEY)).map((v) =>
    policyMeasurements(v.releasePolicy!)
      .map((m) => m.value)
      .sort(),
  );
}

beforeAll(async () => {
  platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  runtimeKey = await createRuntimeKey();
  tableName = uniqueTableName("rollout");
  const connectionString = azuriteConnectionString();
  stack = await startLocalStack({
    storageConnectionString: connectionString,
    platform,
    complianceStatus: "azure-compliant-uvm",
    appraisalPolicy: APPRAISAL,
    tableName,
  });
  stack.keyVault.secrets.set(SECRET_NAME, SECRET);
  Object.assign(process.env, stack.settings, { SHIELD_DEPLOY_HMAC_SECRET_NAME: SECRET_NAME });
  configureComposition({ clock });
  await resetComposition();
  bus = createStorageQueueBus({ connectionString });
  keys = createKeyVaultKeyStore({
    vaultUrl: stack.keyVault.url,
    credential: localKeyVaultCredential(stack.keyVault.accessToken),
  });
  const releasePolicy = renderReleasePolicy({
    authority: stack.maa.url,
    measurements: { sevsnpvm: { hostData: [OLD_HOST_DATA], complianceStatus: "azure-compliant-uvm" } },
  });
  for (let i = 0; i < 3; i++) await keys.createKey(KEY, { keyType: "oct-HSM", keySize: 256, releasePolicy });
  policyState = await createTablePolicyStateStore({ connectionString, tableName });
}, 60_000);

afterAll(async () => {
  await resetComposition();
  configureComposition({});
  delete process.env["SHIELD_DEPLOY_HMAC_SECRET_NAME"];
  await bus?.close();
  await stack?.close();
});

describe("a rollout from webhook to retirement", () => {
  it("leaves exactly the new measurement, releases to the new image and denies the old one as retired", async () => {
    // Before: the old image is trusted, the new one is not.
    expect((await attestAs(OLD_HOST_DATA)).verdict).toBe("trusted");
    const early = await attestAs(NEW_HOST_DATA);
    expect(early.verdict).toBe("denied");

    const body = JSON.stringify({
      keys: [KEY],
      add: [{ tee: "sevsnp", hostData: NEW_HOST_DATA }],
      graceSeconds: 600,
    });
    const posted = context("deployments");
    const response = await postDeployment(signedRequest(body), posted);
    expect(response.status).toBe(202);
    const deploymentId = (response.jsonBody as { deploymentId: string }).deploymentId;
    const queued = posted.extraOutputs.get(policyUpdatesOutput);
    expect(queued).toMatchObject({
      type: "policy-update",
      deploymentId,
      retire: [{ tee: "sevsnp", hostData: OLD_HOST_DATA }],
    });

    // The queue delivers the message to policy-updates (as Service Bus would: the JSON body).
    await policyUpdates(JSON.parse(JSON.stringify(queued)), context("policy-updates"));
    const status = await getDeployment(
      new HttpRequest({
        method: "GET",
        url: `http://localhost/api/deployments/${deploymentId}`,
        params: { id: deploymentId },
      }),
    );
    expect((status.jsonBody as { deployment: { status: string } }).deployment.status).toBe("applied");
    expect(await hostDataPerVersion()).toEqual(Array(3).fill([NEW_HOST_DATA, OLD_HOST_DATA].sort()));

    // During the grace period both images get their keys.
    expect((await attestAs(NEW_HOST_DATA)).verdict).toBe("trusted");
    expect((await attestAs(OLD_HOST_DATA)).verdict).toBe("trusted");

    // The retirement timer, once the composition's clock is past the grace period.
    clock.advance(599_000);
    await retirement(timer, context("retirement"));
    expect(await hostDataPerVersion()).toEqual(Array(3).fill([NEW_HOST_DATA, OLD_HOST_DATA].sort()));
    clock.advance(2_000);
    await retirement(timer, context("retirement"));
    expect(await hostDataPerVersion()).toEqual(Array(3).fill([NEW_HOST_DATA]));
    const appraisal = (await policyState.getKeyPolicy(KEY))!;
    expect(appraisal.allowed.map((a) => a.measurement)).toEqual([{ tee: "sevsnp", hostData: NEW_HOST_DATA }]);

    const fresh = await attestAs(NEW_HOST_DATA);
    expect(fresh.verdict).toBe("trusted");
    if (fresh.verdict === "trusted") expect(fresh.keys.map((k) => k.name)).toEqual([KEY]);
    const stale = await attestAs(OLD_HOST_DATA);
    expect(stale.verdict).toBe("denied");
    if (stale.verdict !== "trusted") expect(stale.denial.code).toBe("ERR_MEASUREMENT_RETIRED");
  });
});
