/**
 * `shield`: the operator's tool for the trust core. It verifies hardware evidence and MAA
 * tokens and evaluates release policies exactly as the functions do, so a denied release can
 * be reproduced and explained by hand.
 *
 * Exit codes: 0 verified / would release, 1 refused (any verification or policy failure,
 * including malformed input), 2 usage error, 3 I/O or network error. With `--json` the last
 * line on stdout is one JSON object.
 */
import { parseArgs } from "node:util";
import { isShieldError } from "../core/errors.js";
import { UsageError, type Command, type CommandResult } from "./command.js";
import { commands } from "./commands/index.js";

const GLOBAL_OPTIONS = {
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

export interface CliIo {
  stdout(line: string): void;
  stderr(line: string): void;
}

const processIo: CliIo = {
  stdout: (line) => process.stdout.write(line + "\n"),
  stderr: (line) => process.stderr.write(line + "\n"),
};

function findCommand(argv: readonly string[]): { command: Command; rest: string[] } | undefined {
  const matches = commands
    .filter((c) => c.words.every((w, i) => argv[i] === w))
    .sort((a, b) => b.words.length - a.words.length);
  const command = matches[0];
  return command === undefined ? undefined : { command, rest: argv.slice(command.words.length) };
}

export function helpText(): string {
  const width = Math.max(...commands.map((c) => c.words.join(" ").length));
  return [
    "Usage: shield <command> [options]",
    "",
    "Commands:",
    ...commands.map((c) => `  ${c.words.join(" ").padEnd(width)}  ${c.summary}`),
    "",
    "Global options:",
    "  --json       print one JSON object as the last line of stdout",
    "  --help, -h   show help (also: shield <command> --help)",
    "",
    "Exit codes: 0 verified / would release, 1 refused or malformed input, 2 usage error, 3 I/O or network error.",
  ].join("\n");
}

function exitCodeFor(error: unknown): 1 | 2 | 3 {
  if (error instanceof UsageError) return 2;
  if (isShieldError(error)) {
    if (error.code === "ERR_IO" || error.code === "ERR_CONFIG" || error.transient) return 3;
    return 1;
  }
  return 3;
}

function errorObject(error: unknown): { code: string; message: string; violations?: unknown } {
  if (error instanceof UsageError) return { code: error.code, message: error.message };
  if (isShieldError(error)) return error.toJSON();
  // Anything else is a bug or an environment failure; its message may hold paths but never
  // key material, since no secret reaches this process's error objects.
  return { code: "ERR_INTERNAL", message: error instanceof Error ? error.message : String(error) };
}

/** Runs the tool; returns the exit code instead of exiting, so tests can drive it in-process. */
export async function runCli(argv: readonly string[], io: CliIo = processIo): Promise<number> {
  const json = argv.includes("--json");
  const found = findCommand(argv);
  if (found === undefined) {
    if (argv.length === 0 || argv.includes("--help") || argv.includes("-h")) {
      io.stdout(helpText());
      return argv.length === 0 ? 2 : 0;
    }
    const message = `unknown command: ${argv.filter((a) => !a.startsWith("-")).join(" ") || argv.join(" ")}`;
    if (json) io.stdout(JSON.stringify({ ok: false, error: { code: "ERR_USAGE", message } }));
    else io.stderr(`${message}\n\n${helpText()}`);
    return 2;
  }
  const { command, rest } = found;
  try {
    let parsed;
    try {
      parsed = parseArgs({
        args: rest,
        options: { ...GLOBAL_OPTIONS, ...command.options },
        allowPositionals: command.positionals === true,
        strict: true,
      });
    } catch (cause) {
      throw new UsageError(cause instanceof Error ? cause.message : String(cause));
    }
    if (parsed.values.help === true) {
      io.stdout(command.usage);
      return 0;
    }
    const result: CommandResult = await command.run(parsed.values, parsed.positionals);
    if (json) io.stdout(JSON.stringify({ ok: result.ok, ...result.data }));
    else for (const line of result.lines) io.stdout(line);
    return result.ok ? 0 : 1;
  } catch (error) {
    const code = exitCodeFor(error);
    const err = errorObject(error);
    if (json) io.stdout(JSON.stringify({ ok: false, error: err }));
    else {
      io.stderr(`error ${err.code}: ${err.message}`);
      if (isShieldError(error)) {
        for (const v of error.violations) io.stderr(`  ${v.field}: expected ${v.expected}, got ${v.actual}`);
      }
      if (error instanceof UsageError) io.stderr(`\n${command.usage}`);
    }
    return code;
  }
}
