/**
 * The SecretReader on Azure Key Vault's secrets API, through `@azure/keyvault-secrets` (loaded on
 * first use). The same transport rules as the key store: `https` anywhere, plain `http` only for
 * the local server on loopback. A value is cached for a few minutes, so the webhook does not
 * call Key Vault on every delivery, and a rotated secret is picked up soon after. Errors are
 * mapped as the key store maps them; none carries the value.
 */
import type { SecretClient } from "@azure/keyvault-secrets";
import { ShieldError } from "../../core/errors.js";
import type { Clock } from "../../core/ports/clock.js";
import type { SecretReader } from "../../core/ports/secrets.js";
import {
  checkVaultUrl,
  keyClientOptions,
  keyVaultError,
  KEY_VAULT_API_VERSION,
  type TokenCredential,
} from "./mapping.js";

export interface KeyVaultSecretReaderOptions {
  readonly vaultUrl: string;
  readonly credential: TokenCredential;
  readonly clock: Clock;
  /** How long a value is reused (default 300 s). */
  readonly cacheSeconds?: number;
}

export function createKeyVaultSecretReader(options: KeyVaultSecretReaderOptions): SecretReader {
  const { origin, local } = checkVaultUrl(options.vaultUrl);
  const cacheMs = (options.cacheSeconds ?? 300) * 1000;
  const cache = new Map<string, { value: string; until: number }>();
  let client: Promise<SecretClient> | undefined;
  const getClient = (): Promise<SecretClient> => {
    client ??= import("@azure/keyvault-secrets").then(
      (sdk) => {
        // The same pinned API version as the key store (KEY_VAULT_API_VERSION).
        const clientOptions = { ...keyClientOptions(local), serviceVersion: KEY_VAULT_API_VERSION } as const;
        return new sdk.SecretClient(origin, options.credential, clientOptions);
      },
      (cause: unknown) => {
        client = undefined;
        throw new ShieldError("ERR_CONFIG", "the Key Vault secrets SDK could not be loaded", { cause });
      },
    );
    return client;
  };
  return {
    async getSecret(name: string): Promise<string> {
      const now = options.clock.now().getTime();
      const cached = cache.get(name);
      if (cached !== undefined && cached.until > now) return cached.value;
      let value: string | undefined;
      try {
        value = (await (await getClient()).getSecret(name)).value;
      } catch (error) {
        const mapped = keyVaultError(error, "get", name);
        throw new ShieldError(mapped.code, mapped.message.replace("of key", "of secret"));
      }
      if (value === undefined || value === "")
        throw new ShieldError("ERR_CONFIG", `secret ${name} has no value`);
      cache.set(name, { value, until: now + cacheMs });
      return value;
    },
  };
}
