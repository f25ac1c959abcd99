/**
 * The agent's entry point: `npm run -s agent -- [--help]`. It reads and checks the
 * configuration, finds the TEE interface to take evidence from, and hands both to `start`:
 * by default `runAgent`, which makes the runtime key, opens the bus, starts the agent and the
 * local key API, and on SIGTERM or SIGINT wipes every key, closes everything and ends with 0.
 * Exit codes: 0 normal end or help, 1 no usable TEE interface, 2 configuration or usage error
 * (including a key API address that cannot be bound and a bus that cannot be opened).
 *
 * Importing this module does nothing; it runs `main` only when it is the process's entry point.
 */
import { realpathSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { controlKeySet, type ControlKeySet } from "../core/control/signed.js";
import { ShieldError, isShieldError } from "../core/errors.js";
import type { SignerTrust } from "../core/keywrap/index.js";
import type { Clock, Random } from "../core/ports/clock.js";
import type { Logger, LogLevel } from "../core/ports/logger.js";
import { createAgent, type Agent, type AgentTiming } from "./agent.js";
import { openAgentBus, type AgentBus } from "./bus.js";
import {
  LOG_LEVELS,
  loadAgentConfig,
  startRequirements,
  variablesHelp,
  type AgentConfig,
  type Environment,
  type Secret,
} from "./config.js";
import type { EvidenceProvider } from "./evidence/provider.js";
import { selectProvider, type SelectOptions } from "./evidence/select.js";
import type { SimulatedProviderOptions } from "./evidence/simulated.js";
import {
  restoreSimulatedSnpPlatform,
  type SimulatedSnpPlatformState,
} from "../core/evidence/simulated/sevsnp.js";
import { readKeyApiToken, startKeyApi, type KeyApi } from "./key-api.js";
import { KeyOperations } from "./encryption.js";
import type { PgProxy } from "./pg-proxy/proxy.js";
import { readPgProxySettings, type PgProxySettings } from "./pg-proxy/settings.js";
import { openKeyFiles, removeStaleKeyFiles, type KeyFiles } from "./key-files.js";
import { releaseSignerTrust } from "./release-signers.js";
import { createRuntimeKey } from "./runtime-key.js";

export const EXIT_CODES = Object.freeze({ ok: 0, noTee: 1, config: 2 });
/** After `main` has returned, how long pending I/O may keep the process before it exits anyway. */
const EXIT_GRACE_MS = 3_000;

export interface MainIo {
  stdout(text: string): void;
  stderr(text: string): void;
}

/** What `start` receives once configuration and TEE interface are settled. */
export interface StartContext {
  readonly config: AgentConfig;
  readonly provider: EvidenceProvider;
  readonly logger: Logger;
  readonly io: MainIo;
}

export interface MainOptions {
  readonly io?: MainIo;
  /** Passed to provider selection (tests build providers against fakes). */
  readonly select?: SelectOptions;
  /** Runs the agent; its result is the exit code (default `runAgent`). */
  readonly start?: (context: StartContext) => Promise<number>;
  /** Options of the default `runAgent`. */
  readonly runtime?: RuntimeOptions;
}

/** What `runAgent` takes besides the configuration; every field has a production default. */
export interface RuntimeOptions {
  /** Opens the bus (default: the transport SHIELD_BUS names). */
  readonly openBus?: (config: AgentConfig, logger: Logger) => Promise<AgentBus>;
  /** Ends the agent as SIGTERM would; when given, no signal handlers are installed. */
  readonly shutdown?: AbortSignal;
  /** Replaces the signer trust the configuration names. */
  readonly releaseSigners?: SignerTrust;
  /** Overrides timings derived from the configuration. */
  readonly timing?: AgentTiming;
  readonly clock?: Clock;
  readonly random?: Random;
  /** Called once the agent and the key API are running. */
  readonly onRunning?: (running: {
    readonly agent: Agent;
    readonly api: KeyApi;
    /** With SHIELD_PG_PROXY_FILE: the PostgreSQL proxy. */
    readonly pgProxy?: PgProxy;
  }) => void;
}

const processIo: MainIo = {
  stdout: (text) => process.stdout.write(text.endsWith("\n") ? text : `${text}\n`),
  stderr: (text) => process.stderr.write(text.endsWith("\n") ? text : `${text}\n`),
};

export function helpText(): string {
  return [
    "Usage: npm run -s agent -- [--help]",
    "",
    "Shield agent: runs next to an unmodified application inside a confidential container, attests",
    "the enclave with hardware evidence, and serves the keys Key Vault releases to it on a local API.",
    "",
    "Options:",
    "  --help, -h  show this text",
    "",
    "Configuration is read from environment variables only:",
    ...variablesHelp(),
    "",
    "Exit codes: 0 normal end, 1 no usable TEE interface, 2 configuration or usage error.",
  ].join("\n");
}

/** Runs the agent; returns the exit code instead of exiting, so tests can call it in-process. */
export async function main(
  argv: readonly string[],
  env: Environment,
  options: MainOptions = {},
): Promise<number> {
  const io = options.io ?? processIo;
  if (argv.includes("--help") || argv.includes("-h")) {
    io.stdout(helpText());
    return EXIT_CODES.ok;
  }
  if (argv.length > 0) {
    io.stderr(
      `shield-agent: unknown argument ${JSON.stringify(argv[0])}; configuration comes from the environment (see --help)`,
    );
    return EXIT_CODES.config;
  }

  const loaded = loadAgentConfig(env);
  if (!loaded.ok) {
    io.stderr(
      ["shield-agent: configuration error:", ...loaded.problems.map((problem) => `  - ${problem}`)].join(
        "\n",
      ),
    );
    return EXIT_CODES.config;
  }
  const config = loaded.config;
  const logger = streamLogger(io, config.logLevel);
  if (config.keyDir !== undefined) {
    // Before anything else can fail: keys an earlier run left must not outlive it any longer.
    try {
      await removeStaleKeyFiles({ dir: config.keyDir, names: config.keys, logger });
    } catch (error) {
      io.stderr(
        `shield-agent: configuration error: ${isShieldError(error) ? `${error.code}: ${error.message}` : "SHIELD_KEY_DIR is unusable"}`,
      );
      return EXIT_CODES.config;
    }
  }

  let provider: EvidenceProvider;
  try {
    const simulated = options.select?.simulated ?? (await simulatedFromConfig(config));
    provider = await selectProvider(config, {
      logger,
      ...options.select,
      ...(simulated === undefined ? {} : { simulated }),
    });
  } catch (error) {
    io.stderr(noTeeMessage(error));
    return EXIT_CODES.noTee;
  }

  const missing = startRequirements(config);
  if (missing.length > 0) {
    io.stderr(
      ["shield-agent: configuration error:", ...missing.map((problem) => `  - ${problem}`)].join("\n"),
    );
    return EXIT_CODES.config;
  }
  const start = options.start ?? ((context: StartContext) => runAgent(context, options.runtime));
  return start({ config, provider, logger, io });
}

/** The simulated TEE named by configuration: a platform file shared with a local attestation server. */
async function simulatedFromConfig(config: AgentConfig): Promise<SimulatedProviderOptions | undefined> {
  if (config.tee !== "simulated") return undefined;
  const { platformFile, hostData } = config.simulated;
  const reportFields =
    hostData === undefined ? {} : { reportFields: { hostData: Buffer.from(hostData, "hex") } };
  if (platformFile === undefined) return hostData === undefined ? undefined : reportFields;
  const state = JSON.parse(await readFile(platformFile, "utf8")) as SimulatedSnpPlatformState;
  return { platform: restoreSimulatedSnpPlatform(state), ...reportFields };
}

/** The pinned control-plane keys from SHIELD_CONTROL_KEYS_FILE (a JWK set). */
async function readControlKeys(file: string | undefined): Promise<ControlKeySet> {
  if (file === undefined) throw new ShieldError("ERR_CONFIG", "SHIELD_CONTROL_KEYS_FILE is not set");
  let json: unknown;
  try {
    json = JSON.parse(await readFile(file, "utf8"));
  } catch (cause) {
    throw new ShieldError("ERR_CONFIG", `SHIELD_CONTROL_KEYS_FILE ${file} cannot be read as JSON`, { cause });
  }
  return controlKeySet(json);
}

/**
 * Runs the agent until SIGTERM or SIGINT (or `runtime.shutdown`): runtime key, bus, agent, key
 * API; then wipes every key, closes the key API and the bus, and returns 0. A start-up problem
 * (signer trust, key API token, key directory, bus, key API address) is reported on stderr and returns 2.
 */
export async function runAgent(context: StartContext, runtime: RuntimeOptions = {}): Promise<number> {
  const { config, provider, logger, io } = context;
  const failed = (what: string, error: unknown): number => {
    // Only our own error messages are shown: an SDK's could quote a connection string.
    const detail = isShieldError(error)
      ? `${error.code}: ${error.message}`
      : error instanceof Error && "code" in error && typeof error.code === "string"
        ? error.code
        : "unexpected error";
    io.stderr(`shield-agent: ${what}: ${detail}`);
    return EXIT_CODES.config;
  };

  let releaseSigners: SignerTrust;
  let controlKeys: ControlKeySet;
  let keyVaultUrl: string;
  let keyFiles: KeyFiles | undefined;
  let keyApiToken: Secret | undefined;
  let pgProxySettings: PgProxySettings | undefined;
  try {
    releaseSigners = runtime.releaseSigners ?? (await releaseSignerTrust(config.releaseSigner));
    controlKeys = await readControlKeys(config.controlKeysFile);
    if (config.keyVaultUrl === undefined)
      throw new ShieldError("ERR_CONFIG", "SHIELD_KEYVAULT_URL is not set");
    keyVaultUrl = config.keyVaultUrl;
    if (config.keyApiTokenFile !== undefined) keyApiToken = await readKeyApiToken(config.keyApiTokenFile);
    if (config.pgProxyFile !== undefined) {
      pgProxySettings = await readPgProxySettings(config.pgProxyFile);
      if (!config.keys.includes(pgProxySettings.columns.keyName)) {
        throw new ShieldError("ERR_CONFIG", "SHIELD_PG_PROXY_FILE names a key that is not in SHIELD_KEYS");
      }
    }
    if (config.keyDir !== undefined) {
      keyFiles = await openKeyFiles({ dir: config.keyDir, names: config.keys, logger });
    }
  } catch (error) {
    return failed("configuration error", error);
  }
  const runtimeKey = await createRuntimeKey({ bits: config.runtimeKeyBits });

  let bus: AgentBus;
  try {
    bus = await (runtime.openBus ?? openAgentBus)(config, logger);
  } catch (error) {
    return failed(`the ${config.bus.transport} bus cannot be opened`, error);
  }
  const agent = createAgent({
    agentId: config.agentId,
    workload: config.workload,
    keys: config.keys,
    provider,
    runtimeKey,
    requests: bus.requests,
    inbox: bus.inbox,
    releaseSigners,
    controlKeys,
    keyVaultUrl,
    ...(keyFiles === undefined ? {} : { keyFiles }),
    timing: {
      resultTimeoutMs: config.timeouts.resultSeconds * 1000,
      reattestIntervalMs: config.reattestSeconds * 1000,
      ...runtime.timing,
    },
    ...(runtime.clock === undefined ? {} : { clock: runtime.clock }),
    ...(runtime.random === undefined ? {} : { random: runtime.random }),
    logger,
  });
  let api: KeyApi;
  try {
    api = await startKeyApi({
      listen: config.listen,
      allowNonLoopback: config.allowNonLoopback,
      agent,
      logger,
      minDecryptionVersions: config.minDecryptionVersions,
      serveKeyMaterial: config.serveKeys,
      ...(keyApiToken === undefined ? {} : { bearerToken: keyApiToken }),
    });
  } catch (error) {
    await bus.close();
    return failed("the key API cannot listen on SHIELD_LISTEN", error);
  }

  let pgProxy: PgProxy | undefined;
  if (pgProxySettings !== undefined) {
    try {
      // Loaded only when configured: the wire protocol and pg's SCRAM client are not small.
      const [{ startPgProxy }, { resolvePgProxySettings }] = await Promise.all([
        import("./pg-proxy/proxy.js"),
        import("./pg-proxy/settings.js"),
      ]);
      const resolved = await resolvePgProxySettings(pgProxySettings);
      pgProxy = await startPgProxy({
        listen: pgProxySettings.listen,
        upstream: resolved.upstream,
        clientPassword: resolved.clientPassword,
        ...(pgProxySettings.clientUser === undefined ? {} : { clientUser: pgProxySettings.clientUser }),
        columns: pgProxySettings.columns,
        operations: new KeyOperations(agent.keys, config.minDecryptionVersions),
        agent,
        logger,
      });
    } catch (error) {
      await api.close();
      await bus.close();
      return failed("the pg proxy cannot start", error);
    }
  }

  const shutdown: { signal: AbortSignal; dispose?: () => void } =
    runtime.shutdown === undefined ? processShutdown() : { signal: runtime.shutdown };
  const disposeExitWipe = keyFiles === undefined ? undefined : removeKeyFilesOnExit(keyFiles);
  try {
    await agent.start();
    runtime.onRunning?.({ agent, api, ...(pgProxy === undefined ? {} : { pgProxy }) });
    await aborted(shutdown.signal);
    logger("info", "shutting down: wiping keys", { agentId: config.agentId });
  } finally {
    await agent.stop();
    await pgProxy?.close();
    await api.close();
    await bus.close();
    shutdown.dispose?.();
    disposeExitWipe?.();
  }
  return EXIT_CODES.ok;
}

/**
 * Key files must not outlive the process however it ends: on `exit` (also after an uncaught
 * exception or `process.exit`) and as soon as an uncaught exception is seen, they are overwritten
 * and removed synchronously. Returns the function that removes the handlers.
 */
export function removeKeyFilesOnExit(keyFiles: KeyFiles): () => void {
  const wipe = (): void => keyFiles.removeAllSync();
  process.on("exit", wipe);
  process.on("uncaughtExceptionMonitor", wipe);
  return () => {
    process.off("exit", wipe);
    process.off("uncaughtExceptionMonitor", wipe);
  };
}

/** SIGTERM and SIGINT as an abort signal; `dispose` removes the handlers. */
function processShutdown(): { signal: AbortSignal; dispose(): void } {
  const controller = new AbortController();
  const onSignal = (): void => controller.abort();
  process.once("SIGTERM", onSignal);
  process.once("SIGINT", onSignal);
  return {
    signal: controller.signal,
    dispose() {
      process.off("SIGTERM", onSignal);
      process.off("SIGINT", onSignal);
    },
  };
}

function aborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener("abort", () => resolve(), { once: true });
  });
}

function noTeeMessage(error: unknown): string {
  if (!isShieldError(error)) {
    return `shield-agent: no usable TEE interface: ${error instanceof Error ? error.message : String(error)}`;
  }
  const lines = [`shield-agent: ${error.code}: no usable TEE interface; tried:`];
  for (const violation of error.violations) lines.push(`  - ${violation.field}: ${violation.actual}`);
  if (error.violations.length === 0) lines.push(`  ${error.message}`);
  lines.push("Set SHIELD_TEE=simulated to run with the simulated TEE (development only).");
  return lines.join("\n");
}

/** One JSON object per line on stderr, at or above `minimum`. */
function streamLogger(io: MainIo, minimum: LogLevel): Logger {
  const threshold = LOG_LEVELS.indexOf(minimum);
  return (level, message, fields) => {
    if (LOG_LEVELS.indexOf(level) < threshold) return;
    io.stderr(JSON.stringify({ time: new Date().toISOString(), level, message, ...fields }));
  };
}

function invokedAsEntryPoint(): boolean {
  const entry = process.argv[1];
  if (entry === undefined) return false;
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (invokedAsEntryPoint()) {
  main(process.argv.slice(2), process.env).then(
    (code) => {
      process.exitCode = code;
      // An SDK still retrying a request must not hold the exit past the orchestrator's grace period.
      setTimeout(() => process.exit(code), EXIT_GRACE_MS).unref();
    },
    (error: unknown) => {
      process.stderr.write(`shield-agent: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exitCode = 1;
    },
  );
}
