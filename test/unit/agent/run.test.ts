/**
 * The entry point with its default start: runtime key, bus, agent and key API composed by
 * `main`, run against the in-memory bus and a fake attest responder, and ended as SIGTERM would.
 */
import { spawn } from "node:child_process";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdir, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MemoryBus } from "../../../adapters/local/bus/memory.js";
import type { Agent } from "../../../agent/agent.js";
import type { KeyApi } from "../../../agent/key-api.js";
import { EXIT_CODES, main, type MainIo, type RuntimeOptions } from "../../../agent/main.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../../core/evidence/simulated/sevsnp.js";
import type { ReleaseResponseSigner } from "../../../core/keywrap/index.js";
import { makeKeyEvent } from "../../../core/messages/index.js";
import { createTestControlPlane, type TestControlPlane } from "../../support/control.js";
import { tempDir } from "./fakes.js";
import { FAKE_VAULT, FakeVault, makeSigner, startFakeResponder } from "./responder.js";
import pg from "pg";
import type { PgProxy } from "../../../agent/pg-proxy/proxy.js";
import { startLocalPostgres } from "../../../examples/confidential-db/local-postgres.js";

let platform: SimulatedSnpPlatform;
let signer: ReleaseResponseSigner;
let control: TestControlPlane;
let dir: string;

beforeAll(async () => {
  platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  signer = makeSigner();
  control = createTestControlPlane();
  dir = await tempDir("run");
  await writeFile(join(dir, "signer.pem"), signer.certificateChain[0]!.toString());
  await writeFile(join(dir, "other.pem"), makeSigner("other").certificateChain[0]!.toString());
  await writeFile(join(dir, "control-keys.json"), JSON.stringify(control.jwks));
  // Another key under the same key id: what an attacker without the control-plane key could pin.
  await writeFile(
    join(dir, "other-control-keys.json"),
    JSON.stringify(createTestControlPlane(control.signer.keyId).jwks),
  );
  const privateJwk = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ format: "jwk" });
  await writeFile(
    join(dir, "private-control-keys.json"),
    JSON.stringify({ keys: [{ ...privateJwk, kid: "k" }] }),
  );
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function capture(): MainIo & { err: string[] } {
  const err: string[] = [];
  return { err, stdout: () => undefined, stderr: (text) => err.push(text) };
}

function env(agentId: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    SHIELD_AGENT_ID: agentId,
    SHIELD_TEE: "simulated",
    SHIELD_KEYS: "orders",
    SHIELD_BUS: "storage-queue",
    SHIELD_STORAGE_CONNECTION_STRING: "UseDevelopmentStorage=true",
    SHIELD_RELEASE_SIGNER_CA_FILE: join(dir, "signer.pem"),
    SHIELD_CONTROL_KEYS_FILE: join(dir, "control-keys.json"),
    SHIELD_KEYVAULT_URL: FAKE_VAULT,
    SHIELD_LISTEN: "127.0.0.1:0",
    SHIELD_LOG_LEVEL: "debug",
    ...extra,
  };
}

function memoryBus(bus: MemoryBus, agentId: string): RuntimeOptions["openBus"] {
  return () => {
    const inbox = bus.openAgentInbox(agentId);
    return Promise.resolve({ requests: bus, inbox, close: () => inbox.close() });
  };
}

const FAST = { resultTimeoutMs: 1_000, retryBaseDelayMs: 10, retryMaxDelayMs: 50, receiveWaitMs: 100 };

async function until(condition: () => boolean | Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe("main: the default start", () => {
  it("runs bus, agent and key API, writes key files, and on shutdown wipes everything and exits 0", async () => {
    const agentId = "run-agent-1";
    const keyDir = join(dir, "keys");
    await mkdir(keyDir);
    const bus = new MemoryBus();
    const vault = new FakeVault();
    const key = vault.addOct("orders", "v1", randomBytes(32));
    const responder = startFakeResponder({ bus, vault, signer, control });
    const shutdown = new AbortController();
    let running: { agent: Agent; api: KeyApi } | undefined;
    const io = capture();
    const exit = main([], env(agentId, { SHIELD_KEY_DIR: keyDir }), {
      io,
      select: { simulated: { platform } },
      runtime: {
        openBus: memoryBus(bus, agentId),
        shutdown: shutdown.signal,
        timing: FAST,
        onRunning: (given) => (running = given),
      },
    });
    try {
      await until(() => running !== undefined);
      const url = running!.api.url;
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      expect((await fetch(`${url}/healthz`)).status).toBe(200);
      await until(async () => (await fetch(`${url}/readyz`)).status === 200);
      const body = Buffer.from(await (await fetch(`${url}/keys/orders`)).arrayBuffer());
      expect(body.equals(key.plaintext)).toBe(true);
      await until(async () => (await readdir(keyDir)).includes("orders"));
      expect((await readFile(join(keyDir, "orders"))).equals(key.plaintext)).toBe(true);
      expect((await stat(join(keyDir, "orders"))).mode & 0o777).toBe(0o600);
      const held = running!.agent.keys.get("orders")!;

      shutdown.abort();
      expect(await exit).toBe(EXIT_CODES.ok);
      expect(held.material.every((byte) => byte === 0)).toBe(true);
      expect(running!.agent.state().name).toBe("stopped");
      expect(await readdir(keyDir)).toEqual([]);
      // Closed: a new connection is refused, a pooled one is closed; nothing answers.
      const closed = await fetch(`${url}/healthz`).then(
        () => undefined,
        (error: unknown) => error,
      );
      expect(closed).toBeInstanceOf(TypeError);
      expect(["ECONNREFUSED", "UND_ERR_SOCKET"]).toContain(
        (closed as { cause?: { code?: string } }).cause?.code,
      );
      // Log lines are JSON, and none holds the key.
      const lines = io.err.map((line) => JSON.parse(line) as { message: string });
      expect(lines.some((line) => line.message === "attestation trusted")).toBe(true);
      for (const form of ["hex", "base64", "base64url"] as const) {
        expect(io.err.join("\n")).not.toContain(key.plaintext.toString(form));
      }
    } finally {
      shutdown.abort();
      await exit;
      await responder.stop();
      await bus.close();
    }
  });

  it("trusts only the release signers the CA file names", async () => {
    const agentId = "run-agent-2";
    const bus = new MemoryBus();
    const vault = new FakeVault();
    vault.addOct("orders", "v1", randomBytes(32));
    const responder = startFakeResponder({ bus, vault, signer, control });
    const shutdown = new AbortController();
    let running: { agent: Agent; api: KeyApi } | undefined;
    const exit = main([], env(agentId, { SHIELD_RELEASE_SIGNER_CA_FILE: join(dir, "other.pem") }), {
      io: capture(),
      select: { simulated: { platform } },
      runtime: {
        openBus: memoryBus(bus, agentId),
        shutdown: shutdown.signal,
        timing: FAST,
        onRunning: (given) => (running = given),
      },
    });
    try {
      await until(() => running?.agent.state().name === "failed");
      expect(running!.agent.state().reason).toBe("ERR_RELEASE_RESPONSE_SIGNATURE");
      expect((await fetch(`${running!.api.url}/keys/orders`)).status).toBe(403);
    } finally {
      shutdown.abort();
      expect(await exit).toBe(EXIT_CODES.ok);
      await responder.stop();
      await bus.close();
    }
  });

  it("acts only on control messages signed by a key the keys file names", async () => {
    const agentId = "run-agent-6";
    const bus = new MemoryBus();
    const vault = new FakeVault();
    vault.addOct("orders", "v1", randomBytes(32));
    const responder = startFakeResponder({ bus, vault, signer, control });
    const shutdown = new AbortController();
    let running: { agent: Agent; api: KeyApi } | undefined;
    const exit = main([], env(agentId, { SHIELD_CONTROL_KEYS_FILE: join(dir, "other-control-keys.json") }), {
      io: capture(),
      select: { simulated: { platform } },
      runtime: {
        openBus: memoryBus(bus, agentId),
        shutdown: shutdown.signal,
        timing: FAST,
        onRunning: (given) => (running = given),
      },
    });
    try {
      await until(() => (running?.agent.status().inbox.dropped["ERR_CONTROL_SIGNATURE"] ?? 0) >= 1);
      // The challenge it asked for cannot be verified: it never attests, and serves nothing.
      expect(running!.agent.state().name).toBe("attesting");
      expect(responder.requests).toEqual([]);
      expect(running!.agent.keys.size).toBe(0);
      expect((await fetch(`${running!.api.url}/keys/orders`)).status).not.toBe(200);
    } finally {
      shutdown.abort();
      expect(await exit).toBe(EXIT_CODES.ok);
      await responder.stop();
      await bus.close();
    }
  });

  it("takes released keys only from the vault SHIELD_KEYVAULT_URL names", async () => {
    const agentId = "run-agent-7";
    const bus = new MemoryBus();
    const vault = new FakeVault();
    vault.addOct("orders", "v1", randomBytes(32));
    const responder = startFakeResponder({ bus, vault, signer, control });
    const shutdown = new AbortController();
    let running: { agent: Agent; api: KeyApi } | undefined;
    const exit = main([], env(agentId, { SHIELD_KEYVAULT_URL: "https://another-vault.vault.azure.net" }), {
      io: capture(),
      select: { simulated: { platform } },
      runtime: {
        openBus: memoryBus(bus, agentId),
        shutdown: shutdown.signal,
        timing: FAST,
        onRunning: (given) => (running = given),
      },
    });
    try {
      await until(() => running?.agent.state().name === "failed");
      expect(running!.agent.state().reason).toBe("ERR_RELEASE_RESPONSE_MALFORMED");
      expect(running!.agent.keys.size).toBe(0);
      expect((await fetch(`${running!.api.url}/keys/orders`)).status).toBe(403);
    } finally {
      shutdown.abort();
      expect(await exit).toBe(EXIT_CODES.ok);
      await responder.stop();
      await bus.close();
    }
  });

  it("exits 2 when the key API address is taken, closing the bus it opened", async () => {
    const taken: Server = createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    const port = (taken.address() as { port: number }).port;
    const bus = new MemoryBus();
    let closed = false;
    const io = capture();
    try {
      const code = await main([], env("run-agent-3", { SHIELD_LISTEN: `127.0.0.1:${port}` }), {
        io,
        select: { simulated: { platform } },
        runtime: {
          openBus: () =>
            Promise.resolve({
              requests: bus,
              inbox: bus.openAgentInbox("run-agent-3"),
              close: () => {
                closed = true;
                return Promise.resolve();
              },
            }),
          shutdown: new AbortController().signal,
        },
      });
      expect(code).toBe(EXIT_CODES.config);
      expect(io.err.join("\n")).toContain("the key API cannot listen on SHIELD_LISTEN: EADDRINUSE");
      expect(closed).toBe(true);
    } finally {
      await new Promise((resolve) => taken.close(resolve));
      await bus.close();
    }
  });

  it("exits 2 when the signer CA file, the control-plane keys file or the key directory is unusable", async () => {
    const cases: [Record<string, string>, RegExp][] = [
      [
        { SHIELD_RELEASE_SIGNER_CA_FILE: join(dir, "missing.pem") },
        /configuration error: ERR_CONFIG: SHIELD_RELEASE_SIGNER_CA_FILE/,
      ],
      [{ SHIELD_KEY_DIR: join(dir, "no-such-dir") }, /configuration error: ERR_CONFIG: SHIELD_KEY_DIR/],
      [
        { SHIELD_CONTROL_KEYS_FILE: join(dir, "missing.json") },
        /configuration error: ERR_CONFIG: SHIELD_CONTROL_KEYS_FILE/,
      ],
      [
        { SHIELD_CONTROL_KEYS_FILE: join(dir, "signer.pem") },
        /configuration error: ERR_CONFIG: SHIELD_CONTROL_KEYS_FILE/,
      ],
      [
        { SHIELD_CONTROL_KEYS_FILE: join(dir, "private-control-keys.json") },
        /configuration error: ERR_CONFIG: control-plane key 0: must be a public key/,
      ],
    ];
    for (const [extra, expected] of cases) {
      const io = capture();
      const code = await main([], env("run-agent-4", extra), {
        io,
        select: { simulated: { platform } },
        runtime: { shutdown: new AbortController().signal },
      });
      expect(code).toBe(EXIT_CODES.config);
      expect(io.err.join("\n")).toMatch(expected);
    }
  });

  it("exits 2 before opening anything when the control-plane keys file or the vault URL is not set", async () => {
    const without = (name: string): Record<string, string> =>
      Object.fromEntries(Object.entries(env("run-agent-8")).filter(([key]) => key !== name));
    for (const name of ["SHIELD_CONTROL_KEYS_FILE", "SHIELD_KEYVAULT_URL"]) {
      const io = capture();
      let opened = false;
      const code = await main([], without(name), {
        io,
        select: { simulated: { platform } },
        runtime: {
          openBus: () => {
            opened = true;
            return Promise.reject(new Error("not to be opened"));
          },
          shutdown: new AbortController().signal,
        },
      });
      expect(code).toBe(EXIT_CODES.config);
      expect(io.err.join("\n")).toContain(`${name}: required`);
      expect(opened).toBe(false);
    }
  });

  it("serves the encryption API with SHIELD_MIN_DECRYPTION_VERSIONS, and no key material with SHIELD_SERVE_KEYS=false", async () => {
    const agentId = "run-agent-min-version";
    const bus = new MemoryBus();
    const vault = new FakeVault();
    vault.addOct("orders", "v1", randomBytes(32));
    const responder = startFakeResponder({ bus, vault, signer, control });
    const shutdown = new AbortController();
    let running: { agent: Agent; api: KeyApi } | undefined;
    const exit = main(
      [],
      env(agentId, { SHIELD_MIN_DECRYPTION_VERSIONS: "orders=v2", SHIELD_SERVE_KEYS: "false" }),
      {
        io: capture(),
        select: { simulated: { platform } },
        runtime: {
          openBus: memoryBus(bus, agentId),
          shutdown: shutdown.signal,
          timing: FAST,
          onRunning: (given) => (running = given),
        },
      },
    );
    const post = async (operation: string, body: unknown) => {
      const response = await fetch(`${running!.api.url}/v1/${operation}/orders`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      return { status: response.status, json: (await response.json()) as Record<string, unknown> };
    };
    try {
      await until(() => running?.agent.keys.currentVersion("orders") === "v1");
      // SHIELD_SERVE_KEYS=false: the key itself is not served.
      expect((await fetch(`${running!.api.url}/keys/orders`)).status).toBe(403);
      // v2 is not installed yet: the current version (v1) still decrypts.
      const sealed = await post("encrypt", { plaintext: Buffer.from("under v1").toString("base64") });
      expect(sealed.status).toBe(200);
      const ciphertext = sealed.json["ciphertext"] as string;
      expect((await post("decrypt", { ciphertext })).status).toBe(200);
      vault.addOct("orders", "v2", randomBytes(32));
      await responder.send(
        makeKeyEvent({ agentId, event: "rotated", keyName: "orders", keyVersion: "v2", sentAt: new Date() }),
      );
      await until(() => running!.agent.keys.currentVersion("orders") === "v2");
      // v1 is still held, but below the configured minimum.
      expect(running!.agent.keys.get("orders", "v1")).toBeDefined();
      const refused = await post("decrypt", { ciphertext });
      expect(refused.status).toBe(403);
      expect(refused.json).toMatchObject({ error: { code: "version-retired" } });
    } finally {
      shutdown.abort();
      expect(await exit).toBe(EXIT_CODES.ok);
      await responder.stop();
      await bus.close();
    }
  });

  it("starts the PostgreSQL proxy from SHIELD_PG_PROXY_FILE with the agent's keys; revocation ends its connections", async () => {
    const agentId = "run-agent-pg-proxy";
    const postgres = await startLocalPostgres();
    const bus = new MemoryBus();
    const vault = new FakeVault();
    vault.addOct("orders", "v1", randomBytes(32));
    const responder = startFakeResponder({ bus, vault, signer, control });
    const shutdown = new AbortController();
    const appPassword = randomBytes(18).toString("base64url");
    await writeFile(join(dir, "pg-app-password"), appPassword);
    await writeFile(join(dir, "pg-db-password"), decodeURIComponent(new URL(postgres.url).password));
    await writeFile(
      join(dir, "pg-proxy.json"),
      JSON.stringify({
        listen: "127.0.0.1:0",
        key: "orders",
        columns: { "customers.email": { index: "email_index" } },
        clientPasswordFile: join(dir, "pg-app-password"),
        upstream: {
          host: "127.0.0.1",
          port: postgres.port,
          database: "orders",
          user: "postgres",
          sslmode: "disable",
          auth: { kind: "password-file", file: join(dir, "pg-db-password") },
        },
      }),
    );
    const operator = new pg.Client({ connectionString: postgres.url });
    await operator.connect();
    await operator.query("CREATE TABLE customers (id int PRIMARY KEY, email text, email_index text)");
    let running: { agent: Agent; pgProxy?: PgProxy } | undefined;
    const exit = main([], env(agentId, { SHIELD_PG_PROXY_FILE: join(dir, "pg-proxy.json") }), {
      io: capture(),
      select: { simulated: { platform } },
      runtime: {
        openBus: memoryBus(bus, agentId),
        shutdown: shutdown.signal,
        timing: FAST,
        onRunning: (given) => (running = given),
      },
    });
    try {
      await until(() => running?.agent.keys.currentVersion("orders") === "v1");
      const client = new pg.Client({
        host: "127.0.0.1",
        port: running!.pgProxy!.port,
        user: "postgres",
        password: appPassword,
        database: "orders",
      });
      // The FATAL answer comes first; the socket closing after it is reported as a second error.
      const ended = new Promise<Error>((resolve) => client.on("error", resolve));
      await client.connect();
      await client.query("INSERT INTO customers (id, email) VALUES ($1, $2)", [1, "ada@example.org"]);
      const stored = (await operator.query("SELECT email FROM customers")).rows[0] as { email: string };
      expect(stored.email.startsWith("shield:v1:v1:")).toBe(true);
      expect(
        (await client.query("SELECT id FROM customers WHERE email = $1", ["ada@example.org"])).rows,
      ).toEqual([{ id: 1 }]);
      await responder.send(
        makeKeyEvent({ agentId, event: "revoked", keyName: "orders", keyVersion: "v1", sentAt: new Date() }),
      );
      await expect(ended).resolves.toMatchObject({ detail: "ERR_PROXY_KEY_UNAVAILABLE" });
    } finally {
      shutdown.abort();
      expect(await exit).toBe(EXIT_CODES.ok);
      await responder.stop();
      await bus.close();
      await operator.end();
      await postgres.stop();
    }
  }, 60_000);

  it("exits 2 when SHIELD_PG_PROXY_FILE is unusable or names a key the agent does not hold", async () => {
    await writeFile(join(dir, "pg-proxy-bad.json"), JSON.stringify({ listen: "0.0.0.0:5432" }));
    await writeFile(
      join(dir, "pg-proxy-other-key.json"),
      JSON.stringify({
        listen: "127.0.0.1:0",
        key: "ledger",
        columns: { "t.c": {} },
        clientPasswordFile: "/nonexistent",
        upstream: {
          host: "127.0.0.1",
          database: "d",
          user: "u",
          sslmode: "disable",
          auth: { kind: "entra" },
        },
      }),
    );
    const cases: [string, RegExp][] = [
      [join(dir, "missing.json"), /ERR_CONFIG: SHIELD_PG_PROXY_FILE .* cannot be read/],
      [join(dir, "pg-proxy-bad.json"), /ERR_CONFIG: pg proxy settings/],
      [join(dir, "pg-proxy-other-key.json"), /names a key that is not in SHIELD_KEYS/],
    ];
    for (const [file, expected] of cases) {
      const io = capture();
      const code = await main([], env("run-agent-pg-bad", { SHIELD_PG_PROXY_FILE: file }), {
        io,
        select: { simulated: { platform } },
        runtime: { shutdown: new AbortController().signal },
      });
      expect(code).toBe(EXIT_CODES.config);
      expect(io.err.join("\n")).toMatch(expected);
    }
  });

  it("with SHIELD_KEY_API_TOKEN_FILE the key API asks for that token; a short one stops the start", async () => {
    const token = randomBytes(33).toString("base64url");
    await writeFile(join(dir, "key-api-token"), `${token}\n`);
    await writeFile(join(dir, "short-token"), "too-short\n");
    const agentId = "run-agent-token";
    const bus = new MemoryBus();
    const shutdown = new AbortController();
    let running: { agent: Agent; api: KeyApi } | undefined;
    const exit = main([], env(agentId, { SHIELD_KEY_API_TOKEN_FILE: join(dir, "key-api-token") }), {
      io: capture(),
      select: { simulated: { platform } },
      runtime: {
        openBus: memoryBus(bus, agentId),
        shutdown: shutdown.signal,
        timing: FAST,
        onRunning: (given) => (running = given),
      },
    });
    try {
      await until(() => running !== undefined);
      const url = running!.api.url;
      expect((await fetch(`${url}/healthz`)).status).toBe(200);
      const refused = await fetch(`${url}/status`);
      expect(refused.status).toBe(401);
      expect(refused.headers.get("www-authenticate")).toMatch(/^Bearer /);
      const status = await fetch(`${url}/status`, { headers: { authorization: `Bearer ${token}` } });
      expect(status.status).toBe(200);
    } finally {
      shutdown.abort();
      expect(await exit).toBe(EXIT_CODES.ok);
      await bus.close();
    }

    const io = capture();
    const code = await main(
      [],
      env("run-agent-token-2", { SHIELD_KEY_API_TOKEN_FILE: join(dir, "short-token") }),
      { io, select: { simulated: { platform } }, runtime: { shutdown: new AbortController().signal } },
    );
    expect(code).toBe(EXIT_CODES.config);
    const text = io.err.join("\n");
    expect(text).toContain("configuration error: ERR_CONFIG: SHIELD_KEY_API_TOKEN_FILE");
    expect(text).not.toContain("too-short");
  });

  it("exits 2 without showing the connection string when the bus cannot be opened", async () => {
    const io = capture();
    const code = await main([], env("run-agent-5", { SHIELD_REQUEST_QUEUE: "Not_A_Queue" }), {
      io,
      select: { simulated: { platform } },
      runtime: { shutdown: new AbortController().signal },
    });
    expect(code).toBe(EXIT_CODES.config);
    const text = io.err.join("\n");
    expect(text).toContain("the storage-queue bus cannot be opened: ERR_CONFIG");
    expect(text).not.toContain("UseDevelopmentStorage");
  });
});

describe("the agent process", () => {
  it("on SIGTERM or SIGINT wipes, closes and exits 0", async () => {
    const run = (signal: "SIGTERM" | "SIGINT") =>
      new Promise<{ code: number | null; stderr: string; afterSignalMs: number }>((resolve, reject) => {
        const child = spawn(process.execPath, ["--import", "tsx", "agent/main.ts"], {
          cwd: process.cwd(),
          env: {
            PATH: process.env["PATH"] ?? "",
            ...env(`process-agent-${signal.toLowerCase()}`, {
              // Nothing listens there: the agent keeps retrying until it is told to stop.
              SHIELD_STORAGE_CONNECTION_STRING:
                "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;",
              SHIELD_LOG_LEVEL: "info",
            }),
          },
          stdio: ["ignore", "ignore", "pipe"],
        });
        let stderr = "";
        let signalledAt = 0;
        child.stderr.on("data", (chunk: Buffer) => {
          stderr += chunk.toString("utf8");
          if (signalledAt === 0 && stderr.includes('"agent starting"')) {
            signalledAt = Date.now();
            child.kill(signal);
          }
        });
        child.on("error", reject);
        child.on("exit", (code) => resolve({ code, stderr, afterSignalMs: Date.now() - signalledAt }));
      });
    const outcomes = await Promise.all([run("SIGTERM"), run("SIGINT")]);
    for (const outcome of outcomes) {
      expect(outcome.code).toBe(0);
      expect(outcome.stderr).toContain('"message":"shutting down: wiping keys"');
      expect(outcome.stderr).toContain('"message":"agent stopped"');
      expect(outcome.afterSignalMs).toBeLessThan(6_000);
    }
  }, 30_000);
});
