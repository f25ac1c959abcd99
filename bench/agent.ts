/**
 * The agent's footprint, measured beside a bare `node` process in the same run: the bundled
 * agent's size, its start time to `ready` (GET /readyz = 200) against the local stack (the
 * embedded default's attestation and Key Vault servers, Azurite, and the attest function under
 * the local host), and its steady-state resident memory once trusted and holding its key.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { startAzurite } from "../adapters/local/azurite.js";
import { startLocalStack } from "../local/stack.js";
import { startLocalFunctionsHost } from "../adapters/local/functions-host.js";
import { createKeyVaultKeyStore } from "../adapters/keyvault/key-store.js";
import { localKeyVaultCredential } from "../adapters/local/keyvault/credential.js";
import { createStorageQueueBus } from "../adapters/storage-queue/bus.js";
import { startLocalServiceBus } from "../adapters/local/servicebus/server.js";
import { createServiceBusClientFromConnectionString } from "../adapters/servicebus/client.js";
import { createServiceBusRequestReceiver } from "../adapters/servicebus/receiver.js";
import { REQUESTS_QUEUE, RESULTS_QUEUE, type RequestReceiver } from "../core/ports/bus.js";
import { attest } from "../functions/attest.js";
import { resetComposition } from "../functions/composition/root.js";
import { createSimulatedSnpPlatform, exportSimulatedSnpPlatform } from "../core/evidence/simulated/sevsnp.js";
import { renderReleasePolicy } from "../core/policy/index.js";
import { bundleAgent } from "../scripts/bundle-agent.js";

/**
 * The flags the agent image runs with (agent/Dockerfile; a test keeps the two equal): no JIT, a
 * small young generation, V8's size-over-speed mode. The agent is idle most of the time and its
 * cryptography is native, so interpreting its JavaScript costs nothing that matters and saves
 * about a fifth of its resident memory. Under `--jitless` there is no WebAssembly, so the agent
 * does its HTTP with `node:http`, never `fetch`.
 */
export const AGENT_NODE_FLAGS: readonly string[] = [
  "--jitless",
  "--max-semi-space-size=1",
  "--optimize-for-size",
  "--max-old-space-size=64",
];

export interface AgentBenchResult {
  readonly bundleBytes: number;
  readonly bundleTotalBytes: number;
  readonly agentReadyMs: number;
  readonly bareNodeStartMs: number;
  readonly agentRssBytes: number;
  readonly bareNodeRssBytes: number;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => resolve(typeof address === "object" && address !== null ? address.port : 0));
    });
  });
}

/** One encrypt and decrypt through the bundled agent's encryption API; throws unless it round trips. */
async function encryptionRoundTrip(base: string): Promise<void> {
  const post = async (operation: string, body: unknown): Promise<Record<string, unknown>> => {
    const response = await fetch(`${base}/v1/${operation}/bench-key`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    if (response.status !== 200)
      throw new Error(`the bundled agent answered ${operation} with ${response.status}`);
    return (await response.json()) as Record<string, unknown>;
  };
  const plaintext = Buffer.from("bench round trip").toString("base64");
  const sealed = await post("encrypt", { plaintext });
  const opened = await post("decrypt", { ciphertext: sealed["ciphertext"] });
  if (opened["plaintext"] !== plaintext) throw new Error("the bundled agent's decryption did not round trip");
}

async function rss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kb = /VmRSS:\s+(\d+) kB/.exec(status)?.[1];
  if (kb === undefined) throw new Error("no VmRSS");
  return Number(kb) * 1024;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGTERM");
  await Promise.race([exited, sleep(5_000)]);
  if (child.exitCode === null) child.kill("SIGKILL");
}

/** A bare node process: start time to its first line of output, and its resident memory. */
async function bareNode(settleMs: number): Promise<{ startMs: number; rssBytes: number }> {
  const started = performance.now();
  const child = spawn(process.execPath, ["-e", "console.log('ready'); setInterval(() => {}, 1 << 30)"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise<void>((resolve) => child.stdout.once("data", () => resolve()));
  const startMs = performance.now() - started;
  await sleep(settleMs);
  const rssBytes = await rss(child.pid!);
  await stopChild(child);
  return { startMs, rssBytes };
}

/** The agent's transport under test and what the functions' side receives requests from. */
interface BenchTransport {
  readonly agentEnv: Readonly<Record<string, string>>;
  readonly settings: Readonly<Record<string, string>>;
  readonly receiver: RequestReceiver;
  close(): Promise<void>;
}

function storageQueueTransport(connectionString: string): BenchTransport {
  const bus = createStorageQueueBus({ connectionString, minPollMs: 20, maxPollMs: 200 });
  return {
    agentEnv: { SHIELD_BUS: "storage-queue", SHIELD_STORAGE_CONNECTION_STRING: connectionString },
    settings: {},
    receiver: bus.openRequestReceiver(),
    close: () => bus.close(),
  };
}

/**
 * The local Service Bus endpoint with the deployed queues: requests, and results with sessions;
 * the agent and the functions each sign in with a key of their own (send and listen rights).
 */
async function serviceBusTransport(): Promise<BenchTransport> {
  const agentKey = randomBytes(32).toString("base64");
  const functionsKey = randomBytes(32).toString("base64");
  const endpoint = await startLocalServiceBus({
    queues: [{ name: REQUESTS_QUEUE }, { name: RESULTS_QUEUE, requiresSession: true }],
    rules: [
      { keyName: "agent", key: agentKey, rights: ["Send", "Listen"] },
      { keyName: "functions", key: functionsKey, rights: ["Send", "Listen"] },
    ],
  });
  const functionsConnection = endpoint.connectionString("functions");
  const client = await createServiceBusClientFromConnectionString(functionsConnection);
  return {
    agentEnv: {
      SHIELD_BUS: "servicebus",
      SHIELD_SERVICEBUS_CONNECTION_STRING: endpoint.connectionString("agent"),
    },
    settings: { SHIELD_BUS: "servicebus", ServiceBusConnection: functionsConnection },
    receiver: createServiceBusRequestReceiver({ client }),
    async close() {
      await client.close();
      await endpoint.close();
    },
  };
}

export type BenchTransportName = "storage-queue" | "servicebus";

export async function benchAgent(
  options: { settleMs?: number; nodeFlags?: readonly string[]; transport?: BenchTransportName } = {},
): Promise<AgentBenchResult> {
  const settleMs = options.settleMs ?? 3_000;
  const { outfile, bytes, totalBytes } = await bundleAgent();
  const azurite = await startAzurite();
  const platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  const hostData = createHash("sha256").update("bench workload").digest("hex");
  const stack = await startLocalStack({
    storageConnectionString: azurite.connectionString,
    platform,
    appraisalPolicy: JSON.stringify({ sevsnpvm: { hostData: [hostData] } }),
    tableName: "benchagent",
  });
  const work = await mkdtemp(join(tmpdir(), "shield-bench-agent-"));
  const transport =
    options.transport === "servicebus"
      ? await serviceBusTransport()
      : storageQueueTransport(azurite.connectionString);
  let host: ReturnType<typeof startLocalFunctionsHost> | undefined;
  let agent: ChildProcess | undefined;
  try {
    Object.assign(process.env, stack.settings, transport.settings);
    await resetComposition();
    const keyStore = createKeyVaultKeyStore({
      vaultUrl: stack.keyVault.url,
      credential: localKeyVaultCredential(stack.keyVault.accessToken),
    });
    const releasePolicy = renderReleasePolicy({
      authority: stack.maa.url,
      measurements: { sevsnpvm: { hostData: [hostData] } },
    });
    await keyStore.createKey("bench-key", { keyType: "oct-HSM", keySize: 256, releasePolicy });
    host = startLocalFunctionsHost({
      functionName: "attest",
      handler: attest,
      receiver: transport.receiver,
    });
    const platformFile = join(work, "platform.json");
    const signerFile = join(work, "signer.pem");
    const controlKeysFile = join(work, "control-keys.json");
    await writeFile(platformFile, JSON.stringify(exportSimulatedSnpPlatform(platform)));
    await writeFile(signerFile, stack.vault.signerCertificates.map((c) => c.toString()).join(""));
    await writeFile(controlKeysFile, JSON.stringify(stack.controlKeys));
    const port = await freePort();
    const bare = await bareNode(settleMs);

    const started = performance.now();
    agent = spawn(process.execPath, [...(options.nodeFlags ?? AGENT_NODE_FLAGS), outfile], {
      stdio: ["ignore", "ignore", process.env["SHIELD_BENCH_AGENT_STDERR"] === "1" ? "inherit" : "ignore"],
      env: {
        PATH: process.env["PATH"] ?? "",
        SHIELD_AGENT_ID: "bench-agent",
        SHIELD_WORKLOAD: "bench",
        SHIELD_KEYS: "bench-key",
        SHIELD_TEE: "simulated",
        SHIELD_SIMULATED_PLATFORM: platformFile,
        SHIELD_SIMULATED_HOST_DATA: hostData,
        ...transport.agentEnv,
        SHIELD_RELEASE_SIGNER_CA_FILE: signerFile,
        SHIELD_CONTROL_KEYS_FILE: controlKeysFile,
        SHIELD_KEYVAULT_URL: stack.vaultUrl,
        SHIELD_LISTEN: `127.0.0.1:${port}`,
        SHIELD_REATTEST_SECONDS: "0",
      },
    });
    const deadline = Date.now() + 60_000;
    for (;;) {
      const ready = await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined);
      if (ready?.status === 200) break;
      if (agent.exitCode !== null) throw new Error(`the agent exited with code ${agent.exitCode}`);
      if (Date.now() > deadline) throw new Error("the agent was not ready within 60 s");
      await sleep(10);
    }
    const agentReadyMs = performance.now() - started;
    await sleep(settleMs);
    // Steady state: the app reads its key now and then; memory after that settles.
    for (let i = 0; i < 20; i++) await (await fetch(`http://127.0.0.1:${port}/keys/bench-key`)).arrayBuffer();
    // And the encryption API answers from the bundle under the image's flags, round trip included.
    await encryptionRoundTrip(`http://127.0.0.1:${port}`);
    await sleep(1_000);
    const agentRssBytes = await rss(agent.pid!);
    return {
      bundleBytes: bytes,
      bundleTotalBytes: totalBytes,
      agentReadyMs,
      bareNodeStartMs: bare.startMs,
      agentRssBytes,
      bareNodeRssBytes: bare.rssBytes,
    };
  } finally {
    if (agent !== undefined) await stopChild(agent);
    await host?.stop();
    await transport.close();
    for (const name of Object.keys(transport.settings)) delete process.env[name];
    await resetComposition();
    await stack.close();
    await azurite.stop();
    await rm(work, { recursive: true, force: true });
  }
}

export function formatAgentBench(r: AgentBenchResult, transport = "Storage Queues (Azurite)"): string {
  const mib = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return [
    `agent footprint over ${transport} (bundled agent vs a bare node process, same run)`,
    `  bundle size                          ${(r.bundleBytes / 1024).toFixed(0)} KiB entry script, ${(r.bundleTotalBytes / 1024).toFixed(0)} KiB with the lazily loaded transport chunks (no node_modules)`,
    `  start → ready (trusted, key held)    ${r.agentReadyMs.toFixed(0)} ms   (bare node start → first output ${r.bareNodeStartMs.toFixed(0)} ms)`,
    `  steady-state RSS                     ${mib(r.agentRssBytes)}   (bare node ${mib(r.bareNodeRssBytes)}; ratio ${(r.agentRssBytes / r.bareNodeRssBytes).toFixed(2)}×, target ≤ 1.30×)`,
  ].join("\n");
}
