/**
 * The key store port: Azure Key Vault (Premium) or Managed HSM in Azure, a local Key
 * Vault-compatible server in the embedded default. Only exportable HSM keys with a release
 * policy are managed here; the private material never passes through this port in plaintext —
 * `release` returns Key Vault's signed response with the key wrapped to the enclave's key.
 *
 * Failures are typed: throttling and 5xx are transient; a release refused by the key's policy
 * is ERR_POLICY_DENIED; a missing key or version is ERR_CONFIG (it is an operator's error, not
 * the workload's).
 */
import type { ReleasePolicy } from "../policy/index.js";
import type { ReleaseEncryption } from "../keywrap/index.js";

export type ManagedKeyType = "oct-HSM" | "RSA-HSM" | "EC-HSM";

export interface KeyVersionInfo {
  readonly name: string;
  readonly version: string;
  /** The versioned key identifier (`https://<vault>/keys/<name>/<version>`). */
  readonly id: string;
  readonly keyType: ManagedKeyType;
  readonly exportable: boolean;
  readonly enabled: boolean;
  readonly releasePolicy?: ReleasePolicy;
  /** Key Vault will never change this version's release policy (`immutable` on the wire). */
  readonly releasePolicyImmutable?: boolean;
  readonly createdOn?: Date;
  readonly expiresOn?: Date;
}

export interface CreateKeyOptions {
  readonly keyType: ManagedKeyType;
  /** Bits for RSA (2048/3072/4096) and oct (128/192/256); ignored for EC. */
  readonly keySize?: number;
  /** EC curve, default P-256. */
  readonly curve?: "P-256" | "P-384" | "P-521";
  readonly releasePolicy: ReleasePolicy;
  readonly expiresOn?: Date;
  readonly tags?: Readonly<Record<string, string>>;
}

export interface ReleaseKeyOptions {
  /** Omit for the current version. */
  readonly version?: string;
  readonly encryption: ReleaseEncryption;
  readonly nonce?: string;
}

export interface KeyStore {
  /** Creates the key, or a new version of it when it exists (Key Vault's semantics). */
  createKey(name: string, options: CreateKeyOptions): Promise<KeyVersionInfo>;
  /** The current version, or the given one. */
  getKey(name: string, version?: string): Promise<KeyVersionInfo>;
  /** Every version, oldest first. */
  listVersions(name: string): Promise<KeyVersionInfo[]>;
  /**
   * Key Vault `release`: returns the `value` of the response (a compact JWS whose payload holds
   * the key wrapped to the token's `x-ms-runtime` key).
   */
  release(name: string, attestationToken: string, options: ReleaseKeyOptions): Promise<string>;
  /** Creates a new version under the key's rotation settings. */
  rotate(name: string): Promise<KeyVersionInfo>;
  /** Replaces the release policy of one version (Key Vault updates policies per version). */
  updateReleasePolicy(name: string, version: string, policy: ReleasePolicy): Promise<KeyVersionInfo>;
  /** Enables or disables one version: a disabled version is never released (retirement). */
  setEnabled(name: string, version: string, enabled: boolean): Promise<KeyVersionInfo>;
}
