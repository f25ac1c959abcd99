/**
 * Hostile input to the agent: messages on its inbox (anyone who can write to its queue can put
 * anything there), and requests to its key and encryption API on loopback.
 *
 * Inbox: a running agent (simulated SEV-SNP provider, in-memory bus, pinned test control plane)
 * waits for the challenge it asked for; each case puts one message on its queue. It must be
 * dropped and counted under its code (`status().inbox.dropped`), the agent's state and keys must
 * not change, and it must send no attestation request (so nothing is ever released for it).
 *
 * Key and encryption API: a real key API over a store holding keys; each case is one HTTP
 * request that must get its status and error code, with an answer that carries no key material.
 */
import { createHash, createHmac, generateKeyPairSync, randomBytes, randomUUID } from "node:crypto";
import { request as httpRequest, type OutgoingHttpHeaders } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MemoryBus } from "../../adapters/local/bus/memory.js";
import { createAgent, type Agent } from "../../agent/agent.js";
import type { AgentStatus } from "../../agent/agent.js";
import { Secret } from "../../agent/config.js";
import { createSimulatedProvider } from "../../agent/evidence/simulated.js";
import { HeldKeys } from "../../agent/held-keys.js";
import { startKeyApi, type KeyApi, type KeySource } from "../../agent/key-api.js";
import { createRuntimeKey } from "../../agent/runtime-key.js";
import { CONTROL_JWS_TYPE, MAX_CONTROL_MESSAGE_CHARS } from "../../core/control/signed.js";
import type { ShieldErrorCode } from "../../core/errors.js";
import { createSimulatedSnpPlatform } from "../../core/evidence/simulated/sevsnp.js";
import { makeAttestationResult, makeKeyEvent } from "../../core/messages/index.js";
import type { AgentMessage, AgentRequest } from "../../core/ports/bus.js";
import { createTestControlPlane, type TestControlPlane } from "../support/control.js";

// ---------------------------------------------------------------------------------------------
// Inbox

let control: TestControlPlane;
/** Another key under the pinned key id; a control plane under a key id nobody pins. */
let impostor: TestControlPlane;
let unpinned: TestControlPlane;
let bus: MemoryBus;
let agent: Agent;
const agentId = `hostile-agent-${process.pid}`;
const sent: AgentRequest["type"][] = [];

const b64 = (value: object | string) =>
  Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");

/** A harmless message the agent accepts and ignores: a result for a request it never made. */
function strayResult(to = agentId): AgentMessage {
  return makeAttestationResult({
    agentId: to,
    requestId: `req-${randomUUID().slice(0, 8)}`,
    requestDigest: createHash("sha256").update(randomUUID()).digest("base64url"),
    verdict: "denied",
    denial: { code: "ERR_APPRAISAL_DENIED", message: "denied", violations: [] },
    sentAt: new Date(),
  });
}

function rotated(to = agentId): AgentMessage {
  return makeKeyEvent({
    agentId: to,
    event: "rotated",
    keyName: "orders",
    keyVersion: "0123456789abcdef0123456789abcdef",
    sentAt: new Date(),
  });
}

/** A JWS over the given header and payload text, signed by the pinned control plane's key. */
async function forged(header: Record<string, unknown>, payload: string, plane = control): Promise<string> {
  const input = `${b64(header)}.${b64(payload)}`;
  const digest = createHash("sha256").update(input, "ascii").digest();
  return `${input}.${(await plane.signer.sign(digest)).toString("base64url")}`;
}

function headerFor(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const iat = Math.floor(Date.now() / 1000);
  return {
    alg: "RS256",
    kid: control.signer.keyId,
    typ: CONTROL_JWS_TYPE,
    sub: agentId,
    jti: randomUUID(),
    iat,
    exp: iat + 300,
    ...overrides,
  };
}

interface InboxCase {
  readonly name: string;
  readonly code: ShieldErrorCode;
  readonly input: () => Promise<string>;
}

const inboxCases: InboxCase[] = [
  {
    name: "unsigned: a key event as plain JSON",
    code: "ERR_CONTROL_MALFORMED",
    input: () => Promise.resolve(JSON.stringify(rotated())),
  },
  {
    name: "unsigned: alg none with a dummy signature part",
    code: "ERR_CONTROL_ALG",
    input: () => Promise.resolve(`${b64(headerFor({ alg: "none" }))}.${b64(rotated())}.AA`),
  },
  {
    name: "unsigned: alg none with no signature part",
    code: "ERR_CONTROL_MALFORMED",
    input: () => Promise.resolve(`${b64(headerFor({ alg: "none" }))}.${b64(rotated())}.`),
  },
  {
    name: "HS256 keyed with the pinned public key",
    code: "ERR_CONTROL_ALG",
    input: () => {
      const input = `${b64(headerFor({ alg: "HS256" }))}.${b64(rotated())}`;
      const secret = JSON.stringify(control.jwks.keys[0]);
      return Promise.resolve(`${input}.${createHmac("sha256", secret).update(input).digest("base64url")}`);
    },
  },
  {
    name: "signed by a key this agent does not pin",
    code: "ERR_CONTROL_KID",
    input: async () => (await unpinned.sign(rotated())).jws,
  },
  {
    name: "signed by another key under the pinned key id",
    code: "ERR_CONTROL_SIGNATURE",
    input: async () => (await impostor.sign(rotated())).jws,
  },
  {
    name: "signed for another agent",
    code: "ERR_CONTROL_AUDIENCE",
    input: async () => (await control.sign(rotated("someone-else"))).jws,
  },
  {
    name: "header for this agent, payload for another",
    code: "ERR_CONTROL_AUDIENCE",
    input: () => forged(headerFor(), JSON.stringify(rotated("someone-else"))),
  },
  {
    name: "expired",
    code: "ERR_CONTROL_EXPIRED",
    input: async () => (await control.sign(rotated(), { at: new Date(Date.now() - 3_600_000) })).jws,
  },
  {
    name: "issued in the future",
    code: "ERR_CONTROL_EXPIRED",
    input: async () => (await control.sign(rotated(), { at: new Date(Date.now() + 3_600_000) })).jws,
  },
  {
    name: "lifetime beyond the 24 h limit",
    code: "ERR_CONTROL_MALFORMED",
    input: () => {
      const iat = Math.floor(Date.now() / 1000);
      return forged(headerFor({ iat, exp: iat + 30 * 24 * 3600 }), JSON.stringify(rotated()));
    },
  },
  {
    name: "no message id (jti)",
    code: "ERR_CONTROL_MALFORMED",
    input: () => forged(headerFor({ jti: undefined }), JSON.stringify(rotated())),
  },
  {
    name: "typ other than the control-message type",
    code: "ERR_CONTROL_MALFORMED",
    input: () => forged(headerFor({ typ: "JWT" }), JSON.stringify(rotated())),
  },
  {
    name: "replayed: a copy of a message the agent accepted",
    code: "ERR_CONTROL_REPLAYED",
    input: async () => {
      const { jws } = await control.sign(strayResult());
      const accepted = agent.status().inbox.accepted;
      bus.enqueueRawAgentMessage(agentId, jws);
      await until(() => agent.status().inbox.accepted === accepted + 1);
      return jws;
    },
  },
  {
    name: "payload changed after signing",
    code: "ERR_CONTROL_SIGNATURE",
    input: async () => {
      const [header, , signature] = (await control.sign(rotated())).jws.split(".");
      return `${header}.${b64({ ...rotated(), event: "revoked" })}.${signature}`;
    },
  },
  {
    name: "oversized (beyond the control-message limit)",
    code: "ERR_INPUT_TOO_LARGE",
    input: () => Promise.resolve(`${"A".repeat(MAX_CONTROL_MESSAGE_CHARS)}.A.A`),
  },
  {
    name: "a request-queue message signed as if for the agent",
    code: "ERR_CONTROL_MALFORMED",
    input: () =>
      forged(
        headerFor(),
        JSON.stringify({
          type: "challenge-request",
          version: 1,
          agentId,
          workload: "orders",
          tee: "sevsnp",
          sentAt: new Date().toISOString(),
        }),
      ),
  },
  {
    name: "signed payload that is not JSON",
    code: "ERR_MESSAGE_SCHEMA",
    input: () => forged(headerFor(), "{not json"),
  },
  {
    name: "signed payload of an unknown version",
    code: "ERR_MESSAGE_VERSION",
    input: () => forged(headerFor(), JSON.stringify({ ...rotated(), version: 2 })),
  },
  {
    name: "signed payload with a __proto__ member",
    code: "ERR_MESSAGE_SCHEMA",
    input: () =>
      forged(headerFor(), JSON.stringify(rotated()).replace(/^\{/, '{"__proto__":{"event":"revoked"},')),
  },
  {
    name: "header that is not JSON",
    code: "ERR_CONTROL_MALFORMED",
    input: async () => {
      const [, payload, signature] = (await control.sign(rotated())).jws.split(".");
      return `${b64("{alg")}.${payload}.${signature}`;
    },
  },
];

async function until(condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not reached in time");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const dropped = (code: string) => agent.status().inbox.dropped[code] ?? 0;

beforeAll(async () => {
  control = createTestControlPlane();
  impostor = createTestControlPlane(control.signer.keyId);
  unpinned = createTestControlPlane("https://attacker.vault.azure.net/keys/control/fedcba9876543210");
  bus = new MemoryBus();
  const platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  agent = createAgent({
    agentId,
    workload: "orders",
    keys: ["orders"],
    provider: createSimulatedProvider({ platform }),
    runtimeKey: await createRuntimeKey(),
    requests: {
      sendRequest: (request) => {
        sent.push(request.type);
        return bus.sendRequest(request);
      },
    },
    inbox: bus.openAgentInbox(agentId),
    releaseSigners: () => false,
    controlKeys: control.keys,
    keyVaultUrl: "https://shield-test.vault.azure.net",
    // Waits for its challenge far longer than the cases take.
    timing: { resultTimeoutMs: 60_000, reattestIntervalMs: 0, receiveWaitMs: 50, retryBaseDelayMs: 60_000 },
  });
  await agent.start();
  await until(() => sent.length === 1);
}, 60_000);

afterAll(async () => {
  await agent?.stop();
  await bus?.close();
});

describe("agent inbox: hostile control messages are dropped, counted, and change nothing", () => {
  it("baseline: waits for the challenge it asked for, holding nothing", () => {
    expect(sent).toEqual(["challenge-request"]);
    expect(agent.status().keys).toEqual([]);
  });

  for (const hostile of inboxCases) {
    it(`${hostile.name} → ${hostile.code}`, async () => {
      const text = await hostile.input();
      const before = { state: agent.status().state, accepted: agent.status().inbox.accepted };
      const count = dropped(hostile.code);
      bus.enqueueRawAgentMessage(agentId, text);
      await until(() => dropped(hostile.code) === count + 1);
      const after: AgentStatus = agent.status();
      expect(after.state).toBe(before.state);
      expect(after.inbox.accepted).toBe(before.accepted);
      expect(after.keys).toEqual([]);
      expect(sent).toEqual(["challenge-request"]);
    });
  }
});

// ---------------------------------------------------------------------------------------------
// Key API and encryption API

const AT = new Date("2030-01-01T00:00:00Z");
const TOKEN = randomBytes(32).toString("base64url");

class Source implements KeySource {
  readonly keys = new HeldKeys();
  readonly configuredKeys = ["orders", "ledger", "short"] as const;
  status(): AgentStatus {
    return {
      agentId: "agent-1",
      workload: "orders",
      state: "trusted",
      provider: "simulated",
      tee: "sevsnp",
      runtimeKeyId: "kid",
      configuredKeys: this.configuredKeys,
      keys: this.keys.summary(),
      inbox: { accepted: 0, dropped: {} },
    };
  }
}

let api: KeyApi;
let port: number;
const material: Buffer[] = [];

interface Answer {
  readonly status: number;
  readonly text: string;
  readonly code: string | undefined;
}

function send(
  method: string,
  path: string,
  body?: string | Buffer,
  headers: OutgoingHttpHeaders = {},
  options: { host?: string | null; token?: string | null } = {},
): Promise<Answer> {
  const host = options.host === undefined ? `127.0.0.1:${port}` : options.host;
  const token = options.token === undefined ? TOKEN : options.token;
  return new Promise((resolve, reject) => {
    const outgoing = httpRequest(
      {
        host: "127.0.0.1",
        port,
        method,
        path,
        setHost: false,
        agent: false,
        headers: {
          ...(host === null ? {} : { host }),
          ...(token === null ? {} : { authorization: `Bearer ${token}` }),
          "content-type": "application/json",
          ...headers,
        },
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let code: string | undefined;
          try {
            code = (JSON.parse(text) as { error?: { code?: string } }).error?.code;
          } catch {
            code = undefined;
          }
          resolve({ status: response.statusCode ?? 0, text, code });
        });
      },
    );
    outgoing.on("error", reject);
    outgoing.end(body);
  });
}

const post = (path: string, body: unknown) => send("POST", path, JSON.stringify(body));
const base64 = (text: string) => Buffer.from(text).toString("base64");

async function ciphertext(associatedData?: string): Promise<string> {
  const answer = await post("/v1/encrypt/orders", {
    plaintext: base64("4111 1111 1111 1111"),
    ...(associatedData === undefined ? {} : { associatedData: base64(associatedData) }),
  });
  expect(answer.status).toBe(200);
  return (JSON.parse(answer.text) as { ciphertext: string }).ciphertext;
}

function flip(sealed: string): string {
  const cut = sealed.lastIndexOf(":");
  const bytes = Buffer.from(sealed.slice(cut + 1), "base64url");
  bytes[14]! ^= 1;
  return `${sealed.slice(0, cut + 1)}${bytes.toString("base64url")}`;
}

interface ApiCase {
  readonly name: string;
  readonly status: number;
  readonly code: string;
  readonly input: () => Promise<Answer>;
}

const apiCases: ApiCase[] = [
  // key API
  {
    name: "Host of a rebound DNS name",
    status: 421,
    code: "misdirected",
    input: () => send("GET", "/keys/orders", undefined, {}, { host: "evil.example:8280" }),
  },
  {
    name: "no Host header",
    status: 421,
    code: "misdirected",
    input: () => send("GET", "/keys/orders", undefined, {}, { host: null }),
  },
  {
    name: "absolute-form request target naming another authority",
    status: 400,
    code: "bad-request",
    input: () => send("GET", "http://evil.example/keys/orders"),
  },
  {
    name: "no bearer token",
    status: 401,
    code: "unauthorized",
    input: () => send("GET", "/keys/orders", undefined, {}, { token: null }),
  },
  {
    name: "wrong bearer token",
    status: 401,
    code: "unauthorized",
    input: () => send("GET", "/keys/orders", undefined, {}, { token: randomBytes(32).toString("base64url") }),
  },
  {
    name: "a method other than GET on /keys",
    status: 405,
    code: "method-not-allowed",
    input: () => send("DELETE", "/keys/orders"),
  },
  {
    name: "a key name that is not configured",
    status: 404,
    code: "unknown-key",
    input: () => send("GET", "/keys/payroll"),
  },
  {
    name: "a path-trick key name",
    status: 404,
    code: "unknown-key",
    input: () => send("GET", "/keys/..%2F..%2Fetc%2Fpasswd"),
  },
  {
    name: "a version that is not a Key Vault version",
    status: 400,
    code: "bad-version",
    input: () => send("GET", "/keys/orders?version=../v1"),
  },
  {
    name: "the version parameter repeated",
    status: 400,
    code: "bad-version",
    input: () => send("GET", "/keys/orders?version=v1&version=v2"),
  },
  {
    name: "a version never held",
    status: 404,
    code: "unknown-version",
    input: () => send("GET", "/keys/orders?version=0123456789abcdef"),
  },
  {
    name: "metrics without the bearer token",
    status: 401,
    code: "unauthorized",
    input: () => send("GET", "/metrics", undefined, {}, { token: null }),
  },
  {
    name: "status with a wrong bearer token",
    status: 401,
    code: "unauthorized",
    input: () => send("GET", "/status", undefined, {}, { token: randomBytes(32).toString("base64url") }),
  },
  {
    name: "metrics through a rebound DNS name",
    status: 421,
    code: "misdirected",
    input: () => send("GET", "/metrics", undefined, {}, { host: "evil.example:8280" }),
  },
  // encryption API
  {
    name: "encrypt under a path-trick key name",
    status: 404,
    code: "unknown-key",
    input: () => post("/v1/encrypt/..%2Forders", { plaintext: base64("x") }),
  },
  {
    name: "decrypt without the bearer token",
    status: 401,
    code: "unauthorized",
    input: async () =>
      send(
        "POST",
        "/v1/decrypt/orders",
        JSON.stringify({ ciphertext: await ciphertext() }),
        {},
        { token: null },
      ),
  },
  {
    name: "encrypt with a body that is not JSON",
    status: 400,
    code: "bad-request",
    input: () => send("POST", "/v1/encrypt/orders", "{plaintext:"),
  },
  {
    name: "encrypt with a body of the wrong shape",
    status: 400,
    code: "bad-request",
    input: () => post("/v1/encrypt/orders", { plaintext: 42 }),
  },
  {
    name: "encrypt with a __proto__ member",
    status: 400,
    code: "bad-request",
    input: () =>
      send("POST", "/v1/encrypt/orders", `{"__proto__":{"admin":true},"plaintext":"${base64("x")}"}`),
  },
  {
    name: "encrypt with plaintext that is not standard base64",
    status: 400,
    code: "bad-request",
    input: () => post("/v1/encrypt/orders", { plaintext: "not base64!" }),
  },
  {
    name: "encrypt as text/plain",
    status: 415,
    code: "unsupported-media-type",
    input: () =>
      send("POST", "/v1/encrypt/orders", JSON.stringify({ plaintext: base64("x") }), {
        "content-type": "text/plain",
      }),
  },
  {
    name: "encrypt with an oversized body",
    status: 413,
    code: "too-large",
    input: () => send("POST", "/v1/encrypt/orders", JSON.stringify({ plaintext: "A".repeat(1100 * 1024) })),
  },
  {
    name: "a batch over the item limit",
    status: 413,
    code: "too-large",
    input: () =>
      post("/v1/encrypt/orders", { items: Array.from({ length: 1001 }, () => ({ plaintext: "" })) }),
  },
  {
    name: "decrypt a ciphertext not in Shield's format",
    status: 400,
    code: "bad-ciphertext",
    input: () => post("/v1/decrypt/orders", { ciphertext: "shield:v2:v1:AAAA" }),
  },
  {
    name: "decrypt a ciphertext too short for nonce and tag",
    status: 400,
    code: "bad-ciphertext",
    input: () =>
      post("/v1/decrypt/orders", { ciphertext: `shield:v1:v1:${Buffer.alloc(8).toString("base64url")}` }),
  },
  {
    name: "decrypt a tampered ciphertext",
    status: 400,
    code: "decryption-failed",
    input: async () => post("/v1/decrypt/orders", { ciphertext: flip(await ciphertext()) }),
  },
  {
    name: "decrypt with other associated data",
    status: 400,
    code: "decryption-failed",
    input: async () =>
      post("/v1/decrypt/orders", {
        ciphertext: await ciphertext("order 42"),
        associatedData: base64("order 43"),
      }),
  },
  {
    name: "decrypt a ciphertext relabelled to another version",
    status: 404,
    code: "unknown-version",
    input: async () =>
      post("/v1/decrypt/orders", {
        ciphertext: (await ciphertext()).replace("shield:v1:v1:", "shield:v1:0123456789abcdef:"),
      }),
  },
  {
    name: "rewrap a tampered ciphertext",
    status: 400,
    code: "decryption-failed",
    input: async () => post("/v1/rewrap/orders", { ciphertext: flip(await ciphertext()) }),
  },
  {
    name: "hmac with a context outside its alphabet",
    status: 400,
    code: "bad-request",
    input: () => post("/v1/hmac/orders", { data: base64("x"), context: "../other" }),
  },
  {
    name: "encrypt under a key that is not 256-bit symmetric (RSA)",
    status: 400,
    code: "unsupported-key",
    input: () => post("/v1/encrypt/ledger", { plaintext: base64("x") }),
  },
  {
    name: "encrypt under a 128-bit key",
    status: 400,
    code: "unsupported-key",
    input: () => post("/v1/encrypt/short", { plaintext: base64("x") }),
  },
  {
    name: "encrypt under a key that is not configured",
    status: 404,
    code: "unknown-key",
    input: () => post("/v1/encrypt/payroll", { plaintext: base64("x") }),
  },
];

describe("key and encryption API: hostile requests get their code and no key material", () => {
  beforeAll(async () => {
    const source = new Source();
    const orders = randomBytes(32);
    const short = randomBytes(16);
    const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({
      type: "pkcs8",
      format: "der",
    });
    material.push(Buffer.from(orders), Buffer.from(short), Buffer.from(rsa));
    source.keys.install("orders", "v1", "oct-HSM", orders, AT);
    source.keys.install("ledger", "r1", "RSA-HSM", rsa, AT);
    source.keys.install("short", "s1", "oct-HSM", short, AT);
    api = await startKeyApi({
      listen: { kind: "tcp", host: "127.0.0.1", port: 0 },
      agent: source,
      bearerToken: new Secret(TOKEN),
    });
    if (api.address.kind !== "tcp") throw new Error("not TCP");
    port = api.address.port;
  });

  afterAll(async () => {
    await api?.close();
  });

  for (const hostile of apiCases) {
    it(`${hostile.name} → ${hostile.status} ${hostile.code}`, async () => {
      const answer = await hostile.input();
      expect(answer.status).toBe(hostile.status);
      expect(answer.code).toBe(hostile.code);
      for (const key of material) {
        for (const form of ["hex", "base64", "base64url"] as const)
          expect(answer.text).not.toContain(key.toString(form));
      }
    });
  }

  it("still serves after every case (no crash)", async () => {
    expect((await send("GET", "/healthz")).status).toBe(200);
    expect((await send("GET", "/keys/orders")).status).toBe(200);
  });
});
