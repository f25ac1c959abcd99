/**
 * Measurement rollouts: a deployment adds a new measurement to every releasable version of each
 * key and to Shield's appraisal policy in state, schedules the old one's retirement for when its
 * grace period ends, and the retirement step then removes it from both.
 *
 * One key at a time: every change of a key runs under that key's lease (the one rotations hold
 * too, core/lifecycle/key-lock.ts), so concurrent deployments, the retirement timer and
 * rotations queue up instead of overwriting each other's policy writes; each reads the key's
 * current policies only once it holds the lease.
 *
 * For each key, in this order:
 * 1. **plan**: every releasable version (enabled, exportable, not expired, with a policy) is
 *    edited in memory (policy-edit.ts); a version whose policy is `immutable` is reported and
 *    never touched; any edit that would allow nothing or anything refuses the whole key before
 *    a single write;
 * 2. **write and read back**: each changed policy goes through the key store's write guard (the
 *    debug and attestation-type conditions can never be dropped), is read back and compared by
 *    meaning (`ERR_POLICY_READBACK` when Key Vault holds something else);
 * 3. **managed policy**: the release policy Shield keeps for the key (the one rotations give new
 *    versions) gets the same edit, so rotation and rollout never undo each other;
 * 4. **appraisal state**: the key's allowed measurements in state follow.
 * Adding writes Key Vault first and state second, retiring the other way round: in between, the
 * appraisal policy is the stricter of the two, so the two policies can disagree only in the
 * direction that denies.
 */
import { ShieldError, isShieldError } from "../errors.js";
import type { AppraisalPolicy } from "../appraisal/index.js";
import { sameMeasurement, type Measurement, type PolicyUpdate } from "../messages/index.js";
import { diffReleasePolicies, formatPolicyDiff, type ReleasePolicy } from "../policy/index.js";
import type { Clock, Random } from "../ports/clock.js";
import type { KeyStore, KeyVersionInfo } from "../ports/key-store.js";
import type { Logger } from "../ports/logger.js";
import type {
  AllowedMeasurement,
  DeploymentKeyProgress,
  DeploymentRecord,
  KeyPolicyRecord,
  KeyPolicyState,
  PolicyStateStore,
  VersionProgress,
} from "../ports/policy-state.js";
import type { ManagedKeyRecord, StateStore } from "../ports/state.js";
import { defaultSleep, lockKeyWaiting, unlockKey } from "../lifecycle/key-lock.js";
import { keyAuditPartition } from "../lifecycle/revoke.js";
import { noMetrics, type ShieldMetrics } from "../ports/metrics.js";
import { changeWithRetry } from "./retry-change.js";
import { editMeasurements, samePolicyMeaning, type MeasurementEdit } from "./policy-edit.js";
import { seedKeyPolicy } from "./appraisal-source.js";

export interface RolloutPorts {
  /** The key store, wrapped with the release-policy write guard (both adapters are). */
  readonly keys: KeyStore;
  readonly policyState: PolicyStateStore;
  /**
   * The audit log, the per-key lease shared with rotations, and the release policy Shield keeps
   * for managed keys (ManagedKeyState), which rotations give every new or repaired version.
   */
  readonly state: StateStore;
  readonly clock: Clock;
  readonly random: Random;
  readonly logger: Logger;
  /** Rollout steps per key version (default: none recorded). */
  readonly metrics?: ShieldMetrics;
  /** How to wait for a busy key's lease (default setTimeout). */
  readonly sleep?: (ms: number) => Promise<void>;
}

export interface RolloutConfig {
  /** The static appraisal policy: seeds the measurements of keys no rollout has touched. */
  readonly seed: AppraisalPolicy;
  /** How long one holder keeps a key's lease (default 120 s). */
  readonly leaseSeconds?: number;
  /** How long to wait for a busy key before handing the message back (default 60 s). */
  readonly leaseWaitMs?: number;
}

/** What a change would do (dry run) or did to one version. */
export interface VersionPlan {
  readonly version: string;
  readonly outcome: "update" | "unchanged" | "immutable" | "not-releasable";
  /** `+`/`-` lines, as `shield policy diff` prints them. */
  readonly diff?: string;
  readonly measurementsAdded?: readonly string[];
  readonly measurementsRemoved?: readonly string[];
}

export interface KeyPlan {
  readonly keyName: string;
  readonly versions: readonly VersionPlan[];
  /** Measurements the appraisal policy allows before and after. */
  readonly appraisal: { readonly before: readonly Measurement[]; readonly after: readonly Measurement[] };
  /** Set when the change is refused for this key (nothing of it would be written). */
  readonly error?: { readonly code: string; readonly message: string };
}

export interface RetirementReport {
  readonly keys: readonly {
    readonly keyName: string;
    readonly retired: readonly Measurement[];
    readonly versions: readonly VersionProgress[];
    readonly error?: { readonly code: string; readonly message: string };
  }[];
}

const DEFAULT_LEASE_SECONDS = 120;
const DEFAULT_LEASE_WAIT_MS = 60_000;

function isReleasable(version: KeyVersionInfo, now: Date): boolean {
  return (
    version.enabled &&
    version.exportable &&
    version.releasePolicy !== undefined &&
    (version.expiresOn === undefined || version.expiresOn.getTime() > now.getTime())
  );
}

function errorSummary(error: unknown): { code: string; message: string } {
  return isShieldError(error)
    ? { code: error.code, message: error.message }
    : { code: "ERR_INTERNAL", message: "unexpected failure" };
}

function describe(m: Measurement): string {
  return m.tee === "sevsnp" ? `sevsnp:${m.hostData}` : `sgx:${m.mrenclave ?? "-"}/${m.mrsigner ?? "-"}`;
}

const includes = (list: readonly Measurement[], m: Measurement) => list.some((x) => sameMeasurement(x, m));

interface PlannedVersion {
  readonly info: KeyVersionInfo;
  readonly outcome: VersionPlan["outcome"];
  readonly next?: ReleasePolicy;
}

export function createRollout(ports: RolloutPorts, config: RolloutConfig) {
  const { keys, policyState, clock } = ports;
  const leaseMs = (config.leaseSeconds ?? DEFAULT_LEASE_SECONDS) * 1000;
  const leaseWaitMs = config.leaseWaitMs ?? DEFAULT_LEASE_WAIT_MS;
  const sleep = ports.sleep ?? defaultSleep;
  const metrics = ports.metrics ?? noMetrics;

  /**
   * Runs `work` holding the key's lease — the one rotations take too (core/lifecycle/key-lock.ts),
   * so a rotation never makes or repairs a version from a policy this change is replacing;
   * ERR_CONFLICT (transient) when the key stays busy.
   */
  async function underLease<T>(keyName: string, work: () => Promise<T>): Promise<T> {
    const lease = await lockKeyWaiting(ports.state, keyName, {
      clock,
      leaseMs,
      waitMs: leaseWaitMs,
      sleep,
      jitter: () => ports.random.bytes(1)[0]!,
    });
    if (lease === undefined) {
      throw new ShieldError(
        "ERR_CONFLICT",
        `key ${keyName} is busy with a rotation or another policy update`,
      );
    }
    try {
      return await work();
    } finally {
      await unlockKey(ports.state, lease);
    }
  }

  async function currentState(keyName: string): Promise<KeyPolicyRecord | KeyPolicyState> {
    return (await policyState.getKeyPolicy(keyName)) ?? seedKeyPolicy(keyName, config.seed, clock.now());
  }

  async function writeState(
    state: KeyPolicyState,
    previous: KeyPolicyRecord | KeyPolicyState,
  ): Promise<void> {
    if ("etag" in previous) await policyState.updateKeyPolicy(state, previous.etag);
    else await policyState.createKeyPolicy(state);
  }

  /** Step 1: every version's edit in memory; throws (nothing written) when any is unsafe. */
  async function planVersions(
    keyName: string,
    edit: { add: readonly Measurement[]; remove: readonly Measurement[] },
  ): Promise<PlannedVersion[]> {
    const now = clock.now();
    return (await keys.listVersions(keyName)).map((info): PlannedVersion => {
      if (!isReleasable(info, now)) return { info, outcome: "not-releasable" };
      const current = info.releasePolicy!;
      if (info.releasePolicyImmutable === true) {
        // Never written, so never a reason to refuse the key: only reported when it would change.
        let changes: boolean;
        try {
          changes = !samePolicyMeaning(current, editMeasurements(current, edit));
        } catch {
          changes = true;
        }
        return { info, outcome: changes ? "immutable" : "unchanged" };
      }
      const next = editMeasurements(current, edit);
      if (samePolicyMeaning(current, next)) return { info, outcome: "unchanged" };
      return { info, outcome: "update", next };
    });
  }

  /** Step 2: writes each planned change through the guard and reads it back. */
  async function writeVersions(
    keyName: string,
    planned: readonly PlannedVersion[],
    audit: { kind: string; deploymentId: string; change: string },
  ): Promise<VersionProgress[]> {
    const out: VersionProgress[] = [];
    for (const p of planned) {
      if (p.outcome !== "update") {
        out.push({ version: p.info.version, outcome: p.outcome });
        if (p.outcome === "immutable") {
          ports.logger("warn", "release policy is immutable; left unchanged", {
            keyName,
            version: p.info.version,
          });
        }
        continue;
      }
      await keys.updateReleasePolicy(keyName, p.info.version, p.next!);
      const readBack = await keys.getKey(keyName, p.info.version);
      if (readBack.releasePolicy === undefined || !samePolicyMeaning(readBack.releasePolicy, p.next!)) {
        throw new ShieldError(
          "ERR_POLICY_READBACK",
          `key ${keyName} version ${p.info.version} does not hold the policy written`,
        );
      }
      await ports.state.appendAudit(`key-${keyName}`, {
        at: clock.now(),
        kind: audit.kind,
        subject: keyName,
        details: { deploymentId: audit.deploymentId, keyVersion: p.info.version, change: audit.change },
      });
      out.push({ version: p.info.version, outcome: "updated" });
    }
    const step = audit.kind === "measurement-retired" ? "retirement" : "policy-update";
    for (const v of out) metrics.rolloutStep({ keyName, step, outcome: v.outcome });
    return out;
  }

  /**
   * The release policy Shield keeps for a managed key (the one a rotation gives its new
   * version, and repairs versions back to) follows every edit of the versions, so a rotation
   * after a rollout carries the new measurement and one after a retirement does not bring the
   * retired one back. Checked before any write (an unsafe edit refuses the key), written after
   * the versions. A key that is not managed yet needs nothing: it becomes managed with its
   * current version's policy, which the rollout has already changed.
   */
  async function checkManagedEdit(keyName: string, edit: MeasurementEdit): Promise<void> {
    const managed = await ports.state.getManagedKey(keyName);
    if (managed !== undefined) editMeasurements(managed.releasePolicy, edit);
  }

  async function writeManagedPolicy(
    keyName: string,
    edit: MeasurementEdit,
    audit: { kind: string; deploymentId: string; change: string },
  ): Promise<void> {
    let changed = false;
    await changeWithRetry(async () => {
      const managed: ManagedKeyRecord | undefined = await ports.state.getManagedKey(keyName);
      if (managed === undefined) return;
      const next = editMeasurements(managed.releasePolicy, edit);
      if (samePolicyMeaning(managed.releasePolicy, next)) return;
      const { etag, ...rest } = managed;
      await ports.state.putManagedKey({ ...rest, releasePolicy: next, updatedAt: clock.now() }, etag);
      changed = true;
    });
    if (!changed) return;
    await ports.state.appendAudit(keyAuditPartition(keyName), {
      at: clock.now(),
      kind: `managed-${audit.kind}`,
      subject: keyName,
      details: { deploymentId: audit.deploymentId, change: audit.change },
    });
  }

  function planOf(planned: readonly PlannedVersion[]): VersionPlan[] {
    return planned.map((p) => {
      if (p.outcome !== "update" || p.next === undefined)
        return { version: p.info.version, outcome: p.outcome };
      const diff = diffReleasePolicies(p.info.releasePolicy!, p.next);
      return {
        version: p.info.version,
        outcome: "update",
        diff: formatPolicyDiff(diff),
        measurementsAdded: diff.measurementsAdded.map((m) => `${m.claim}=${m.value}`),
        measurementsRemoved: diff.measurementsRemoved.map((m) => `${m.claim}=${m.value}`),
      };
    });
  }

  /** The measurements a deployment retires when it names none: the key's others of the same TEE. */
  async function othersOf(keyNames: readonly string[], add: readonly Measurement[]): Promise<Measurement[]> {
    const tees = new Set(add.map((m) => m.tee));
    const out: Measurement[] = [];
    for (const keyName of keyNames) {
      for (const { measurement } of (await currentState(keyName)).allowed) {
        if (tees.has(measurement.tee) && !includes(add, measurement) && !includes(out, measurement))
          out.push(measurement);
      }
    }
    return out;
  }

  function stateAfterAdd(
    state: KeyPolicyState,
    update: {
      deploymentId: string;
      add: readonly Measurement[];
      retire: readonly Measurement[];
      graceSeconds: number;
    },
  ): KeyPolicyState {
    const now = clock.now();
    const retireAt = new Date(now.getTime() + update.graceSeconds * 1000);
    const allowed: AllowedMeasurement[] = state.allowed.map((a) => {
      if (includes(update.add, a.measurement)) {
        const { retireAt: _dropped, ...rest } = a; // announced again: no longer on its way out
        return rest;
      }
      if (includes(update.retire, a.measurement) && a.retireAt === undefined) return { ...a, retireAt };
      return a;
    });
    for (const measurement of update.add) {
      if (
        !includes(
          allowed.map((a) => a.measurement),
          measurement,
        )
      )
        allowed.push({ measurement, addedAt: now, deploymentId: update.deploymentId });
    }
    return {
      keyName: state.keyName,
      allowed,
      retired: state.retired.filter((r) => !includes(update.add, r.measurement)),
      updatedAt: now,
    };
  }

  /** Adds under the key's lease; then retires whatever is due (grace 0 retires at once). */
  async function applyToKey(
    keyName: string,
    update: {
      deploymentId: string;
      add: readonly Measurement[];
      retire: readonly Measurement[];
      graceSeconds: number;
    },
  ): Promise<VersionProgress[]> {
    return underLease(keyName, async () => {
      const edit = { add: update.add, remove: [] };
      const planned = await planVersions(keyName, edit);
      await checkManagedEdit(keyName, edit);
      const audit = {
        kind: "policy-updated",
        deploymentId: update.deploymentId,
        change: `add ${update.add.map(describe).join(" ")}`,
      };
      const versions = await writeVersions(keyName, planned, audit);
      await writeManagedPolicy(keyName, edit, audit);
      await changeWithRetry(async () => {
        const state = await currentState(keyName);
        await writeState(stateAfterAdd(state, update), state);
      });
      await retireDueForKey(keyName);
      return versions;
    });
  }

  /** Retires (state first, then Key Vault) every measurement of the key whose grace is over. */
  async function retireDueForKey(
    keyName: string,
  ): Promise<{ retired: Measurement[]; versions: VersionProgress[] }> {
    const now = clock.now();
    let retired: Measurement[] = [];
    let retiredAll: Measurement[] = [];
    await changeWithRetry(async () => {
      const state = await currentState(keyName);
      const due = state.allowed.filter(
        (a) => a.retireAt !== undefined && a.retireAt.getTime() <= now.getTime(),
      );
      retired = due.map((a) => a.measurement);
      retiredAll = [...state.retired.map((r) => r.measurement), ...retired];
      if (due.length === 0) return;
      await writeState(
        {
          keyName,
          allowed: state.allowed.filter((a) => !due.includes(a)),
          retired: [
            ...state.retired.filter((r) => !includes(retired, r.measurement)),
            ...retired.map((measurement) => ({ measurement, retiredAt: now })),
          ],
          updatedAt: now,
        },
        state,
      );
    });
    if (retired.length === 0) return { retired, versions: [] };
    // Retired earlier but still in a policy (a write that failed before): removed now as well.
    const edit = { add: [], remove: retiredAll };
    const planned = await planVersions(keyName, edit);
    await checkManagedEdit(keyName, edit);
    const audit = {
      kind: "measurement-retired",
      deploymentId: "retirement",
      change: `retire ${retiredAll.map(describe).join(" ")}`,
    };
    const versions = await writeVersions(keyName, planned, audit);
    await writeManagedPolicy(keyName, edit, audit);
    return { retired, versions };
  }

  return {
    /** Resolves `retire` (omitted: the keys' other measurements of the same TEE). */
    async resolveRetire(
      keyNames: readonly string[],
      add: readonly Measurement[],
      retire: readonly Measurement[] | undefined,
    ): Promise<Measurement[]> {
      return retire === undefined ? othersOf(keyNames, add) : [...retire];
    },

    /** The dry run: what the deployment would change, per key and version. Writes nothing. */
    async plan(update: { keys: readonly string[]; add: readonly Measurement[] }): Promise<KeyPlan[]> {
      const out: KeyPlan[] = [];
      for (const keyName of update.keys) {
        const state = await currentState(keyName);
        const before = state.allowed.map((a) => a.measurement);
        const after = [...before, ...update.add.filter((m) => !includes(before, m))];
        try {
          const planned = await planVersions(keyName, { add: update.add, remove: [] });
          out.push({ keyName, versions: planOf(planned), appraisal: { before, after } });
        } catch (error) {
          if (isShieldError(error) && error.transient) throw error;
          out.push({
            keyName,
            versions: [],
            appraisal: { before, after: before },
            error: errorSummary(error),
          });
        }
      }
      return out;
    },

    /** The policy-update message: applied key by key, progress recorded on the deployment. */
    async applyPolicyUpdate(message: PolicyUpdate): Promise<DeploymentRecord | undefined> {
      let record = await policyState.getDeployment(message.deploymentId);
      if (record?.status === "applied" || record?.status === "failed") return record; // a redelivery
      const progress: DeploymentKeyProgress[] = message.keys.map((keyName) => ({
        keyName,
        status: "pending",
        versions: [],
      }));
      const save = async (status: DeploymentRecord["status"]) => {
        if (record === undefined) return;
        record = await policyState.updateDeployment(
          { ...record, status, progress: [...progress], updatedAt: clock.now() },
          record.etag,
        );
      };
      await save("applying");
      let failed = false;
      for (const [index, keyName] of message.keys.entries()) {
        try {
          const versions = await applyToKey(keyName, message);
          progress[index] = { keyName, status: "applied", versions };
        } catch (error) {
          if (isShieldError(error) && error.transient) throw error; // redelivered, resumes
          failed = true;
          progress[index] = { keyName, status: "failed", versions: [], error: errorSummary(error) };
          metrics.rolloutStep({ keyName, step: "policy-update", outcome: "refused" });
          ports.logger("error", "policy update refused for a key", {
            deploymentId: message.deploymentId,
            keyName,
            code: errorSummary(error).code,
          });
        }
        await save("applying");
      }
      await save(failed ? "failed" : "applied");
      return record;
    },

    /** The retirement timer: every key with a measurement whose grace period is over. */
    async retireDue(): Promise<RetirementReport> {
      const now = clock.now().getTime();
      const out: RetirementReport["keys"][number][] = [];
      for (const state of await policyState.listKeyPolicies()) {
        if (!state.allowed.some((a) => a.retireAt !== undefined && a.retireAt.getTime() <= now)) continue;
        try {
          const result = await underLease(state.keyName, () => retireDueForKey(state.keyName));
          out.push({ keyName: state.keyName, ...result });
        } catch (error) {
          metrics.rolloutStep({ keyName: state.keyName, step: "retirement", outcome: "refused" });
          out.push({ keyName: state.keyName, retired: [], versions: [], error: errorSummary(error) });
        }
      }
      return { keys: out };
    },
  };
}

export type Rollout = ReturnType<typeof createRollout>;
