/**
 * The secrets half of the local Key Vault-compatible server: named secrets with versions, as
 * Key Vault's REST API 7.x has them (`PUT /secrets/{name}` sets a new version, `GET
 * /secrets/{name}/{version?}` reads one), so the real `@azure/keyvault-secrets` client reads the
 * deployment webhook's HMAC key from it exactly as it would from Azure. Values stay in memory
 * (and, with `onChange`, wherever its caller keeps them: `npm start -- --state` seals them to
 * disk); nothing here logs them.
 */
import { randomBytes } from "node:crypto";
import { z } from "zod";

export interface LocalSecretVersion {
  readonly name: string;
  readonly version: string;
  readonly value: string;
  readonly contentType?: string;
  readonly created: Date;
}

export interface LocalSecrets {
  set(name: string, value: string, options?: { contentType?: string; at?: Date }): LocalSecretVersion;
  /** The current version, or the given one; undefined when absent. */
  get(name: string, version?: string): LocalSecretVersion | undefined;
}

const SECRET_NAME = /^[0-9a-zA-Z-]{1,127}$/;
/** Key Vault's limit on a secret value. */
export const MAX_SECRET_VALUE_CHARS = 25 * 1024;

export const setSecretBodySchema = z.object({
  value: z.string().max(MAX_SECRET_VALUE_CHARS),
  contentType: z.string().max(255).nullish(),
  tags: z.record(z.string(), z.string()).nullish(),
  attributes: z.object({ enabled: z.boolean().nullish() }).passthrough().nullish(),
});

export function isSecretName(name: string): boolean {
  return SECRET_NAME.test(name);
}

export interface LocalSecretsOptions {
  /** Versions to start with (what `onChange` was last given), oldest first. */
  readonly versions?: readonly LocalSecretVersion[];
  /**
   * Called with every version, the new one included, before `set` keeps it; when it throws,
   * `set` throws and nothing changes.
   */
  readonly onChange?: (versions: readonly LocalSecretVersion[]) => void;
}

export function createLocalSecrets(store: LocalSecretsOptions = {}): LocalSecrets {
  const versions = new Map<string, LocalSecretVersion[]>();
  for (const version of store.versions ?? []) {
    if (!isSecretName(version.name)) throw new TypeError("invalid secret name");
    versions.set(version.name, [...(versions.get(version.name) ?? []), version]);
  }
  return {
    set(name, value, options = {}) {
      if (!isSecretName(name)) throw new TypeError("invalid secret name");
      const version: LocalSecretVersion = {
        name,
        version: randomBytes(16).toString("hex"),
        value,
        ...(options.contentType === undefined ? {} : { contentType: options.contentType }),
        created: options.at ?? new Date(),
      };
      const list = [...(versions.get(name) ?? []), version];
      store.onChange?.([...[...versions].flatMap(([n, v]) => (n === name ? [] : v)), ...list]);
      versions.set(name, list);
      return version;
    },
    get(name, version) {
      const list = versions.get(name) ?? [];
      return version === undefined || version === "" ? list.at(-1) : list.find((v) => v.version === version);
    },
  };
}

/** Key Vault's `SecretBundle`. */
export function secretBundleToWire(vaultUrl: string, secret: LocalSecretVersion): Record<string, unknown> {
  const seconds = Math.floor(secret.created.getTime() / 1000);
  return {
    value: secret.value,
    id: `${vaultUrl}/secrets/${secret.name}/${secret.version}`,
    ...(secret.contentType === undefined ? {} : { contentType: secret.contentType }),
    attributes: { enabled: true, created: seconds, updated: seconds, recoveryLevel: "Recoverable+Purgeable" },
  };
}
