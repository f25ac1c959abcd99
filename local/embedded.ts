/**
 * `npm start`: Shield on one machine, no Azure account. It starts Azurite (Table Storage and
 * Storage Queues), a local MAA-compatible attestation server that trusts only a freshly made
 * simulated SEV-SNP platform, and a local Key Vault-compatible server; creates a demo key whose
 * release policy names the demo workload's measurement; runs the `attest` function under a local
 * host fed from the requests queue; and then plays an agent in a simulated confidential
 * container: evidence bound to its in-memory runtime key goes over the queue, and the key comes
 * back wrapped to that key and is unwrapped in memory. Every step uses the same adapters as
 * Azure — the MAA client, the Key Vault SDK, the Table and Queue clients — against local ends.
 *
 * The agent serves the released key to the app on its loopback key API (127.0.0.1:8280).
 * `--once` stops after the round trip (used by the tests); otherwise it keeps serving until
 * Ctrl-C. `--with-example db` also runs the confidential-database example
 * (examples/confidential-db) against the agent, on a PostgreSQL server of its own.
 */
import { createHash } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startAzurite } from "../adapters/local/azurite.js";
import { startLocalStack } from "./stack.js";
import { startLocalFunctionsHost, type QueueFunctionHandler } from "../adapters/local/functions-host.js";
import { localKeyVaultCredential } from "../adapters/local/keyvault/credential.js";
import { createKeyVaultKeyStore } from "../adapters/keyvault/key-store.js";
import { createStorageQueueBus } from "../adapters/storage-queue/bus.js";
import { createSimulatedSnpPlatform, exportSimulatedSnpPlatform } from "../core/evidence/simulated/sevsnp.js";
import { renderReleasePolicy, serializeReleasePolicy } from "../core/policy/index.js";
import { ShieldError } from "../core/errors.js";
import type { Logger } from "../core/ports/logger.js";
import { composition, resetComposition } from "../functions/composition/root.js";
import { main as agentMain } from "../agent/main.js";
import { runOrders } from "../examples/confidential-db/main.js";
import { startSystem, type BusKind, type LocalSystem } from "./system.js";
import { DEMO_SETTINGS, runDemoScenario, type StepResult } from "./scenario.js";
import { startEventFeed, type EventFeed } from "./events.js";

/** Examples `npm start -- --with-example <name>` can run beside the agent. */
export const EXAMPLES = ["db"] as const;

export interface EmbeddedOptions {
  readonly once?: boolean;
  readonly print?: (line: string) => void;
  readonly verbose?: boolean;
  /** The agent's key API address (default 127.0.0.1:8280). */
  readonly listen?: string;
  /** Also run this example against the agent. */
  readonly withExample?: (typeof EXAMPLES)[number];
  /** Port of the example's service (default 8080; 0: any free port). */
  readonly examplePort?: number;
}

/** The demo workload's confidential-container policy; its sha256 is the measurement (hostData). */
const DEMO_CONTAINER_POLICY =
  'package policy\n\nimport future.keywords.every\n\ndefault allow_all := false\n# demo workload "orders"\n';
const DEMO_KEY = "demo-orders-key";

/**
 * Loads the `attest` function file as the Functions host would. Outside that host the
 * `@azure/functions` package says, on import, that it runs in test mode and skips registering;
 * both are expected here (this local host drives the exported handler), so those two notices
 * are not printed.
 */
async function loadAttestFunction(): Promise<QueueFunctionHandler> {
  const warn = console.warn;
  console.warn = (...args: unknown[]) => {
    const text = args.map(String).join(" ");
    if (/Azure Functions runtime|Skipping call to register function/.test(text)) return;
    warn(...args);
  };
  try {
    return (await import("../functions/attest.js")).attest;
  } finally {
    console.warn = warn;
  }
}

export interface EmbeddedRun {
  readonly released: { name: string; version: string; bytes: number }[];
  /** The example's service URL, when one was asked for. */
  readonly exampleUrl?: string;
  stop(): Promise<void>;
}

export async function runEmbedded(options: EmbeddedOptions = {}): Promise<EmbeddedRun> {
  const print = options.print ?? ((line: string) => process.stdout.write(line + "\n"));
  const logger: Logger = options.verbose
    ? (level, message, fields) =>
        print(`  [${level}] ${message}${fields ? " " + JSON.stringify(fields) : ""}`)
    : (level, message, fields) => {
        if (level === "warn" || level === "error")
          print(`  [${level}] ${message}${fields ? " " + JSON.stringify(fields) : ""}`);
      };
  const stops: (() => Promise<void>)[] = [];
  const stop = async () => {
    for (const s of stops.splice(0).reverse()) await s().catch(() => undefined);
  };
  try {
    print("Shield embedded default: everything local, nothing in Azure.");
    const azurite = await startAzurite();
    stops.push(() => azurite.stop());
    print(`  Azurite ${azurite.version}: tables ${azurite.tableEndpoint}, queues ${azurite.queueEndpoint}`);

    const platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
    const hostData = createHash("sha256").update(DEMO_CONTAINER_POLICY).digest("hex");
    print(
      `  simulated SEV-SNP platform: root "${platform.ark.subject.replace(/\n/g, ", ")}" (trusted here only)`,
    );

    const stack = await startLocalStack({
      storageConnectionString: azurite.connectionString,
      platform,
      complianceStatus: "azure-compliant-uvm",
      appraisalPolicy: JSON.stringify({
        sevsnpvm: { hostData: [hostData], complianceStatus: ["azure-compliant-uvm"] },
      }),
      logger,
    });
    stops.push(() => stack.close());
    print(`  attestation (MAA-compatible): ${stack.maa.url}`);
    print(`  key vault (Key Vault-compatible): ${stack.keyVault.url}`);
    print(`  control-plane key (signs every message to agents): ${stack.settings["SHIELD_CONTROL_KEY_ID"]}`);

    const keyStore = createKeyVaultKeyStore({
      vaultUrl: stack.keyVault.url,
      credential: localKeyVaultCredential(stack.keyVault.accessToken),
    });
    const releasePolicy = renderReleasePolicy({
      authority: stack.maa.url,
      measurements: { sevsnpvm: { hostData: [hostData], complianceStatus: "azure-compliant-uvm" } },
    });
    const created = await keyStore.createKey(DEMO_KEY, { keyType: "oct-HSM", keySize: 256, releasePolicy });
    print(`  key ${DEMO_KEY} version ${created.version}, release policy:`);
    print(`    ${serializeReleasePolicy(releasePolicy)}`);

    Object.assign(process.env, stack.settings);
    await resetComposition();
    await composition(); // settings are checked now, not at the first message
    stops.push(() => resetComposition());
    const bus = createStorageQueueBus({ connectionString: azurite.connectionString });
    stops.push(() => bus.close());
    const host = startLocalFunctionsHost({
      functionName: "attest",
      handler: await loadAttestFunction(),
      receiver: bus.openRequestReceiver(),
      logger,
    });
    stops.push(() => host.stop());
    print("  functions: attest (queue attestation-requests) running under the local host");

    // The agent, as `npm run agent` runs it, playing the simulated confidential container.
    const work = await mkdtemp(join(tmpdir(), "shield-embedded-"));
    stops.push(() => rm(work, { recursive: true, force: true }));
    const platformFile = join(work, "simulated-platform.json");
    const signerFile = join(work, "release-signer.pem");
    const controlKeysFile = join(work, "control-keys.json");
    await writeFile(controlKeysFile, JSON.stringify(stack.controlKeys));
    await writeFile(platformFile, JSON.stringify(exportSimulatedSnpPlatform(platform)), { mode: 0o600 });
    await writeFile(signerFile, stack.vault.signerCertificates.map((cert) => cert.toString()).join(""));
    const agentEnv: Record<string, string> = {
      SHIELD_AGENT_ID: "demo-agent",
      SHIELD_WORKLOAD: "orders",
      SHIELD_KEYS: DEMO_KEY,
      SHIELD_TEE: "simulated",
      SHIELD_SIMULATED_PLATFORM: platformFile,
      SHIELD_SIMULATED_HOST_DATA: hostData,
      SHIELD_BUS: "storage-queue",
      SHIELD_STORAGE_CONNECTION_STRING: azurite.connectionString,
      SHIELD_RELEASE_SIGNER_CA_FILE: signerFile,
      SHIELD_CONTROL_KEYS_FILE: controlKeysFile,
      SHIELD_KEYVAULT_URL: stack.vaultUrl,
      SHIELD_LISTEN: options.listen ?? "127.0.0.1:8280",
      SHIELD_REATTEST_SECONDS: "600",
    };
    const shutdown = new AbortController();
    let keyApiUrl: string | undefined;
    const agentExit = agentMain([], agentEnv, {
      io: {
        stdout: (text) => print(`  agent: ${text.trimEnd()}`),
        stderr: (text) => logger("info", `agent: ${text.trimEnd()}`),
      },
      runtime: {
        shutdown: shutdown.signal,
        onRunning: (running) => {
          keyApiUrl = running.api.url;
        },
      },
    });
    stops.push(async () => {
      shutdown.abort();
      await agentExit;
    });
    const readyBy = Date.now() + 30_000;
    for (;;) {
      if (keyApiUrl !== undefined) {
        const ready = await fetch(`${keyApiUrl}/readyz`).catch(() => undefined);
        if (ready?.status === 200) break;
      }
      const early = await Promise.race([
        agentExit,
        new Promise((resolve) => setTimeout(resolve, 100, "waiting")),
      ]);
      if (early !== "waiting") throw new Error(`the agent stopped with exit code ${String(early)}`);
      if (Date.now() > readyBy) throw new Error("the agent was not ready within 30 s");
    }
    const status = (await (await fetch(`${keyApiUrl}/status`)).json()) as {
      state?: string;
      attestedUntil?: string;
    };
    const response = await fetch(`${keyApiUrl}/keys/${DEMO_KEY}`);
    const material = Buffer.from(await response.arrayBuffer());
    const released = [
      { name: DEMO_KEY, version: response.headers.get("x-key-version") ?? "?", bytes: material.length },
    ];
    material.fill(0);
    print(
      `  agent demo-agent: ${status.state ?? "?"} until ${status.attestedUntil ?? "?"}; key API ${keyApiUrl}`,
    );
    print(
      `  the app's view: GET ${keyApiUrl}/keys/${DEMO_KEY} → ${released[0]!.bytes} bytes, version ${released[0]!.version}`,
    );
    print(`  try: curl -s ${keyApiUrl}/status ; curl -s ${keyApiUrl}/keys/${DEMO_KEY} | xxd`);
    print(
      "Round trip complete: evidence → MAA-compatible token → release policy → key wrapped to the enclave key.",
    );
    const exampleUrl = options.withExample === "db" ? await startDbExample(keyApiUrl) : undefined;
    if (!options.once) print("Serving; press Ctrl-C to stop.");
    return { released, stop, ...(exampleUrl === undefined ? {} : { exampleUrl }) };
  } catch (error) {
    await stop();
    throw error;
  }

  async function startDbExample(keyApiUrl: string): Promise<string> {
    print("Example: the orders service over a local PostgreSQL, encrypting through the agent's API");
    const orders = await runOrders(
      {
        SHIELD_API_URL: keyApiUrl,
        ORDERS_KEY_NAME: DEMO_KEY,
        ORDERS_PORT: String(options.examplePort ?? 8080),
        ORDERS_WATCH_SECONDS: "2",
      },
      { localPostgres: true, log: (line) => (line.startsWith("orders:") ? print(`  ${line}`) : undefined) },
    );
    stops.push(() => orders.stop());
    print(
      `  try: curl -s -X POST -H 'content-type: application/json' -d '{"customerEmail":"alice@example.com","customerName":"Alice","cardNumber":"4111 1111 1111 1111","amountCents":1299}' ${orders.url}/orders`,
    );
    print(
      `       curl -s '${orders.url}/orders?email=alice@example.com' ; curl -s ${orders.url}/cards/totals`,
    );
    return orders.url;
  }
}

export interface LocalRunOptions {
  readonly scenario?: "demo";
  /** Exit after the scenario (with its verdict). */
  readonly exit?: boolean;
  readonly bus?: BusKind;
  /** SEV-SNP agents to start (default 1; the demo scenario starts its own). */
  readonly agents?: number;
  readonly print?: (line: string) => void;
  readonly verbose?: boolean;
  /** Keep the state in this directory between runs (`--state DIR`; see local/state.ts). */
  readonly stateDir?: string;
}

export interface LocalRun {
  readonly system: LocalSystem;
  /** The scenario's verdict, when one ran. */
  readonly result?: { ok: boolean; steps: StepResult[] };
  stop(): Promise<void>;
}

/**
 * `npm start` (and `--scenario demo`): the whole system — every function under the local host,
 * SEV-SNP and SGX agents — printing one line per event as it happens.
 */
export async function runLocal(options: LocalRunOptions = {}): Promise<LocalRun> {
  const print = options.print ?? ((line: string) => process.stdout.write(line + "\n"));
  const stamp = () => new Date().toISOString().slice(11, 19);
  const say = (line: string) => print(`${stamp()} ${line}`);
  // Set once the system is up; the host's logger forwards to it from then on.
  const forward: { feed?: EventFeed } = {};
  const system = await startSystem({
    bus: options.bus ?? "storage-queue",
    ...(options.scenario === "demo" ? { settings: DEMO_SETTINGS } : {}),
    ...(options.stateDir === undefined ? {} : { stateDir: options.stateDir, notice: say }),
    logger: (level, message, fields) => {
      forward.feed?.logger(level, message, fields);
      if (options.verbose === true || level === "error")
        print(`  [${level}] ${message}${fields === undefined ? "" : ` ${JSON.stringify(fields)}`}`);
    },
    ...(options.verbose === true
      ? { agentOutput: (id: string, line: string) => print(`  ${id}: ${line}`) }
      : {}),
  });
  const feed = startEventFeed({
    state: system.state,
    vault: system.stack.vault,
    keyNames: [DEMO_KEY],
    agentIds: () => [
      ...new Set([...system.agents.keys(), "snp-agent-1", "sgx-agent-1", "agent-evil", "snp-agent-2"]),
    ],
    print: say,
    fromNow: system.stateDir?.resumed === true,
  });
  forward.feed = feed;
  const stop = async () => {
    await feed.stop();
    await system.stop();
  };
  try {
    say(
      `Shield on one machine (bus: ${system.bus}): Azurite, local MAA ${system.stack.maa.url}, local Key Vault ${system.stack.keyVault.url}`,
    );
    if (system.stateDir !== undefined) {
      say(
        `state: ${system.stateDir.directory} (${system.stateDir.resumed ? "resumed from the last run" : "new"}; Azurite tables ${system.azurite.tableEndpoint})`,
      );
      await feed.poll();
    }
    for (const f of system.host.functions) say(`  function ${f.name}: ${f.trigger} ${f.detail}`);
    say(`status page: ${system.statusPageUrl}`);
    if (options.scenario === "demo") {
      const result = await runDemoScenario(system, (step) =>
        say(
          `step ${step.name}: ${step.ok ? "ok" : "FAILED"} (${step.ms} ms)${step.detail === undefined ? "" : ` — ${step.detail}`}`,
        ),
      );
      await feed.poll();
      print(
        JSON.stringify({ ok: result.ok, steps: result.steps.map(({ name, ok, ms }) => ({ name, ok, ms })) }),
      );
      return { system, result, stop };
    }
    const count = Math.max(1, options.agents ?? 1);
    for (let i = 1; i <= count; i++) {
      system.startAgent({
        agentId: `snp-agent-${i}`,
        tee: "sevsnp",
        ...(i === 1 ? { listen: "127.0.0.1:8280" } : {}),
      });
    }
    system.startAgent({ agentId: "sgx-agent-1", tee: "sgx" });
    say(
      "agents started: " +
        [...system.agents.keys()].join(", ") +
        " (snp-agent-1 key API http://127.0.0.1:8280); Ctrl-C stops everything",
    );
    return { system, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

function flagValue(name: string): string | undefined {
  const at = process.argv.findIndex((arg) => arg === name || arg.startsWith(`${name}=`));
  if (at === -1) return undefined;
  return process.argv[at]!.split("=")[1] ?? process.argv[at + 1];
}

const entry = process.argv[1];
if (entry !== undefined && /local[\\/]embedded\.(ts|js)$/.test(entry)) {
  const once = process.argv.includes("--once");
  const flag = process.argv.findIndex((arg) => arg === "--with-example" || arg.startsWith("--with-example="));
  const example = flag === -1 ? undefined : (process.argv[flag]!.split("=")[1] ?? process.argv[flag + 1]);
  if (example !== undefined && !(EXAMPLES as readonly string[]).includes(example)) {
    process.stderr.write(`error: --with-example takes one of ${EXAMPLES.join(", ")}\n`);
    process.exit(2);
  }
  const scenario = flagValue("--scenario");
  const bus = flagValue("--bus");
  const agents = flagValue("--agents");
  const stateDir = flagValue("--state");
  if (
    stateDir !== undefined &&
    (stateDir === "" || stateDir.startsWith("--") || once || example !== undefined)
  ) {
    process.stderr.write(
      "error: --state takes a directory, and goes with npm start or --scenario (not --once or --with-example)\n",
    );
    process.exit(2);
  }
  if (scenario !== undefined && scenario !== "demo") {
    process.stderr.write("error: --scenario takes demo\n");
    process.exit(2);
  }
  if (bus !== undefined && bus !== "storage-queue" && bus !== "servicebus") {
    process.stderr.write("error: --bus takes storage-queue or servicebus\n");
    process.exit(2);
  }
  if (agents !== undefined && !/^[1-9]\d?$/.test(agents)) {
    process.stderr.write("error: --agents takes 1..99\n");
    process.exit(2);
  }
  if (!once && example === undefined) {
    const exitAfter = process.argv.includes("--exit");
    runLocal({
      verbose: process.argv.includes("--verbose"),
      ...(scenario === undefined ? {} : { scenario: "demo" as const, exit: exitAfter }),
      ...(bus === undefined ? {} : { bus: bus }),
      ...(agents === undefined ? {} : { agents: Number(agents) }),
      ...(stateDir === undefined ? {} : { stateDir }),
    }).then(
      async (run) => {
        if (run.result !== undefined && exitAfter) {
          await run.stop();
          process.exit(run.result.ok ? 0 : 1);
        }
        let stopping = false;
        const shutdown = () => {
          if (stopping) return;
          stopping = true;
          void run.stop().then(() => process.exit(0));
        };
        process.once("SIGINT", shutdown);
        process.once("SIGTERM", shutdown);
        setInterval(() => undefined, 1 << 30);
      },
      (error: unknown) => {
        const code = error instanceof ShieldError ? `${error.code}: ` : "";
        process.stderr.write(`error: ${code}${error instanceof Error ? error.message : String(error)}\n`);
        process.exit(1);
      },
    );
  } else
    runEmbedded({
      once,
      verbose: process.argv.includes("--verbose"),
      ...(example === undefined ? {} : { withExample: example as (typeof EXAMPLES)[number] }),
    }).then(
      async (run) => {
        if (once) {
          await run.stop();
          return;
        }
        const shutdown = () => {
          void run.stop().then(() => process.exit(0));
        };
        process.once("SIGINT", shutdown);
        process.once("SIGTERM", shutdown);
        setInterval(() => undefined, 1 << 30); // keep serving until a signal
      },
      (error: unknown) => {
        process.stderr.write(`error: ${error instanceof Error ? error.message : String(error)}\n`);
        process.exitCode = 1;
      },
    );
}
