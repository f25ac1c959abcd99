/**
 * The state a measurement rollout needs, kept apart from the attestation state: Shield's own
 * appraisal policy per key (the measurements it allows, those on their way out and those
 * retired), the deployments pipelines asked for and how far each got, a lease per key so that
 * policy updates of one key run one at a time, and the webhook's replay cache of delivery ids.
 *
 * As in the StateStore, writes that can race are conditional: a key's policy and a deployment
 * carry the ETag they were read with, a lease is taken by one holder at a time, and a delivery id
 * is remembered once until it expires. A lost race is `ERR_CONFLICT`. Nothing here is secret:
 * measurements are public values, and a deployment records who asked (a repository, or
 * `hmac`), never a token or a signature. Times are passed in; stores never read the clock.
 */
import type { Measurement } from "../messages/index.js";

/** A measurement the key's appraisal policy allows, and when (if ever) it is to be retired. */
export interface AllowedMeasurement {
  readonly measurement: Measurement;
  readonly addedAt: Date;
  /** The deployment that added it (`seed` for the static setting's measurements). */
  readonly deploymentId: string;
  /** When its grace period ends; the retirement timer removes it after this time. */
  readonly retireAt?: Date;
}

/** A measurement that was allowed and no longer is: attestations with it are ERR_MEASUREMENT_RETIRED. */
export interface RetiredMeasurement {
  readonly measurement: Measurement;
  readonly retiredAt: Date;
}

/** Shield's appraisal policy for one key: which measurements may receive it. */
export interface KeyPolicyState {
  readonly keyName: string;
  readonly allowed: readonly AllowedMeasurement[];
  readonly retired: readonly RetiredMeasurement[];
  readonly updatedAt: Date;
}

export interface KeyPolicyRecord extends KeyPolicyState {
  readonly etag: string;
}

export type DeploymentStatus = "queued" | "applying" | "applied" | "failed";

/** What happened to one key version's release policy. */
export type VersionOutcome =
  | "updated" // written and read back with the same meaning
  | "unchanged" // already held the change
  | "immutable" // Key Vault will never change it: reported, not touched
  | "not-releasable"; // disabled, expired or not exportable: left alone

export interface VersionProgress {
  readonly version: string;
  readonly outcome: VersionOutcome;
}

export interface DeploymentKeyProgress {
  readonly keyName: string;
  readonly status: "pending" | "applied" | "failed";
  readonly versions: readonly VersionProgress[];
  readonly error?: { readonly code: string; readonly message: string };
}

export interface DeploymentState {
  readonly deploymentId: string;
  readonly status: DeploymentStatus;
  readonly keys: readonly string[];
  readonly add: readonly Measurement[];
  readonly retire: readonly Measurement[];
  readonly graceSeconds: number;
  /** Who asked: `github:<repository>`, `oidc:<subject>`, or `hmac`. */
  readonly requestedBy: string;
  readonly createdAt: Date;
  readonly updatedAt: Date;
  readonly progress: readonly DeploymentKeyProgress[];
}

export interface DeploymentRecord extends DeploymentState {
  readonly etag: string;
}

export type DeliveryUse = "new" | "replayed";

export interface PolicyStateStore {
  getKeyPolicy(keyName: string): Promise<KeyPolicyRecord | undefined>;
  /** Inserts; ERR_CONFLICT when the key already has one. */
  createKeyPolicy(state: KeyPolicyState): Promise<KeyPolicyRecord>;
  /** Replaces if still at `etag`; ERR_CONFLICT otherwise. */
  updateKeyPolicy(state: KeyPolicyState, etag: string): Promise<KeyPolicyRecord>;
  listKeyPolicies(): Promise<KeyPolicyRecord[]>;

  /**
   * Takes the key's lease for `holder` until `leaseUntil` when nobody holds an unexpired one
   * (or `holder` itself does); false when someone else does.
   */
  acquireKeyLease(keyName: string, holder: string, options: { at: Date; leaseUntil: Date }): Promise<boolean>;
  /** Gives the lease up if `holder` still has it. */
  releaseKeyLease(keyName: string, holder: string): Promise<void>;

  /** Inserts; ERR_CONFLICT when the id exists. */
  createDeployment(state: DeploymentState): Promise<DeploymentRecord>;
  getDeployment(deploymentId: string): Promise<DeploymentRecord | undefined>;
  updateDeployment(state: DeploymentState, etag: string): Promise<DeploymentRecord>;
  /** Newest first. */
  listDeployments(options?: { limit?: number }): Promise<DeploymentRecord[]>;

  /** Remembers a webhook delivery id until `expiresAt`; `replayed` if it is remembered already. */
  rememberDelivery(deliveryId: string, options: { at: Date; expiresAt: Date }): Promise<DeliveryUse>;
}
