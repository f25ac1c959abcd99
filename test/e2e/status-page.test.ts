/**
 * The status of a running system, for machines and for people: the embedded stack (local MAA
 * and Key Vault servers, Azurite) with agents that attested through the `attest` function, a
 * rollout in progress, and the `status` / `status-page` functions served by the local HTTP host.
 * The page is loaded in headless Chromium (Debian's package; `.ci/run` installs it): the DOM it
 * renders must show the agents and keys, and a screenshot is written to
 * `test-artifacts/status-page.png` for people to look at.
 */
import { HttpRequest } from "@azure/functions";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRuntimeKey } from "../../agent/runtime-key.js";
import { createKeyVaultKeyStore } from "../../adapters/keyvault/key-store.js";
import { localKeyVaultCredential } from "../../adapters/local/keyvault/credential.js";
import { startLocalHttpHost, type LocalHttpHost } from "../../adapters/local/http-host.js";
import { startLocalStack, type LocalStack } from "../../local/stack.js";
import { createStorageQueueBus, type StorageQueueBus } from "../../adapters/storage-queue/bus.js";
import {
  DELIVERY_HEADER,
  SIGNATURE_HEADER,
  TIMESTAMP_HEADER,
  webhookSignature,
} from "../../core/deploy/authenticate.js";
import { createSimulatedSnpPlatform } from "../../core/evidence/simulated/sevsnp.js";
import { renderReleasePolicy } from "../../core/policy/index.js";
import type { StatusSnapshot } from "../../core/status/status.js";
import { resetComposition } from "../../functions/composition/root.js";
import { policyUpdatesOutput, postDeployment } from "../../functions/deployments.js";
import { policyUpdates } from "../../functions/policy-updates.js";
import { rotationScheduleTick } from "../../functions/rotation-schedule.js";
import { status } from "../../functions/status.js";
import { statusPage } from "../../functions/status-page.js";
import { attestAs, invocation, type AttestingAgentSetup } from "../support/attesting-agent.js";
import { azuriteConnectionString, uniqueTableName } from "../support/storage.js";

const exec = promisify(execFile);
const HOST_DATA = "5e".repeat(32);
const NEXT_HOST_DATA = "6f".repeat(32);
const KEY = `status-key-${randomUUID().slice(0, 8)}`;
const SECRET = "status-webhook-key-0123456789abcdef";
const ROTATION_PERIOD_SECONDS = 90 * 24 * 3600;
const ARTIFACTS = join(process.cwd(), "test-artifacts");

/** Debian's chromium, or CHROMIUM_PATH. */
function chromiumPath(): string | undefined {
  const candidates = [process.env["CHROMIUM_PATH"], "/usr/bin/chromium", "/usr/bin/chromium-browser"];
  return candidates.find((c): c is string => c !== undefined && existsSync(c));
}

async function chromium(args: readonly string[]): Promise<string> {
  const binary = chromiumPath();
  if (binary === undefined) throw new Error("chromium is not installed (.ci/run installs Debian's package)");
  const { stdout } = await exec(
    binary,
    ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", ...args],
    { timeout: 60_000, maxBuffer: 16 * 1024 * 1024 },
  );
  return stdout;
}

let stack: LocalStack;
let bus: StorageQueueBus;
let host: LocalHttpHost;
let setup: AttestingAgentSetup;
let trustedAgent: string;
let deniedAgent: string;

beforeAll(async () => {
  const platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  const connectionString = azuriteConnectionString();
  stack = await startLocalStack({
    storageConnectionString: connectionString,
    platform,
    complianceStatus: "azure-compliant-uvm",
    appraisalPolicy: JSON.stringify({ sevsnpvm: { hostData: [HOST_DATA] } }),
    tableName: uniqueTableName("status"),
  });
  stack.keyVault.secrets.set("status-hmac", SECRET);
  Object.assign(process.env, stack.settings, {
    SHIELD_DEPLOY_HMAC_SECRET_NAME: "status-hmac",
    SHIELD_KEY_LIFECYCLE: JSON.stringify({ [KEY]: { rotationPeriodSeconds: ROTATION_PERIOD_SECONDS } }),
  });
  await resetComposition();
  bus = createStorageQueueBus({ connectionString });
  const keys = createKeyVaultKeyStore({
    vaultUrl: stack.keyVault.url,
    credential: localKeyVaultCredential(stack.keyVault.accessToken),
  });
  const releasePolicy = renderReleasePolicy({
    authority: stack.maa.url,
    measurements: { sevsnpvm: { hostData: [HOST_DATA] } },
  });
  await keys.createKey(KEY, { keyType: "oct-HSM", keySize: 256, releasePolicy });
  setup = { stack, bus, platform, runtimeKey: await createRuntimeKey() };
  trustedAgent = `orders-${randomUUID().slice(0, 6)}`;
  deniedAgent = `rogue-${randomUUID().slice(0, 6)}`;
  expect((await attestAs(setup, HOST_DATA, [KEY], trustedAgent)).verdict).toBe("trusted");
  expect((await attestAs(setup, "99".repeat(32), [KEY], deniedAgent)).verdict).toBe("denied");

  // A rollout in progress: the next image is allowed, the current one retires after a day.
  const body = JSON.stringify({
    keys: [KEY],
    add: [{ tee: "sevsnp", hostData: NEXT_HOST_DATA }],
    graceSeconds: 86_400,
  });
  const timestamp = String(Math.floor(Date.now() / 1000));
  const context = invocation("deployments");
  const posted = await postDeployment(
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
    context,
  );
  expect(posted.status).toBe(202);
  await policyUpdates(context.extraOutputs.get(policyUpdatesOutput), invocation("policy-updates"));
  // The rotation timer takes the key (named in SHIELD_KEY_LIFECYCLE) under management.
  await rotationScheduleTick(
    {
      isPastDue: false,
      schedule: { adjustForDST: false },
      scheduleStatus: { last: "", next: "", lastUpdated: "" },
    },
    invocation("rotation-schedule"),
  );

  host = await startLocalHttpHost([
    { method: "GET", route: "status", functionName: "status", handler: () => status() },
    { method: "GET", route: "status/page", functionName: "status-page", handler: () => statusPage() },
  ]);
}, 120_000);

afterAll(async () => {
  await host?.close();
  await resetComposition();
  delete process.env["SHIELD_DEPLOY_HMAC_SECRET_NAME"];
  delete process.env["SHIELD_KEY_LIFECYCLE"];
  await bus?.close();
  await stack?.close();
});

describe("status of a running system", () => {
  it("GET /api/status lists agents with what they hold, keys with their measurements, the rollout and the denial", async () => {
    const snapshot = (await (await fetch(`${host.url}/api/status`)).json()) as StatusSnapshot;
    const trusted = snapshot.agents.find((a) => a.agentId === trustedAgent);
    expect(trusted).toMatchObject({ status: "trusted", measurement: `sevsnp:${HOST_DATA}` });
    expect(trusted!.keyVersions.map((k) => k.keyName)).toEqual([KEY]);
    expect(new Date(trusted!.attestedUntil!).getTime()).toBeGreaterThan(Date.now());
    const key = snapshot.keys.find((k) => k.keyName === KEY)!;
    expect([...key.versions[0]!.measurements].sort()).toEqual([HOST_DATA, NEXT_HOST_DATA].sort());
    expect(key.appraisal.find((a) => a.measurement === `sevsnp:${HOST_DATA}`)?.retireAt).toBeDefined();
    // The next scheduled rotation: the current version's creation plus the key's period.
    const createdOn = new Date(key.versions.at(-1)!.createdOn!).getTime();
    expect(key.rotation).toEqual({
      currentVersion: key.versions.at(-1)!.version,
      periodSeconds: ROTATION_PERIOD_SECONDS,
      nextRotationAt: new Date(createdOn + ROTATION_PERIOD_SECONDS * 1000).toISOString(),
    });
    expect(snapshot.rollouts[0]).toMatchObject({
      status: "applied",
      keys: [KEY],
      add: [`sevsnp:${NEXT_HOST_DATA}`],
    });
    expect(snapshot.denials.find((d) => d.agentId === deniedAgent)?.code).toBe("ERR_APPRAISAL_DENIED");
  });

  it("GET /api/status/page is one self-contained page under a strict CSP, with no script", async () => {
    const response = await fetch(`${host.url}/api/status/page`);
    const csp = response.headers.get("content-security-policy") ?? "";
    expect(csp).toContain("default-src 'none'");
    expect(csp).toMatch(/style-src 'sha256-[A-Za-z0-9+/=]+'/);
    expect(csp).not.toContain("unsafe-inline");
    const html = await response.text();
    expect(html).not.toMatch(/<script|\son\w+=|https?:\/\/(?!127\.0\.0\.1)/i);
    expect(html).toMatch(/<meta http-equiv="refresh" content="\d+">/);
  });

  it("renders the agents and keys in headless Chromium, and leaves a screenshot", async () => {
    const url = `${host.url}/api/status/page`;
    const dom = await chromium(["--dump-dom", url]);
    expect(dom).toContain(trustedAgent);
    expect(dom).toContain(deniedAgent);
    expect(dom).toContain(KEY);
    expect(dom).toContain("ERR_APPRAISAL_DENIED");
    expect(dom).toContain("Next rotation");
    await mkdir(ARTIFACTS, { recursive: true });
    const file = join(ARTIFACTS, "status-page.png");
    await chromium([`--screenshot=${file}`, "--window-size=1400,1000", url]);
    const png = await readFile(file);
    expect(png.subarray(0, 8).toString("hex")).toBe("89504e470d0a1a0a");
    expect((await stat(file)).size).toBeGreaterThan(10_000);
  }, 120_000);
});
