/**
 * The agent's metrics in the Prometheus text exposition format (version 0.0.4), served on
 * `GET /metrics` of the key API for a scraper in the pod — Azure Monitor's managed Prometheus,
 * or any Prometheus. It reads only the agent's status: its state, when its attestation ends, the
 * attestation rounds by verdict, the control messages accepted and dropped (by the code of the
 * reason) and the key versions held per key name — names, version ids and counts, never key
 * material, tokens or the runtime key.
 *
 * Format: every metric family has one `# HELP` and one `# TYPE` line before its samples; label
 * values escape `\`, `"` and line feeds; HELP text escapes `\` and line feeds; counters end in
 * `_total`.
 */
import type { AgentStatus } from "./agent.js";
import { AGENT_STATES } from "./state-machine.js";

export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Readonly<Record<string, string>>;

interface Family {
  readonly name: string;
  readonly type: "counter" | "gauge";
  readonly help: string;
  readonly samples: readonly { readonly labels?: Labels; readonly value: number }[];
}

/** A label value as the exposition format writes it inside double quotes. */
export function escapeLabelValue(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function escapeHelp(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}

function render(families: readonly Family[]): string {
  const lines: string[] = [];
  for (const family of families) {
    lines.push(`# HELP ${family.name} ${escapeHelp(family.help)}`);
    lines.push(`# TYPE ${family.name} ${family.type}`);
    for (const sample of family.samples) {
      const labels = Object.entries(sample.labels ?? {});
      const set =
        labels.length === 0
          ? ""
          : `{${labels.map(([name, value]) => `${name}="${escapeLabelValue(value)}"`).join(",")}}`;
      lines.push(`${family.name}${set} ${formatValue(sample.value)}`);
    }
  }
  return `${lines.join("\n")}\n`;
}

/** The metrics of one agent, from its status. */
export function renderAgentMetrics(status: AgentStatus): string {
  const attestations = status.attestations ?? { trusted: 0, denied: 0, error: 0, timeout: 0 };
  const attestedUntil = status.attestedUntil === undefined ? undefined : Date.parse(status.attestedUntil);
  return render([
    {
      name: "shield_agent_info",
      type: "gauge",
      help: "The agent: its id, workload, TEE and evidence provider (always 1).",
      samples: [
        {
          labels: {
            agent_id: status.agentId,
            workload: status.workload,
            tee: status.tee,
            provider: status.provider,
          },
          value: 1,
        },
      ],
    },
    {
      name: "shield_agent_state",
      type: "gauge",
      help: "1 for the state the agent is in, 0 for the others.",
      samples: AGENT_STATES.map((state) => ({ labels: { state }, value: state === status.state ? 1 : 0 })),
    },
    {
      name: "shield_agent_attested_until_seconds",
      type: "gauge",
      help: "Unix time until which the last trusted attestation vouches for the agent (0: none).",
      samples: [
        { value: attestedUntil === undefined || Number.isNaN(attestedUntil) ? 0 : attestedUntil / 1000 },
      ],
    },
    {
      name: "shield_agent_attestations_total",
      type: "counter",
      help: "Attestation rounds by the verdict of their result (timeout: no result in time).",
      samples: (["trusted", "denied", "error", "timeout"] as const).map((verdict) => ({
        labels: { verdict },
        value: attestations[verdict],
      })),
    },
    {
      name: "shield_agent_control_messages_accepted_total",
      type: "counter",
      help: "Signed control messages verified and acted on.",
      samples: [{ value: status.inbox.accepted }],
    },
    {
      name: "shield_agent_control_messages_dropped_total",
      type: "counter",
      help: "Control messages dropped unverified or unwanted, by the code of the reason.",
      samples: Object.entries(status.inbox.dropped)
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([reason, value]) => ({ labels: { reason }, value })),
    },
    {
      name: "shield_agent_key_versions_held",
      type: "gauge",
      help: "Key versions the agent holds, per configured key name (0: not held yet).",
      samples: status.configuredKeys.map((key) => ({
        labels: { key },
        value: status.keys.find((k) => k.name === key)?.versions.length ?? 0,
      })),
    },
    {
      name: "shield_agent_key_current_version",
      type: "gauge",
      help: "The current version of each key held (always 1; the version is a Key Vault version id).",
      samples: status.keys.map((k) => ({ labels: { key: k.name, version: k.current }, value: 1 })),
    },
  ]);
}
