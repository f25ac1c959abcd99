/**
 * How an order becomes rows the database cannot read, and back, through the agent's encryption
 * API. Each protected value is encrypted with the associated data `orders:<id>:<column>`, so a
 * ciphertext copied into another row or column does not decrypt; the e-mail address and the
 * card number also get blind indexes (one HKDF context per column) for equality lookups.
 * Values are normalised before both, so that `Alice@Example.com` finds `alice@example.com`.
 *
 * Plaintext exists only inside the service (the confidential container) and only for the call
 * that needs it: nothing is cached, and the Buffers the client returns are zeroed once read.
 */
import type { ShieldClient } from "../../client/shield-client.js";
import { ENCRYPTED_COLUMNS, type EncryptedColumn, type StoredOrder } from "./orders-store.js";

export const EMAIL_CONTEXT = "orders.customer_email";
export const CARD_CONTEXT = "orders.card_number";

/** An order as the service's callers see it. */
export interface Order {
  readonly id: string;
  readonly placedAt: Date;
  readonly customerEmail: string;
  readonly customerName: string;
  readonly cardNumber: string;
  readonly amountCents: number;
}

export const normaliseEmail = (email: string): string => email.trim().toLowerCase();
export const normaliseCard = (card: string): string => card.replace(/[\s-]/g, "");

export function associatedData(id: string, column: EncryptedColumn): Buffer {
  return Buffer.from(`orders:${id}:${column}`, "utf8");
}

export class OrdersCrypto {
  readonly #shield: ShieldClient;
  readonly #key: string;

  constructor(shield: ShieldClient, keyName: string) {
    this.#shield = shield;
    this.#key = keyName;
  }

  /** Encrypts an order for storage: one batch for the values, one for the indexes. */
  async seal(order: Order): Promise<StoredOrder> {
    const values: Record<EncryptedColumn, string> = {
      customer_email: normaliseEmail(order.customerEmail),
      customer_name: order.customerName,
      card_number: normaliseCard(order.cardNumber),
      amount_cents: String(order.amountCents),
    };
    // A rotation between the two calls would index under another version than the values:
    // asked again, so a row's indexes and ciphertext always share its key_version.
    for (let attempt = 0; ; attempt++) {
      const [sealed, indexes] = await Promise.all([
        this.#shield.encryptBatch(
          this.#key,
          ENCRYPTED_COLUMNS.map((column) => ({
            plaintext: Buffer.from(values[column], "utf8"),
            associatedData: associatedData(order.id, column),
          })),
        ),
        this.#shield.hmacBatch(this.#key, [
          { data: Buffer.from(values.customer_email, "utf8"), context: EMAIL_CONTEXT },
          { data: Buffer.from(values.card_number, "utf8"), context: CARD_CONTEXT },
        ]),
      ]);
      const version = sealed[0]!.version;
      const consistent = [...sealed, ...indexes].every((item) => item.version === version);
      if (!consistent && attempt < 2) continue;
      if (!consistent) throw new Error("the key version changed during every attempt");
      return {
        id: order.id,
        placedAt: order.placedAt,
        keyVersion: version,
        customerEmail: sealed[0]!.ciphertext,
        customerName: sealed[1]!.ciphertext,
        cardNumber: sealed[2]!.ciphertext,
        amountCents: sealed[3]!.ciphertext,
        customerEmailIndex: indexes[0]!.hmac,
        cardIndex: indexes[1]!.hmac,
      };
    }
  }

  /** The index values under every version that decrypts: what an e-mail lookup matches. */
  async emailCandidates(email: string): Promise<string[]> {
    const index = await this.#shield.hmac(
      this.#key,
      Buffer.from(normaliseEmail(email), "utf8"),
      EMAIL_CONTEXT,
    );
    return index.candidates.map((candidate) => candidate.hmac);
  }

  /** Decrypts the named columns of many rows in one batch per column. */
  async open<C extends EncryptedColumn>(
    rows: readonly StoredOrder[],
    columns: readonly C[],
  ): Promise<Record<C, string>[]> {
    const opened = rows.map(() => ({}) as Record<C, string>);
    if (rows.length === 0) return opened;
    await Promise.all(
      columns.map(async (column) => {
        const plaintexts = await this.#shield.decryptBatch(
          this.#key,
          rows.map((row) => ({
            ciphertext: stored(row, column),
            associatedData: associatedData(row.id, column),
          })),
        );
        plaintexts.forEach((item, index) => {
          opened[index]![column] = item.plaintext.toString("utf8");
          item.plaintext.fill(0);
        });
      }),
    );
    return opened;
  }

  /**
   * Rows moved to the current version by the agent, without their plaintext coming here: one
   * rewrap batch per column, the index columns recomputed by the agent from the same values.
   */
  async rewrap(rows: readonly StoredOrder[]): Promise<StoredOrder[]> {
    const columns = await Promise.all(
      ENCRYPTED_COLUMNS.map((column) =>
        this.#shield.rewrapBatch(
          this.#key,
          rows.map((row) => ({
            ciphertext: stored(row, column),
            associatedData: associatedData(row.id, column),
            ...(column === "customer_email"
              ? { hmacContext: EMAIL_CONTEXT }
              : column === "card_number"
                ? { hmacContext: CARD_CONTEXT }
                : {}),
          })),
        ),
      ),
    );
    const [emails, names, cards, amounts] = columns as [
      (typeof columns)[0],
      (typeof columns)[0],
      (typeof columns)[0],
      (typeof columns)[0],
    ];
    return rows.map((row, index) => {
      const versions = new Set(columns.map((column) => column[index]!.version));
      if (versions.size !== 1) throw new Error("the key version changed during a rewrap batch");
      return {
        id: row.id,
        placedAt: row.placedAt,
        keyVersion: emails[index]!.version,
        customerEmail: emails[index]!.ciphertext,
        customerEmailIndex: emails[index]!.hmac!,
        customerName: names[index]!.ciphertext,
        cardNumber: cards[index]!.ciphertext,
        cardIndex: cards[index]!.hmac!,
        amountCents: amounts[index]!.ciphertext,
      };
    });
  }
}

function stored(row: StoredOrder, column: EncryptedColumn): string {
  switch (column) {
    case "customer_email":
      return row.customerEmail;
    case "customer_name":
      return row.customerName;
    case "card_number":
      return row.cardNumber;
    case "amount_cents":
      return row.amountCents;
  }
}
