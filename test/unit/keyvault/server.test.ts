import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createKeyVaultKeyStore } from "../../../adapters/keyvault/key-store.js";
import { KEY_VAULT_SCOPE, localKeyVaultCredential } from "../../../adapters/local/keyvault/credential.js";
import type { LocalKeyVault } from "../../../adapters/local/keyvault/engine.js";
import {
  startLocalKeyVaultServer,
  type LocalKeyVaultServer,
} from "../../../adapters/local/keyvault/server.js";
import { unwrapReleasedKey } from "../../../core/keywrap/index.js";
import { encodeReleasePolicy } from "../../../core/policy/index.js";
import type { LogFields } from "../../../core/ports/logger.js";
import { createKeyVaultFixture, type KeyVaultFixture } from "../../contract/key-store.fixtures.js";

let fixture: KeyVaultFixture;
let engine: LocalKeyVault;
let server: LocalKeyVaultServer;
let keyName: string;
const logs: { message: string; fields?: LogFields }[] = [];
const TENANT = "11111111-2222-3333-4444-555555555555";

interface Reply {
  readonly status: number;
  readonly headers: Headers;
  readonly body: Record<string, unknown>;
}

async function call(
  method: string,
  path: string,
  options: { body?: unknown; raw?: string; token?: string | null; apiVersion?: string | null } = {},
): Promise<Reply> {
  const url = new URL(path, server.url);
  if (options.apiVersion !== null) url.searchParams.set("api-version", options.apiVersion ?? "7.5");
  const token = options.token === undefined ? server.accessToken : options.token;
  const body = options.raw ?? (options.body === undefined ? undefined : JSON.stringify(options.body));
  const response = await fetch(url, {
    method,
    headers: {
      ...(token === null ? {} : { authorization: `Bearer ${token}` }),
      ...(body === undefined ? {} : { "content-type": "application/json" }),
    },
    ...(body === undefined ? {} : { body }),
  });
  const text = await response.text();
  return {
    status: response.status,
    headers: response.headers,
    body: text === "" ? {} : (JSON.parse(text) as Record<string, unknown>),
  };
}

beforeAll(async () => {
  fixture = await createKeyVaultFixture();
  engine = await fixture.engine();
  server = await startLocalKeyVaultServer({
    engine,
    tenantId: TENANT,
    logger: (_level, message, fields) => logs.push({ message, ...(fields === undefined ? {} : { fields }) }),
  });
  keyName = fixture.uniqueName("server");
  await engine.createKey(keyName, {
    kty: "oct-HSM",
    exportable: true,
    releasePolicy: encodeReleasePolicy(fixture.policy()),
  });
});

afterAll(async () => {
  await server.close();
  await fixture.close();
});

describe("authentication", () => {
  it("challenges a request without a token the way Key Vault does, before reading its body", async () => {
    const before = engine.stats().calls;
    const reply = await call("POST", `/keys/${keyName}/release`, { token: null, raw: "{not json" });
    expect(reply.status).toBe(401);
    expect(reply.headers.get("www-authenticate")).toBe(
      `Bearer authorization="https://login.microsoftonline.com/${TENANT}", resource="https://vault.azure.net"`,
    );
    expect(reply.body).toEqual({ error: { code: "Unauthorized", message: expect.any(String) as string } });
    expect(engine.stats().calls).toBe(before);
  });

  it("accepts only its own token", async () => {
    expect((await call("GET", `/keys/${keyName}`, { token: "x".repeat(43) })).status).toBe(401);
    expect((await call("GET", `/keys/${keyName}`, { token: `${server.accessToken}x` })).status).toBe(401);
    expect((await call("GET", `/keys/${keyName}`)).status).toBe(200);
  });

  it("hands out its token only for the vault scope", async () => {
    const credential = localKeyVaultCredential("token");
    await expect(credential.getToken(KEY_VAULT_SCOPE)).resolves.toMatchObject({ token: "token" });
    // An Error (the SDK's credential contract) with a typed code, naming the one scope it serves.
    const onlyVault = /^the local Key Vault credential only serves https:\/\/vault\.azure\.net\/\.default$/;
    for (const scopes of ["https://storage.azure.com/.default", [KEY_VAULT_SCOPE, "openid"]]) {
      await expect(credential.getToken(scopes)).rejects.toThrow(onlyVault);
      await expect(credential.getToken(scopes)).rejects.toMatchObject({ code: "ERR_CONFIG" });
    }
  });
});

describe("operations and shapes", () => {
  it("returns Key Vault's key bundle for /keys/{name}, /keys/{name}/ and /keys/{name}/{version}", async () => {
    const plain = await call("GET", `/keys/${keyName}`);
    const slash = await call("GET", `/keys/${keyName}/`);
    expect(plain).toMatchObject({ status: 200 });
    expect(slash.body).toEqual(plain.body);
    const key = plain.body["key"] as Record<string, unknown>;
    const version = String(key["kid"]).split("/").at(-1)!;
    expect((await call("GET", `/keys/${keyName}/${version}`)).body).toEqual(plain.body);
    expect(Object.keys(key).sort()).toEqual(["key_ops", "kid", "kty"]);
    expect(plain.body["attributes"]).toMatchObject({
      enabled: true,
      exportable: true,
      recoveryLevel: "Recoverable+Purgeable",
      created: expect.any(Number) as number,
    });
    expect(plain.body["release_policy"]).toEqual({
      ...encodeReleasePolicy(fixture.policy()),
      immutable: false,
    });
  });

  it("creates with snake_case parameters and reports problems as BadParameter", async () => {
    const name = fixture.uniqueName("rsa");
    const created = await call("POST", `/keys/${name}/create`, {
      body: {
        kty: "RSA-HSM",
        key_size: 2048,
        attributes: { exportable: true, exp: 4102444800 },
        tags: { team: "a" },
        release_policy: encodeReleasePolicy(fixture.policy()),
      },
    });
    expect(created.status).toBe(200);
    expect(created.body["key"]).toMatchObject({ kty: "RSA-HSM", e: "AQAB", n: expect.any(String) as string });
    expect(created.body["attributes"]).toMatchObject({ exp: 4102444800 });
    expect(created.body["tags"]).toEqual({ team: "a" });
    const refused = await call("POST", `/keys/${name}/create`, {
      body: { kty: "RSA-HSM", attributes: { exportable: true }, key_size: 1000 },
    });
    expect(refused).toMatchObject({ status: 400, body: { error: { code: "BadParameter" } } });
  });

  it.each([
    ["malformed JSON", { raw: "{" }, 400],
    ["a body that does not match the schema", { body: { target: 42 } }, 400],
    ["no body", {}, 400],
  ])("refuses %s", async (_label, options, status) => {
    const reply = await call("POST", `/keys/${keyName}/release`, options);
    expect(reply).toMatchObject({ status, body: { error: { code: "BadParameter" } } });
  });

  it("refuses a body over the limit with 413", async () => {
    const reply = await call("POST", `/keys/${keyName}/release`, {
      body: { target: "a".repeat(300 * 1024) },
    });
    expect(reply.status).toBe(413);
  });

  it("refuses an unknown api-version, a missing one, and unknown paths", async () => {
    expect((await call("GET", `/keys/${keyName}`, { apiVersion: "2016-10-01" })).status).toBe(400);
    expect((await call("GET", `/keys/${keyName}`, { apiVersion: null })).status).toBe(400);
    expect((await call("GET", "/secrets/x")).status).toBe(404);
    expect((await call("DELETE", `/keys/${keyName}`)).status).toBe(404);
    expect((await call("GET", "/keys/%E0%A4%A")).status).toBe(404);
  });

  it("answers KeyNotFound with 404 and a policy refusal with 403 naming the failing clause", async () => {
    const missing = await call("GET", `/keys/${fixture.uniqueName("missing")}`);
    expect(missing).toMatchObject({ status: 404, body: { error: { code: "KeyNotFound" } } });
    const token = await fixture.token({ "x-ms-sevsnpvm-is-debuggable": true });
    const denied = await call("POST", `/keys/${keyName}/release`, { body: { target: token } });
    expect(denied.status).toBe(403);
    const error = denied.body["error"] as { code: string; message: string };
    expect(error.code).toBe("Forbidden");
    expect(error.message).toContain("x-ms-sevsnpvm-is-debuggable");
    expect(error.message).not.toContain(token.split(".")[1]!);
  });

  it("releases through /keys/{name}/release and /keys/{name}//release", async () => {
    const target = await fixture.token();
    for (const path of [`/keys/${keyName}/release`, `/keys/${keyName}//release`]) {
      const reply = await call("POST", path, { body: { target, enc: "RSA_AES_KEY_WRAP_256", nonce: "n-1" } });
      expect(reply.status).toBe(200);
      const released = unwrapReleasedKey(String(reply.body["value"]), fixture.agentPrivateKey);
      expect(released).toMatchObject({ kty: "oct-HSM", nonce: "n-1" });
    }
  });

  it("pages versions 25 at a time with a nextLink the SDK follows", async () => {
    const name = fixture.uniqueName("paged");
    await engine.createKey(name, {
      kty: "oct-HSM",
      exportable: true,
      releasePolicy: encodeReleasePolicy(fixture.policy()),
    });
    for (let i = 0; i < 29; i++) await engine.rotateKey(name);
    const first = await call("GET", `/keys/${name}/versions`);
    expect((first.body["value"] as unknown[]).length).toBe(25);
    const nextLink = String(first.body["nextLink"]);
    expect(nextLink.startsWith(`${server.url}/keys/${name}/versions?`)).toBe(true);
    const second = await fetch(nextLink, { headers: { authorization: `Bearer ${server.accessToken}` } });
    const page = (await second.json()) as { value: unknown[]; nextLink: unknown };
    expect(page.value).toHaveLength(5);
    expect(page.nextLink).toBeNull();
    const store = createKeyVaultKeyStore({
      vaultUrl: server.url,
      credential: localKeyVaultCredential(server.accessToken),
    });
    const versions = await store.listVersions(name);
    expect(versions.map((v) => v.version)).toEqual((await engine.listVersions(name)).map((v) => v.version));
  });
});

describe("fault injection", () => {
  it("answers the next authenticated requests with the injected status, then recovers", async () => {
    server.failNext(429, 1, { retryAfterSeconds: 7 });
    server.failNext(503, 1);
    const throttled = await call("GET", `/keys/${keyName}`);
    expect(throttled).toMatchObject({ status: 429, body: { error: { code: "Throttled" } } });
    expect(throttled.headers.get("retry-after")).toBe("7");
    expect((await call("GET", `/keys/${keyName}`)).status).toBe(503);
    expect((await call("GET", `/keys/${keyName}`)).status).toBe(200);
    expect(server.stats().injectedFaults).toBe(2);
  });

  it("refuses statuses that are not transient failures", () => {
    expect(() => server.failNext(404)).toThrow(TypeError);
    expect(() => server.failNext(503, -1)).toThrow(TypeError);
  });
});

describe("server setup and logs", () => {
  it("binds only to loopback", async () => {
    await expect(startLocalKeyVaultServer({ engine, host: "0.0.0.0" })).rejects.toMatchObject({
      code: "ERR_CONFIG",
    });
  });

  it("logs operation, status and timing, and never a token or body", () => {
    expect(logs.length).toBeGreaterThan(10);
    const text = JSON.stringify(logs);
    expect(text).not.toContain(server.accessToken);
    expect(text).not.toContain("eyJ");
    for (const entry of logs) {
      expect(Object.keys(entry.fields ?? {}).sort()).toEqual(
        expect.arrayContaining(["method", "ms", "operation", "status"]) as string[],
      );
    }
  });
});
