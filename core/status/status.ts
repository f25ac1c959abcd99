/**
 * What an operator sees at a glance (`GET /api/status`, the status page, `shield status`): the
 * agents with their standing, measurement, `attestedUntil` and the key versions they hold; the
 * keys with their versions and the measurements each version's release policy allows; the
 * rollouts in progress with their grace deadlines; and the latest denials with their codes.
 *
 * Read-only, built from the ports; it shows ids, measurements, versions and error codes —
 * public values — and never a token, a secret or key material. The keys listed are those that
 * appear in holdings or in a rollout's state (the key store has no "list keys" in its port).
 * For a key Shield manages (ManagedKeyState), the next scheduled rotation is its current
 * version's creation plus the key's `rotationPeriodSeconds` (SHIELD_KEY_LIFECYCLE); a key with no
 * period rotates only on Key Vault events, revocations and operators, and shows none.
 */
import { isShieldError } from "../errors.js";
import type { Measurement } from "../messages/index.js";
import { policyMeasurements } from "../policy/index.js";
import type { Clock } from "../ports/clock.js";
import type { KeyStore } from "../ports/key-store.js";
import type { PolicyStateStore } from "../ports/policy-state.js";
import type { AgentRecord, ManagedKeyRecord, StateStore } from "../ports/state.js";
import type { KeyLifecycles } from "../lifecycle/keys.js";

export interface AgentStatusView {
  readonly agentId: string;
  readonly workload: string;
  readonly tee: string;
  readonly status: string;
  readonly statusReason?: string;
  readonly measurement?: string;
  readonly lastAttestedAt?: string;
  readonly attestedUntil?: string;
  readonly keyVersions: readonly { readonly keyName: string; readonly keyVersion: string }[];
}

export interface KeyStatusView {
  readonly keyName: string;
  readonly versions: readonly {
    readonly version: string;
    readonly releasable: boolean;
    readonly immutable: boolean;
    readonly measurements: readonly string[];
    readonly createdOn?: string;
    readonly expiresOn?: string;
  }[];
  /** Shield's appraisal policy for the key: allowed measurements, and when each retires. */
  readonly appraisal: readonly { readonly measurement: string; readonly retireAt?: string }[];
  /** Rotation, for a key Shield manages: its period and when the schedule rotates it next. */
  readonly rotation?: {
    readonly currentVersion: string;
    readonly periodSeconds?: number;
    /** The current version's creation plus the period (in the past: the next timer tick). */
    readonly nextRotationAt?: string;
  };
  readonly error?: string;
}

export interface RolloutStatusView {
  readonly deploymentId: string;
  readonly status: string;
  readonly keys: readonly string[];
  readonly add: readonly string[];
  readonly retire: readonly string[];
  readonly graceEndsAt: string;
  readonly requestedBy: string;
  readonly createdAt: string;
}

export interface DenialView {
  readonly agentId: string;
  readonly requestId: string;
  readonly at: string;
  readonly code: string;
  readonly fields: readonly string[];
}

export interface StatusSnapshot {
  readonly generatedAt: string;
  readonly agents: readonly AgentStatusView[];
  readonly keys: readonly KeyStatusView[];
  readonly rollouts: readonly RolloutStatusView[];
  readonly denials: readonly DenialView[];
}

export interface StatusPorts {
  readonly state: StateStore;
  readonly keys: KeyStore;
  readonly policyState: PolicyStateStore;
  readonly clock: Clock;
  /** The key lifecycle settings, for the next scheduled rotation (none shown without them). */
  readonly lifecycles?: KeyLifecycles;
}

export const STATUS_LIMITS = { agents: 500, denialsPerAgent: 5, denials: 25, deployments: 50 } as const;

/** A measurement as one short string: `sevsnp:<hostData>`, `sgx:<mrenclave>/<mrsigner>`. */
export function measurementLabel(m: Measurement): string {
  return m.tee === "sevsnp" ? `sevsnp:${m.hostData}` : `sgx:${m.mrenclave ?? "-"}/${m.mrsigner ?? "-"}`;
}

const iso = (d: Date | undefined) => d?.toISOString();

function agentView(
  agent: AgentRecord,
  holdings: readonly { keyName: string; keyVersion: string }[],
): AgentStatusView {
  return {
    agentId: agent.agentId,
    workload: agent.workload,
    tee: agent.tee,
    status: agent.status,
    ...(agent.statusReason === undefined ? {} : { statusReason: agent.statusReason }),
    ...(agent.measurement === undefined ? {} : { measurement: measurementLabel(agent.measurement) }),
    ...(agent.lastAttestedAt === undefined ? {} : { lastAttestedAt: iso(agent.lastAttestedAt)! }),
    ...(agent.attestedUntil === undefined ? {} : { attestedUntil: iso(agent.attestedUntil)! }),
    keyVersions: holdings.map((h) => ({ keyName: h.keyName, keyVersion: h.keyVersion })),
  };
}

function rotationView(
  managed: ManagedKeyRecord | undefined,
  lifecycles: KeyLifecycles | undefined,
): KeyStatusView["rotation"] {
  const current = managed?.versions.filter((v) => v.retiredAt === undefined).at(-1);
  if (managed === undefined || current === undefined) return undefined;
  const period = lifecycles?.(managed.keyName).rotationPeriodSeconds;
  return {
    currentVersion: current.version,
    ...(period === undefined
      ? {}
      : {
          periodSeconds: period,
          nextRotationAt: new Date(current.createdAt.getTime() + period * 1000).toISOString(),
        }),
  };
}

export async function readStatus(ports: StatusPorts): Promise<StatusSnapshot> {
  const now = ports.clock.now();
  const agents: AgentStatusView[] = [];
  const denials: DenialView[] = [];
  const keyNames = new Set<string>();
  for await (const agent of ports.state.listAgents()) {
    if (agents.length >= STATUS_LIMITS.agents) break;
    const holdings = await ports.state.listHoldingsByAgent(agent.agentId);
    holdings.forEach((h) => keyNames.add(h.keyName));
    agents.push(agentView(agent, holdings));
    for (const record of await ports.state.listAttestations(agent.agentId, {
      limit: STATUS_LIMITS.denialsPerAgent,
    })) {
      if (record.verdict === "trusted") continue;
      denials.push({
        agentId: record.agentId,
        requestId: record.requestId,
        at: record.at.toISOString(),
        code: record.reasonCode ?? record.verdict,
        fields: record.violations.map((v) => v.field),
      });
    }
  }
  const policies = await ports.policyState.listKeyPolicies();
  policies.forEach((p) => keyNames.add(p.keyName));
  const managedKeys = await ports.state.listManagedKeys();
  managedKeys.forEach((m) => keyNames.add(m.keyName));
  const keys: KeyStatusView[] = [];
  for (const keyName of [...keyNames].sort()) {
    const appraisal = (policies.find((p) => p.keyName === keyName)?.allowed ?? []).map((a) => ({
      measurement: measurementLabel(a.measurement),
      ...(a.retireAt === undefined ? {} : { retireAt: a.retireAt.toISOString() }),
    }));
    const rotation = rotationView(
      managedKeys.find((m) => m.keyName === keyName),
      ports.lifecycles,
    );
    const extra = rotation === undefined ? {} : { rotation };
    try {
      const versions = (await ports.keys.listVersions(keyName)).map((v) => ({
        version: v.version,
        releasable:
          v.enabled &&
          v.exportable &&
          v.releasePolicy !== undefined &&
          (v.expiresOn === undefined || v.expiresOn.getTime() > now.getTime()),
        immutable: v.releasePolicyImmutable === true,
        measurements:
          v.releasePolicy === undefined ? [] : policyMeasurements(v.releasePolicy).map((m) => m.value),
        ...(v.createdOn === undefined ? {} : { createdOn: v.createdOn.toISOString() }),
        ...(v.expiresOn === undefined ? {} : { expiresOn: v.expiresOn.toISOString() }),
      }));
      keys.push({ keyName, versions, appraisal, ...extra });
    } catch (error) {
      keys.push({
        keyName,
        versions: [],
        appraisal,
        ...extra,
        error: isShieldError(error) ? error.code : "ERR_INTERNAL",
      });
    }
  }
  const rollouts = (await ports.policyState.listDeployments({ limit: STATUS_LIMITS.deployments }))
    .filter((d) => {
      const graceEnds = d.createdAt.getTime() + d.graceSeconds * 1000;
      return d.status === "queued" || d.status === "applying" || graceEnds > now.getTime();
    })
    .map((d) => ({
      deploymentId: d.deploymentId,
      status: d.status,
      keys: d.keys,
      add: d.add.map(measurementLabel),
      retire: d.retire.map(measurementLabel),
      graceEndsAt: new Date(d.createdAt.getTime() + d.graceSeconds * 1000).toISOString(),
      requestedBy: d.requestedBy,
      createdAt: d.createdAt.toISOString(),
    }));
  denials.sort((a, b) => b.at.localeCompare(a.at));
  return {
    generatedAt: now.toISOString(),
    agents,
    keys,
    rollouts,
    denials: denials.slice(0, STATUS_LIMITS.denials),
  };
}
