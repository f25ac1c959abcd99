/**
 * The `KeyStore` port on Azure Key Vault (Premium) or Managed HSM, through
 * `@azure/keyvault-keys`. Keys are exportable HSM keys created with their release policy;
 * `release` hands Key Vault the attestation token and returns its signed response as is.
 *
 * The SDK is loaded on first use (a dynamic import), so a function that never touches keys
 * never pays for it at cold start. Credentials are any `TokenCredential` (managed identity via
 * `DefaultAzureCredential` in Azure; `localKeyVaultCredential` for the local server). Plain
 * `http` is accepted only for a loopback vault URL. Retries: one short SDK retry (see
 * `KEY_VAULT_RETRY_OPTIONS`); callers wrap the port with `retrying()` for the rest. Every call
 * has a timeout (default 30 s).
 *
 * Two calls are more than one request: `listVersions` lists the versions, then reads each (the
 * list operation returns neither key type nor release policy); `rotate` re-reads the new
 * version when the rotate response omits its release policy (Key Vault's documented example
 * response does), so the result says what the version really carries. `rotate` and
 * `updateReleasePolicy` also read the current version first: `guardReleasePolicyWrites` checks
 * every policy written (DESIGN §6 rule 6) before anything is sent.
 */
import type { KeyClient } from "@azure/keyvault-keys";
import { ShieldError } from "../../core/errors.js";
import type {
  CreateKeyOptions,
  KeyStore,
  KeyVersionInfo,
  ReleaseKeyOptions,
} from "../../core/ports/key-store.js";
import { guardReleasePolicyWrites, type ReleasePolicy } from "../../core/policy/index.js";
import {
  checkVaultUrl,
  createKeyRequest,
  keyClientOptions,
  keyVaultError,
  keyVersionInfoFromKeyVaultKey,
  releaseKeyOptions,
  releasePolicyForSdk,
  type KeyVaultClientSettings,
  type KeyVaultOperation,
  type TokenCredential,
} from "./mapping.js";

export interface KeyVaultKeyStoreOptions {
  /** `https://<vault>.vault.azure.net`, `https://<hsm>.managedhsm.azure.net`, or a loopback `http://` URL. */
  readonly vaultUrl: string;
  readonly credential: TokenCredential;
  readonly clientOptions?: KeyVaultClientSettings;
  /** Per-request timeout in ms (default 30 000). */
  readonly requestTimeoutMs?: number;
}

const DEFAULT_TIMEOUT_MS = 30_000;
const KEY_NAME = /^[0-9A-Za-z-]{1,127}$/;
const KEY_VERSION = /^[0-9A-Za-z]{1,64}$/;

function checkName(name: string): void {
  if (typeof name !== "string" || !KEY_NAME.test(name)) {
    throw new ShieldError("ERR_CONFIG", "a key name is 1-127 letters, digits and dashes");
  }
}

function checkVersion(version: string | undefined): void {
  if (version !== undefined && (typeof version !== "string" || !KEY_VERSION.test(version))) {
    throw new ShieldError("ERR_CONFIG", "a key version is 1-64 letters and digits");
  }
}

export function createKeyVaultKeyStore(options: KeyVaultKeyStoreOptions): KeyStore {
  if (typeof options !== "object" || options === null) throw new TypeError("options must be an object");
  if (typeof options.credential?.getToken !== "function")
    throw new TypeError("credential must be a TokenCredential");
  const { origin, local } = checkVaultUrl(options.vaultUrl);
  const timeoutMs = options.requestTimeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0)
    throw new TypeError("requestTimeoutMs must be a positive integer");
  const clientOptions = keyClientOptions(local, options.clientOptions);
  const requestOptions = { timeout: timeoutMs };

  let client: Promise<KeyClient> | undefined;
  const getClient = (): Promise<KeyClient> => {
    client ??= import("@azure/keyvault-keys").then(
      (sdk) => new sdk.KeyClient(origin, options.credential, clientOptions),
      (cause: unknown) => {
        client = undefined;
        throw new ShieldError("ERR_CONFIG", "the Key Vault SDK could not be loaded", { cause });
      },
    );
    return client;
  };

  /** Runs one SDK call with the typed error mapping. */
  const call = async <T>(
    operation: KeyVaultOperation,
    name: string,
    run: (client: KeyClient) => Promise<T>,
  ): Promise<T> => {
    const sdk = await getClient();
    try {
      return await run(sdk);
    } catch (error) {
      throw keyVaultError(error, operation, name);
    }
  };

  // Every release-policy write is checked before it reaches Key Vault (DESIGN §6 rule 6).
  return guardReleasePolicyWrites({
    async createKey(name: string, create: CreateKeyOptions): Promise<KeyVersionInfo> {
      checkName(name);
      const request = createKeyRequest(create, timeoutMs);
      const key = await call("create", name, (sdk) => {
        switch (request.method) {
          case "createRsaKey":
            return sdk.createRsaKey(name, request.options);
          case "createEcKey":
            return sdk.createEcKey(name, request.options);
          case "createOctKey":
            return sdk.createOctKey(name, request.options);
        }
      });
      return keyVersionInfoFromKeyVaultKey(key);
    },

    async getKey(name: string, version?: string): Promise<KeyVersionInfo> {
      checkName(name);
      checkVersion(version);
      const key = await call("get", name, (sdk) =>
        sdk.getKey(name, { ...(version === undefined ? {} : { version }), requestOptions }),
      );
      return keyVersionInfoFromKeyVaultKey(key);
    },

    async listVersions(name: string): Promise<KeyVersionInfo[]> {
      checkName(name);
      const listed = await call("list", name, async (sdk) => {
        const out: { version: string; createdOn: number }[] = [];
        for await (const properties of sdk.listPropertiesOfKeyVersions(name, { requestOptions })) {
          if (properties.version !== undefined) {
            out.push({ version: properties.version, createdOn: properties.createdOn?.getTime() ?? 0 });
          }
        }
        return out;
      });
      // Key Vault lists in no documented order; a stable sort keeps the service's order on ties.
      listed.sort((a, b) => a.createdOn - b.createdOn);
      const versions: KeyVersionInfo[] = [];
      for (const { version } of listed) {
        const key = await call("get", name, (sdk) => sdk.getKey(name, { version, requestOptions }));
        versions.push(keyVersionInfoFromKeyVaultKey(key));
      }
      return versions;
    },

    async release(name: string, attestationToken: string, release: ReleaseKeyOptions): Promise<string> {
      checkName(name);
      checkVersion(release.version);
      if (typeof attestationToken !== "string" || attestationToken.length === 0) {
        throw new TypeError("attestationToken must be a non-empty string");
      }
      const result = await call("release", name, (sdk) =>
        sdk.releaseKey(name, attestationToken, releaseKeyOptions(release, timeoutMs)),
      );
      if (typeof result.value !== "string" || result.value.length === 0) {
        throw new ShieldError("ERR_RELEASE_RESPONSE_MALFORMED", "Key Vault's release response has no value");
      }
      return result.value;
    },

    async rotate(name: string): Promise<KeyVersionInfo> {
      checkName(name);
      const rotated = await call("rotate", name, (sdk) => sdk.rotateKey(name, { requestOptions }));
      const version = rotated.properties.version;
      if (rotated.properties.releasePolicy === undefined && version !== undefined) {
        const reread = await call("get", name, (sdk) => sdk.getKey(name, { version, requestOptions }));
        return keyVersionInfoFromKeyVaultKey(reread);
      }
      return keyVersionInfoFromKeyVaultKey(rotated);
    },

    async updateReleasePolicy(name: string, version: string, policy: ReleasePolicy): Promise<KeyVersionInfo> {
      checkName(name);
      if (typeof version !== "string" || version === "") {
        throw new ShieldError("ERR_CONFIG", "a key version is required to update its release policy");
      }
      checkVersion(version);
      const updated = await call("update", name, (sdk) =>
        sdk.updateKeyProperties(name, version, {
          releasePolicy: releasePolicyForSdk(policy),
          requestOptions,
        }),
      );
      return keyVersionInfoFromKeyVaultKey(updated);
    },

    async setEnabled(name: string, version: string, enabled: boolean): Promise<KeyVersionInfo> {
      checkName(name);
      if (typeof version !== "string" || version === "") {
        throw new ShieldError("ERR_CONFIG", "a key version is required to enable or disable it");
      }
      checkVersion(version);
      const updated = await call("update", name, (sdk) =>
        sdk.updateKeyProperties(name, version, { enabled, requestOptions }),
      );
      return keyVersionInfoFromKeyVaultKey(updated);
    },
  });
}
