/**
 * What happens, one readable line per event, for `npm start`: read from the audit chains the
 * functions write (so a line means it is on record), plus the challenges the re-attestation
 * timer logs. Lines carry agent ids, key names, version ordinals and error codes only.
 */
import type { LocalKeyVault } from "../adapters/local/keyvault/engine.js";
import type { Logger } from "../core/ports/logger.js";
import type { AuditEntry, StateStore } from "../core/ports/state.js";

const REASONS: Readonly<Record<string, string>> = {
  ERR_APPRAISAL_DENIED: "measurement not allowed (hostdata / mrenclave not in the policy)",
  ERR_MEASUREMENT_RETIRED: "measurement retired",
  ERR_CHALLENGE_MISSED: "did not answer its challenge in time",
  ERR_AGENT_REVOKED: "agent is revoked",
};

export interface EventFeed {
  /** A logger for the functions host: turns "challenge issued" logs into lines. */
  readonly logger: Logger;
  /** Reads new audit entries now (also every `pollMs`). */
  poll(): Promise<void>;
  stop(): Promise<void>;
}

export function startEventFeed(options: {
  readonly state: StateStore;
  readonly vault: LocalKeyVault;
  readonly keyNames: readonly string[];
  readonly agentIds: () => readonly string[];
  readonly print: (line: string) => void;
  readonly pollMs?: number;
  /** Print only what happens from now on (a resumed state's history stays unprinted). */
  readonly fromNow?: boolean;
}): EventFeed {
  const next = new Map<string, number>();
  // Partitions whose history is skipped when they are first read.
  const seen = new Set<string>();
  const ordinals = new Map<string, number>();
  const ordinal = async (keyName: string, version: unknown): Promise<string> => {
    if (typeof version !== "string") return "?";
    if (!ordinals.has(`${keyName}/${version}`)) {
      const versions = await options.vault.listVersions(keyName).catch(() => []);
      versions.forEach((v, i) => ordinals.set(`${keyName}/${v.version}`, i + 1));
    }
    return `v${ordinals.get(`${keyName}/${version}`) ?? "?"}`;
  };
  const line = async (partition: string, entry: AuditEntry): Promise<string | undefined> => {
    const d = entry.details;
    const keyName = partition.startsWith("key-") ? partition.slice(4) : "";
    const code = typeof d["code"] === "string" ? d["code"] : "";
    switch (entry.kind) {
      case "attestation-trusted":
        return `attested ${entry.subject} (${String(d["measurement"] ?? "")})`;
      case "key-released":
        return `released ${keyName} ${await ordinal(keyName, d["keyVersion"])} to ${entry.subject}`;
      case "attestation-denied":
        return `denied ${entry.subject}: ${REASONS[code] ?? code} [${code}]`;
      case "key-rotated":
        return `rotated ${keyName} to ${await ordinal(keyName, d["keyVersion"])} (${String(d["reason"] ?? "")})`;
      case "agent-revoked":
        return `revoked ${entry.subject}: ${REASONS[code] ?? code} [${code}]`;
      case "key-revoked":
        return `revoked ${keyName} ${await ordinal(keyName, d["keyVersion"])} from ${entry.subject}`;
      case "policy-updated":
        return `release policy of ${keyName} ${await ordinal(keyName, d["keyVersion"])} updated (deployment ${String(d["deploymentId"] ?? "")})`;
      case "measurement-retired":
        return `retired a measurement of ${keyName}`;
      default:
        return undefined;
    }
  };
  let polling: Promise<void> | undefined;
  const poll = (): Promise<void> =>
    (polling ??= (async () => {
      try {
        const partitions = [
          ...options.keyNames.map((k) => `key-${k}`),
          ...options.agentIds().map((a) => `agent-${a}`),
        ];
        for (const partition of partitions) {
          const from = next.get(partition) ?? 1;
          const entries = await options.state.listAudit(partition, { fromSequence: from }).catch(() => []);
          const history = options.fromNow === true && !seen.has(partition);
          seen.add(partition);
          for (const entry of entries) {
            next.set(partition, entry.sequence + 1);
            if (history) continue;
            const text = await line(partition, entry);
            if (text !== undefined) options.print(text);
          }
        }
      } finally {
        polling = undefined;
      }
    })());
  const timer = setInterval(() => void poll(), options.pollMs ?? 300);
  return {
    logger: (_level, message) => {
      const match = /^challenge issued (\{.*\})$/.exec(message);
      if (match === null) return;
      try {
        const fields = JSON.parse(match[1]!) as { agentId?: string };
        if (typeof fields.agentId === "string") options.print(`challenged ${fields.agentId}`);
      } catch {
        // not one of ours
      }
    },
    poll,
    async stop() {
      clearInterval(timer);
      await polling;
      await poll();
    },
  };
}
