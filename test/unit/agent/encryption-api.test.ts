/**
 * The encryption routes of the key API, over HTTP against a real key API and a real key store,
 * and the client library against the same. What is checked: round trips, that every refusal has
 * its typed code (tampering, associated data, versions not held, revoked, retired, batch limits,
 * body shape and size), that the key API's Host and token rules hold on these routes too, and
 * that neither an answer nor a log line carries the key or the plaintext of another request.
 */
import { createCipheriv, createHmac, generateKeyPairSync, randomBytes } from "node:crypto";
import { request as httpRequest, type IncomingHttpHeaders, type OutgoingHttpHeaders } from "node:http";
import { rm } from "node:fs/promises";
import { connect } from "node:net";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import type { AgentStatus } from "../../../agent/agent.js";
import { Secret } from "../../../agent/config.js";
import { KeyOperations, ciphertextVersion } from "../../../agent/encryption.js";
import { MAX_BATCH_ITEMS, MAX_BODY_BYTES } from "../../../agent/encryption-api.js";
import { HeldKeys } from "../../../agent/held-keys.js";
import { startKeyApi, type KeyApi, type KeyApiOptions, type KeySource } from "../../../agent/key-api.js";
import type { AgentStateName } from "../../../agent/state-machine.js";
import type { LogFields } from "../../../core/ports/logger.js";
import {
  ShieldApiError,
  createShieldClient,
  ciphertextVersion as clientCiphertextVersion,
} from "../../../client/shield-client.js";
import { tempDir } from "./fakes.js";

const AT = new Date("2030-01-01T00:00:00Z");

class FakeSource implements KeySource {
  readonly keys = new HeldKeys();
  readonly configuredKeys = ["orders", "ledger", "short"] as const;
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
      inbox: { accepted: 0, dropped: {} },
    };
  }
}

/** A source holding `orders` v1 (32 bytes), `ledger` (RSA) and `short` (a 128-bit oct key). */
function filled(): { source: FakeSource; v1: Buffer } {
  const source = new FakeSource();
  const v1 = randomBytes(32);
  source.keys.install("orders", "v1", "oct-HSM", v1, AT);
  const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({
    type: "pkcs8",
    format: "der",
  });
  source.keys.install("ledger", "r1", "RSA-HSM", rsa, AT);
  source.keys.install("short", "s1", "oct-HSM", randomBytes(16), AT);
  return { source, v1 };
}

const apis: KeyApi[] = [];
const dirs: string[] = [];
afterEach(async () => {
  for (const api of apis.splice(0)) await api.close();
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

async function serve(
  source: KeySource,
  options: Partial<KeyApiOptions> = {},
  logs: { message: string; fields?: LogFields }[] = [],
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

interface Answer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly json: { error?: { code: string; message: string; item?: number } } & Record<string, unknown>;
  readonly text: string;
}

/** One request with exactly these headers (fetch always sends its own Host). */
function send(
  api: KeyApi,
  method: string,
  path: string,
  body: string | Buffer | undefined,
  headers: OutgoingHttpHeaders = {},
): Promise<Answer> {
  if (api.address.kind !== "tcp") throw new Error("not TCP");
  const port = api.address.port;
  return new Promise((resolve, reject) => {
    const outgoing = httpRequest(
      {
        host: "127.0.0.1",
        port,
        method,
        path,
        setHost: false,
        agent: false,
        headers: { host: `127.0.0.1:${port}`, "content-type": "application/json", ...headers },
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          resolve({
            status: response.statusCode ?? 0,
            headers: response.headers,
            text,
            json: JSON.parse(text) as Answer["json"],
          });
        });
      },
    );
    outgoing.on("error", reject);
    outgoing.end(body);
  });
}

const post = (api: KeyApi, path: string, body: unknown, headers: OutgoingHttpHeaders = {}) =>
  send(api, "POST", path, JSON.stringify(body), headers);
const b64 = (text: string | Buffer) => Buffer.from(text).toString("base64");

async function encrypt(api: KeyApi, plaintext: string, associatedData?: string): Promise<string> {
  const answer = await post(api, "/v1/encrypt/orders", {
    plaintext: b64(plaintext),
    ...(associatedData === undefined ? {} : { associatedData: b64(associatedData) }),
  });
  expect(answer.status).toBe(200);
  return answer.json["ciphertext"] as string;
}

/** The ciphertext with one byte of its body flipped. */
function tampered(ciphertext: string, at: number): string {
  const [prefix, version, body] = [ciphertext.slice(0, 10), ...ciphertext.slice(10).split(":")];
  const bytes = Buffer.from(body!, "base64url");
  bytes[at] = bytes[at]! ^ 1;
  return `${prefix}${version}:${bytes.toString("base64url")}`;
}

describe("encryption api: round trips", () => {
  it("encrypts under the current version and decrypts back, with and without associated data", async () => {
    const { source, v1 } = filled();
    const api = await serve(source);
    const secret = "4111 1111 1111 1111";
    const answer = await post(api, "/v1/encrypt/orders", { plaintext: b64(secret) });
    expect(answer.status).toBe(200);
    expect(answer.headers["cache-control"]).toBe("no-store");
    expect(Object.keys(answer.json).sort()).toEqual(["ciphertext", "version"]);
    const ciphertext = answer.json["ciphertext"] as string;
    expect(ciphertext).toMatch(/^shield:v1:v1:[A-Za-z0-9_-]+$/);
    expect(answer.json["version"]).toBe("v1");
    expect(ciphertextVersion(ciphertext)).toBe("v1");
    expect(clientCiphertextVersion(ciphertext)).toBe("v1");
    // nonce (12) + plaintext + tag (16)
    expect(Buffer.from(ciphertext.split(":")[3]!, "base64url").length).toBe(12 + secret.length + 16);
    for (const form of ["utf8", "hex", "base64", "base64url"] as const) {
      expect(answer.text).not.toContain(Buffer.from(secret).toString(form));
      expect(answer.text).not.toContain(v1.toString(form));
    }
    const opened = await post(api, "/v1/decrypt/orders", { ciphertext });
    expect(opened.status).toBe(200);
    expect(opened.json).toEqual({ plaintext: b64(secret), version: "v1" });

    const bound = await encrypt(api, secret, "order 42");
    const openedBound = await post(api, "/v1/decrypt/orders", {
      ciphertext: bound,
      associatedData: b64("order 42"),
    });
    expect(openedBound.json["plaintext"]).toBe(b64(secret));
    // The same plaintext twice: a fresh nonce each time.
    expect(await encrypt(api, secret)).not.toBe(ciphertext);
    // The empty plaintext is a value too.
    const empty = await encrypt(api, "");
    expect((await post(api, "/v1/decrypt/orders", { ciphertext: empty })).json["plaintext"]).toBe("");
  });

  it("is AES-256-GCM under the data key, with the key name and version bound in the associated data", () => {
    const { source, v1 } = filled();
    const operations = new KeyOperations(source.keys);
    // Made by hand with the documented layout: the API must open it.
    const nonce = randomBytes(12);
    const cipher = createCipheriv("aes-256-gcm", v1, nonce);
    cipher.setAAD(Buffer.concat([Buffer.from("shield:v1:orders:v1\0"), Buffer.from("ad")]));
    const body = Buffer.concat([nonce, cipher.update("hello"), cipher.final(), cipher.getAuthTag()]);
    const opened = operations.decrypt(
      "orders",
      `shield:v1:v1:${body.toString("base64url")}`,
      Buffer.from("ad"),
    );
    expect(opened.plaintext.toString()).toBe("hello");
  });
});

describe("encryption api: refusals", () => {
  it("refuses tampered ciphertext, other associated data, and a relabelled version with typed codes", async () => {
    const { source } = filled();
    const api = await serve(source);
    const ciphertext = await encrypt(api, "alice@example.com", "row 1");
    const decrypt = (body: unknown) => post(api, "/v1/decrypt/orders", body);
    const ad = b64("row 1");
    expect((await decrypt({ ciphertext, associatedData: ad })).status).toBe(200);
    const bodyLength = Buffer.from(ciphertext.split(":")[3]!, "base64url").length;
    // A flipped bit in the nonce, the ciphertext and the tag.
    for (const at of [0, 12, bodyLength - 1]) {
      const answer = await decrypt({ ciphertext: tampered(ciphertext, at), associatedData: ad });
      expect(answer.status).toBe(400);
      expect(answer.json.error).toEqual({
        code: "decryption-failed",
        message: "the ciphertext does not verify under this key and associated data",
      });
    }
    for (const associatedData of [b64("row 2"), undefined]) {
      const answer = await decrypt({
        ciphertext,
        ...(associatedData === undefined ? {} : { associatedData }),
      });
      expect(answer.json.error?.code).toBe("decryption-failed");
    }
    // Relabelled to another version that is held: the version is bound, the tag fails.
    source.keys.install("orders", "v2", "oct-HSM", randomBytes(32), AT);
    const relabelled = ciphertext.replace("shield:v1:v1:", "shield:v1:v2:");
    expect((await decrypt({ ciphertext: relabelled, associatedData: ad })).json.error?.code).toBe(
      "decryption-failed",
    );
    // To a version that is not held.
    const unknown = await decrypt({
      ciphertext: ciphertext.replace("shield:v1:v1:", "shield:v1:v9:"),
      associatedData: ad,
    });
    expect(unknown.status).toBe(404);
    expect(unknown.json.error?.code).toBe("unknown-version");
    // Under another key: the same bytes do not open.
    source.keys.install("short", "s2", "oct-HSM", randomBytes(32), AT);
    expect(
      (
        await post(api, "/v1/decrypt/short", {
          ciphertext: relabelled.replace(":v2:", ":s2:"),
          associatedData: ad,
        })
      ).json.error?.code,
    ).toBe("decryption-failed");
  });

  it("refuses what is not a ciphertext", async () => {
    const { source } = filled();
    const api = await serve(source);
    const good = await encrypt(api, "x");
    const body = good.split(":")[3]!;
    for (const ciphertext of [
      "hello",
      `shield:v2:v1:${body}`,
      `shield:v1:v1:${body}=`,
      `shield:v1:v1:${body}+`,
      `shield:v1::${body}`,
      `shield:v1:v1:${body.slice(0, 30)}`,
      " " + good,
      good + "\n",
    ]) {
      const answer = await post(api, "/v1/decrypt/orders", { ciphertext });
      expect(answer.status, ciphertext).toBe(400);
      expect(answer.json.error?.code, ciphertext).toBe("bad-ciphertext");
    }
  });

  it("refuses a revoked version, and everything once the agent is revoked or failed", async () => {
    const { source } = filled();
    const api = await serve(source);
    const old = await encrypt(api, "under v1");
    source.keys.install("orders", "v2", "oct-HSM", randomBytes(32), AT);
    source.keys.wipeVersion("orders", "v1", { revoked: true });
    const answer = await post(api, "/v1/decrypt/orders", { ciphertext: old });
    expect(answer.status).toBe(403);
    expect(answer.json.error?.code).toBe("revoked");
    expect((await post(api, "/v1/rewrap/orders", { ciphertext: old })).json.error?.code).toBe("revoked");
    const current = await encrypt(api, "under v2");
    expect((await post(api, "/v1/decrypt/orders", { ciphertext: current })).status).toBe(200);
    for (const state of ["revoked", "failed"] as const) {
      source.stateName = state;
      for (const [path, body] of [
        ["/v1/encrypt/orders", { plaintext: b64("x") }],
        ["/v1/decrypt/orders", { ciphertext: current }],
        ["/v1/rewrap/orders", { ciphertext: current }],
        ["/v1/hmac/orders", { data: b64("x") }],
      ] as const) {
        const refused = await post(api, path, body);
        expect(refused.status).toBe(403);
        expect(refused.json.error?.code).toBe(state);
      }
    }
  });

  it("503 with Retry-After while the key is not held; 404 for keys not configured", async () => {
    const source = new FakeSource();
    source.stateName = "attesting";
    const api = await serve(source);
    const answer = await post(api, "/v1/encrypt/orders", { plaintext: b64("x") });
    expect(answer.status).toBe(503);
    expect(answer.headers["retry-after"]).toBe("2");
    expect(answer.json.error?.code).toBe("not-ready");
    for (const name of ["payroll", "orders_x", "a%2Fb"]) {
      const unknown = await post(api, `/v1/encrypt/${name}`, { plaintext: b64("x") });
      expect(unknown.status).toBe(404);
      expect(unknown.json.error?.code).toBe("unknown-key");
    }
    expect((await post(api, "/v1/sign/orders", {})).status).toBe(404);
  });

  it("only 256-bit oct keys encrypt", async () => {
    const { source } = filled();
    const api = await serve(source);
    for (const key of ["ledger", "short"]) {
      const answer = await post(api, `/v1/encrypt/${key}`, { plaintext: b64("x") });
      expect(answer.status).toBe(400);
      expect(answer.json.error?.code).toBe("unsupported-key");
      expect((await post(api, `/v1/hmac/${key}`, { data: b64("x") })).json.error?.code).toBe(
        "unsupported-key",
      );
    }
  });

  it("checks method, media type, size and shape before anything runs", async () => {
    const { source } = filled();
    const api = await serve(source);
    const get = await send(api, "GET", "/v1/encrypt/orders", undefined);
    expect(get.status).toBe(405);
    expect(get.headers["allow"]).toBe("POST");
    const text = await send(api, "POST", "/v1/encrypt/orders", JSON.stringify({ plaintext: b64("x") }), {
      "content-type": "text/plain",
    });
    expect(text.status).toBe(415);
    expect(text.json.error?.code).toBe("unsupported-media-type");
    const large = await send(api, "POST", "/v1/encrypt/orders", Buffer.alloc(MAX_BODY_BYTES + 1, 0x20));
    expect(large.status).toBe(413);
    expect(large.json.error?.code).toBe("too-large");
    // Without a Content-Length (chunked), the limit holds while reading.
    const chunked = await send(api, "POST", "/v1/encrypt/orders", Buffer.alloc(MAX_BODY_BYTES + 1, 0x20), {
      "transfer-encoding": "chunked",
    });
    expect(chunked.status).toBe(413);
    for (const body of [
      "not json",
      "null",
      "[]",
      JSON.stringify({}),
      JSON.stringify({ plaintext: "not base64!" }),
      JSON.stringify({ plaintext: "QQ" }),
      JSON.stringify({ plaintext: b64("x"), extra: 1 }),
      JSON.stringify({ plaintext: 5 }),
      JSON.stringify({ ciphertext: "shield:v1:v1:AAAA" }),
      JSON.stringify({ items: [] }),
      JSON.stringify({ items: [{ plaintext: b64("x") }], plaintext: b64("x") }),
      JSON.stringify({ plaintext: b64(Buffer.alloc(64 * 1024 + 3)) }),
    ]) {
      const answer = await send(api, "POST", "/v1/encrypt/orders", body);
      expect(answer.status, body.slice(0, 40)).toBe(400);
      expect(answer.json.error?.code).toBe("bad-request");
      expect(answer.text).not.toContain("not base64!");
    }
    const badContext = await post(api, "/v1/hmac/orders", { data: b64("x"), context: "a b" });
    expect(badContext.json.error?.code).toBe("bad-request");
  });
});

describe("encryption api: minimum decryption version", () => {
  it("old ciphertext decrypts after a rotation until the minimum is raised past its version", async () => {
    const { source } = filled();
    const before = await serve(source);
    const old = await encrypt(before, "under v1");
    source.keys.install("orders", "v2", "oct-HSM", randomBytes(32), AT);
    expect((await post(before, "/v1/decrypt/orders", { ciphertext: old })).status).toBe(200);

    const raised = await serve(source, { minDecryptionVersions: new Map([["orders", "v2"]]) });
    const refused = await post(raised, "/v1/decrypt/orders", { ciphertext: old });
    expect(refused.status).toBe(403);
    expect(refused.json.error).toEqual({
      code: "version-retired",
      message: "the ciphertext's key version is below the minimum decryption version",
    });
    expect((await post(raised, "/v1/rewrap/orders", { ciphertext: old })).json.error?.code).toBe(
      "version-retired",
    );
    const current = await encrypt(raised, "under v2");
    expect((await post(raised, "/v1/decrypt/orders", { ciphertext: current })).status).toBe(200);
    // The minimum itself, and what came after it, decrypt.
    const atMinimum = await serve(source, { minDecryptionVersions: new Map([["orders", "v1"]]) });
    expect((await post(atMinimum, "/v1/decrypt/orders", { ciphertext: old })).status).toBe(200);
  });

  it("while the minimum is not installed, only the current version decrypts", () => {
    const { source } = filled();
    const ops = new KeyOperations(source.keys, new Map([["orders", "v3"]]));
    const loose = new KeyOperations(source.keys);
    const old = loose.encrypt("orders", Buffer.from("a")).ciphertext;
    source.keys.install("orders", "v2", "oct-HSM", randomBytes(32), AT);
    expect(() => ops.decrypt("orders", old)).toThrow(
      expect.objectContaining({ code: "ERR_KEY_VERSION_RETIRED" }),
    );
    expect(ops.decryptingVersions("orders")).toEqual(["v2"]);
    expect(loose.decryptingVersions("orders")).toEqual(["v2", "v1"]);
    source.keys.install("orders", "v3", "oct-HSM", randomBytes(32), AT);
    expect(ops.decryptingVersions("orders")).toEqual(["v3"]);
    expect(() => new KeyOperations(source.keys, new Map([["orders", "../x"]]))).toThrow(TypeError);
  });
});

describe("encryption api: rewrap and blind indexes", () => {
  it("rewraps to the current version without returning plaintext", async () => {
    const { source } = filled();
    const api = await serve(source);
    const old = await encrypt(api, "bob@example.com", "row 7");
    source.keys.install("orders", "v2", "oct-HSM", randomBytes(32), AT);
    const answer = await post(api, "/v1/rewrap/orders", { ciphertext: old, associatedData: b64("row 7") });
    expect(answer.status).toBe(200);
    expect(Object.keys(answer.json).sort()).toEqual(["ciphertext", "version"]);
    expect(answer.json["version"]).toBe("v2");
    expect(answer.text).not.toContain(b64("bob@example.com"));
    const fresh = answer.json["ciphertext"] as string;
    expect(ciphertextVersion(fresh)).toBe("v2");
    const opened = await post(api, "/v1/decrypt/orders", { ciphertext: fresh, associatedData: b64("row 7") });
    expect(opened.json).toEqual({ plaintext: b64("bob@example.com"), version: "v2" });
    // Rewrapping checks the tag like decrypting does.
    expect((await post(api, "/v1/rewrap/orders", { ciphertext: old })).json.error?.code).toBe(
      "decryption-failed",
    );
    // With hmacContext: the blind index under the new version comes along.
    const withIndex = await post(api, "/v1/rewrap/orders", {
      ciphertext: old,
      associatedData: b64("row 7"),
      hmacContext: "customer.email",
    });
    const index = await post(api, "/v1/hmac/orders", {
      data: b64("bob@example.com"),
      context: "customer.email",
    });
    expect(withIndex.json["hmac"]).toBe(index.json["hmac"]);
  });

  it("blind indexes are stable per version and context, derived, and never the data key's own HMAC", async () => {
    const { source, v1 } = filled();
    const api = await serve(source);
    const index = async (data: string, context?: string) =>
      (await post(api, "/v1/hmac/orders", { data: b64(data), ...(context === undefined ? {} : { context }) }))
        .json;
    const first = await index("alice@example.com", "customer.email");
    expect(first["hmac"]).toMatch(/^shield-hmac:v1:v1:[A-Za-z0-9_-]{43}$/);
    expect(first["version"]).toBe("v1");
    expect(first["candidates"]).toEqual([{ version: "v1", hmac: first["hmac"] }]);
    expect((await index("alice@example.com", "customer.email"))["hmac"]).toBe(first["hmac"]);
    expect((await index("alice@example.com", "card.number"))["hmac"]).not.toBe(first["hmac"]);
    expect((await index("alice@example.com"))["hmac"]).not.toBe(first["hmac"]);
    expect((await index("alicf@example.com", "customer.email"))["hmac"]).not.toBe(first["hmac"]);
    const underDataKey = createHmac("sha256", v1).update("alice@example.com").digest("base64url");
    expect(first["hmac"]).not.toContain(underDataKey);
    // After a rotation: stored under v2, looked up under v2 and v1.
    source.keys.install("orders", "v2", "oct-HSM", randomBytes(32), AT);
    const after = await index("alice@example.com", "customer.email");
    expect(after["version"]).toBe("v2");
    expect(after["candidates"]).toEqual([
      { version: "v2", hmac: after["hmac"] },
      { version: "v1", hmac: first["hmac"] },
    ]);
  });
});

describe("encryption api: batches", () => {
  it("answers every item in order, and refuses a batch as a whole naming the first bad item", async () => {
    const { source } = filled();
    const api = await serve(source);
    const values = Array.from({ length: 50 }, (_, i) => `customer-${i}@example.com`);
    const sealed = await post(api, "/v1/encrypt/orders", {
      items: values.map((value, i) => ({ plaintext: b64(value), associatedData: b64(`row ${i}`) })),
    });
    expect(sealed.status).toBe(200);
    const items = sealed.json["items"] as { ciphertext: string; version: string }[];
    expect(items).toHaveLength(50);
    const opened = await post(api, "/v1/decrypt/orders", {
      items: items.map((item, i) => ({ ciphertext: item.ciphertext, associatedData: b64(`row ${i}`) })),
    });
    expect(
      (opened.json["items"] as { plaintext: string }[]).map((item) =>
        Buffer.from(item.plaintext, "base64").toString(),
      ),
    ).toEqual(values);
    const oneBad = items.map((item, i) => ({
      ciphertext: item.ciphertext,
      associatedData: b64(`row ${i === 7 ? 8 : i}`),
    }));
    const refused = await post(api, "/v1/decrypt/orders", { items: oneBad });
    expect(refused.status).toBe(400);
    expect(refused.json).toEqual({
      error: { code: "decryption-failed", message: expect.any(String) as string, item: 7 },
    });
    expect(refused.text).not.toContain(b64(values[0]!));
  });

  it("takes at most MAX_BATCH_ITEMS items", async () => {
    const { source } = filled();
    const api = await serve(source);
    const item = { data: b64("x") };
    const full = await post(api, "/v1/hmac/orders", {
      items: Array.from({ length: MAX_BATCH_ITEMS }, () => item),
    });
    expect(full.status).toBe(200);
    expect(full.json["items"]).toHaveLength(MAX_BATCH_ITEMS);
    const over = await post(api, "/v1/hmac/orders", {
      items: Array.from({ length: MAX_BATCH_ITEMS + 1 }, () => item),
    });
    expect(over.status).toBe(413);
    expect(over.json.error?.code).toBe("too-large");
  });
});

describe("encryption api: the key API's rules hold here too", () => {
  it("421 for a Host that does not name the API, before the body is looked at", async () => {
    const { source } = filled();
    const api = await serve(source);
    const answer = await post(
      api,
      "/v1/encrypt/orders",
      { plaintext: b64("x") },
      { host: "attacker.example:8280" },
    );
    expect(answer.status).toBe(421);
    expect(answer.json.error?.code).toBe("misdirected");
  });

  it("401 without the bearer token, on every encryption route", async () => {
    const { source } = filled();
    const token = randomBytes(33).toString("base64url");
    const api = await serve(source, { bearerToken: new Secret(token) });
    for (const operation of ["encrypt", "decrypt", "rewrap", "hmac"]) {
      const missing = await post(api, `/v1/${operation}/orders`, { plaintext: b64("x") });
      expect(missing.status).toBe(401);
      expect(missing.json.error?.code).toBe("unauthorized");
      const wrong = await post(api, `/v1/${operation}/orders`, {}, { authorization: `Bearer ${token}x` });
      expect(wrong.status).toBe(401);
    }
    const right = await post(
      api,
      "/v1/encrypt/orders",
      { plaintext: b64("x") },
      { authorization: `Bearer ${token}` },
    );
    expect(right.status).toBe(200);
  });

  it("a client that goes away mid-body leaves no request waiting", async () => {
    const { source } = filled();
    const logs: { message: string; fields?: LogFields }[] = [];
    const api = await serve(source, {}, logs);
    if (api.address.kind !== "tcp") throw new Error("not TCP");
    const socket = connect(api.address.port, "127.0.0.1");
    await new Promise((resolve) => socket.once("connect", resolve));
    socket.write(
      `POST /v1/encrypt/orders HTTP/1.1\r\nHost: 127.0.0.1:${api.address.port}\r\n` +
        'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"plaintext":',
    );
    await new Promise((resolve) => setTimeout(resolve, 50));
    socket.destroy();
    const deadline = Date.now() + 5_000;
    while (!logs.some((line) => line.message === "key api request")) {
      if (Date.now() > deadline) throw new Error("the request never ended");
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(logs.find((line) => line.message === "key api request")?.fields).toEqual({
      method: "POST",
      path: "/v1/encrypt/orders",
      status: 400,
    });
  });

  it("logs method, path and status only", async () => {
    const { source, v1 } = filled();
    const logs: { message: string; fields?: LogFields }[] = [];
    const api = await serve(source, {}, logs);
    const ciphertext = await encrypt(api, "carol@example.com");
    await post(api, "/v1/decrypt/orders", { ciphertext: tampered(ciphertext, 14) });
    const access = logs.filter((line) => line.message === "key api request").map((line) => line.fields);
    expect(access).toEqual([
      { method: "POST", path: "/v1/encrypt/orders", status: 200 },
      { method: "POST", path: "/v1/decrypt/orders", status: 400 },
    ]);
    const text = JSON.stringify(logs);
    for (const form of ["hex", "base64", "base64url"] as const) expect(text).not.toContain(v1.toString(form));
    expect(text).not.toContain("carol");
    expect(text).not.toContain(ciphertext.slice(14, 40));
  });
});

describe("encryption api: an agent that serves no key material", () => {
  it("answers 403 key-export-disabled for every key, and still encrypts", async () => {
    const { source, v1 } = filled();
    const api = await serve(source, { serveKeyMaterial: false });
    for (const path of ["/keys/orders", "/keys/orders?version=v1", "/keys/ledger", "/keys/payroll"]) {
      const answer = await send(api, "GET", path, undefined);
      expect(answer.status, path).toBe(403);
      expect(answer.json.error).toEqual({
        code: "key-export-disabled",
        message: "this agent serves no key material; use the encryption API",
      });
      expect(answer.text).not.toContain(v1.toString("base64url"));
    }
    const ciphertext = await encrypt(api, "still works");
    expect((await post(api, "/v1/decrypt/orders", { ciphertext })).json["plaintext"]).toBe(
      b64("still works"),
    );
    // The default serves keys, as before.
    const open = await serve(source);
    expect((await fetch(`${open.url}/keys/orders`)).status).toBe(200);
  });
});

describe("client library", () => {
  it("round trips every operation, single and batch, and surfaces typed codes", async () => {
    const { source } = filled();
    const token = randomBytes(33).toString("base64url");
    const api = await serve(source, { bearerToken: new Secret(token) });
    const shield = createShieldClient({ url: api.url, token });
    try {
      const sealed = await shield.encrypt("orders", Buffer.from("dave@example.com"), Buffer.from("ad"));
      expect(sealed.version).toBe("v1");
      expect((await shield.decrypt("orders", sealed.ciphertext, Buffer.from("ad"))).toString()).toBe(
        "dave@example.com",
      );
      const batch = await shield.encryptBatch("orders", [
        { plaintext: Buffer.from("a") },
        { plaintext: Buffer.from("b") },
      ]);
      const opened = await shield.decryptBatch("orders", batch);
      expect(opened.map((item) => item.plaintext.toString())).toEqual(["a", "b"]);
      expect(await shield.encryptBatch("orders", [])).toEqual([]);
      source.keys.install("orders", "v2", "oct-HSM", randomBytes(32), AT);
      const rewrapped = await shield.rewrapBatch(
        "orders",
        batch.map((item) => ({ ...item, hmacContext: "c" })),
      );
      expect(rewrapped.map((item) => item.version)).toEqual(["v2", "v2"]);
      const index = await shield.hmac("orders", Buffer.from("a"), "c");
      expect(rewrapped[0]!.hmac).toBe(index.hmac);
      expect(index.candidates.map((candidate) => candidate.version)).toEqual(["v2", "v1"]);
      expect((await shield.hmacBatch("orders", [{ data: Buffer.from("a"), context: "c" }]))[0]!.hmac).toBe(
        index.hmac,
      );
      expect((await shield.rewrap("orders", sealed.ciphertext, Buffer.from("ad"))).version).toBe("v2");
      const status = await shield.status();
      expect(status.keys.find((key) => key.name === "orders")?.current).toBe("v2");

      const refusal = await shield.decrypt("orders", sealed.ciphertext).catch((error: unknown) => error);
      expect(refusal).toBeInstanceOf(ShieldApiError);
      expect(refusal).toMatchObject({ code: "decryption-failed", status: 400 });
      const batchRefusal = await shield
        .decryptBatch("orders", [batch[0]!, { ciphertext: "nope" }])
        .catch((error: unknown) => error);
      expect(batchRefusal).toMatchObject({ code: "bad-ciphertext", status: 400, item: 1 });
      const anonymous = createShieldClient({ url: api.url });
      await expect(anonymous.encrypt("orders", Buffer.from("x"))).rejects.toMatchObject({
        code: "unauthorized",
        status: 401,
      });
      anonymous.close();
    } finally {
      shield.close();
    }
    await apis.pop()!.close();
    await expect(shield.encrypt("orders", Buffer.from("x"))).rejects.toMatchObject({
      code: "unavailable",
      status: 0,
    });
  });

  it("reaches an agent on a Unix socket", async () => {
    const { source } = filled();
    const dir = await tempDir("enc");
    dirs.push(dir);
    const api = await startKeyApi({
      listen: { kind: "unix", path: join(dir, "shield.sock") },
      agent: source,
    });
    apis.push(api);
    const shield = createShieldClient({ url: api.url });
    const sealed = await shield.encrypt("orders", Buffer.from("over a socket"));
    expect((await shield.decrypt("orders", sealed.ciphertext)).toString()).toBe("over a socket");
    shield.close();
  });
});
