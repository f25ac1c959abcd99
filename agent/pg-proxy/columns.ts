/**
 * Which columns the PostgreSQL proxy protects (`SHIELD_PG_PROXY_COLUMNS_FILE`, JSON):
 *
 * ```json
 * {
 *   "key": "orders-key",
 *   "columns": {
 *     "orders.customer_email": { "index": "customer_email_index" },
 *     "orders.customer_name": {}
 *   }
 * }
 * ```
 *
 * Every protected column is a `text` column holding `shield:v1:` ciphertext (AES-256-GCM under
 * the agent's key, associated data naming the table and column). One with `index` has a blind
 * index column beside it in the same table (`text`, HMAC-SHA-256 under a sub-key of the key):
 * the proxy fills it on every INSERT and UPDATE, rewrites `c = v` to a lookup on it, and hides
 * it from result rows. Names are plain lower-case identifiers, as PostgreSQL folds unquoted ones.
 */
import { z } from "zod";
import { ShieldError } from "../../core/errors.js";
import { KEY_NAME_PATTERN } from "../../core/messages/fields.js";
import type { ProtectedColumn, ProtectedSchema } from "./sql.js";

const IDENTIFIER = /^[a-z_][a-z0-9_]{0,62}$/;

const COLUMNS_FILE = z.strictObject({
  key: z.string().regex(KEY_NAME_PATTERN),
  columns: z
    .record(
      z
        .string()
        .regex(/^[a-z_][a-z0-9_]{0,62}\.[a-z_][a-z0-9_]{0,62}$/, "table.column, lower-case identifiers"),
      z.strictObject({ index: z.string().regex(IDENTIFIER).optional() }),
    )
    .refine((columns) => Object.keys(columns).length > 0, "at least one column"),
});

export interface ProxyColumns {
  readonly keyName: string;
  readonly schema: ProtectedSchema;
}

/** The associated data of a protected column's ciphertext: it moves to no other column. */
export function columnAssociatedData(column: ProtectedColumn): Buffer {
  return Buffer.from(`shield-pg-proxy:v1:${column.table}.${column.column}`, "utf8");
}

/** The blind-index context of a column (an HMAC sub-key per column). */
export function columnIndexContext(column: ProtectedColumn): string {
  return `${column.table}.${column.column}`;
}

/** Parses the columns file's JSON (from `unknown`); ERR_CONFIG naming what is wrong. */
export function parseProxyColumns(json: unknown): ProxyColumns {
  const parsed = COLUMNS_FILE.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new ShieldError(
      "ERR_CONFIG",
      `pg proxy columns: ${issue.path.join(".") || "(root)"}: ${issue.message}`,
    );
  }
  const tables = new Map<string, Map<string, ProtectedColumn>>();
  for (const [qualified, options] of Object.entries(parsed.data.columns)) {
    const [table, column] = qualified.split(".") as [string, string];
    const columns = tables.get(table) ?? new Map<string, ProtectedColumn>();
    columns.set(column, { table, column, ...(options.index === undefined ? {} : { index: options.index }) });
    tables.set(table, columns);
  }
  for (const [table, columns] of tables) {
    const indexes = new Set<string>();
    for (const column of columns.values()) {
      if (column.index === undefined) continue;
      if (columns.has(column.index) || indexes.has(column.index)) {
        throw new ShieldError(
          "ERR_CONFIG",
          `pg proxy columns: ${table}.${column.index} cannot be a blind index and another column too`,
        );
      }
      indexes.add(column.index);
    }
  }
  return { keyName: parsed.data.key, schema: { tables } };
}
