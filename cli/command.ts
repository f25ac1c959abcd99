/**
 * The shape every `shield` command shares: its words, its options, and a run function that
 * returns data rather than printing, so output format and exit codes are decided in one place.
 */
import type { ParseArgsConfig } from "node:util";

export type OptionSpec = NonNullable<ParseArgsConfig["options"]>;
export type OptionValues = Record<string, string | boolean | undefined>;

export interface CommandResult {
  /** true: verified / would release (exit 0); false: refused (exit 1). */
  readonly ok: boolean;
  /** Merged into the `--json` object. */
  readonly data: Record<string, unknown>;
  /** Human-readable lines for the default output. */
  readonly lines: readonly string[];
}

export interface Command {
  readonly words: readonly string[];
  readonly summary: string;
  readonly usage: string;
  readonly options: OptionSpec;
  /** Takes positional arguments (`shield audit who-has <key>`); none otherwise. */
  readonly positionals?: boolean;
  run(values: OptionValues, positionals: readonly string[]): Promise<CommandResult>;
}

/** A mistake in how the tool was called (exit code 2). */
export class UsageError extends Error {
  override readonly name = "UsageError";
  readonly code = "ERR_USAGE";
}

export function requireString(values: OptionValues, name: string): string {
  const v = values[name];
  if (typeof v !== "string" || v.length === 0) throw new UsageError(`--${name} is required`);
  return v;
}

export function optionalString(values: OptionValues, name: string): string | undefined {
  const v = values[name];
  return typeof v === "string" ? v : undefined;
}

/** `--at <ISO 8601>`; defaults to now. */
export function parseAt(values: OptionValues): Date {
  const raw = optionalString(values, "at");
  if (raw === undefined) return new Date();
  const at = new Date(raw);
  if (!/^\d{4}-\d{2}-\d{2}/.test(raw) || Number.isNaN(at.getTime())) {
    throw new UsageError(`--at must be an ISO 8601 time, got ${JSON.stringify(raw)}`);
  }
  return at;
}

export function parseHex(raw: string, name: string, lengths: readonly number[]): Buffer {
  const clean = raw.startsWith("0x") ? raw.slice(2) : raw;
  if (!/^[0-9a-fA-F]*$/.test(clean) || clean.length % 2 !== 0 || !lengths.includes(clean.length / 2)) {
    throw new UsageError(`--${name} must be ${lengths.join(" or ")} bytes of hex`);
  }
  return Buffer.from(clean, "hex");
}
