/**
 * `npm run sim`: the scale simulation. Several function worker processes (scripts/sim-worker.ts:
 * the real `attest`, `rotate` and `policy-updates` handlers under the local functions host)
 * share one Azurite and the local MAA and Key Vault servers; light simulated agents
 * (test/support/light-agent.ts, real simulated SEV-SNP evidence) attest, then re-attest in
 * ticks while deployments add measurements to every key and rotations race them — each
 * rotation event delivered twice, as an at-least-once bus may.
 *
 * Checked and printed: every request answered exactly once (each agent's inbox is drained at the
 * end), every verdict trusted, nothing dead-lettered; no lost update (every measurement a
 * deployment added is in every version's release policy of every key, including versions that
 * rotations made); no double rotation (one new version per rotation event, however often it was
 * delivered); throughput and latency percentiles. Exit code 1 when a check fails.
 *
 * Options: --agents N (default 1000), --workers N (default 3), --ticks N (re-attestation rounds
 * after the first, default 1), --concurrency N (agents in flight, default 64), --keys N
 * (default 3), --updates N (deployments, default 3), --rotations N (per key, default 2), --json.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID, createHash } from "node:crypto";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { startAzurite } from "../adapters/local/azurite.js";
import { startLocalStack } from "../local/stack.js";
import { createKeyVaultKeyStore } from "../adapters/keyvault/key-store.js";
import { localKeyVaultCredential } from "../adapters/local/keyvault/credential.js";
import { createStorageQueueBus } from "../adapters/storage-queue/bus.js";
import { createQueueServiceClient, encodeMessageText } from "../adapters/storage-queue/queues.js";
import { createSimulatedSnpPlatform } from "../core/evidence/simulated/sevsnp.js";
import { makePolicyUpdate, makeRotateKey } from "../core/messages/index.js";
import { policyMeasurements, renderReleasePolicy } from "../core/policy/index.js";
import { createRuntimeKey } from "../agent/runtime-key.js";
import { LightAgent } from "../test/support/light-agent.js";

export interface SimOptions {
  readonly agents: number;
  readonly workers: number;
  readonly ticks: number;
  readonly concurrency: number;
  readonly keys: number;
  readonly updates: number;
  readonly rotations: number;
  /** Progress lines (default: none). */
  readonly progress?: (line: string) => void;
}

export interface LatencySummary {
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly max: number;
}

export interface SimReport {
  readonly options: Omit<SimOptions, "progress">;
  readonly attestations: number;
  readonly seconds: number;
  readonly attestationsPerSecond: number;
  readonly latencyMs: LatencySummary;
  readonly checks: {
    /** Requests with no answer, or with more than one. */
    readonly unanswered: number;
    readonly answeredTwice: number;
    readonly notTrusted: number;
    readonly unverifiedMessages: number;
    readonly deadLettered: number;
    /** Duplicate rotate-key deliveries dead-lettered while the first was rotating (not a failure). */
    readonly duplicateRotationsDeadLettered: number;
    /** Key versions whose release policy lacks a measurement a deployment added. */
    readonly lostUpdates: readonly string[];
    /** Per key: versions made minus rotation events sent (must be 0). */
    readonly extraVersions: Readonly<Record<string, number>>;
    readonly releasesPerAttestation: number;
  };
  readonly workers: readonly unknown[];
  readonly ok: boolean;
}

const BASE_HOST_DATA = createHash("sha256").update("sim workload v1").digest("hex");

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function pool<T>(
  items: readonly T[],
  concurrency: number,
  run: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, items.length) }, async () => {
      while (next < items.length) await run(items[next++]!);
    }),
  );
}

function startWorker(settings: unknown): Promise<{ child: ChildProcess; stopped: Promise<unknown> }> {
  const script = fileURLToPath(new URL("./sim-worker.ts", import.meta.url));
  const child = spawn(process.execPath, ["--import", "tsx", script], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, SHIELD_SIM_SETTINGS: JSON.stringify(settings) },
  });
  let output = "";
  const stopped = new Promise<unknown>((resolve) => {
    child.on("exit", () => {
      const last = output.trim().split("\n").pop() ?? "";
      try {
        resolve(JSON.parse(last));
      } catch {
        resolve({ exit: child.exitCode });
      }
    });
  });
  return new Promise((resolve, reject) => {
    child.stdout.on("data", (chunk: Buffer) => {
      output += chunk.toString("utf8");
      if (output.includes("ready\n")) resolve({ child, stopped });
    });
    child.once("exit", (code) =>
      reject(new Error(`a sim worker exited with code ${code} before it was ready`)),
    );
  });
}

export async function runSimulation(options: SimOptions): Promise<SimReport> {
  const say = options.progress ?? (() => undefined);
  const azurite = await startAzurite();
  const platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  const tableName = `sim${randomUUID().replaceAll("-", "").slice(0, 10)}`;
  const stack = await startLocalStack({
    storageConnectionString: azurite.connectionString,
    platform,
    appraisalPolicy: JSON.stringify({ sevsnpvm: { hostData: [BASE_HOST_DATA] } }),
    tableName,
  });
  const suffix = randomUUID().slice(0, 8);
  const queues = { requests: `simreq${suffix}`, rotate: `simrot${suffix}`, policy: `simpol${suffix}` };
  const maxDeliveryCount = 10;
  const workers: { child: ChildProcess; stopped: Promise<unknown> }[] = [];
  const keyNames = Array.from({ length: options.keys }, (_, i) => `sim-key-${i}`);
  const client = (requestsQueue: string) =>
    createStorageQueueBus({ connectionString: azurite.connectionString, requestsQueue, maxDeliveryCount });
  const requests = client(queues.requests);
  const rotations = createStorageQueueBus({
    connectionString: azurite.connectionString,
    requestsQueue: queues.rotate,
    rotationQueue: queues.rotate,
    maxDeliveryCount,
  });
  const policies = client(queues.policy);
  // Deployments reach the policy-updates queue as the webhook's output binding puts them there.
  const policyQueue = createQueueServiceClient({ connectionString: azurite.connectionString }).getQueueClient(
    queues.policy,
  );
  const agents: LightAgent[] = [];
  try {
    const keyStore = createKeyVaultKeyStore({
      vaultUrl: stack.keyVault.url,
      credential: localKeyVaultCredential(stack.keyVault.accessToken),
    });
    const releasePolicy = renderReleasePolicy({
      authority: stack.maa.url,
      measurements: { sevsnpvm: { hostData: [BASE_HOST_DATA] } },
    });
    for (const name of keyNames)
      await keyStore.createKey(name, { keyType: "oct-HSM", keySize: 256, releasePolicy });

    const env = { ...stack.settings, SHIELD_ROTATE_KEY_QUEUE: queues.rotate };
    say(`starting ${options.workers} function workers`);
    workers.push(
      ...(await Promise.all(
        Array.from({ length: options.workers }, () =>
          startWorker({
            env,
            connectionString: azurite.connectionString,
            requestsQueue: queues.requests,
            rotateQueue: queues.rotate,
            policyQueue: queues.policy,
            maxDeliveryCount,
            concurrency: 8,
          }),
        ),
      )),
    );

    const runtimeKey = await createRuntimeKey();
    const inboxes = createStorageQueueBus({
      connectionString: azurite.connectionString,
      minPollMs: 20,
      maxPollMs: 200,
    });
    for (let i = 0; i < options.agents; i++) {
      agents.push(
        new LightAgent(
          {
            platform,
            runtimeKey,
            controlKeys: stack.controlKeys,
            requests,
            openInbox: (agentId) => inboxes.openAgentInbox(agentId),
          },
          `sim-${suffix}-${i}`,
          { hostData: BASE_HOST_DATA, keys: keyNames.slice(0, 1 + (i % keyNames.length)) },
        ),
      );
    }

    const latencies: number[] = [];
    let notTrusted = 0;
    let attestations = 0;
    let releasesExpected = 0;
    const releasedBefore = stack.vault.stats().released;
    const tick = async (agent: LightAgent) => {
      const round = await agent.attest({ timeoutMs: 120_000 });
      latencies.push(round.latencyMs);
      attestations++;
      if (round.result.verdict !== "trusted") notTrusted++;
      else releasesExpected += round.result.keys.length;
    };
    const started = performance.now();
    say(`first attestation of ${options.agents} agents`);
    await pool(agents, options.concurrency, tick);

    // Re-attestation ticks, with deployments and rotations racing them and each other.
    const addedHostData: string[] = [];
    const rotationEvents = new Map<string, number>(keyNames.map((k) => [k, 0]));
    const racing = (async () => {
      const steps = Math.max(options.updates, options.rotations);
      for (let step = 0; step < steps; step++) {
        if (step < options.updates) {
          const hostData = createHash("sha256")
            .update(`sim workload v${step + 2}`)
            .digest("hex");
          addedHostData.push(hostData);
          const update = makePolicyUpdate({
            deploymentId: `sim-${suffix}-deploy-${step}`,
            keys: keyNames,
            add: [{ tee: "sevsnp", hostData }],
            retire: [],
            graceSeconds: 3600,
            dryRun: false,
            sentAt: new Date(),
          });
          await policyQueue.createIfNotExists();
          await policyQueue.sendMessage(encodeMessageText(Buffer.from(JSON.stringify(update))));
        }
        if (step < options.rotations) {
          for (const keyName of keyNames) {
            const message = makeRotateKey({
              keyName,
              reason: "manual",
              sourceEventId: `sim-${suffix}-${keyName}-rotation-${step}`,
              sentAt: new Date(),
            });
            // Delivered twice, as an at-least-once bus may: it must rotate once.
            await rotations.enqueueRotation(message);
            await rotations.enqueueRotation(message);
            rotationEvents.set(keyName, rotationEvents.get(keyName)! + 1);
          }
        }
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    })();
    for (let t = 0; t < options.ticks; t++) {
      say(`re-attestation tick ${t + 1} of ${options.ticks}`);
      await pool(agents, options.concurrency, tick);
    }
    await racing;
    const seconds = (performance.now() - started) / 1000;

    // Let the racing work finish: rotations and updates land while the last ticks run.
    say("waiting for rotations and deployments to settle");
    const expectedVersions = (k: string) => 1 + rotationEvents.get(k)!;
    const lostUpdatesNow = async (): Promise<{ lost: string[]; extra: Record<string, number> }> => {
      const lost: string[] = [];
      const extra: Record<string, number> = {};
      for (const keyName of keyNames) {
        const versions = await keyStore.listVersions(keyName);
        extra[keyName] = versions.length - expectedVersions(keyName);
        for (const version of versions) {
          const present = new Set(policyMeasurements(version.releasePolicy!).map((m) => m.value));
          for (const hostData of [BASE_HOST_DATA, ...addedHostData]) {
            if (!present.has(hostData))
              lost.push(`${keyName}/${version.version} lacks ${hostData.slice(0, 12)}…`);
          }
        }
      }
      return { lost, extra };
    };
    // Settled: every rotation made its version and every update reached every version; a lost
    // update never settles, so give up on it 20 s after the versions are all there.
    let versionsSince: number | undefined;
    let final = await lostUpdatesNow();
    for (const giveUp = Date.now() + 120_000; Date.now() < giveUp;) {
      if (Object.values(final.extra).every((n) => n >= 0)) versionsSince ??= Date.now();
      if (versionsSince !== undefined && (final.lost.length === 0 || Date.now() - versionsSince > 20_000))
        break;
      await new Promise((resolve) => setTimeout(resolve, 500));
      final = await lostUpdatesNow();
    }
    // Late duplicates would show here.
    say("draining agent inboxes");
    await pool(agents, 100, (agent) => agent.drain(300));
    const workerCounts = await stopWorkers(workers);

    let answeredTwice = 0;
    let unverifiedMessages = 0;
    for (const agent of agents) {
      unverifiedMessages += agent.unverified;
      for (const count of agent.resultsByRequest.values()) if (count > 1) answeredTwice++;
    }
    const answered = agents.reduce((n, a) => n + a.resultsByRequest.size, 0);
    const unanswered = attestations - answered;
    const letters = await Promise.all(
      [requests, rotations, policies].map((bus) => bus.openRequestReceiver().readDeadLetters()),
    );
    // A second delivery of a rotation event that arrives while the first is still rotating is
    // left for redelivery (ERR_CONFLICT); Storage Queues have no sessions to hold it back, so it
    // can run out of deliveries. It rotated nothing; it is counted, not failed.
    const duplicateRotationsDeadLettered = letters[1]!.filter((d) => d.reason === "ERR_CONFLICT").length;
    const deadLettered = letters.flat().length - duplicateRotationsDeadLettered;
    const lostUpdates = final.lost;
    const extraVersions = final.extra;
    const sorted = [...latencies].sort((a, b) => a - b);
    const releasesPerAttestation =
      (stack.vault.stats().released - releasedBefore) / Math.max(1, releasesExpected);
    const checks = {
      unanswered,
      answeredTwice,
      notTrusted,
      unverifiedMessages,
      deadLettered,
      duplicateRotationsDeadLettered,
      lostUpdates,
      extraVersions,
      releasesPerAttestation,
    };
    const ok =
      unanswered === 0 &&
      answeredTwice === 0 &&
      notTrusted === 0 &&
      unverifiedMessages === 0 &&
      deadLettered === 0 &&
      lostUpdates.length === 0 &&
      Object.values(extraVersions).every((n) => n === 0) &&
      releasesPerAttestation === 1;
    const { progress: _progress, ...shown } = options;
    await inboxes.close();
    return {
      options: shown,
      attestations,
      seconds,
      attestationsPerSecond: attestations / seconds,
      latencyMs: {
        p50: percentile(sorted, 50),
        p90: percentile(sorted, 90),
        p99: percentile(sorted, 99),
        max: sorted.at(-1) ?? 0,
      },
      checks,
      workers: workerCounts,
      ok,
    };
  } finally {
    await stopWorkers(workers);
    for (const agent of agents) await agent.close();
    await requests.close();
    await rotations.close();
    await policies.close();
    await stack.close();
    await azurite.stop();
  }
}

async function stopWorkers(
  workers: { child: ChildProcess; stopped: Promise<unknown> }[],
): Promise<unknown[]> {
  for (const { child } of workers) if (child.exitCode === null) child.kill("SIGTERM");
  return Promise.all(workers.map((w) => w.stopped));
}

export function formatSimReport(r: SimReport): string {
  const ms = (n: number) => `${n.toFixed(0)} ms`;
  const c = r.checks;
  const mark = (good: boolean) => (good ? "ok  " : "FAIL");
  return [
    `scale simulation: ${r.options.agents} agents, ${r.options.workers} function workers, ${r.options.ticks} re-attestation tick(s), ${r.options.keys} keys, ${r.options.updates} deployments racing ${r.options.rotations} rotation(s) per key`,
    `  attestations            ${r.attestations} in ${r.seconds.toFixed(1)} s = ${r.attestationsPerSecond.toFixed(1)} /s (${r.options.concurrency} agents in flight)`,
    `  latency (challenge request → verified result)  p50 ${ms(r.latencyMs.p50)}  p90 ${ms(r.latencyMs.p90)}  p99 ${ms(r.latencyMs.p99)}  max ${ms(r.latencyMs.max)}`,
    `  ${mark(c.unanswered === 0 && c.answeredTwice === 0)} every request answered exactly once (unanswered ${c.unanswered}, answered twice ${c.answeredTwice})`,
    `  ${mark(c.notTrusted === 0 && c.unverifiedMessages === 0)} every verdict trusted and every message verified (not trusted ${c.notTrusted}, unverified ${c.unverifiedMessages})`,
    `  ${mark(c.deadLettered === 0)} nothing dead-lettered (${c.deadLettered}; besides, duplicate rotate-key deliveries dead-lettered with ERR_CONFLICT while the first rotated: ${c.duplicateRotationsDeadLettered})`,
    `  ${mark(c.lostUpdates.length === 0)} no lost update (${c.lostUpdates.length} version(s) lack an added measurement${c.lostUpdates.length ? `: ${c.lostUpdates.slice(0, 3).join("; ")}` : ""})`,
    `  ${mark(Object.values(c.extraVersions).every((n) => n === 0))} no double rotation (versions beyond one per rotation event: ${JSON.stringify(c.extraVersions)})`,
    `  ${mark(c.releasesPerAttestation === 1)} Key Vault releases per delivered key: ${c.releasesPerAttestation.toFixed(3)}`,
  ].join("\n");
}

function option(args: readonly string[], name: string, fallback: number): number {
  const index = args.indexOf(`--${name}`);
  if (index < 0) return fallback;
  const value = Number(args[index + 1]);
  if (!Number.isInteger(value) || value < 0) throw new TypeError(`--${name} takes a non-negative integer`);
  return value;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const json = args.includes("--json");
  const report = await runSimulation({
    agents: option(args, "agents", 1000),
    workers: option(args, "workers", 3),
    ticks: option(args, "ticks", 1),
    concurrency: option(args, "concurrency", 64),
    keys: option(args, "keys", 3),
    updates: option(args, "updates", 3),
    rotations: option(args, "rotations", 2),
    progress: json ? undefined : (line) => console.log(`… ${line}`),
  });
  console.log(json ? JSON.stringify(report) : formatSimReport(report));
  if (!report.ok) process.exitCode = 1;
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exitCode = 1;
  });
}
