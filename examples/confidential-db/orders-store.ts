/**
 * The orders table as the database operator sees it: every protected value is a `shield:v1`
 * ciphertext, every lookup column a `shield-hmac:v1` blind index, and the only clear columns are
 * the row id, the order time and the key version the row is encrypted under (so the rewrap job
 * finds old rows with an index scan). Nothing here encrypts or decrypts: this module moves
 * opaque strings between the service and PostgreSQL, with parameterised queries only.
 */
import type { Pool, PoolClient } from "pg";

export const SCHEMA = `
CREATE TABLE IF NOT EXISTS orders (
  id uuid PRIMARY KEY,
  placed_at timestamptz NOT NULL,
  key_version text NOT NULL,
  customer_email text NOT NULL,
  customer_email_index text NOT NULL,
  customer_name text NOT NULL,
  card_number text NOT NULL,
  card_index text NOT NULL,
  amount_cents text NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_customer_email_index ON orders (customer_email_index);
CREATE INDEX IF NOT EXISTS orders_card_index ON orders (card_index);
CREATE INDEX IF NOT EXISTS orders_key_version ON orders (key_version);
`;

/** The encrypted columns, each with the associated data that binds it to its row. */
export const ENCRYPTED_COLUMNS = ["customer_email", "customer_name", "card_number", "amount_cents"] as const;
export type EncryptedColumn = (typeof ENCRYPTED_COLUMNS)[number];

/** One row as stored: ciphertext and blind indexes. */
export interface StoredOrder {
  readonly id: string;
  readonly placedAt: Date;
  readonly keyVersion: string;
  readonly customerEmail: string;
  readonly customerEmailIndex: string;
  readonly customerName: string;
  readonly cardNumber: string;
  readonly cardIndex: string;
  readonly amountCents: string;
}

interface Row {
  id: string;
  placed_at: Date;
  key_version: string;
  customer_email: string;
  customer_email_index: string;
  customer_name: string;
  card_number: string;
  card_index: string;
  amount_cents: string;
}

const COLUMNS =
  "id, placed_at, key_version, customer_email, customer_email_index, customer_name, card_number, card_index, amount_cents";

export class OrdersStore {
  readonly #pool: Pool;

  constructor(pool: Pool) {
    this.#pool = pool;
  }

  async migrate(): Promise<void> {
    await this.#pool.query(SCHEMA);
  }

  async insert(order: StoredOrder): Promise<void> {
    await this.#pool.query(`INSERT INTO orders (${COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`, [
      order.id,
      order.placedAt,
      order.keyVersion,
      order.customerEmail,
      order.customerEmailIndex,
      order.customerName,
      order.cardNumber,
      order.cardIndex,
      order.amountCents,
    ]);
  }

  /** Rows whose e-mail index is one of `indexes` (the lookup value under each usable version). */
  async byEmailIndex(indexes: readonly string[]): Promise<StoredOrder[]> {
    const result = await this.#pool.query<Row>(
      `SELECT ${COLUMNS} FROM orders WHERE customer_email_index = ANY($1::text[]) ORDER BY placed_at, id`,
      [indexes],
    );
    return result.rows.map(fromRow);
  }

  async all(): Promise<StoredOrder[]> {
    const result = await this.#pool.query<Row>(`SELECT ${COLUMNS} FROM orders ORDER BY placed_at, id`);
    return result.rows.map(fromRow);
  }

  /** Up to `limit` rows not under `version`: what the rewrap job works through. */
  async notUnder(version: string, limit: number): Promise<StoredOrder[]> {
    const result = await this.#pool.query<Row>(
      `SELECT ${COLUMNS} FROM orders WHERE key_version <> $1 ORDER BY id LIMIT $2`,
      [version, limit],
    );
    return result.rows.map(fromRow);
  }

  async countNotUnder(version: string): Promise<number> {
    const result = await this.#pool.query<{ count: string }>(
      "SELECT count(*) AS count FROM orders WHERE key_version <> $1",
      [version],
    );
    return Number(result.rows[0]?.count ?? 0);
  }

  /**
   * Replaces the ciphertext of rewrapped rows in one transaction. A row is changed only while
   * it is still under the version it was read under (an insert or another job may have moved
   * it meanwhile); returns how many rows changed.
   */
  async replace(rows: readonly { readonly from: string; readonly order: StoredOrder }[]): Promise<number> {
    const client: PoolClient = await this.#pool.connect();
    let changed = 0;
    try {
      await client.query("BEGIN");
      for (const { from, order } of rows) {
        const result = await client.query(
          `UPDATE orders SET key_version = $2, customer_email = $3, customer_email_index = $4, customer_name = $5,
             card_number = $6, card_index = $7, amount_cents = $8
           WHERE id = $1 AND key_version = $9`,
          [
            order.id,
            order.keyVersion,
            order.customerEmail,
            order.customerEmailIndex,
            order.customerName,
            order.cardNumber,
            order.cardIndex,
            order.amountCents,
            from,
          ],
        );
        changed += result.rowCount ?? 0;
      }
      await client.query("COMMIT");
    } catch (error) {
      await client.query("ROLLBACK").catch(() => undefined);
      throw error;
    } finally {
      client.release();
    }
    return changed;
  }
}

function fromRow(row: Row): StoredOrder {
  return {
    id: row.id,
    placedAt: row.placed_at,
    keyVersion: row.key_version,
    customerEmail: row.customer_email,
    customerEmailIndex: row.customer_email_index,
    customerName: row.customer_name,
    cardNumber: row.card_number,
    cardIndex: row.card_index,
    amountCents: row.amount_cents,
  };
}
