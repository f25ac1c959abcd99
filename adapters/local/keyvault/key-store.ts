/**
 * The `KeyStore` port directly on the local Key Vault engine, without HTTP: for unit tests and
 * the in-process embedded default, and the second implementation the key-store contract suite
 * runs against. It asks the engine exactly what the Azure adapter asks Key Vault (exportable HSM
 * keys, the release policy in Key Vault's wire form), so both adapters meet the same checks.
 * Engine errors are ShieldErrors already, with the codes the port documents.
 */
import { ShieldError } from "../../../core/errors.js";
import type {
  CreateKeyOptions,
  KeyStore,
  KeyVersionInfo,
  ManagedKeyType,
} from "../../../core/ports/key-store.js";
import {
  encodeReleasePolicy,
  guardReleasePolicyWrites,
  type ReleasePolicy,
} from "../../../core/policy/index.js";
import type { LocalKeyVault, LocalKeyVersion } from "./engine.js";

function toKeyVersionInfo(version: LocalKeyVersion): KeyVersionInfo {
  return {
    name: version.name,
    version: version.version,
    id: version.kid,
    keyType: version.kty satisfies ManagedKeyType,
    exportable: version.attributes.exportable,
    enabled: version.attributes.enabled,
    ...(version.releasePolicy === undefined ? {} : { releasePolicy: version.releasePolicy.policy }),
    ...(version.releasePolicy?.immutable === true ? { releasePolicyImmutable: true } : {}),
    createdOn: version.attributes.created,
    ...(version.attributes.expires === undefined ? {} : { expiresOn: version.attributes.expires }),
  };
}

function wirePolicy(policy: ReleasePolicy | undefined) {
  return policy === undefined ? undefined : encodeReleasePolicy(policy, { immutable: false });
}

export function createLocalKeyStore(engine: LocalKeyVault): KeyStore {
  if (typeof engine?.release !== "function") throw new TypeError("engine must be a LocalKeyVault");
  // The same release-policy guard as the Azure adapter: the engine, like Key Vault, takes any policy.
  return guardReleasePolicyWrites({
    async createKey(name: string, options: CreateKeyOptions): Promise<KeyVersionInfo> {
      const releasePolicy = wirePolicy(options.releasePolicy);
      const created = await engine.createKey(name, {
        kty: options.keyType,
        exportable: true,
        ...(options.keySize === undefined ? {} : { keySize: options.keySize }),
        ...(options.curve === undefined ? {} : { curve: options.curve }),
        ...(options.expiresOn === undefined ? {} : { expires: options.expiresOn }),
        ...(options.tags === undefined ? {} : { tags: options.tags }),
        ...(releasePolicy === undefined ? {} : { releasePolicy }),
      });
      return toKeyVersionInfo(created);
    },

    async getKey(name: string, version?: string): Promise<KeyVersionInfo> {
      return toKeyVersionInfo(await engine.getKey(name, version));
    },

    async listVersions(name: string): Promise<KeyVersionInfo[]> {
      return (await engine.listVersions(name)).map(toKeyVersionInfo);
    },

    async release(name, attestationToken, options): Promise<string> {
      const { value } = await engine.release(name, options.version, {
        target: attestationToken,
        enc: options.encryption,
        ...(options.nonce === undefined ? {} : { nonce: options.nonce }),
      });
      return value;
    },

    async rotate(name: string): Promise<KeyVersionInfo> {
      return toKeyVersionInfo(await engine.rotateKey(name));
    },

    async updateReleasePolicy(name: string, version: string, policy: ReleasePolicy): Promise<KeyVersionInfo> {
      if (typeof version !== "string" || version === "") {
        throw new ShieldError("ERR_CONFIG", "a key version is required to update its release policy");
      }
      const releasePolicy = wirePolicy(policy);
      if (releasePolicy === undefined) throw new TypeError("policy is required");
      return toKeyVersionInfo(await engine.updateKey(name, version, { releasePolicy }));
    },

    async setEnabled(name: string, version: string, enabled: boolean): Promise<KeyVersionInfo> {
      if (typeof version !== "string" || version === "") {
        throw new ShieldError("ERR_CONFIG", "a key version is required to enable or disable it");
      }
      return toKeyVersionInfo(await engine.updateKey(name, version, { enabled }));
    },
  });
}
