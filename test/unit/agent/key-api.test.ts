import { createPrivateKey, generateKeyPairSync, randomBytes } from "node:crypto";
import { request as httpRequest } from "node:http";
import { lstat, rename, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import type { AgentStatus } from "../../../agent/agent.js";
import { HeldKeys } from "../../../agent/held-keys.js";
import { checkListen, startKeyApi, type KeyApi, type KeySource } from "../../../agent/key-api.js";
import type { AgentStateName } from "../../../agent/state-machine.js";
import type { LogFields } from "../../../core/ports/logger.js";
import { tempDir } from "./fakes.js";

const AT = new Date("2030-01-01T00:00:00Z");
const OCT = randomBytes(32);
let rsaDer: Buffer;

beforeAll(() => {
  rsaDer = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({
    type: "pkcs8",
    format: "der",
  });
});

class FakeSource implements KeySource {
  readonly keys = new HeldKeys();
  readonly configuredKeys = ["orders", "ledger"] as const;
  stateName: AgentStateName = "trusted";
  status(): AgentStatus {
    return {
      agentId: "agent-1",
      workload: "orders",
      state: this.stateName,
      provider: "simulated",
      tee: "sevsnp",
      runtimeKeyId: "kid",
      configuredKeys: this.configuredKeys,
      keys: this.keys.summary(),
      attestedUntil: AT.toISOString(),
    };
  }
}

const apis: KeyApi[] = [];
const dirs: string[] = [];
afterEach(async () => {
  for (const api of apis.splice(0)) await api.close();
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

async function serve(
  source: KeySource,
  logs: { message: string; fields?: LogFields }[] = [],
): Promise<KeyApi> {
  const api = await startKeyApi({
    listen: { kind: "tcp", host: "127.0.0.1", port: 0 },
    agent: source,
    logger: (_level, message, fields) => logs.push({ message, ...(fields ? { fields } : {}) }),
  });
  apis.push(api);
  return api;
}

function filled(): FakeSource {
  const source = new FakeSource();
  source.keys.install("orders", "v1", "oct-HSM", OCT, AT);
  source.keys.install("ledger", "r1", "RSA-HSM", rsaDer, AT);
  return source;
}

describe("key api: keys", () => {
  it("serves an oct key as raw bytes, or as JSON when asked", async () => {
    const api = await serve(filled());
    const raw = await fetch(`${api.url}/keys/orders`);
    expect(raw.status).toBe(200);
    expect(raw.headers.get("content-type")).toBe("application/octet-stream");
    expect(raw.headers.get("x-key-version")).toBe("v1");
    expect(raw.headers.get("cache-control")).toBe("no-store");
    expect(Buffer.from(await raw.arrayBuffer()).equals(OCT)).toBe(true);
    const json = await fetch(`${api.url}/keys/orders`, { headers: { accept: "application/json" } });
    expect(json.headers.get("content-type")).toMatch(/^application\/json/);
    expect(await json.json()).toEqual({
      name: "orders",
      version: "v1",
      kty: "oct-HSM",
      key: OCT.toString("base64url"),
    });
  });

  it("serves an RSA key as PKCS #8 PEM, or as a private JWK in JSON", async () => {
    const api = await serve(filled());
    const pem = await fetch(`${api.url}/keys/ledger`);
    expect(pem.headers.get("content-type")).toBe("application/x-pem-file");
    const text = await pem.text();
    expect(text).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    expect(createPrivateKey(text).export({ type: "pkcs8", format: "der" }).equals(rsaDer)).toBe(true);
    const json = (await (
      await fetch(`${api.url}/keys/ledger`, { headers: { accept: "application/json" } })
    ).json()) as {
      jwk: { kty: string; d: string };
    };
    expect(json).toMatchObject({ name: "ledger", version: "r1", kty: "RSA-HSM", jwk: { kty: "RSA" } });
    expect(
      createPrivateKey({ key: json.jwk, format: "jwk" })
        .export({ type: "pkcs8", format: "der" })
        .equals(rsaDer),
    ).toBe(true);
  });

  it("serves a held older version with ?version=, 404 for versions never held", async () => {
    const source = filled();
    const newer = randomBytes(32);
    source.keys.install("orders", "v2", "oct-HSM", newer, AT);
    const api = await serve(source);
    expect(Buffer.from(await (await fetch(`${api.url}/keys/orders`)).arrayBuffer()).equals(newer)).toBe(true);
    const old = await fetch(`${api.url}/keys/orders?version=v1`);
    expect(old.status).toBe(200);
    expect(Buffer.from(await old.arrayBuffer()).equals(OCT)).toBe(true);
    expect((await fetch(`${api.url}/keys/orders?version=v0`)).status).toBe(404);
    expect((await fetch(`${api.url}/keys/orders?version=v1&version=v2`)).status).toBe(400);
    expect((await fetch(`${api.url}/keys/orders?version=..%2F`)).status).toBe(400);
  });

  it("404 for keys that are not configured or not key names", async () => {
    const api = await serve(filled());
    for (const path of [
      "/keys/payroll",
      "/keys/..",
      "/keys/a%2Fb",
      "/keys/",
      "/keys/orders/v1",
      "/nothing",
    ]) {
      expect((await fetch(`${api.url}${path}`)).status).toBe(404);
    }
  });

  it("403 once the agent is revoked or failed, and for a version wiped by revocation", async () => {
    const source = filled();
    source.keys.install("orders", "v2", "oct-HSM", randomBytes(32), AT);
    source.keys.wipeVersion("orders", "v1", { revoked: true });
    const api = await serve(source);
    const revokedVersion = await fetch(`${api.url}/keys/orders?version=v1`);
    expect(revokedVersion.status).toBe(403);
    expect(await revokedVersion.json()).toEqual({
      error: { code: "revoked", message: "this key version was revoked" },
    });
    expect((await fetch(`${api.url}/keys/orders`)).status).toBe(200);
    for (const state of ["revoked", "failed"] as const) {
      source.stateName = state;
      expect((await fetch(`${api.url}/keys/orders`)).status).toBe(403);
      expect((await fetch(`${api.url}/keys/ledger`)).status).toBe(403);
    }
    source.stateName = "revoked";
    source.keys.wipeAll({ revoked: true });
    expect((await fetch(`${api.url}/keys/orders`)).status).toBe(403);
  });

  it("503 with Retry-After while a configured key is not held yet", async () => {
    const source = new FakeSource();
    source.stateName = "attesting";
    const api = await serve(source);
    const response = await fetch(`${api.url}/keys/orders`);
    expect(response.status).toBe(503);
    expect(response.headers.get("retry-after")).toBe("2");
  });

  it("only GET is served", async () => {
    const api = await serve(filled());
    const response = await fetch(`${api.url}/keys/orders`, { method: "POST", body: "x" });
    expect(response.status).toBe(405);
    expect(response.headers.get("allow")).toBe("GET");
  });
});

describe("key api: health, readiness, status", () => {
  it("healthz is 200 whatever the state", async () => {
    const source = new FakeSource();
    source.stateName = "failed";
    const api = await serve(source);
    expect((await fetch(`${api.url}/healthz`)).status).toBe(200);
  });

  it("readyz is 200 only when trusted and every configured key is held", async () => {
    const source = new FakeSource();
    source.stateName = "attesting";
    const api = await serve(source);
    const notReady = await fetch(`${api.url}/readyz`);
    expect(notReady.status).toBe(503);
    expect(await notReady.json()).toEqual({
      ready: false,
      state: "attesting",
      missing: ["orders", "ledger"],
    });
    source.stateName = "trusted";
    source.keys.install("orders", "v1", "oct-HSM", OCT, AT);
    expect((await fetch(`${api.url}/readyz`)).status).toBe(503);
    source.keys.install("ledger", "r1", "RSA-HSM", rsaDer, AT);
    expect((await fetch(`${api.url}/readyz`)).status).toBe(200);
    source.stateName = "re-attesting";
    expect((await fetch(`${api.url}/readyz`)).status).toBe(200);
    source.stateName = "revoked";
    expect((await fetch(`${api.url}/readyz`)).status).toBe(503);
  });

  it("status shows state, names and versions, never material", async () => {
    const api = await serve(filled());
    const response = await fetch(`${api.url}/status`);
    const text = await response.text();
    expect(JSON.parse(text)).toMatchObject({
      agentId: "agent-1",
      state: "trusted",
      attestedUntil: AT.toISOString(),
      keys: [
        { name: "orders", current: "v1", versions: ["v1"] },
        { name: "ledger", current: "r1", versions: ["r1"] },
      ],
    });
    for (const form of ["hex", "base64", "base64url"] as const) {
      expect(text).not.toContain(OCT.toString(form));
      expect(text).not.toContain(rsaDer.toString(form).slice(0, 64));
    }
  });

  it("logs method, path without query and status, nothing else", async () => {
    const logs: { message: string; fields?: LogFields }[] = [];
    const api = await serve(filled(), logs);
    await (await fetch(`${api.url}/keys/orders?version=v1`)).arrayBuffer();
    await (await fetch(`${api.url}/keys/payroll`)).arrayBuffer();
    const access = logs.filter((l) => l.message === "key api request").map((l) => l.fields);
    expect(access).toEqual([
      { method: "GET", path: "/keys/orders", status: 200 },
      { method: "GET", path: "/keys/payroll", status: 404 },
    ]);
    expect(JSON.stringify(logs)).not.toContain(OCT.toString("base64url"));
  });
});

describe("key api: where it listens", () => {
  it("refuses a non-loopback address unless allowed", async () => {
    for (const host of ["0.0.0.0", "10.0.0.4", "::", "example.com"]) {
      expect(() => checkListen({ kind: "tcp", host, port: 0 }, false)).toThrow(/not a loopback address/);
      await expect(
        startKeyApi({ listen: { kind: "tcp", host, port: 0 }, agent: filled() }),
      ).rejects.toMatchObject({ code: "ERR_CONFIG" });
    }
    for (const host of ["127.0.0.1", "127.1.2.3", "::1", "localhost"]) {
      expect(() => checkListen({ kind: "tcp", host, port: 0 }, false)).not.toThrow();
    }
    const api = await startKeyApi({
      listen: { kind: "tcp", host: "0.0.0.0", port: 0 },
      allowNonLoopback: true,
      agent: filled(),
    });
    apis.push(api);
    expect(api.address).toMatchObject({ kind: "tcp", host: "0.0.0.0" });
  });

  it("listens on a Unix socket, replacing a stale one", async () => {
    const dir = await tempDir("keyapi");
    dirs.push(dir);
    const path = join(dir, "shield.sock");
    // A crashed run leaves its socket file behind: made here by moving a live socket's file away
    // from the path its server removes on close.
    const crashed = createServer();
    await new Promise<void>((resolve) => crashed.listen(join(dir, "old.sock"), resolve));
    await rename(join(dir, "old.sock"), path);
    await new Promise((resolve) => crashed.close(resolve));
    expect((await lstat(path)).isSocket()).toBe(true);
    const api = await startKeyApi({ listen: { kind: "unix", path }, agent: filled() });
    apis.push(api);
    expect(api.url).toBe(`unix:${path}`);
    const body = await new Promise<Buffer>((resolve, reject) => {
      const request = httpRequest({ socketPath: path, path: "/keys/orders" }, (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("end", () => resolve(Buffer.concat(chunks)));
      });
      request.on("error", reject);
      request.end();
    });
    expect(body.equals(OCT)).toBe(true);
  });

  it("refuses a socket path that holds something other than a socket", async () => {
    const dir = await tempDir("keyapi");
    dirs.push(dir);
    const path = join(dir, "not-a-socket");
    await writeFile(path, "data");
    await expect(startKeyApi({ listen: { kind: "unix", path }, agent: filled() })).rejects.toMatchObject({
      code: "ERR_CONFIG",
    });
  });
});
