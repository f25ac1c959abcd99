/**
 * The lifecycle end to end, in real time: the agent as its entry point composes it (simulated
 * TEE, storage-queue bus, key API) and the functions under the local Functions host — `attest`
 * on the requests queue, `rotate` on the rotate-key queue, and the `reattest` timer on its
 * NCRONTAB schedule (every second here) — over the local MAA and Key Vault servers and Azurite.
 * Periods are short so a day of lifecycle fits in half a minute: attestations last 20 s and
 * challenges are due 15 s before that, with 10 s to answer.
 *
 * The application holds key v1; a Key Vault `KeyNearExpiry` event (delivered to the Event Grid
 * function as Event Grid would) rotates the key; the application gets v2 and still reads v1
 * data; then the agent's TEE stops producing evidence, the agent misses its challenge, is
 * revoked, and its key API answers 403 with every key wiped.
 */
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InvocationContext } from "@azure/functions";
import { attest } from "../../functions/attest.js";
import { rotate } from "../../functions/rotate.js";
import { reattest } from "../../functions/reattest.js";
import { keyVaultEvent } from "../../functions/keyvault-events.js";
import { resetComposition } from "../../functions/composition/root.js";
import { startLocalStack, type LocalStack } from "../../local/stack.js";
import {
  startLocalFunctionsHost,
  startLocalTimer,
  type LocalFunctionsHost,
  type LocalTimer,
} from "../../adapters/local/functions-host.js";
import { createStorageQueueBus, type StorageQueueBus } from "../../adapters/storage-queue/bus.js";
import { createKeyVaultKeyStore } from "../../adapters/keyvault/key-store.js";
import { localKeyVaultCredential } from "../../adapters/local/keyvault/credential.js";
import { createTableStateStore } from "../../adapters/state/table.js";
import type { Agent } from "../../agent/agent.js";
import { EXIT_CODES, main, type MainIo } from "../../agent/main.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../core/evidence/simulated/sevsnp.js";
import type { StateStore } from "../../core/ports/state.js";
import type { KeyStore } from "../../core/ports/key-store.js";
import type { Logger } from "../../core/ports/logger.js";
import { renderReleasePolicy } from "../../core/policy/index.js";
import { azuriteConnectionString, uniqueTableName } from "../support/storage.js";

const HOST_DATA = "5a".repeat(32);
const KEY = "orders-key";
const run = Date.now().toString(36);
const agentId = `e2e-life-${process.pid}-${run}`;

let stack: LocalStack;
let platform: SimulatedSnpPlatform;
let hosts: LocalFunctionsHost[] = [];
let buses: StorageQueueBus[] = [];
let timer: LocalTimer | undefined;
let keyStore: KeyStore;
let state: StateStore;
let agent: Agent;
let baseUrl: string | undefined;
let exited: Promise<number>;
let dir: string | undefined;
/** When set, the simulated TEE refuses to produce evidence (the agent cannot answer). */
let teeBroken = false;
const shutdown = new AbortController();
const logLines: string[] = [];
const capture =
  (source: string): Logger =>
  (level, message, fields) =>
    logLines.push(`${source} ${level} ${message} ${JSON.stringify(fields ?? {})}`);

async function until<T>(probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline)
      throw new Error(`condition not met in time:\n${logLines.slice(-40).join("\n")}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function getKey(version?: string): Promise<{ status: number; version: string | null; body: Buffer }> {
  const response = await fetch(`${baseUrl}/keys/${KEY}${version === undefined ? "" : `?version=${version}`}`);
  return {
    status: response.status,
    version: response.headers.get("x-key-version"),
    body: Buffer.from(await response.arrayBuffer()),
  };
}

beforeAll(async () => {
  const connectionString = azuriteConnectionString();
  const tableName = uniqueTableName("e2elife");
  const requestsQueue = `e2e-life-req-${run}`;
  const rotateQueue = `e2e-life-rot-${run}`;
  platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  stack = await startLocalStack({
    storageConnectionString: connectionString,
    platform,
    complianceStatus: "azure-compliant-uvm",
    appraisalPolicy: JSON.stringify({
      sevsnpvm: { hostData: [HOST_DATA], complianceStatus: ["azure-compliant-uvm"] },
    }),
    tableName,
    attestationPeriodSeconds: 20,
    exposeKeyMaterialForTests: true,
    logger: capture("local-servers"),
  });
  Object.assign(process.env, stack.settings, {
    SHIELD_CHALLENGE_SECONDS: "10",
    SHIELD_REATTEST_MARGIN_SECONDS: "15",
    SHIELD_ROTATE_KEY_QUEUE: rotateQueue,
    SHIELD_KEYVAULT_NAME: "shield-local",
    SHIELD_KEY_LIFECYCLE: JSON.stringify({ [KEY]: { revokeByRotation: true } }),
  });
  await resetComposition();
  keyStore = createKeyVaultKeyStore({
    vaultUrl: stack.keyVault.url,
    credential: localKeyVaultCredential(stack.keyVault.accessToken),
  });
  const releasePolicy = renderReleasePolicy({
    authority: stack.maa.url,
    measurements: { sevsnpvm: { hostData: [HOST_DATA], complianceStatus: "azure-compliant-uvm" } },
  });
  await keyStore.createKey(KEY, { keyType: "oct-HSM", keySize: 256, releasePolicy });
  state = await createTableStateStore({ tableName, connectionString, createTable: true });

  // The functions under the local host, from the registrations' own handlers and triggers.
  const polling = { connectionString, minPollMs: 20, maxPollMs: 200 };
  const requests = createStorageQueueBus({ ...polling, requestsQueue });
  const rotations = createStorageQueueBus({ ...polling, requestsQueue: rotateQueue });
  buses = [requests, rotations];
  hosts = [
    startLocalFunctionsHost({
      functionName: "attest",
      handler: attest,
      receiver: requests.openRequestReceiver(),
      concurrency: 2,
      logger: capture("functions-host"),
    }),
    startLocalFunctionsHost({
      functionName: "rotate",
      handler: rotate,
      receiver: rotations.openRequestReceiver(),
      concurrency: 1,
      logger: capture("functions-host"),
    }),
  ];
  timer = startLocalTimer({
    functionName: "reattest",
    schedule: "*/1 * * * * *",
    handler: reattest,
    logger: capture("functions-host"),
  });

  dir = await mkdtemp(join(tmpdir(), "shield-e2e-life-"));
  const signerFile = join(dir, "release-signer.pem");
  await writeFile(signerFile, stack.vault.signerCertificates.map((cert) => cert.toString()).join(""));
  const controlKeysFile = join(dir, "control-keys.json");
  await writeFile(controlKeysFile, JSON.stringify(stack.controlKeys));
  const io: MainIo = { stdout: () => undefined, stderr: (line) => logLines.push(`agent ${line}`) };
  const tee: SimulatedSnpPlatform = {
    ...platform,
    signReport: (fields) => {
      if (teeBroken) throw new Error("the TEE produced no report");
      return platform.signReport(fields);
    },
  };
  exited = main(
    [],
    {
      SHIELD_AGENT_ID: agentId,
      SHIELD_WORKLOAD: "orders",
      SHIELD_KEYS: KEY,
      SHIELD_TEE: "simulated",
      SHIELD_BUS: "storage-queue",
      SHIELD_STORAGE_CONNECTION_STRING: connectionString,
      SHIELD_REQUEST_QUEUE: requestsQueue,
      SHIELD_RELEASE_SIGNER_CA_FILE: signerFile,
      SHIELD_CONTROL_KEYS_FILE: controlKeysFile,
      SHIELD_KEYVAULT_URL: stack.vaultUrl,
      SHIELD_LISTEN: "127.0.0.1:0",
      SHIELD_REATTEST_SECONDS: "0",
      SHIELD_LOG_LEVEL: "debug",
    },
    {
      io,
      select: { simulated: { platform: tee, reportFields: { hostData: Buffer.from(HOST_DATA, "hex") } } },
      runtime: {
        shutdown: shutdown.signal,
        timing: {
          resultTimeoutMs: 8_000,
          retryBaseDelayMs: 200,
          retryMaxDelayMs: 1_000,
          receiveWaitMs: 500,
          // Attestations last 20 s here; the agent's default refuses anything under a minute.
          minAttestedMs: 5_000,
        },
        onRunning: (running) => {
          agent = running.agent;
          baseUrl = running.api.url;
        },
      },
    },
  );
  await Promise.race([
    until(() => baseUrl),
    exited.then((code) => {
      throw new Error(`the agent ended early with exit code ${code}:\n${logLines.join("\n")}`);
    }),
  ]);
}, 60_000);

afterAll(async () => {
  shutdown.abort();
  expect(await exited).toBe(EXIT_CODES.ok);
  await timer?.stop();
  for (const host of hosts) await host.stop();
  for (const bus of buses) await bus.close();
  await resetComposition();
  await stack?.close();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

describe("the lifecycle, end to end", () => {
  let v1: string;
  let v2: string;
  let sealed: { iv: Buffer; data: Buffer; tag: Buffer };
  const record = Buffer.from("order 1017: 3 pallets");

  it("the application holds key v1, re-attested on the timer's challenges", async () => {
    await until(async () => ((await fetch(`${baseUrl}/readyz`)).status === 200 ? true : undefined), 30_000);
    const first = await getKey();
    expect(first.status).toBe(200);
    v1 = first.version!;
    expect(first.body.equals(await stack.vault.keyMaterialForTests(KEY, v1))).toBe(true);
    // The app writes data under v1.
    const iv = randomBytes(12);
    const cipher = createCipheriv("aes-256-gcm", first.body, iv);
    sealed = { iv, data: Buffer.concat([cipher.update(record), cipher.final()]), tag: cipher.getAuthTag() };
    // Due 5 s after each attestation: the timer challenges it, and it answers and stays trusted.
    const firstAttested = (await state.getAgent(agentId))!.lastAttestedAt!.getTime();
    await until(async () => {
      const current = await state.getAgent(agentId);
      return current?.status === "trusted" && current.lastAttestedAt!.getTime() > firstAttested
        ? true
        : undefined;
    });
    expect((await state.listAudit(`agent-${agentId}`)).map((e) => e.kind)).toContain("attestation-trusted");
  }, 45_000);

  it("a KeyNearExpiry event rotates the key; the application gets v2 and still reads v1 data", async () => {
    await keyVaultEvent(
      {
        id: `near-expiry-${run}`,
        topic: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/shield-local",
        subject: KEY,
        eventType: "Microsoft.KeyVault.KeyNearExpiry",
        eventTime: new Date().toISOString(),
        data: {
          Id: `${stack.vaultUrl}/keys/${KEY}/${v1}`,
          VaultName: "shield-local",
          ObjectType: "Key",
          ObjectName: KEY,
          Version: v1,
          NBF: "1559081980",
          EXP: "1559082102",
        },
        dataVersion: "1",
        metadataVersion: "1",
      },
      new InvocationContext({
        functionName: "keyvault-events",
        logHandler: (_l, ...args) => logLines.push(args.join(" ")),
      }),
    );
    const current = await until(async () => {
      const got = await getKey();
      return got.status === 200 && got.version !== v1 ? got : undefined;
    });
    v2 = current.version!;
    expect(current.body.equals(await stack.vault.keyMaterialForTests(KEY, v2))).toBe(true);
    const old = await getKey(v1);
    expect(old.status).toBe(200);
    const decipher = createDecipheriv("aes-256-gcm", old.body, sealed.iv);
    decipher.setAuthTag(sealed.tag);
    expect(Buffer.concat([decipher.update(sealed.data), decipher.final()]).equals(record)).toBe(true);
  }, 45_000);

  it("an agent that misses its challenge is revoked: the key API answers 403 and every key is wiped", async () => {
    teeBroken = true;
    await until(
      async () => ((await state.getAgent(agentId))?.status === "revoked" ? true : undefined),
      40_000,
    );
    expect((await state.getAgent(agentId))?.statusReason).toBe("ERR_CHALLENGE_MISSED");
    await until(async () => ((await getKey()).status === 403 ? true : undefined));
    expect((await getKey(v1)).status).toBe(403);
    expect((await getKey(v2)).status).toBe(403);
    expect(agent.state().name).toBe("revoked");
    const status = (await (await fetch(`${baseUrl}/status`)).json()) as { keys: unknown[] };
    expect(status.keys).toEqual([]);
    // Revoke by rotation: a third version exists that this agent never had.
    await until(async () => ((await keyStore.listVersions(KEY)).length === 3 ? true : undefined));
  }, 60_000);

  it("no key material in any log line", async () => {
    const text = logLines.join("\n");
    for (const version of (await keyStore.listVersions(KEY)).map((v) => v.version)) {
      const bytes = await stack.vault.keyMaterialForTests(KEY, version);
      for (const form of [bytes.toString("hex"), bytes.toString("base64"), bytes.toString("base64url")]) {
        expect(text.includes(form)).toBe(false);
      }
    }
  });
});
