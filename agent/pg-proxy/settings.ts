/**
 * The proxy's settings file (`SHIELD_PG_PROXY_FILE`, JSON), read once at start:
 *
 * ```json
 * {
 *   "listen": "127.0.0.1:5432",
 *   "key": "orders-key",
 *   "columns": { "orders.customer_email": { "index": "customer_email_index" }, "orders.customer_name": {} },
 *   "clientUser": "orders",
 *   "clientPasswordFile": "/var/run/shield/pg-proxy-password",
 *   "upstream": {
 *     "host": "contoso-orders.postgres.database.azure.com",
 *     "port": 5432,
 *     "database": "orders",
 *     "user": "orders-app",
 *     "sslmode": "verify-full",
 *     "caFile": "/etc/shield/azure-postgres-roots.pem",
 *     "auth": { "kind": "entra" }
 *   }
 * }
 * ```
 *
 * `upstream.auth` is how the proxy authenticates to the server, read again for every connection:
 * `{"kind": "password-file", "file": ...}` (e.g. a Key Vault secret mounted by the Secrets Store
 * CSI driver), `{"kind": "key-vault-secret", "vaultUrl": ..., "secretName": ...}` (read with the
 * pod's identity), or `{"kind": "entra", "clientId"?: ...}` (a Microsoft Entra access token for
 * `https://ossrdbms-aad.database.windows.net/.default`, the pod's managed or workload identity).
 * `sslmode` is `verify-full` unless said otherwise; `disable` only for a server on loopback.
 */
import { readFile } from "node:fs/promises";
import { isAbsolute } from "node:path";
import { z } from "zod";
import { ShieldError } from "../../core/errors.js";
import { Secret, isLoopback } from "../config.js";
import { parseProxyColumns, type ProxyColumns } from "./columns.js";
import type { UpstreamSettings, UpstreamTlsMode } from "./upstream.js";

/** The scope of Microsoft Entra tokens for Azure Database for PostgreSQL. */
export const AZURE_POSTGRES_SCOPE = "https://ossrdbms-aad.database.windows.net/.default";

const absolutePath = z
  .string()
  .refine((value) => isAbsolute(value) && !value.includes("\0"), "an absolute path");
const hostName = z.string().regex(/^[A-Za-z0-9.-]{1,253}$|^\[?[0-9a-fA-F:]+\]?$/, "a host name or address");

const AUTH = z.discriminatedUnion("kind", [
  z.strictObject({ kind: z.literal("password-file"), file: absolutePath }),
  z.strictObject({
    kind: z.literal("key-vault-secret"),
    vaultUrl: z.url({ protocol: /^https$/ }),
    secretName: z.string().regex(/^[0-9a-zA-Z-]{1,127}$/),
  }),
  z.strictObject({ kind: z.literal("entra"), clientId: z.uuid().optional() }),
]);

const SETTINGS = z.strictObject({
  listen: z.string().regex(/^[^:]+:\d{1,5}$/, "host:port"),
  key: z.unknown(),
  columns: z.unknown(),
  clientUser: z.string().min(1).max(63).optional(),
  clientPasswordFile: absolutePath,
  upstream: z.strictObject({
    host: hostName,
    port: z.number().int().min(1).max(65535).default(5432),
    database: z.string().min(1).max(63),
    user: z.string().min(1).max(128),
    sslmode: z.enum(["disable", "require", "verify-full"]).default("verify-full"),
    caFile: absolutePath.optional(),
    servername: hostName.optional(),
    auth: AUTH,
  }),
});

export type UpstreamAuth = z.infer<typeof AUTH>;

export interface PgProxySettings {
  readonly listen: { readonly host: string; readonly port: number };
  readonly columns: ProxyColumns;
  readonly clientUser?: string;
  readonly clientPasswordFile: string;
  readonly upstream: Omit<UpstreamSettings, "password" | "tls"> & {
    readonly tls: { readonly mode: UpstreamTlsMode; readonly caFile?: string; readonly servername?: string };
    readonly auth: UpstreamAuth;
  };
}

/** Parses the settings JSON (from `unknown`); ERR_CONFIG naming the first problem. */
export function parsePgProxySettings(json: unknown): PgProxySettings {
  const parsed = SETTINGS.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new ShieldError(
      "ERR_CONFIG",
      `pg proxy settings: ${issue.path.join(".") || "(root)"}: ${issue.message}`,
    );
  }
  const data = parsed.data;
  const columns = parseProxyColumns({ key: data.key, columns: data.columns });
  const separator = data.listen.lastIndexOf(":");
  const listen = { host: data.listen.slice(0, separator), port: Number(data.listen.slice(separator + 1)) };
  if (!isLoopback(listen.host)) {
    throw new ShieldError(
      "ERR_CONFIG",
      "pg proxy settings: listen: a loopback address (plaintext crosses it)",
    );
  }
  const upstream = data.upstream;
  if (upstream.sslmode === "disable" && !isLoopback(upstream.host)) {
    throw new ShieldError(
      "ERR_CONFIG",
      "pg proxy settings: upstream.sslmode: disable is for a server on loopback only",
    );
  }
  return {
    listen,
    columns,
    ...(data.clientUser === undefined ? {} : { clientUser: data.clientUser }),
    clientPasswordFile: data.clientPasswordFile,
    upstream: {
      host: upstream.host,
      port: upstream.port,
      database: upstream.database,
      user: upstream.user,
      tls: {
        mode: upstream.sslmode,
        ...(upstream.caFile === undefined ? {} : { caFile: upstream.caFile }),
        ...(upstream.servername === undefined ? {} : { servername: upstream.servername }),
      },
      auth: upstream.auth,
    },
  };
}

/** Reads and parses `SHIELD_PG_PROXY_FILE`. */
export async function readPgProxySettings(file: string): Promise<PgProxySettings> {
  let json: unknown;
  try {
    json = JSON.parse(await readFile(file, "utf8"));
  } catch (cause) {
    throw new ShieldError("ERR_CONFIG", `SHIELD_PG_PROXY_FILE ${file} cannot be read as JSON`, { cause });
  }
  return parsePgProxySettings(json);
}

/** What reads an upstream credential; injected so tests need no Azure. */
export interface CredentialSources {
  readFile(path: string): Promise<string>;
  /** An access token for `scope` with the pod's identity (DefaultAzureCredential). */
  entraToken(scope: string, clientId: string | undefined): Promise<string>;
  keyVaultSecret(vaultUrl: string, secretName: string): Promise<string>;
}

export const azureCredentialSources: CredentialSources = {
  readFile: (path) => readFile(path, "utf8"),
  async entraToken(scope, clientId) {
    const { DefaultAzureCredential } = await import("@azure/identity");
    const credential = new DefaultAzureCredential(
      clientId === undefined ? {} : { managedIdentityClientId: clientId, workloadIdentityClientId: clientId },
    );
    const token = await credential.getToken(scope);
    if (token === null)
      throw new ShieldError("ERR_UPSTREAM_UNAVAILABLE", "no Microsoft Entra token for the database");
    return token.token;
  },
  async keyVaultSecret(vaultUrl, secretName) {
    const [{ DefaultAzureCredential }, { SecretClient }] = await Promise.all([
      import("@azure/identity"),
      import("@azure/keyvault-secrets"),
    ]);
    const secret = await new SecretClient(vaultUrl, new DefaultAzureCredential()).getSecret(secretName);
    if (secret.value === undefined)
      throw new ShieldError("ERR_UPSTREAM_UNAVAILABLE", "the database secret is empty");
    return secret.value;
  },
};

/** The upstream password function for `auth`: a file, a Key Vault secret or an Entra token, per connection. */
export function upstreamPassword(auth: UpstreamAuth, sources: CredentialSources): () => Promise<string> {
  switch (auth.kind) {
    case "password-file":
      return async () => (await sources.readFile(auth.file)).trim();
    case "key-vault-secret":
      return () => sources.keyVaultSecret(auth.vaultUrl, auth.secretName);
    case "entra":
      return () => sources.entraToken(AZURE_POSTGRES_SCOPE, auth.clientId);
  }
}

/** Everything startPgProxy needs from the settings but the agent: files read, credentials bound. */
export async function resolvePgProxySettings(
  settings: PgProxySettings,
  sources: CredentialSources = azureCredentialSources,
): Promise<{ upstream: UpstreamSettings; clientPassword: Secret }> {
  const clientPassword = (await sources.readFile(settings.clientPasswordFile)).trim();
  if (clientPassword.length < 16) {
    throw new ShieldError("ERR_CONFIG", "pg proxy settings: clientPasswordFile: at least 16 characters");
  }
  const { tls, auth, ...rest } = settings.upstream;
  const ca = tls.caFile === undefined ? undefined : await sources.readFile(tls.caFile);
  return {
    clientPassword: new Secret(clientPassword),
    upstream: {
      ...rest,
      password: upstreamPassword(auth, sources),
      tls: {
        mode: tls.mode,
        ...(ca === undefined ? {} : { ca }),
        ...(tls.servername === undefined ? {} : { servername: tls.servername }),
      },
    },
  };
}
