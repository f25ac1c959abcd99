/**
 * The agent's entry point: `npm run -s agent -- [--help]`. It reads and checks the
 * configuration, finds the TEE interface to take evidence from, and hands both to `start`
 * (the attestation loop). Exit codes: 0 normal end or help, 1 no usable TEE interface, 2
 * configuration or usage error.
 *
 * Importing this module does nothing; it runs `main` only when it is the process's entry point.
 */
import { realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { isShieldError } from "../core/errors.js";
import type { Logger, LogLevel } from "../core/ports/logger.js";
import {
  LOG_LEVELS,
  loadAgentConfig,
  startRequirements,
  variablesHelp,
  type AgentConfig,
  type Environment,
} from "./config.js";
import type { EvidenceProvider } from "./evidence/provider.js";
import { selectProvider, type SelectOptions } from "./evidence/select.js";

export const EXIT_CODES = Object.freeze({ ok: 0, noTee: 1, config: 2 });

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
  /** Runs the agent; its result is the exit code. */
  readonly start?: (context: StartContext) => Promise<number>;
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

  let provider: EvidenceProvider;
  try {
    provider = await selectProvider(config, { logger, ...options.select });
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
  return (options.start ?? startWithoutBus)({ config, provider, logger, io });
}

/** Until the bus round trip is composed here, a start ends after selecting the provider. */
function startWithoutBus(context: StartContext): Promise<number> {
  context.logger("warn", "no attestation loop is composed into this build; stopping", {
    provider: context.provider.name,
  });
  return Promise.resolve(EXIT_CODES.ok);
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
    },
    (error: unknown) => {
      process.stderr.write(`shield-agent: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exitCode = 1;
    },
  );
}
