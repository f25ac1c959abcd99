/**
 * The confidential-database example's database settings: `DATABASE_URL` for a local server, and
 * for Azure Database for PostgreSQL the libpq variables with TLS verified by default and the
 * password fetched per connection from Microsoft Entra, Key Vault or a file.
 */
import { describe, expect, it } from "vitest";
import {
  AZURE_POSTGRES_SCOPE,
  DatabaseSettingsError,
  databasePoolConfig,
  parseDatabaseSettings,
  type PasswordSources,
} from "../../../examples/confidential-db/database-settings.js";

const AZURE = {
  PGHOST: "contoso-orders.postgres.database.azure.com",
  PGUSER: "orders-app",
};

function sources(): PasswordSources & { calls: string[] } {
  const calls: string[] = [];
  let tokens = 0;
  return {
    calls,
    readFile(path) {
      calls.push(`file ${path}`);
      return Promise.resolve(path.endsWith(".pem") ? "-----BEGIN CERTIFICATE-----\n" : "s3cret\n");
    },
    entraToken(scope, clientId) {
      calls.push(`entra ${scope} ${clientId ?? "-"}`);
      return Promise.resolve(`token-${++tokens}`);
    },
    keyVaultSecret(vaultUrl, name, version) {
      calls.push(`secret ${vaultUrl} ${name} ${version ?? "-"}`);
      return Promise.resolve("from-vault");
    },
  };
}

async function password(config: { password?: unknown }): Promise<string> {
  const read = config.password as () => Promise<string>;
  expect(typeof read).toBe("function");
  return read();
}

describe("confidential-db database settings", () => {
  it("takes DATABASE_URL as it is when PGHOST is not set", async () => {
    const settings = parseDatabaseSettings({ DATABASE_URL: "postgres://u:p@127.0.0.1:5432/orders" });
    expect(await databasePoolConfig(settings, sources())).toEqual({
      connectionString: "postgres://u:p@127.0.0.1:5432/orders",
    });
  });

  it("Azure defaults: port 5432, database orders, verify-full TLS, an Entra token per connection", async () => {
    const fake = sources();
    const config = await databasePoolConfig(
      parseDatabaseSettings({ ...AZURE, AZURE_CLIENT_ID: "11111111-2222-3333-4444-555555555555" }),
      fake,
    );
    expect(config).toMatchObject({
      host: AZURE.PGHOST,
      port: 5432,
      database: "orders",
      user: "orders-app",
      ssl: { rejectUnauthorized: true, servername: AZURE.PGHOST },
    });
    expect(await password(config)).toBe("token-1");
    expect(await password(config)).toBe("token-2");
    expect(fake.calls).toEqual([
      `entra ${AZURE_POSTGRES_SCOPE} 11111111-2222-3333-4444-555555555555`,
      `entra ${AZURE_POSTGRES_SCOPE} 11111111-2222-3333-4444-555555555555`,
    ]);
  });

  it("a Key Vault secret (with or without a version), or a password file, and PGSSLROOTCERT", async () => {
    const fake = sources();
    const vault = await databasePoolConfig(
      parseDatabaseSettings({
        ...AZURE,
        DATABASE_PASSWORD_SECRET_URI:
          "https://contoso.vault.azure.net/secrets/orders-db/0123456789abcdef0123456789abcdef",
        PGSSLROOTCERT: "/etc/ssl/azure-postgres-roots.pem",
        PGPORT: "6432",
        PGDATABASE: "shop",
      }),
      fake,
    );
    expect(vault).toMatchObject({
      port: 6432,
      database: "shop",
      ssl: { ca: "-----BEGIN CERTIFICATE-----\n" },
    });
    expect(await password(vault)).toBe("from-vault");
    expect(fake.calls).toContain(
      "secret https://contoso.vault.azure.net orders-db 0123456789abcdef0123456789abcdef",
    );
    const file = await databasePoolConfig(
      parseDatabaseSettings({
        ...AZURE,
        DATABASE_PASSWORD_FILE: "/mnt/secrets/orders-db",
        PGSSLMODE: "require",
      }),
      fake,
    );
    expect(file.ssl).toEqual({ rejectUnauthorized: false });
    expect(await password(file)).toBe("s3cret");
  });

  it.each([
    [{}, /PGHOST.*DATABASE_URL/],
    [{ PGHOST: "db.example.com" }, /PGUSER/],
    [{ ...AZURE, PGPORT: "0" }, /PGPORT/],
    [{ ...AZURE, PGPORT: "5432x" }, /PGPORT/],
    [{ ...AZURE, PGSSLMODE: "prefer" }, /PGSSLMODE/],
    [{ ...AZURE, PGSSLMODE: "disable" }, /loopback only/],
    [{ ...AZURE, DATABASE_AUTH: "password-file" }, /DATABASE_PASSWORD_FILE/],
    [{ ...AZURE, DATABASE_AUTH: "key-vault-secret" }, /DATABASE_PASSWORD_SECRET_URI/],
    [
      { ...AZURE, DATABASE_PASSWORD_SECRET_URI: "http://contoso.vault.azure.net/secrets/x" },
      /DATABASE_PASSWORD_SECRET_URI/,
    ],
    [{ ...AZURE, DATABASE_AUTH: "kerberos" }, /DATABASE_AUTH/],
    [{ ...AZURE, PGHOST: "db host" }, /PGHOST/],
  ])("refuses %j", (env, message) => {
    expect(() => parseDatabaseSettings(env)).toThrow(DatabaseSettingsError);
    expect(() => parseDatabaseSettings(env)).toThrow(message);
  });

  it("disable is accepted for a server on loopback", () => {
    expect(
      parseDatabaseSettings({
        PGHOST: "127.0.0.1",
        PGUSER: "postgres",
        PGSSLMODE: "disable",
        DATABASE_PASSWORD_FILE: "/p",
      }),
    ).toMatchObject({
      sslmode: "disable",
      auth: { kind: "password-file", file: "/p" },
    });
  });
});
