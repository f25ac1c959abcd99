import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { KeyClient } from "@azure/keyvault-keys";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createKeyVaultKeyStore } from "../../adapters/keyvault/key-store.js";
import { localKeyVaultCredential } from "../../adapters/local/keyvault/credential.js";
import type { LocalKeyVault } from "../../adapters/local/keyvault/engine.js";
import { startLocalKeyVaultServer, type LocalKeyVaultServer } from "../../adapters/local/keyvault/server.js";
import { ShieldError } from "../../core/errors.js";
import { unwrapReleasedKey } from "../../core/keywrap/index.js";
import type { LogFields, LogLevel } from "../../core/ports/logger.js";
import { defineKeyStoreContract } from "./key-store.contract.js";
import { createKeyVaultFixture, type KeyVaultFixture } from "./key-store.fixtures.js";

defineKeyStoreContract("Azure Key Vault adapter, real SDK against the local server", async () => {
  const fixture = await createKeyVaultFixture();
  const engine = await fixture.engine();
  const server = await startLocalKeyVaultServer({ engine });
  return {
    store: createKeyVaultKeyStore({
      vaultUrl: server.url,
      credential: localKeyVaultCredential(server.accessToken),
    }),
    engine,
    fixture,
    structuredDenials: false,
    close: async () => {
      await server.close();
      await fixture.close();
    },
  };
});

async function codeOf(promise: Promise<unknown>): Promise<ShieldError> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  expect(error).toBeInstanceOf(ShieldError);
  return error as ShieldError;
}

describe("Azure Key Vault adapter over HTTP", () => {
  let fixture: KeyVaultFixture;
  let engine: LocalKeyVault;
  let server: LocalKeyVaultServer;
  const logs: { level: LogLevel; message: string; fields?: LogFields }[] = [];
  let keyName: string;

  const storeWith = (token: string, requestTimeoutMs?: number) =>
    createKeyVaultKeyStore({
      vaultUrl: server.url,
      credential: localKeyVaultCredential(token),
      ...(requestTimeoutMs === undefined ? {} : { requestTimeoutMs }),
    });

  beforeAll(async () => {
    fixture = await createKeyVaultFixture();
    engine = await fixture.engine();
    server = await startLocalKeyVaultServer({
      engine,
      logger: (level, message, fields) =>
        logs.push({ level, message, ...(fields === undefined ? {} : { fields }) }),
    });
    keyName = fixture.uniqueName("http");
    await storeWith(server.accessToken).createKey(keyName, {
      keyType: "oct-HSM",
      releasePolicy: fixture.policy(),
    });
  });

  afterAll(async () => {
    await server?.close();
    await fixture?.close();
  });

  it("authenticates by Key Vault's challenge: the first request gets 401, then is sent again with the token", async () => {
    const store = storeWith(server.accessToken);
    const before = logs.length;
    const unauthorizedBefore = server.stats().unauthorized;
    await store.getKey(keyName);
    const seen = logs.slice(before).map((entry) => [entry.fields?.["operation"], entry.fields?.["status"]]);
    expect(seen).toEqual([
      ["get", 401],
      ["get", 200],
    ]);
    // The token is then cached: no further challenge.
    await store.getKey(keyName);
    expect(server.stats().unauthorized).toBe(unauthorizedBefore + 1);
  });

  it("maps a token the vault does not accept to ERR_CONFIG", async () => {
    const error = await codeOf(storeWith("not-the-right-token").getKey(keyName));
    expect(error.code).toBe("ERR_CONFIG");
    expect(error.message).toContain("401");
  });

  it("maps 503 to a transient ERR_UPSTREAM_UNAVAILABLE once the SDK's single retry is spent", async () => {
    const store = storeWith(server.accessToken);
    await store.getKey(keyName);
    server.failNext(503, 1);
    expect((await store.getKey(keyName)).name).toBe(keyName);
    server.failNext(503, 2);
    const error = await codeOf(store.getKey(keyName));
    expect(error.code).toBe("ERR_UPSTREAM_UNAVAILABLE");
    expect(error.transient).toBe(true);
  });

  it("maps 429 to a transient ERR_THROTTLED", async () => {
    const store = storeWith(server.accessToken);
    await store.getKey(keyName);
    server.failNext(429, 1);
    const error = await codeOf(
      store.release(keyName, await fixture.token(), { encryption: "RSA_AES_KEY_WRAP_256" }),
    );
    expect(error.code).toBe("ERR_THROTTLED");
    expect(error.transient).toBe(true);
  });

  it("maps a refused connection to a transient ERR_NETWORK", async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const store = createKeyVaultKeyStore({
      vaultUrl: `http://127.0.0.1:${port}`,
      credential: localKeyVaultCredential("token"),
    });
    const error = await codeOf(store.getKey(keyName));
    expect(error.code).toBe("ERR_NETWORK");
    expect(error.transient).toBe(true);
  });

  it("maps a request that outlives its timeout to a transient ERR_TIMEOUT", async () => {
    const silent = createServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    try {
      const store = createKeyVaultKeyStore({
        vaultUrl: `http://127.0.0.1:${(silent.address() as AddressInfo).port}`,
        credential: localKeyVaultCredential("token"),
        requestTimeoutMs: 150,
      });
      const error = await codeOf(store.getKey(keyName));
      expect(error.code).toBe("ERR_TIMEOUT");
      expect(error.transient).toBe(true);
    } finally {
      silent.closeAllConnections();
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    }
  });

  it("serves the URLs the SDK really uses, including /keys/{name}//release for an empty version", async () => {
    const client = new KeyClient(server.url, localKeyVaultCredential(server.accessToken), {
      allowInsecureConnection: true,
      disableChallengeResourceVerification: true,
      serviceVersion: "7.5",
    });
    const current = await client.getKey(keyName);
    const token = await fixture.token();
    for (const version of [undefined, "", current.properties.version]) {
      const { value } = await client.releaseKey(keyName, token, {
        algorithm: "RSA_AES_KEY_WRAP_256",
        ...(version === undefined ? {} : { version }),
      });
      expect(unwrapReleasedKey(value, fixture.agentPrivateKey).kid).toBe(current.id);
    }
  });

  it("keeps the rotation policy through the SDK", async () => {
    const client = new KeyClient(server.url, localKeyVaultCredential(server.accessToken), {
      allowInsecureConnection: true,
      disableChallengeResourceVerification: true,
    });
    const initial = await client.getKeyRotationPolicy(keyName);
    expect(initial.lifetimeActions).toEqual([
      { action: "Notify", timeBeforeExpiry: "P30D", timeAfterCreate: undefined },
    ]);
    const updated = await client.updateKeyRotationPolicy(keyName, {
      lifetimeActions: [
        { action: "Rotate", timeAfterCreate: "P90D" },
        { action: "Notify", timeBeforeExpiry: "P30D" },
      ],
      expiresIn: "P180D",
    });
    expect(updated.expiresIn).toBe("P180D");
    expect(updated.id).toBe(`${engine.vaultUrl}/keys/${keyName}/rotationpolicy`);
    const rotated = await client.rotateKey(keyName);
    const expires = rotated.properties.expiresOn!.getTime() - rotated.properties.createdOn!.getTime();
    expect(Math.round(expires / 86_400_000)).toBe(180);
  });

  it("refuses an exportable key created without a release policy (AKV.SKR.1004) and a non-exportable one with one", async () => {
    const client = new KeyClient(server.url, localKeyVaultCredential(server.accessToken), {
      allowInsecureConnection: true,
      disableChallengeResourceVerification: true,
    });
    const noPolicy = fixture.uniqueName("nopolicy");
    await expect(client.createOctKey(noPolicy, { hsm: true, exportable: true })).rejects.toMatchObject({
      statusCode: 400,
      message: expect.stringContaining("AKV.SKR.1004") as string,
    });
    await expect(
      client.createOctKey(noPolicy, {
        hsm: true,
        releasePolicy: {
          encodedPolicy: Buffer.from(
            JSON.stringify({
              version: "1.0.0",
              anyOf: [{ authority: "https://a", allOf: [{ claim: "c", equals: "v" }] }],
            }),
          ),
        },
      }),
    ).rejects.toMatchObject({ statusCode: 400, message: expect.stringContaining("AKV.SKR.1005") as string });
  });

  it("logs no token and no key material", () => {
    const text = JSON.stringify(logs);
    expect(text).not.toContain(server.accessToken);
    expect(text).not.toContain("eyJ");
    expect(logs.every((entry) => entry.message === "keyvault request")).toBe(true);
  });
});

describe("Azure Key Vault adapter configuration", () => {
  const credential = localKeyVaultCredential("token");

  it("accepts https, and plain http only on loopback", () => {
    expect(() =>
      createKeyVaultKeyStore({ vaultUrl: "https://vault.vault.azure.net", credential }),
    ).not.toThrow();
    expect(() =>
      createKeyVaultKeyStore({ vaultUrl: "https://hsm.managedhsm.azure.net/", credential }),
    ).not.toThrow();
    expect(() => createKeyVaultKeyStore({ vaultUrl: "http://127.0.0.1:8443", credential })).not.toThrow();
    for (const vaultUrl of [
      "http://vault.vault.azure.net",
      "http://10.0.0.4:8443",
      "https://vault.vault.azure.net/keys",
      "https://user:pw@vault.vault.azure.net",
      "not a url",
    ]) {
      expect(() => createKeyVaultKeyStore({ vaultUrl, credential })).toThrow(
        expect.objectContaining({ code: "ERR_CONFIG" }) as Error,
      );
    }
  });

  it("refuses a credential that is not one", () => {
    expect(() =>
      createKeyVaultKeyStore({
        vaultUrl: "https://vault.vault.azure.net",
        credential: {} as typeof credential,
      }),
    ).toThrow(TypeError);
  });
});
