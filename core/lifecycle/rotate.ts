/**
 * Key rotation: the `rotate` queue function's use case (messages `rotate-key`, from revocations,
 * Key Vault events, the schedule and operators), and the rotation timer's (scheduled rotation and
 * retirement of old versions).
 *
 * A `rotate-key` message is handled once per `sourceEventId` (a request claim in state: two
 * deliveries of one event rotate once) and one key at a time (a lease in state per key, so a
 * transport without sessions is as safe as a Service Bus session per key; the same lease the
 * rollout holds while it changes the key's policies, core/lifecycle/key-lock.ts). Then:
 *
 * - **near-expiry / expired / revocation** naming the version they concern: when the key's
 *   current version is another one, it was rotated since and nothing new is made (a version made
 *   meanwhile outside Shield is adopted); otherwise a new version is made;
 * - **new-version** (Key Vault's `KeyNewVersionCreated`): a version Shield did not make — Key
 *   Vault's own rotation policy, a person in the portal — is adopted, not rotated again;
 * - **schedule / manual**: a new version is made.
 *
 * Making a version: refuse at the per-key version limit (Managed HSM: 100; ERR_KEY_VERSION_LIMIT,
 * nothing made, never retried); `rotate` (through the release-policy guard); read the new version
 * back; it must be exportable, and carry the release policy Shield manages for the key, compared
 * by meaning — Key Vault does not document whether rotation carries the policy over, so a
 * version without it is given it, and read back again. A version that cannot be made right is
 * disabled and reported (ERR_KEY_VERSION_UNSAFE); it is never announced. Adopting checks and
 * fixes an existing version the same way.
 *
 * Then the version is recorded (state, audit chain once per event) and announced: every trusted
 * agent holding the key gets a signed `key-event rotated`, re-attests and fetches it. A revoked
 * agent is told nothing and `attest` refuses it, so it can never obtain the new version.
 *
 * Old versions stay enabled, so trusted agents can still decrypt with them, until their
 * `retireAfterSeconds` after the successor was made. The timer then retires a version only once
 * every trusted holder of it also holds a newer one: it is revoked to its holders, disabled in
 * the key store, and recorded.
 */
import { createHash, randomBytes } from "node:crypto";
import { ShieldError, isShieldError } from "../errors.js";
import type { AgentSender } from "../control/signed.js";
import { makeKeyEvent, makeRotateKey, parseMessage, type RotateKey } from "../messages/index.js";
import { assertSafeReleasePolicy, samePolicyMeaning, type ReleasePolicy } from "../policy/index.js";
import type { RotationQueue } from "../ports/bus.js";
import type { Clock } from "../ports/clock.js";
import type { KeyStore, KeyVersionInfo } from "../ports/key-store.js";
import type { Logger } from "../ports/logger.js";
import {
  STATE_LIMITS,
  type KeyHolding,
  type ManagedKeyRecord,
  type ManagedKeyVersion,
  type RequestLease,
  type StateStore,
} from "../ports/state.js";
import type { Settlement } from "../attest/attest.js";
import type { KeyLifecycles } from "./keys.js";
import { keyAuditPartition } from "./revoke.js";
import { defaultSleep, lockKeyWaiting, pollWithBackoff, unlockKey } from "./key-lock.js";
import { noMetrics, type ShieldMetrics } from "../ports/metrics.js";

export interface RotationPorts {
  readonly state: StateStore;
  /** The key store, guarded (guardReleasePolicyWrites) and wrapped with `retrying()`. */
  readonly keys: KeyStore;
  readonly agents: AgentSender;
  readonly rotations: RotationQueue;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Waits between tries for a busy key (default: timers). */
  readonly sleep?: (ms: number) => Promise<void>;
  /** Rotations by reason and outcome (default: none recorded). */
  readonly metrics?: ShieldMetrics;
}

export interface RotationConfig {
  readonly lifecycles: KeyLifecycles;
  /** Keys managed from the start (their first version is adopted when first seen). */
  readonly managedKeys?: readonly string[];
  /** Versions a key may have; Managed HSM's limit (default 100). */
  readonly maxVersions?: number;
  /** How long one invocation holds a key (default 120 s). */
  readonly leaseSeconds?: number;
  /**
   * How long a rotation waits for a key another rotation or a rollout holds before it leaves
   * the message for redelivery (default 30 s).
   */
  readonly lockWaitSeconds?: number;
  /** The queue's MaxDeliveryCount: on that delivery a transient failure is final (default 10). */
  readonly maxDeliveryCount?: number;
}

export type RotationOutcomeKind = "rotated" | "adopted" | "unchanged" | "duplicate" | "refused" | "rejected";

export interface RotationOutcome {
  readonly settlement: Settlement;
  readonly outcome?: RotationOutcomeKind;
  readonly keyName?: string;
  readonly version?: string;
  readonly announced?: number;
  readonly code?: string;
}

export const ROTATION_AUDIT_INTAKE = "intake";
const DEFAULT_LEASE_SECONDS = 120;
const DEFAULT_LOCK_WAIT_SECONDS = 30;

const digest = (text: string): string => createHash("sha256").update(text, "utf8").digest("hex").slice(0, 40);

function toShieldError(error: unknown): ShieldError {
  if (isShieldError(error)) return error;
  return new ShieldError("ERR_INTERNAL", "unexpected failure while rotating", { cause: error });
}

export function createRotation(ports: RotationPorts, config: RotationConfig) {
  const { state, keys, agents, rotations, clock, logger } = ports;
  const maxVersions = config.maxVersions ?? STATE_LIMITS.keyVersions;
  const leaseMs = (config.leaseSeconds ?? DEFAULT_LEASE_SECONDS) * 1000;
  const maxDeliveryCount = config.maxDeliveryCount ?? 10;
  const lockWaitMs = (config.lockWaitSeconds ?? DEFAULT_LOCK_WAIT_SECONDS) * 1000;
  const sleep = ports.sleep ?? defaultSleep;
  const metrics = ports.metrics ?? noMetrics;

  /** The `rotate-key` handler. */
  async function handle(
    body: unknown,
    delivery: { messageId: string; deliveryCount: number },
  ): Promise<RotationOutcome> {
    let message: RotateKey;
    try {
      const parsed = parseMessage(body, { maxBytes: 16 * 1024 });
      if (parsed.type !== "rotate-key") {
        throw new ShieldError(
          "ERR_MESSAGE_SCHEMA",
          `a ${parsed.type} message does not belong on the rotate-key queue`,
        );
      }
      message = parsed;
    } catch (caught) {
      const error = toShieldError(caught);
      await state.appendAudit(ROTATION_AUDIT_INTAKE, {
        at: clock.now(),
        kind: "message-rejected",
        subject: "rotate-key",
        details: {
          messageId: delivery.messageId.slice(0, 128),
          code: error.code,
          violations: error.violations.length,
        },
      });
      logger("warn", "malformed rotate-key message recorded and completed", {
        messageId: delivery.messageId,
        code: error.code,
      });
      return { settlement: { action: "complete" }, outcome: "rejected", code: error.code };
    }
    const { keyName } = message;
    const final = delivery.deliveryCount >= maxDeliveryCount;
    const claim = await claimEvent(keyName, message.sourceEventId);
    if (claim.state === "completed") {
      logger("info", "rotation event already handled", { keyName, sourceEventId: message.sourceEventId });
      return { settlement: { action: "complete" }, outcome: "duplicate", keyName };
    }
    if (claim.state === "in-progress") {
      return {
        settlement: {
          action: "retry",
          error: new ShieldError("ERR_CONFLICT", "the event is being handled elsewhere"),
        },
        keyName,
      };
    }
    const lease = claim.lease;
    let lock: RequestLease | undefined;
    try {
      lock = await lockKey(keyName);
      const result = await run(message);
      await state.completeRequest(lease, message, clock.now());
      metrics.rotation({ keyName, reason: message.reason, outcome: result.outcome ?? "unchanged" });
      return { settlement: { action: "complete" }, keyName, ...result };
    } catch (caught) {
      const error = toShieldError(caught);
      if (error.transient && !final) {
        await state.releaseRequest(lease).catch(() => undefined);
        logger("warn", "rotation failed for now; left for redelivery", { keyName, code: error.code });
        return { settlement: { action: "retry", error }, keyName, code: error.code };
      }
      // Final: on record, and settled (a terminal failure never gets better by repeating it).
      await state.appendAudit(keyAuditPartition(keyName), {
        at: clock.now(),
        kind: "key-rotation-failed",
        subject: keyName,
        details: { reason: message.reason, sourceEventId: message.sourceEventId, code: error.code },
        eventId: `key-rotation-failed:${message.sourceEventId}`,
      });
      await state.completeRequest(lease, message, clock.now()).catch(() => undefined);
      logger("error", "rotation refused", { keyName, code: error.code });
      metrics.rotation({ keyName, reason: message.reason, outcome: "refused" });
      if (error.transient) {
        return {
          settlement: { action: "dead-letter", reason: error.code, description: error.message },
          outcome: "refused",
          keyName,
          code: error.code,
        };
      }
      return { settlement: { action: "complete" }, outcome: "refused", keyName, code: error.code };
    } finally {
      if (lock !== undefined) await unlockKey(state, lock);
    }
  }

  /**
   * The event's claim; while another invocation handles the same event (a second delivery),
   * waits for it the way a busy key is waited for, so the duplicate ends as one, not as a
   * dead letter after its deliveries ran out.
   */
  async function claimEvent(keyName: string, sourceEventId: string) {
    const claimOnce = () => {
      const at = clock.now();
      return state.claimRequest(
        { scope: rotationScope(keyName), requestId: sourceEventId },
        { at, leaseUntil: new Date(at.getTime() + leaseMs) },
      );
    };
    let last = await claimOnce();
    if (last.state !== "in-progress") return last;
    const settled = await pollWithBackoff(
      async () => {
        last = await claimOnce();
        return last.state === "in-progress" ? undefined : last;
      },
      { clock, waitMs: lockWaitMs, sleep, jitter: () => randomBytes(1)[0]! },
    );
    return settled ?? last;
  }

  async function lockKey(keyName: string): Promise<RequestLease> {
    const lease = await lockKeyWaiting(state, keyName, {
      clock,
      leaseMs,
      waitMs: lockWaitMs,
      sleep,
      jitter: () => randomBytes(1)[0]!,
    });
    if (lease === undefined) {
      throw new ShieldError("ERR_CONFLICT", `key ${keyName} is being rotated or its policy updated`);
    }
    return lease;
  }

  async function run(message: RotateKey): Promise<Omit<RotationOutcome, "settlement" | "keyName">> {
    const { keyName } = message;
    const managed = await ensureManaged(keyName);
    const current = await keys.getKey(keyName);
    const known = (version: string) => managed.versions.some((v) => v.version === version);
    switch (message.reason) {
      case "new-version": {
        const version = message.keyVersion ?? current.version;
        if (known(version)) return { outcome: "unchanged", version };
        return adopt(managed, version, message);
      }
      case "near-expiry":
      case "expired":
      case "revocation":
        if (message.keyVersion !== undefined && message.keyVersion !== current.version) {
          // Rotated since the event: nothing new to make (adopt a version made meanwhile).
          if (!known(current.version)) return adopt(managed, current.version, message);
          return { outcome: "unchanged", version: current.version };
        }
        return rotate(managed, current, message);
      case "schedule":
      case "manual":
        return rotate(managed, current, message);
    }
  }

  /** The key's managed record; the first time, the current version's policy becomes the managed one. */
  async function ensureManaged(keyName: string): Promise<ManagedKeyRecord> {
    const existing = await state.getManagedKey(keyName);
    if (existing !== undefined) return existing;
    const current = await keys.getKey(keyName);
    if (current.releasePolicy === undefined || !current.exportable) {
      throw new ShieldError(
        "ERR_KEY_VERSION_UNSAFE",
        `key ${keyName} is not exportable with a release policy`,
      );
    }
    assertSafeReleasePolicy(current.releasePolicy);
    const now = clock.now();
    try {
      return await state.putManagedKey({
        keyName,
        releasePolicy: current.releasePolicy,
        versions: [{ version: current.version, createdAt: current.createdOn ?? now, origin: "initial" }],
        updatedAt: now,
      });
    } catch (error) {
      const raced =
        isShieldError(error) && error.code === "ERR_CONFLICT"
          ? await state.getManagedKey(keyName)
          : undefined;
      if (raced !== undefined) return raced;
      throw error;
    }
  }

  async function rotate(
    managed: ManagedKeyRecord,
    current: KeyVersionInfo,
    message: RotateKey,
  ): Promise<Omit<RotationOutcome, "settlement" | "keyName">> {
    const { keyName } = message;
    if (managed.versions.length >= maxVersions) {
      throw new ShieldError(
        "ERR_KEY_VERSION_LIMIT",
        `key ${keyName} has ${managed.versions.length} versions, the most a key may have (${maxVersions}); retire the key or raise the limit`,
      );
    }
    const rotated = await keys.rotate(keyName);
    const checked = await makeRightWithLatest(keyName, rotated.version, managed.releasePolicy);
    const version: ManagedKeyVersion = {
      version: checked.version,
      createdAt: checked.createdOn ?? clock.now(),
      origin: "rotated",
      reason: message.reason,
      sourceEventId: message.sourceEventId,
    };
    await recordVersion(managed, version);
    await state.appendAudit(keyAuditPartition(keyName), {
      at: clock.now(),
      kind: "key-rotated",
      subject: keyName,
      details: {
        keyVersion: checked.version,
        previousVersion: current.version,
        reason: message.reason,
        sourceEventId: message.sourceEventId,
      },
      eventId: `key-rotated:${message.sourceEventId}`,
    });
    const announced = await announce(keyName, checked.version);
    logger("info", "key rotated", {
      keyName,
      keyVersion: checked.version,
      reason: message.reason,
      announced,
    });
    return { outcome: "rotated", version: checked.version, announced };
  }

  /** A version Shield did not make: checked, fixed, recorded, and announced when it is current. */
  async function adopt(
    managed: ManagedKeyRecord,
    versionName: string,
    message: RotateKey,
  ): Promise<Omit<RotationOutcome, "settlement" | "keyName">> {
    const { keyName } = message;
    const checked = await makeRightWithLatest(keyName, versionName, managed.releasePolicy);
    await recordVersion(managed, {
      version: checked.version,
      createdAt: checked.createdOn ?? clock.now(),
      origin: "adopted",
      reason: message.reason,
      sourceEventId: message.sourceEventId,
    });
    await state.appendAudit(keyAuditPartition(keyName), {
      at: clock.now(),
      kind: "key-version-adopted",
      subject: keyName,
      details: { keyVersion: checked.version, reason: message.reason, sourceEventId: message.sourceEventId },
      eventId: `key-version-adopted:${checked.version}`,
    });
    const current = await keys.getKey(keyName);
    const announced = current.version === checked.version ? await announce(keyName, checked.version) : 0;
    logger("info", "key version adopted", { keyName, keyVersion: checked.version, announced });
    return { outcome: "adopted", version: checked.version, announced };
  }

  /**
   * makeRight, then again while the managed policy changed meanwhile. Rollouts take the same
   * per-key lease (key-lock.ts), so this matters only when that lease expired under a slow
   * rotation and a policy update ran meanwhile: a second line of defence, not the serialisation.
   */
  async function makeRightWithLatest(
    keyName: string,
    version: string,
    policy: ReleasePolicy,
  ): Promise<KeyVersionInfo> {
    let applied = policy;
    let info = await makeRight(keyName, version, applied);
    for (let pass = 0; pass < 3; pass++) {
      const latest = (await state.getManagedKey(keyName))?.releasePolicy;
      if (latest === undefined || samePolicyMeaning(latest, applied)) return info;
      applied = latest;
      info = await makeRight(keyName, version, applied);
    }
    return info;
  }

  /**
   * Reads a version back: it must be exportable and carry the managed policy (by meaning); a
   * missing or other policy is replaced and read back again. A version that cannot be made
   * right is disabled, so it never releases under a policy nobody checked.
   */
  async function makeRight(keyName: string, version: string, policy: ReleasePolicy): Promise<KeyVersionInfo> {
    let info = await keys.getKey(keyName, version);
    const refuse = async (why: string): Promise<never> => {
      await keys.setEnabled(keyName, version, false).catch(() => undefined);
      await state.appendAudit(keyAuditPartition(keyName), {
        at: clock.now(),
        kind: "key-version-refused",
        subject: keyName,
        details: { keyVersion: version, why },
        eventId: `key-version-refused:${version}`,
      });
      throw new ShieldError("ERR_KEY_VERSION_UNSAFE", `key ${keyName} version ${version}: ${why}; disabled`);
    };
    if (!info.exportable) return refuse("not exportable");
    if (info.releasePolicy !== undefined && samePolicyMeaning(info.releasePolicy, policy)) return info;
    try {
      await keys.updateReleasePolicy(keyName, version, policy);
    } catch (error) {
      if (isShieldError(error) && error.transient) throw error;
      return refuse(
        `its release policy could not be replaced (${isShieldError(error) ? error.code : "ERR_INTERNAL"})`,
      );
    }
    info = await keys.getKey(keyName, version);
    if (info.releasePolicy === undefined || !samePolicyMeaning(info.releasePolicy, policy)) {
      return refuse("its release policy did not read back as the managed policy");
    }
    logger("warn", "key version did not carry the managed release policy; applied", {
      keyName,
      keyVersion: version,
    });
    return info;
  }

  async function recordVersion(managed: ManagedKeyRecord, version: ManagedKeyVersion): Promise<void> {
    let record: ManagedKeyRecord | undefined = managed;
    for (let attempt = 1; attempt <= 3 && record !== undefined; attempt += 1) {
      if (record.versions.some((v) => v.version === version.version)) return;
      const { etag, ...rest } = record;
      try {
        await state.putManagedKey(
          { ...rest, versions: [...rest.versions, version], updatedAt: clock.now() },
          etag,
        );
        return;
      } catch (error) {
        if (!isShieldError(error) || error.code !== "ERR_CONFLICT") throw error;
        record = await state.getManagedKey(managed.keyName);
      }
    }
    throw new ShieldError("ERR_CONFLICT", `managed key ${managed.keyName} is contended`);
  }

  /** Tells every trusted agent holding the key that `version` exists. */
  async function announce(keyName: string, version: string): Promise<number> {
    const holders = new Map<string, KeyHolding>();
    for (const holding of await state.listHoldingsByKey(keyName)) {
      if (holding.revokedAt === undefined && holding.keyVersion !== version)
        holders.set(holding.agentId, holding);
    }
    let announced = 0;
    for (const agentId of holders.keys()) {
      const agent = await state.getAgent(agentId);
      if (agent?.status !== "trusted") continue;
      await agents.sendToAgent(
        agentId,
        makeKeyEvent({ agentId, event: "rotated", keyName, keyVersion: version, sentAt: clock.now() }),
      );
      announced += 1;
    }
    return announced;
  }

  // ---------------------------------------------------------------------------------------
  // the rotation timer

  /**
   * Scheduled rotation and retirement, for every managed key: a key whose current version is
   * older than its rotation period gets a `rotate-key` (reason `schedule`, one per version, so
   * a repeated tick queues the same event); superseded versions past their retirement are
   * retired once every trusted holder has a newer one.
   */
  async function scheduleTick(): Promise<{ queued: number; retired: number; waiting: number }> {
    const now = clock.now();
    for (const name of config.managedKeys ?? []) {
      await ensureManaged(name).catch((error: unknown) => {
        logger("warn", "managed key could not be read", { keyName: name, code: toShieldError(error).code });
      });
    }
    let queued = 0;
    let retired = 0;
    let waiting = 0;
    for (const managed of await state.listManagedKeys()) {
      const lifecycle = config.lifecycles(managed.keyName);
      const live = managed.versions.filter((v) => v.retiredAt === undefined);
      const current = live.at(-1);
      if (current === undefined) continue;
      const period = lifecycle.rotationPeriodSeconds;
      if (period !== undefined && now.getTime() - current.createdAt.getTime() >= period * 1000) {
        await rotations.enqueueRotation(
          makeRotateKey({
            keyName: managed.keyName,
            keyVersion: current.version,
            reason: "schedule",
            sourceEventId: `schedule-${digest(`${managed.keyName}\n${current.version}`)}`,
            sentAt: now,
          }),
        );
        queued += 1;
      }
      for (const [index, version] of live.slice(0, -1).entries()) {
        const successor = live[index + 1]!;
        if (now.getTime() - successor.createdAt.getTime() < lifecycle.retireAfterSeconds * 1000) continue;
        if (await retire(managed.keyName, version, live.slice(index + 1), now)) retired += 1;
        else waiting += 1;
      }
    }
    if (queued + retired + waiting > 0) logger("info", "rotation tick", { queued, retired, waiting });
    return { queued, retired, waiting };
  }

  /** Retires one version if every trusted holder has a newer one; false when it must wait. */
  async function retire(
    keyName: string,
    version: ManagedKeyVersion,
    newer: readonly ManagedKeyVersion[],
    now: Date,
  ): Promise<boolean> {
    const holdings = await state.listHoldingsByKey(keyName);
    const newerNames = new Set(newer.map((v) => v.version));
    const holders = holdings.filter((h) => h.keyVersion === version.version && h.revokedAt === undefined);
    for (const holder of holders) {
      const agent = await state.getAgent(holder.agentId);
      if (agent?.status !== "trusted") continue; // an untrusted holder does not hold a retirement up
      const hasNewer = holdings.some(
        (h) => h.agentId === holder.agentId && newerNames.has(h.keyVersion) && h.revokedAt === undefined,
      );
      if (!hasNewer) {
        logger("info", "old key version kept: a trusted holder has no newer version yet", {
          keyName,
          keyVersion: version.version,
          agentId: holder.agentId,
        });
        return false;
      }
    }
    for (const holder of holders) {
      await agents.sendToAgent(
        holder.agentId,
        makeKeyEvent({
          agentId: holder.agentId,
          event: "revoked",
          keyName,
          keyVersion: version.version,
          sentAt: now,
        }),
      );
      await state.recordHolding({ ...holder, revokedAt: now });
    }
    await keys.setEnabled(keyName, version.version, false);
    const managed = await state.getManagedKey(keyName);
    if (managed !== undefined) {
      const { etag, ...rest } = managed;
      await state.putManagedKey(
        {
          ...rest,
          versions: rest.versions.map((v) =>
            v.version === version.version ? { ...v, retiredAt: now, revokedAt: now } : v,
          ),
          updatedAt: now,
        },
        etag,
      );
    }
    await state.appendAudit(keyAuditPartition(keyName), {
      at: now,
      kind: "key-version-retired",
      subject: keyName,
      details: { keyVersion: version.version, holdersTold: holders.length },
      eventId: `key-version-retired:${version.version}`,
    });
    return true;
  }

  // ---------------------------------------------------------------------------------------
  // an operator's "rotate now"

  /**
   * Queues a `rotate-key` (reason `manual`) for an operator, after checking the key exists, and
   * records who asked. The rotation itself runs in the `rotate` function like every other one, so
   * it stays serialised with the key's other rotations and policy updates (one lease per key).
   * A key the store does not know is ERR_CONFIG (nothing queued, nothing recorded).
   */
  async function requestRotation(
    keyName: string,
    by: { operator: string; requestId: string },
  ): Promise<{ keyName: string; currentVersion: string; sourceEventId: string }> {
    const current = await keys.getKey(keyName);
    const now = clock.now();
    const sourceEventId = `operator-${by.requestId}`.slice(0, 128); // an identifier: at most 128
    await state.appendAudit(keyAuditPartition(keyName), {
      at: now,
      kind: "key-rotation-requested",
      subject: keyName,
      requestId: by.requestId,
      details: { operator: by.operator, reason: "manual", currentVersion: current.version, sourceEventId },
      eventId: `key-rotation-requested:${sourceEventId}`,
    });
    await rotations.enqueueRotation(makeRotateKey({ keyName, reason: "manual", sourceEventId, sentAt: now }));
    logger("info", "rotation requested by an operator", { keyName, sourceEventId });
    return { keyName, currentVersion: current.version, sourceEventId };
  }

  return { handle, scheduleTick, requestRotation };
}

export type Rotation = ReturnType<typeof createRotation>;

function rotationScope(keyName: string): string {
  const scope = `rotate:${keyName}`;
  return scope.length <= 128 ? scope : `rotate:${digest(keyName)}`;
}
