/**
 * The proxy's settings file: what it accepts, what it refuses (with the field named), and that
 * the upstream credential is read afresh for every connection from where the settings say —
 * a file, a Key Vault secret, or a Microsoft Entra token for Azure Database for PostgreSQL.
 */
import { describe, expect, it } from "vitest";
import {
  AZURE_POSTGRES_SCOPE,
  parsePgProxySettings,
  resolvePgProxySettings,
  type CredentialSources,
} from "../../../agent/pg-proxy/settings.js";

const base = {
  listen: "127.0.0.1:5432",
  key: "orders-key",
  columns: { "orders.customer_email": { index: "customer_email_index" } },
  clientPasswordFile: "/run/shield/pg-proxy-password",
  upstream: {
    host: "contoso-orders.postgres.database.azure.com",
    database: "orders",
    user: "orders-app",
    caFile: "/etc/shield/azure-postgres-roots.pem",
    auth: { kind: "entra" },
  },
};

function sources(): CredentialSources & { calls: string[] } {
  const calls: string[] = [];
  let token = 0;
  return {
    calls,
    readFile(path) {
      calls.push(`file ${path}`);
      if (path.endsWith("pg-proxy-password")) return Promise.resolve("an application password\n");
      if (path.endsWith(".pem")) return Promise.resolve("-----BEGIN CERTIFICATE-----\n");
      return Promise.resolve(" database password \n");
    },
    entraToken(scope, clientId) {
      calls.push(`entra ${scope} ${clientId ?? "-"}`);
      return Promise.resolve(`token-${++token}`);
    },
    keyVaultSecret(vaultUrl, secretName) {
      calls.push(`secret ${vaultUrl} ${secretName}`);
      return Promise.resolve("from key vault");
    },
  };
}

describe("pg proxy settings", () => {
  it("defaults to port 5432 and verify-full, and reads an Entra token per connection", async () => {
    const settings = parsePgProxySettings(base);
    expect(settings.listen).toEqual({ host: "127.0.0.1", port: 5432 });
    expect(settings.upstream).toMatchObject({ port: 5432, tls: { mode: "verify-full" } });
    const fake = sources();
    const resolved = await resolvePgProxySettings(settings, fake);
    expect(resolved.clientPassword.reveal()).toBe("an application password");
    expect(String(resolved.clientPassword)).toBe("[redacted]");
    expect(resolved.upstream.tls).toEqual({ mode: "verify-full", ca: "-----BEGIN CERTIFICATE-----\n" });
    expect(await resolved.upstream.password()).toBe("token-1");
    expect(await resolved.upstream.password()).toBe("token-2");
    expect(fake.calls.filter((call) => call.startsWith("entra"))).toEqual([
      `entra ${AZURE_POSTGRES_SCOPE} -`,
      `entra ${AZURE_POSTGRES_SCOPE} -`,
    ]);
  });

  it("reads a password file or a Key Vault secret instead", async () => {
    const fromFile = parsePgProxySettings({
      ...base,
      upstream: { ...base.upstream, auth: { kind: "password-file", file: "/run/secrets/pg-password" } },
    });
    expect(await (await resolvePgProxySettings(fromFile, sources())).upstream.password()).toBe(
      "database password",
    );
    const fromVault = parsePgProxySettings({
      ...base,
      upstream: {
        ...base.upstream,
        auth: {
          kind: "key-vault-secret",
          vaultUrl: "https://contoso.vault.azure.net",
          secretName: "orders-db",
        },
      },
    });
    const fake = sources();
    expect(await (await resolvePgProxySettings(fromVault, fake)).upstream.password()).toBe("from key vault");
    expect(fake.calls).toContain("secret https://contoso.vault.azure.net orders-db");
  });

  it.each([
    [{ ...base, listen: "0.0.0.0:5432" }, /listen: a loopback address/],
    [{ ...base, listen: "5432" }, /listen/],
    [{ ...base, upstream: { ...base.upstream, sslmode: "disable" } }, /disable is for a server on loopback/],
    [{ ...base, upstream: { ...base.upstream, sslmode: "prefer" } }, /upstream\.sslmode/],
    [
      { ...base, upstream: { ...base.upstream, auth: { kind: "password", password: "x" } } },
      /upstream\.auth/,
    ],
    [{ ...base, upstream: { ...base.upstream, port: 70000 } }, /upstream\.port/],
    [{ ...base, clientPasswordFile: "relative" }, /clientPasswordFile/],
    [{ ...base, columns: {} }, /at least one column/],
    [{ ...base, extra: true }, /\(root\)|extra/],
  ])("refuses %j", (json, message) => {
    expect(() => parsePgProxySettings(json)).toThrow(message);
  });

  it("refuses a short application password", async () => {
    const fake = { ...sources(), readFile: () => Promise.resolve("short") };
    await expect(resolvePgProxySettings(parsePgProxySettings(base), fake)).rejects.toThrow(/at least 16/);
  });
});
