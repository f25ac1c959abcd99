/**
 * The proxy's SQL classifier and the columns file, without a server: what passes untouched, how
 * the accepted shapes are rewritten, and that the forms which defeat naive matching (quoted
 * identifiers, comments, strings and dollar quotes, qualifiers, parameters used twice) are read
 * as PostgreSQL reads them. The same rewrites run against a real server in
 * test/integration/pg-proxy.test.ts.
 */
import { describe, expect, it } from "vitest";
import { parseProxyColumns } from "../../../agent/pg-proxy/columns.js";
import {
  planStatement,
  tokenize,
  type LiteralSealer,
  type ProtectedColumn,
} from "../../../agent/pg-proxy/sql.js";
import { isShieldError } from "../../../core/errors.js";

const columns = parseProxyColumns({
  key: "orders-key",
  columns: {
    "orders.email": { index: "email_index" },
    "orders.name": {},
  },
});

const sealer: LiteralSealer = {
  encrypt: (column: ProtectedColumn, value: string) => `enc:${column.column}:${value.length}`,
  index: (column: ProtectedColumn, value: string) => `idx:${column.column}:${value.length}`,
  candidates: (column: ProtectedColumn, value: string) => [`c1:${value.length}`, `c2:${value.length}`],
};

const plan = (sql: string, standardConformingStrings = true) =>
  planStatement(sql, columns.schema, { standardConformingStrings, sealer });

function refusal(sql: string, standardConformingStrings = true): string {
  try {
    plan(sql, standardConformingStrings);
  } catch (error) {
    if (isShieldError(error) && error.code === "ERR_PROXY_UNSAFE_STATEMENT") return error.message;
    throw error;
  }
  throw new Error(`not refused: ${sql}`);
}

describe("pg proxy sql: what passes untouched", () => {
  it.each([
    "BEGIN",
    "SELECT 1",
    "SELECT * FROM audit WHERE what = 'orders.email'",
    "SELECT 'email' AS x, $$ name $$ FROM audit -- email\n",
    "SELECT /* orders /* nested */ email */ 1",
    "SELECT * FROM orders",
    "SELECT id, email, name AS who FROM orders WHERE id = $1",
    "SELECT count(*) FROM orders WHERE amount > 10 ORDER BY 1 LIMIT 5",
    'SELECT "Email" FROM orders', // a different column: quoted names keep their case
    "DELETE FROM orders WHERE id = $1",
  ])("%s", (sql) => {
    const planned = plan(sql);
    expect(planned.untouched).toBe(true);
    expect(planned.text).toBe(sql);
  });
});

describe("pg proxy sql: rewrites", () => {
  it("INSERT: protected parameters encrypted, blind index column and parameter appended", () => {
    const planned = plan("INSERT INTO orders (id, email, name) VALUES ($1, $2, $3) RETURNING id, email");
    expect(planned.text).toBe(
      "INSERT INTO orders (id, email, name, email_index) VALUES ($1, $2, $3, $4) RETURNING id, email",
    );
    expect(planned.parameters.map((rule) => `${rule.kind}:${rule.from}`)).toEqual([
      "keep:1",
      "encrypt:2",
      "encrypt:3",
      "index:2",
    ]);
  });

  it("INSERT with literals and several rows: literals sealed in place", () => {
    expect(plan("insert into public.orders (email, id) values ('a@b', 1), (NULL, 2)").text).toBe(
      "insert into public.orders (email, id, email_index) values ('enc:email:3', 1, 'idx:email:3'), (NULL, 2, NULL)",
    );
  });

  it("WHERE equality on an indexed column: the index column, against every candidate", () => {
    expect(plan("SELECT name FROM orders o WHERE (o.email = $1) AND id > 3").text).toBe(
      "SELECT name FROM orders o WHERE (o.email_index = ANY($1::text[])) AND id > 3",
    );
    expect(plan("SELECT name FROM orders WHERE email = 'x@y' OR email IS NULL").text).toBe(
      "SELECT name FROM orders WHERE email_index = ANY(ARRAY['c1:3', 'c2:3']::text[]) OR email IS NULL",
    );
  });

  it("UPDATE: the value encrypted, its index set beside it", () => {
    const planned = plan("UPDATE orders SET email = $1, name = 'N' WHERE email = $2");
    expect(planned.text).toBe(
      "UPDATE orders SET email = $1, email_index = $3, name = 'enc:name:1' WHERE email_index = ANY($2::text[])",
    );
    expect(planned.parameters.map((rule) => `${rule.kind}:${rule.from}`)).toEqual([
      "encrypt:1",
      "candidates:2",
      "index:1",
    ]);
  });

  it("several statements in one text are planned each", () => {
    expect(plan("SELECT 1; INSERT INTO orders (name) VALUES ('x'); SELECT 2").text).toBe(
      "SELECT 1; INSERT INTO orders (name) VALUES ('enc:name:1'); SELECT 2",
    );
  });
});

describe("pg proxy sql: refusals", () => {
  it.each([
    ["SELECT * FROM orders WHERE email LIKE 'a%'", /LIKE/],
    ["SELECT * FROM orders WHERE email ILIKE $1", /LIKE/],
    ["SELECT * FROM orders WHERE email ~ $1", /pattern/],
    ["SELECT * FROM orders WHERE email < $1", /comparison </],
    ["SELECT * FROM orders WHERE email IN ($1, $2)", /expression/],
    ["SELECT * FROM orders WHERE email = $1::text", /compared with an expression/],
    ["SELECT * FROM orders WHERE email = lower($1)", /compared with an expression/],
    ["SELECT * FROM orders WHERE name = $1", /no blind index/],
    ["SELECT * FROM orders WHERE id = 1 + email = $1", /expression/],
    ["SELECT lower(email) FROM orders", /expression/],
    ["SELECT email || '' FROM orders", /expression/],
    ["SELECT email FROM orders ORDER BY email", /ORDER BY/],
    ["SELECT count(*) FROM orders GROUP BY name", /GROUP BY/],
    ["SELECT DISTINCT email FROM orders", /DISTINCT/],
    ["SELECT x.email FROM orders", /unknown qualifier/],
    ["SELECT email.foo FROM orders", /field access/],
    ["SELECT email_index FROM orders", /blind index/],
    ["SELECT * FROM orders o JOIN audit a ON true", /joins/],
    ["SELECT * FROM orders, audit", /joins/],
    ["SELECT * FROM audit WHERE what IN (SELECT email FROM orders)", /subqueries/],
    ["WITH x AS (SELECT 1) SELECT * FROM orders", /WITH/],
    ["SELECT email FROM orders UNION SELECT 'x'", /subqueries/],
    ["INSERT INTO orders VALUES (1, 'x')", /column list/],
    ["INSERT INTO orders (email) SELECT 'x'", /subqueries|VALUES/],
    ["INSERT INTO orders DEFAULT VALUES", /column list/],
    ["INSERT INTO orders (email) VALUES (lower('X'))", /not one value|expression/],
    ["INSERT INTO orders (email) VALUES (E'a\\\\b')", /not a parameter/],
    ["INSERT INTO orders (email) VALUES ($1) ON CONFLICT DO NOTHING", /ON/],
    ["INSERT INTO orders (email, email_index) VALUES ($1, $2)", /blind index/],
    ["UPDATE orders SET email = $1 WHERE note = $1", /used elsewhere/],
    ["SELECT * FROM orders WHERE email = $1 OR email = $1", /two protected places/],
    ["UPDATE orders SET note = email", /UPDATE expression/],
    ["UPDATE orders SET (email) = ROW($1)", /UPDATE expression/],
    ["UPDATE orders SET note = 'x' FROM audit WHERE audit.id = orders.id", /FROM/],
    ["DELETE FROM orders USING audit WHERE email = $1", /USING/],
    ["COPY orders TO STDOUT", /COPY/],
    ["ALTER TABLE orders ADD COLUMN x text", /ALTER/],
    ["TRUNCATE orders", /TRUNCATE/],
    ["EXPLAIN SELECT email FROM orders", /EXPLAIN/],
    ["PREPARE p AS SELECT email FROM orders", /PREPARE/],
    ['SELECT * FROM "orders" WHERE "email" LIKE $1', /LIKE/],
    ["SELECT * FROM ORDERS WHERE EMAIL LIKE $1", /LIKE/],
    ["SELECT * FROM orders WHERE/**/email/*x*/LIKE/**/$1", /LIKE/],
    ['select U&"\\0065mail" from orders', /U&/],
    ["DO $$BEGIN INSERT INTO orders (email) VALUES ('x'); END$$", /DO: code in a string/],
    ["do 'begin perform 1; end'", /DO: code in a string/],
    ["CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'DELETE FROM audit'", /CREATE FUNCTION/],
    ["create or replace procedure p() language plpgsql as $b$ begin null; end $b$", /CREATE PROCEDURE/],
  ])("%s", (sql, reason) => {
    expect(refusal(sql)).toMatch(reason);
  });

  it("a backslash in a plain string is refused while standard_conforming_strings is off", () => {
    // With it off, the server ends 'a\' later than the standard does: what follows may be SQL.
    expect(refusal("SELECT * FROM orders WHERE id = 'a\\' OR email LIKE '%'", false)).toMatch(
      /standard_conforming/,
    );
    expect(() => plan("SELECT 'a\\b' FROM audit", true)).not.toThrow();
  });

  it("unterminated strings, identifiers, comments and dollar quotes are refused, not guessed at", () => {
    for (const sql of ["SELECT 'x", 'SELECT "x', "SELECT /* x", "SELECT $a$ x", "SELECT $"]) {
      expect(() => tokenize(sql, { standardConformingStrings: true }), sql).toThrow(/unterminated|stray/);
    }
  });

  it("the tokenizer reads strings, dollar quotes and comments as PostgreSQL does", () => {
    const tokens = tokenize(`SELECT 'it''s', E'a\\'b', $q$ 'x $$ $q$, "we""ird" -- c\n/* a /* b */ c */ x`, {
      standardConformingStrings: true,
    });
    expect(tokens.map((token) => `${token.kind}:${token.value}`)).toEqual([
      "ident:select",
      "string:it's",
      "punct:,",
      "string:E'a\\'b'",
      "punct:,",
      "string:$q$ 'x $$ $q$",
      "punct:,",
      'quoted:we"ird',
      "ident:x",
    ]);
  });
});

describe("pg proxy sql: texts that lex one way for a naive reader and another for the server", () => {
  it("a `--` comment ends at a carriage return as at a line feed", () => {
    // scan.l: newline is [\n\r]; what follows the CR is SQL the server runs.
    const planned = plan("SELECT 1 --\r; INSERT INTO orders (name) VALUES ('plain')");
    expect(planned.untouched).toBe(false);
    expect(planned.text).toBe("SELECT 1 --\r; INSERT INTO orders (name) VALUES ('enc:name:5')");
    expect(refusal("--\rSELECT * FROM orders WHERE email LIKE $1")).toMatch(/LIKE/);
    expect(plan("SELECT 1 -- orders.email\n").untouched).toBe(true);
  });

  it("with standard_conforming_strings off, N'...' is an escape string, as '...' is", () => {
    expect(refusal("SELECT N'\\' ' ; INSERT INTO orders (name) VALUES ($$plain$$) -- '", false)).toMatch(
      /standard_conforming/,
    );
    expect(() => plan("SELECT N'a\\b' FROM audit", true)).not.toThrow();
  });

  it("a string that would end elsewhere with standard_conforming_strings off is refused near a protected name", () => {
    // A SET pipelined before it reaches the server first; the proxy still believes it on.
    expect(refusal("SELECT 'x\\' , ' ; INSERT INTO orders (name) VALUES ($$plain$$) -- '")).toMatch(
      /ends elsewhere/,
    );
    expect(refusal("SELECT 'x\\' , ' ; INSERT INTO audit (what) SELECT name FROM orders -- '")).toMatch(
      /ends elsewhere/,
    );
    // Read the same either way, or naming nothing protected: planned as before.
    expect(plan("SELECT id FROM orders WHERE note = 'a\\b'").untouched).toBe(true);
    expect(plan("SELECT 'C:\\' FROM audit").untouched).toBe(true);
    expect(plan("SELECT 'x\\' , ' ; SELECT 1 -- ' FROM audit").untouched).toBe(true);
  });

  it("numbers are read as servers before 16 read them: `0x1f` and `1_x` are a number and a name", () => {
    const schema = parseProxyColumns({ key: "k", columns: { "t.x1f": {}, "t._secret": {} } }).schema;
    const planT = (sql: string) => planStatement(sql, schema, { standardConformingStrings: true, sealer });
    expect(() => planT("SELECT 0x1f FROM t")).toThrow(/expression/);
    expect(() => planT("SELECT 1_secret FROM t")).toThrow(/expression/);
    expect(planT("SELECT 1.5e3, .5 FROM t").untouched).toBe(true);
  });

  it("a parameter number no Bind can reach is refused, not planned", () => {
    // The plan holds a rule per parameter up to the highest: $99999999999 would never end.
    for (const n of ["65536", "99999", "0"]) {
      expect(refusal(`SELECT name FROM orders WHERE email = $1 AND id = $${n}`)).toMatch(/parameter number/);
    }
    expect(plan("SELECT name FROM orders WHERE email = $1 AND id = $65535").parameters).toHaveLength(65_535);
  });

  it("names longer than 63 bytes are cut as the server cuts them", () => {
    const long = "c".repeat(63);
    const schema = parseProxyColumns({ key: "k", columns: { [`t.${long}`]: {} } }).schema;
    const planLong = (sql: string) => planStatement(sql, schema, { standardConformingStrings: true, sealer });
    expect(planLong(`INSERT INTO t (${long}_and_more) VALUES ('plain')`).text).toBe(
      `INSERT INTO t (${long}_and_more) VALUES ('enc:${long}:5')`,
    );
    expect(() => planLong(`SELECT * FROM t WHERE "${long}xyz" LIKE $1`)).toThrow(/LIKE/);
    expect(() => planLong(`SELECT lower(${long}é) FROM t`)).toThrow(/expression/);
  });
});

describe("pg proxy columns file", () => {
  it("reads table.column entries with optional blind indexes", () => {
    expect(columns.keyName).toBe("orders-key");
    expect(columns.schema.tables.get("orders")?.get("email")).toEqual({
      table: "orders",
      column: "email",
      index: "email_index",
    });
  });

  it.each([
    [{ key: "k", columns: {} }, /at least one column/],
    [{ key: "k", columns: { email: {} } }, /columns\.email/],
    [{ key: "k", columns: { "Orders.email": {} } }, /columns\.Orders\.email/],
    [
      { key: "k", columns: { "orders.email": { index: "name" }, "orders.name": {} } },
      /blind index and another column/,
    ],
    [{ key: "k", columns: { "orders.email": { idx: "x" } } }, /orders\.email/],
    [{ key: "no spaces", columns: { "orders.email": {} } }, /key/],
  ])("refuses %j", (json, message) => {
    expect(() => parseProxyColumns(json)).toThrow(message);
  });
});
