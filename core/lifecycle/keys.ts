/**
 * Per-key lifecycle settings: whether revoking a holder rotates the key, how often the key is
 * rotated on a schedule, and how long an old version stays releasable after a rotation. Keys
 * that protect data in use are rotated on revocation by default — a revoked agent may have
 * copied the key, so only data written under a version it never had is out of its reach.
 */
import { z } from "zod";
import { ShieldError } from "../errors.js";
import { KEY_NAME_PATTERN } from "../messages/fields.js";

export interface KeyLifecycle {
  /** Rotate the key when an agent that held it is revoked (default true). */
  readonly revokeByRotation: boolean;
  /** Rotate when the current version is older than this (Managed HSM, or by choice); none by default. */
  readonly rotationPeriodSeconds?: number;
  /**
   * How long a superseded version stays enabled, so trusted agents can still decrypt what was
   * written under it (default 7 days). After it, once every holder has the new version, the old
   * one is revoked to agents and disabled.
   */
  readonly retireAfterSeconds: number;
}

export const DEFAULT_RETIRE_AFTER_SECONDS = 7 * 24 * 3600;
/** Shortest scheduled rotation period: Key Vault's own minimum for `timeAfterCreate` is 28 days; tests go lower. */
const MIN_PERIOD_SECONDS = 60;
const MAX_PERIOD_SECONDS = 10 * 365 * 24 * 3600;

const keySettings = z.strictObject({
  revokeByRotation: z.boolean().optional(),
  rotationPeriodSeconds: z.number().int().min(MIN_PERIOD_SECONDS).max(MAX_PERIOD_SECONDS).optional(),
  retireAfterSeconds: z.number().int().min(0).max(MAX_PERIOD_SECONDS).optional(),
});
const settingsSchema = z.record(z.string().regex(KEY_NAME_PATTERN), keySettings);

export type KeyLifecycles = (keyName: string) => KeyLifecycle;

/**
 * Parses `{"<key name>": {"revokeByRotation": true, "rotationPeriodSeconds": 7776000,
 * "retireAfterSeconds": 604800}, ...}`; keys not named get the defaults.
 */
export function parseKeyLifecycles(input: unknown): { lifecycles: KeyLifecycles; named: readonly string[] } {
  const parsed = settingsSchema.safeParse(input ?? {});
  if (!parsed.success) {
    throw new ShieldError("ERR_CONFIG", "key lifecycle settings are malformed", {
      violations: parsed.error.issues.slice(0, 16).map((issue) => ({
        field: issue.path.join("."),
        expected: issue.message,
        actual: "invalid",
      })),
    });
  }
  const settings = parsed.data;
  const lifecycles: KeyLifecycles = (keyName) => {
    const s = Object.hasOwn(settings, keyName) ? settings[keyName] : undefined;
    return {
      revokeByRotation: s?.revokeByRotation ?? true,
      retireAfterSeconds: s?.retireAfterSeconds ?? DEFAULT_RETIRE_AFTER_SECONDS,
      ...(s?.rotationPeriodSeconds === undefined ? {} : { rotationPeriodSeconds: s.rotationPeriodSeconds }),
    };
  };
  return { lifecycles, named: Object.keys(settings).sort() };
}
