/**
 * Where the orders service's database is and how it signs in, from the environment: either
 * `DATABASE_URL` (a local server, or anything `pg` takes), or the libpq variables for Azure
 * Database for PostgreSQL (flexible server) with TLS verified and the password read per new
 * connection — a Microsoft Entra access token of the pod's identity, a Key Vault secret, or a
 * file (a secret the Secrets Store CSI driver mounts). Nothing here logs or keeps a password.
 *
 * | variable | default | meaning |
 * |---|---|---|
 * | `PGHOST` | — | e.g. `contoso-orders.postgres.database.azure.com`; set: the variables below apply, `DATABASE_URL` is not read |
 * | `PGPORT`, `PGDATABASE`, `PGUSER` | `5432`, `orders`, — | as for libpq; with Entra, `PGUSER` is the role created for the identity |
 * | `PGSSLMODE` | `verify-full` | `verify-full` (chain and host name), `require` (encrypted, not verified), `disable` (loopback only) |
 * | `PGSSLROOTCERT` | Node's bundled roots | a PEM file of the roots to trust instead |
 * | `DATABASE_AUTH` | from what is set, else `entra` | `entra`, `key-vault-secret` or `password-file` |
 * | `DATABASE_PASSWORD_SECRET_URI` | — | `https://<vault>.vault.azure.net/secrets/<name>[/<version>]` |
 * | `DATABASE_PASSWORD_FILE` | — | a file holding the password |
 * | `AZURE_CLIENT_ID` | — | the user-assigned or workload identity to sign in as (DefaultAzureCredential's own variable) |
 */
import { readFile } from "node:fs/promises";
import { isIP } from "node:net";
import type pg from "pg";

/** The scope of Microsoft Entra tokens for Azure Database for PostgreSQL. */
export const AZURE_POSTGRES_SCOPE = "https://ossrdbms-aad.database.windows.net/.default";

export type DatabaseAuth =
  | { readonly kind: "entra"; readonly clientId?: string }
  | {
      readonly kind: "key-vault-secret";
      readonly vaultUrl: string;
      readonly secretName: string;
      readonly version?: string;
    }
  | { readonly kind: "password-file"; readonly file: string };

export type DatabaseSettings =
  | { readonly kind: "url"; readonly url: string }
  | {
      readonly kind: "server";
      readonly host: string;
      readonly port: number;
      readonly database: string;
      readonly user: string;
      readonly sslmode: "verify-full" | "require" | "disable";
      readonly sslRootCert?: string;
      readonly auth: DatabaseAuth;
    };

export class DatabaseSettingsError extends Error {
  override readonly name = "DatabaseSettingsError";
}

type Environment = Readonly<Record<string, string | undefined>>;

const value = (env: Environment, name: string): string | undefined => {
  const text = env[name]?.trim();
  return text === undefined || text === "" ? undefined : text;
};

const LOOPBACK = new Set(["localhost", "127.0.0.1", "::1"]);

/** Reads the settings; a DatabaseSettingsError names the variable that is wrong. */
export function parseDatabaseSettings(env: Environment): DatabaseSettings {
  const host = value(env, "PGHOST");
  if (host === undefined) {
    const url = value(env, "DATABASE_URL");
    if (url === undefined)
      throw new DatabaseSettingsError("set PGHOST (Azure) or DATABASE_URL, or use --local-postgres");
    return { kind: "url", url };
  }
  if (!/^[A-Za-z0-9.-]{1,253}$/.test(host) && isIP(host) === 0) {
    throw new DatabaseSettingsError("PGHOST: a host name or address");
  }
  const portText = value(env, "PGPORT") ?? "5432";
  const port = Number(portText);
  if (!/^\d{1,5}$/.test(portText) || port < 1 || port > 65535)
    throw new DatabaseSettingsError("PGPORT: 1 to 65535");
  const user = value(env, "PGUSER");
  if (user === undefined) throw new DatabaseSettingsError("PGUSER: the role to sign in as");
  const sslmode = value(env, "PGSSLMODE") ?? "verify-full";
  if (sslmode !== "verify-full" && sslmode !== "require" && sslmode !== "disable") {
    throw new DatabaseSettingsError("PGSSLMODE: verify-full, require or disable");
  }
  if (sslmode === "disable" && !LOOPBACK.has(host)) {
    throw new DatabaseSettingsError("PGSSLMODE: disable is for a server on loopback only");
  }
  const sslRootCert = value(env, "PGSSLROOTCERT");
  return {
    kind: "server",
    host,
    port,
    database: value(env, "PGDATABASE") ?? "orders",
    user,
    sslmode,
    ...(sslRootCert === undefined ? {} : { sslRootCert }),
    auth: parseAuth(env),
  };
}

function parseAuth(env: Environment): DatabaseAuth {
  const file = value(env, "DATABASE_PASSWORD_FILE");
  const secretUri = value(env, "DATABASE_PASSWORD_SECRET_URI");
  const kind =
    value(env, "DATABASE_AUTH") ??
    (file !== undefined ? "password-file" : secretUri !== undefined ? "key-vault-secret" : "entra");
  switch (kind) {
    case "entra": {
      const clientId = value(env, "AZURE_CLIENT_ID");
      return clientId === undefined ? { kind } : { kind, clientId };
    }
    case "password-file":
      if (file === undefined)
        throw new DatabaseSettingsError("DATABASE_PASSWORD_FILE: needed for DATABASE_AUTH=password-file");
      return { kind, file };
    case "key-vault-secret": {
      if (secretUri === undefined) {
        throw new DatabaseSettingsError(
          "DATABASE_PASSWORD_SECRET_URI: needed for DATABASE_AUTH=key-vault-secret",
        );
      }
      const match =
        /^(https:\/\/[a-z0-9-]+\.vault(?:\.[a-z0-9-]+)+)\/secrets\/([0-9a-zA-Z-]{1,127})(?:\/([0-9a-f]{32}))?\/?$/.exec(
          secretUri,
        );
      if (match === null) {
        throw new DatabaseSettingsError(
          "DATABASE_PASSWORD_SECRET_URI: https://<vault>.vault.azure.net/secrets/<name>[/<version>]",
        );
      }
      return {
        kind,
        vaultUrl: match[1]!,
        secretName: match[2]!,
        ...(match[3] === undefined ? {} : { version: match[3] }),
      };
    }
    default:
      throw new DatabaseSettingsError("DATABASE_AUTH: entra, key-vault-secret or password-file");
  }
}

/** Where passwords come from; injected so tests need no Azure. */
export interface PasswordSources {
  readFile(path: string): Promise<string>;
  entraToken(scope: string, clientId: string | undefined): Promise<string>;
  keyVaultSecret(vaultUrl: string, secretName: string, version: string | undefined): Promise<string>;
}

export const azurePasswordSources: PasswordSources = {
  readFile: (path) => readFile(path, "utf8"),
  async entraToken(scope, clientId) {
    const { DefaultAzureCredential } = await import("@azure/identity");
    const credential = new DefaultAzureCredential(
      clientId === undefined ? {} : { managedIdentityClientId: clientId, workloadIdentityClientId: clientId },
    );
    const token = await credential.getToken(scope);
    if (token === null) throw new Error("no Microsoft Entra token for the database");
    return token.token;
  },
  async keyVaultSecret(vaultUrl, secretName, version) {
    const [{ DefaultAzureCredential }, { SecretClient }] = await Promise.all([
      import("@azure/identity"),
      import("@azure/keyvault-secrets"),
    ]);
    const client = new SecretClient(vaultUrl, new DefaultAzureCredential());
    const secret = await client.getSecret(secretName, version === undefined ? {} : { version });
    if (secret.value === undefined) throw new Error("the database password secret has no value");
    return secret.value;
  },
};

/**
 * The `pg` pool configuration. The password is a function, which `pg` calls for every new
 * connection: an Entra token (valid about an hour) is fetched afresh rather than expiring in a
 * long-lived pool, and a rotated Key Vault secret is picked up without a restart.
 */
export async function databasePoolConfig(
  settings: DatabaseSettings,
  sources: PasswordSources = azurePasswordSources,
): Promise<pg.PoolConfig> {
  if (settings.kind === "url") return { connectionString: settings.url };
  const { auth } = settings;
  const password =
    auth.kind === "entra"
      ? () => sources.entraToken(AZURE_POSTGRES_SCOPE, auth.clientId)
      : auth.kind === "key-vault-secret"
        ? () => sources.keyVaultSecret(auth.vaultUrl, auth.secretName, auth.version)
        : async () => (await sources.readFile(auth.file)).trim();
  const ca = settings.sslRootCert === undefined ? undefined : await sources.readFile(settings.sslRootCert);
  const ssl: pg.PoolConfig["ssl"] =
    settings.sslmode === "disable"
      ? false
      : settings.sslmode === "require"
        ? { rejectUnauthorized: false }
        : { rejectUnauthorized: true, servername: settings.host, ...(ca === undefined ? {} : { ca }) };
  return {
    host: settings.host,
    port: settings.port,
    database: settings.database,
    user: settings.user,
    password,
    ssl,
  };
}
