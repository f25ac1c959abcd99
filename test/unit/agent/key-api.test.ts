import { createPrivateKey, generateKeyPairSync, randomBytes } from "node:crypto";
import { request as httpRequest, type IncomingHttpHeaders, type OutgoingHttpHeaders } from "node:http";
import { lstat, mkdir, rename, rm, writeFile } from "node:fs/promises";
import { connect, createServer } from "node:net";
import { join } from "node:path";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import type { AgentStatus } from "../../../agent/agent.js";
import { Secret } from "../../../agent/config.js";
import { HeldKeys } from "../../../agent/held-keys.js";
import {
  checkListen,
  readKeyApiToken,
  startKeyApi,
  type KeyApi,
  type KeyApiErrorCode,
  type KeyApiOptions,
  type KeySource,
} from "../../../agent/key-api.js";
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
      inbox: { accepted: 0, dropped: {} },
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
  options: Partial<KeyApiOptions> = {},
): Promise<KeyApi> {
  const api = await startKeyApi({
    listen: { kind: "tcp", host: "127.0.0.1", port: 0 },
    agent: source,
    logger: (_level, message, fields) => logs.push({ message, ...(fields ? { fields } : {}) }),
    ...options,
  });
  apis.push(api);
  return api;
}

function portOf(api: KeyApi): number {
  if (api.address.kind !== "tcp") throw new Error("not a TCP key API");
  return api.address.port;
}

interface Answer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
}

/** One GET with exactly these headers: fetch always sends its own Host. */
function get(
  api: KeyApi,
  path: string,
  headers: OutgoingHttpHeaders,
  connectTo = "127.0.0.1",
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const request = httpRequest(
      { host: connectTo, port: portOf(api), path, headers, setHost: false, agent: false },
      (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("end", () =>
          resolve({
            status: response.statusCode ?? 0,
            headers: response.headers,
            body: Buffer.concat(chunks),
          }),
        );
      },
    );
    request.on("error", reject);
    request.end();
  });
}

/** Bytes written to the socket as they are, for requests no HTTP client would send. */
function raw(api: KeyApi, text: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const socket = connect(portOf(api), "127.0.0.1");
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", reject);
    socket.on("close", () => {
      const all = Buffer.concat(chunks);
      const split = all.indexOf("\r\n\r\n");
      const head = all.subarray(0, split).toString("latin1").split("\r\n");
      const headers: IncomingHttpHeaders = {};
      for (const line of head.slice(1)) {
        const colon = line.indexOf(":");
        headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
      }
      resolve({ status: Number(head[0]!.split(" ")[1]), headers, body: all.subarray(split + 4) });
    });
    socket.write(text);
  });
}

/** The error body, checked to be exactly `{error: {code, message}}`. */
function errorOf(answer: Answer): { code: KeyApiErrorCode; message: string } {
  expect(answer.headers["content-type"]).toBe("application/json; charset=utf-8");
  const body = JSON.parse(answer.body.toString("utf8")) as {
    error: { code: KeyApiErrorCode; message: string };
  };
  expect(Object.keys(body)).toEqual(["error"]);
  expect(Object.keys(body.error).sort()).toEqual(["code", "message"]);
  return body.error;
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
    // No browser reaches a Unix socket, so there is no rebinding to refuse: Host is not checked.
    const status = await new Promise<number>((resolve, reject) => {
      const request = httpRequest(
        { socketPath: path, path: "/keys/orders", headers: { host: "attacker.example:8280" } },
        (response) => {
          response.resume();
          resolve(response.statusCode ?? 0);
        },
      );
      request.on("error", reject);
      request.end();
    });
    expect(status).toBe(200);
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

describe("key api: Host check against DNS rebinding", () => {
  it("answers a loopback name with the bound port, and 421 for any other Host, on every route", async () => {
    const api = await serve(filled());
    const port = portOf(api);
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `LocalHost:${port}`, `[::1]:${port}`]) {
      const answer = await get(api, "/keys/orders", { host });
      expect(answer.status).toBe(200);
      expect(answer.body.equals(OCT)).toBe(true);
    }
    const refused = [
      `attacker.example:${port}`,
      `127.0.0.1.attacker.example:${port}`,
      `localhost.:${port}`,
      `127.0.0.1:${port + 1}`,
      `127.0.0.1:0${port}`,
      `127.0.0.1:${port}@attacker.example`,
      "127.0.0.1",
      "localhost",
      "",
    ];
    for (const path of ["/keys/orders", "/keys/orders?version=v1", "/status", "/readyz", "/healthz", "/x"]) {
      for (const host of refused) {
        const answer = await get(api, path, { host });
        expect(answer.status).toBe(421);
        expect(errorOf(answer)).toEqual({
          code: "misdirected",
          message: "the Host header does not name this key API",
        });
        expect(answer.body.includes(OCT)).toBe(false);
      }
    }
  });

  it("refuses a request without Host, or with two", async () => {
    const api = await serve(filled());
    const port = portOf(api);
    expect((await get(api, "/keys/orders", {})).status).toBe(421);
    const twice = await raw(
      api,
      `GET /keys/orders HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nHost: attacker.example\r\nConnection: close\r\n\r\n`,
    );
    expect(twice.status).toBe(421);
    const http10 = await raw(api, "GET /keys/orders HTTP/1.0\r\n\r\n");
    expect(http10.status).toBe(421);
    expect(errorOf(http10).code).toBe("misdirected");
  });

  it("refuses a request target that names another authority, whatever Host says", async () => {
    const api = await serve(filled());
    const answer = await raw(
      api,
      `GET http://attacker.example/keys/orders HTTP/1.1\r\nHost: 127.0.0.1:${portOf(api)}\r\nConnection: close\r\n\r\n`,
    );
    expect(answer.status).toBe(400);
    expect(errorOf(answer).code).toBe("bad-request");
    expect(answer.body.includes(OCT)).toBe(false);
  });

  it("beyond loopback, also answers the address the connection arrived on, and nothing else", async () => {
    const api = await serve(filled(), [], {
      listen: { kind: "tcp", host: "0.0.0.0", port: 0 },
      allowNonLoopback: true,
    });
    const port = portOf(api);
    // Linux routes all of 127/8 to loopback: 127.0.0.2 stands for an interface address here.
    expect((await get(api, "/keys/orders", { host: `127.0.0.2:${port}` }, "127.0.0.2")).status).toBe(200);
    expect((await get(api, "/keys/orders", { host: `127.0.0.3:${port}` }, "127.0.0.2")).status).toBe(421);
    expect((await get(api, "/keys/orders", { host: `127.0.0.2:${port}` }, "127.0.0.1")).status).toBe(421);
    expect((await get(api, "/keys/orders", { host: `localhost:${port}` }, "127.0.0.2")).status).toBe(200);
  });
});

describe("key api: bearer token", () => {
  const token = randomBytes(33).toString("base64url");
  const bearer = (value: string) => ({ authorization: `Bearer ${value}` });
  const withToken = (source: KeySource = filled()) => serve(source, [], { bearerToken: new Secret(token) });
  const host = (api: KeyApi) => ({ host: `127.0.0.1:${portOf(api)}` });

  it("serves every route but /healthz only with the token", async () => {
    const api = await withToken();
    for (const path of ["/keys/orders", "/keys/payroll", "/status", "/readyz", "/x"]) {
      const answer = await get(api, path, host(api));
      expect(answer.status).toBe(401);
      expect(answer.headers["www-authenticate"]).toBe('Bearer realm="shield-key-api"');
      expect(errorOf(answer)).toEqual({
        code: "unauthorized",
        message: "this route needs the key API's bearer token",
      });
    }
    expect((await get(api, "/healthz", host(api))).status).toBe(200);
    const key = await get(api, "/keys/orders", { ...host(api), ...bearer(token) });
    expect(key.status).toBe(200);
    expect(key.body.equals(OCT)).toBe(true);
    expect((await get(api, "/status", { ...host(api), authorization: `bearer  ${token}` })).status).toBe(200);
    expect((await fetch(`${api.url}/readyz`, { headers: bearer(token) })).status).toBe(200);
  });

  it("refuses a wrong token, a longer or shorter one, another scheme or two headers", async () => {
    const api = await withToken();
    const other = randomBytes(33).toString("base64url");
    for (const authorization of [
      `Bearer ${other}`,
      `Bearer ${token}x`,
      `Bearer ${token.slice(0, -1)}`,
      `Bearer ${token} ${token}`,
      `Basic ${Buffer.from(`user:${token}`).toString("base64")}`,
      `Bearer`,
      token,
    ]) {
      const answer = await get(api, "/keys/orders", { ...host(api), authorization });
      expect(answer.status).toBe(401);
      expect(answer.headers["www-authenticate"]).toMatch(/^Bearer /);
      expect(answer.body.includes(OCT)).toBe(false);
      expect(answer.body.toString()).not.toContain(token);
      expect(answer.body.toString()).not.toContain(other);
    }
    const wrong = await get(api, "/keys/orders", { ...host(api), ...bearer(other) });
    expect(wrong.headers["www-authenticate"]).toBe('Bearer realm="shield-key-api", error="invalid_token"');
    const twice = await raw(
      api,
      `GET /keys/orders HTTP/1.1\r\nHost: 127.0.0.1:${portOf(api)}\r\nAuthorization: Bearer ${token}\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`,
    );
    expect(twice.status).toBe(401);
    const once = await raw(
      api,
      `GET /keys/orders HTTP/1.1\r\nHost: 127.0.0.1:${portOf(api)}\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`,
    );
    expect(once.status).toBe(200);
  });

  it("checks Host before the token: a rebound page with a stolen token still gets 421", async () => {
    const api = await withToken();
    const answer = await get(api, "/keys/orders", {
      host: `attacker.example:${portOf(api)}`,
      ...bearer(token),
    });
    expect(answer.status).toBe(421);
  });

  it("needs no token when none is configured", async () => {
    const api = await serve(filled());
    expect((await fetch(`${api.url}/keys/orders`)).status).toBe(200);
  });

  it("refuses a short or malformed token, or one that is not a Secret, as misuse", async () => {
    for (const bearerToken of [
      new Secret(""),
      new Secret("x".repeat(31)),
      new Secret(`${"x".repeat(32)} y`),
      new Secret(`${"x".repeat(32)}\n`),
      token as unknown as Secret,
    ]) {
      await expect(
        startKeyApi({ listen: { kind: "tcp", host: "127.0.0.1", port: 0 }, agent: filled(), bearerToken }),
      ).rejects.toThrow(TypeError);
    }
  });
});

describe("readKeyApiToken", () => {
  it("reads one token, ignoring the newline around it", async () => {
    const dir = await tempDir("token");
    dirs.push(dir);
    const token = randomBytes(48).toString("base64");
    await writeFile(join(dir, "token"), `${token}\n`);
    const secret = await readKeyApiToken(join(dir, "token"));
    expect(secret.reveal()).toBe(token);
    expect(String(secret)).toBe("[redacted]");
    const exact = "A".repeat(32);
    await writeFile(join(dir, "exact"), exact);
    expect((await readKeyApiToken(join(dir, "exact"))).reveal()).toBe(exact);
  });

  it("refuses an empty, short, malformed, oversized or unreadable token file without showing it", async () => {
    const dir = await tempDir("token");
    dirs.push(dir);
    await mkdir(join(dir, "a-directory"));
    const files: Record<string, string> = {
      empty: "",
      blank: " \n",
      short: "s3cr3t-but-only-31-characters-x",
      spaced: "s3cr3t-token-with-a-space-inside 0123456789",
      "two-lines": "s3cr3t-token-number-one-0123456789\ns3cr3t-token-number-two-0123456789\n",
      oversized: "s3cr3t".repeat(1000),
    };
    for (const [name, content] of Object.entries(files)) await writeFile(join(dir, name), content);
    for (const name of [...Object.keys(files), "missing", "a-directory"]) {
      const path = join(dir, name);
      const error = await readKeyApiToken(path).then(
        () => undefined,
        (caught: unknown) => caught,
      );
      expect(error).toMatchObject({ code: "ERR_CONFIG" });
      const message = (error as Error).message;
      expect(message).toContain(`SHIELD_KEY_API_TOKEN_FILE ${path}`);
      expect(message).not.toMatch(/s3cr3t/);
    }
  });
});

describe("key api: error bodies", () => {
  const PROBE = "zz-probe-0123456789";

  it("every refusal is a JSON error with a typed code, echoing nothing the request sent", async () => {
    const token = randomBytes(33).toString("base64url");
    const source = filled();
    source.keys.install("orders", "v2", "oct-HSM", randomBytes(32), AT);
    source.keys.wipeVersion("orders", "v1", { revoked: true });
    const api = await serve(source, [], { bearerToken: new Secret(token) });
    const port = portOf(api);
    const good = { host: `127.0.0.1:${port}`, authorization: `Bearer ${token}`, "x-probe": PROBE };
    const cases: [string, OutgoingHttpHeaders, number, KeyApiErrorCode][] = [
      [`/keys/orders`, { ...good, host: `${PROBE}.example:${port}` }, 421, "misdirected"],
      [`/keys/orders`, { ...good, authorization: `Bearer ${PROBE}${token}` }, 401, "unauthorized"],
      [`/${PROBE}`, good, 404, "not-found"],
      [`/keys/${PROBE}`, good, 404, "unknown-key"],
      [`/keys/orders?version=${PROBE}!`, good, 400, "bad-version"],
      [`/keys/orders?version=v1`, good, 403, "revoked"],
      [`/keys/orders?version=v0${PROBE.replace(/-/g, "")}`, good, 404, "unknown-version"],
    ];
    for (const [path, headers, status, code] of cases) {
      const answer = await get(api, path, headers);
      expect([path, answer.status]).toEqual([path, status]);
      const error = errorOf(answer);
      expect(error.code).toBe(code);
      expect(error.message.length).toBeLessThan(80);
      const text = answer.body.toString("utf8");
      for (const secret of [PROBE, token, OCT.toString("base64url"), OCT.toString("hex")]) {
        expect(text).not.toContain(secret);
      }
    }
    const post = await fetch(`${api.url}/keys/orders`, { method: "POST", body: PROBE, headers: good });
    expect(post.status).toBe(405);
    expect(await post.text()).toBe(
      JSON.stringify({ error: { code: "method-not-allowed", message: "only GET is served" } }),
    );
    source.stateName = "failed";
    const failed = await get(api, "/keys/orders", good);
    expect(errorOf(failed)).toEqual({ code: "failed", message: "the agent is failed; it serves no keys" });
    source.stateName = "attesting";
    source.keys.wipeAll({ revoked: false });
    const notReady = await get(api, "/keys/orders", good);
    expect(notReady.status).toBe(503);
    expect(errorOf(notReady)).toEqual({
      code: "not-ready",
      message: "the key is not held yet (agent attesting)",
    });
  });

  it("an internal failure is a 500 that says nothing of its cause", async () => {
    const source = filled();
    source.status = () => {
      throw new Error(`status failed near ${OCT.toString("hex")}`);
    };
    const api = await serve(source);
    const answer = await fetch(`${api.url}/keys/orders`);
    expect(answer.status).toBe(500);
    expect(await answer.json()).toEqual({ error: { code: "internal", message: "internal error" } });
  });

  it("a request Node cannot parse gets the same JSON error, not a bare status line", async () => {
    const api = await serve(filled());
    const garbage = await raw(api, `${PROBE} \u0001\r\n\r\n`);
    expect(garbage.status).toBe(400);
    expect(errorOf(garbage)).toEqual({ code: "bad-request", message: "the request is not valid HTTP" });
    const huge = await raw(
      api,
      `GET /keys/orders HTTP/1.1\r\nHost: 127.0.0.1:${portOf(api)}\r\nX-Probe: ${PROBE.repeat(2000)}\r\n\r\n`,
    );
    expect(huge.status).toBe(431);
    expect(errorOf(huge).code).toBe("headers-too-large");
    expect(huge.body.toString()).not.toContain(PROBE);
  });
});
