/**
 * The "orders" service: an HTTP API over customer PII and card data kept in PostgreSQL, where
 * the database (and whoever operates it) sees only ciphertext and blind indexes. The service
 * runs in the confidential container beside the Shield agent and never holds a key: every value
 * goes through the agent's encryption API, and every query that needs plaintext is answered
 * here, after the rows come back.
 *
 * | route | answer |
 * |---|---|
 * | `POST /orders` `{customerEmail, customerName, cardNumber, amountCents}` | 201 `{id}` |
 * | `GET /orders?email=` | the customer's orders (equality lookup on the e-mail blind index) |
 * | `GET /cards/totals` | per card (shown as its last four digits): order count and total |
 * | `GET /orders/search?minCents=&maxCents=` | orders whose amount is in the range (needs plaintext) |
 * | `GET /healthz` | 200 while the agent is trusted and holds the key, else 503 |
 *
 * Fail closed: when the agent says it is revoked or failed — on any call's 403, or in the
 * status it polls — the service is sealed and answers every route 503 from then on, before any
 * database or agent call. It holds no cache of plaintext and no key, so sealing has nothing to
 * wipe; what it decrypted for earlier answers were short-lived strings. An agent that cannot be
 * reached, or that refuses one row, makes that request 503, not the service.
 *
 * Rotation: the poll notices the key's current version changing and starts the rewrap job,
 * which moves every older row to the current version (ciphertext and indexes) in batches
 * through `/v1/rewrap`, without the plaintext coming to the service. Lookups match the index
 * under every version that still decrypts, so they answer rightly throughout.
 */
import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Pool } from "pg";
import { z } from "zod";
import { ShieldApiError, type ShieldClient } from "../../client/shield-client.js";
import { OrdersCrypto, type Order } from "./orders-crypto.js";
import { OrdersStore } from "./orders-store.js";

export interface OrdersServiceOptions {
  readonly pool: Pool;
  readonly shield: ShieldClient;
  /** The Key Vault key the agent holds for this service. */
  readonly keyName: string;
  /** How often to read the agent's status (default 5 s). */
  readonly watchIntervalMs?: number;
  /** Rows per rewrap batch (default 200). */
  readonly rewrapBatchSize?: number;
  readonly log?: (message: string, fields?: Record<string, string | number>) => void;
}

export interface OrdersService {
  /** Starts listening (default 127.0.0.1, a free port) and watching the agent. */
  listen(port?: number, host?: string): Promise<string>;
  /** The state the service is in: `open`, or `sealed` once the agent is revoked or failed. */
  readonly state: () => "open" | "sealed";
  /** Resolves when the rewrap job that is running (if any) has ended. */
  rewrapped(): Promise<void>;
  /** Reads the agent's status once (what the poll does). */
  checkAgent(): Promise<void>;
  close(): Promise<void>;
}

const MAX_BODY_BYTES = 16 * 1024;

const newOrder = z.strictObject({
  customerEmail: z.email().max(254),
  customerName: z.string().min(1).max(200),
  cardNumber: z.string().regex(/^[0-9][0-9 -]{10,22}[0-9]$/),
  amountCents: z.number().int().min(0).max(1_000_000_000),
});
const cents = z.coerce.number().int().min(0).max(1_000_000_000);

/** An answer the service gives on purpose (4xx, 503). */
class Refusal extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** A rewrap batch refused because of one row: which one. */
class RewrapRefused extends ShieldApiError {
  constructor(
    cause: ShieldApiError,
    readonly orderId: string,
  ) {
    super(cause.code, cause.status, cause.message, cause.item);
  }
}

export async function createOrdersService(options: OrdersServiceOptions): Promise<OrdersService> {
  const { shield, keyName } = options;
  const log = options.log ?? (() => undefined);
  const store = new OrdersStore(options.pool);
  const crypto = new OrdersCrypto(shield, keyName);
  const watchIntervalMs = options.watchIntervalMs ?? 5_000;
  const batchSize = options.rewrapBatchSize ?? 200;
  // An idle connection the server ends (a restart, a failover) must not end the process.
  options.pool.on("error", (error: Error & { code?: string }) =>
    log("database connection lost", { code: error.code ?? "error" }),
  );
  await store.migrate();

  let sealed = false;
  let knownVersion: string | undefined;
  let rewrapJob: Promise<void> | undefined;
  let rewrapAgain = false;
  let watchTimer: NodeJS.Timeout | undefined;
  let closing = false;

  function seal(reason: string): void {
    if (sealed) return;
    sealed = true;
    log("sealed: the agent no longer serves this key", { reason });
  }

  /** Reads the agent's status: seals on revoked or failed, starts a rewrap on a new version. */
  async function checkAgent(): Promise<void> {
    let status;
    try {
      status = await shield.status();
    } catch (error) {
      log("agent status unavailable", { code: error instanceof ShieldApiError ? error.code : "error" });
      return;
    }
    if (status.state === "revoked" || status.state === "failed") {
      seal(status.state);
      return;
    }
    const current = status.keys.find((key) => key.name === keyName)?.current;
    if (current === undefined) return;
    if (sealed && (status.state === "trusted" || status.state === "re-attesting")) {
      // Only one version was revoked, or a new agent attested afresh: it decides what is served.
      sealed = false;
      log("unsealed: the agent serves the key");
    }
    if (current !== knownVersion) {
      knownVersion = current;
      startRewrap();
    }
  }

  function startRewrap(): void {
    if (rewrapJob !== undefined) {
      rewrapAgain = true;
      return;
    }
    rewrapJob = (async () => {
      do {
        rewrapAgain = false;
        await rewrapAll().catch((error: unknown) => {
          // A row that does not verify stops the job (an integrity alarm, not something to skip);
          // its id is not secret, its values are never logged.
          log("rewrap stopped", {
            code: error instanceof ShieldApiError ? error.code : "error",
            ...(error instanceof RewrapRefused ? { orderId: error.orderId } : {}),
          });
          if (error instanceof ShieldApiError) onAgentRefusal(error);
        });
      } while (rewrapAgain && !sealed && !closing);
    })().finally(() => {
      rewrapJob = undefined;
    });
  }

  /** Every row not under the current version, batch after batch, until none is left. */
  async function rewrapAll(): Promise<void> {
    let moved = 0;
    for (;;) {
      if (sealed || closing || knownVersion === undefined) return;
      const rows = await store.notUnder(knownVersion, batchSize);
      if (rows.length === 0) break;
      const rewrapped = await crypto.rewrap(rows).catch((error: unknown) => {
        const refusedRow =
          error instanceof ShieldApiError && error.item !== undefined ? rows[error.item] : undefined;
        throw refusedRow === undefined ? error : new RewrapRefused(error as ShieldApiError, refusedRow.id);
      });
      const changed = await store.replace(
        rewrapped.map((order, index) => ({ from: rows[index]!.keyVersion, order })),
      );
      moved += changed;
      // Rewrapped to a version newer than the one known: the poll will start another pass.
      if (rewrapped[0]!.keyVersion !== knownVersion) break;
    }
    log("rewrap done", { version: knownVersion ?? "", rows: moved });
  }

  /**
   * A 403 `revoked` or `failed` seals the service at once. A single revoked key version answers
   * 403 `revoked` too, while the agent stays trusted: the status read that follows says which,
   * and opens the service again only in that case.
   */
  function onAgentRefusal(error: ShieldApiError): void {
    if (error.status !== 403 || (error.code !== "revoked" && error.code !== "failed")) return;
    seal(error.code);
    void checkAgent();
  }

  async function route(request: IncomingMessage, url: URL): Promise<{ status: number; body: unknown }> {
    const path = url.pathname;
    if (request.method === "GET" && path === "/healthz") return health();
    if (request.method === "POST" && path === "/orders") return placeOrder(await readJson(request));
    if (request.method === "GET" && path === "/orders") return ordersOf(url.searchParams.get("email"));
    if (request.method === "GET" && path === "/cards/totals") return cardTotals();
    if (request.method === "GET" && path === "/orders/search") {
      return searchByAmount(url.searchParams.get("minCents"), url.searchParams.get("maxCents"));
    }
    throw new Refusal(404, "not-found", "no such route");
  }

  /** Ready only while the agent is trusted and holds the key: a readiness probe for the pod. */
  async function health(): Promise<{ status: number; body: unknown }> {
    const status = await shield.status();
    const held = status.keys.some((key) => key.name === keyName);
    const trusted = status.state === "trusted" || status.state === "re-attesting";
    if (trusted && held) return { status: 200, body: { status: "ok" } };
    throw new Refusal(503, "not-ready", "the agent does not serve the key yet");
  }

  async function placeOrder(json: unknown): Promise<{ status: number; body: unknown }> {
    const parsed = newOrder.safeParse(json);
    if (!parsed.success) throw new Refusal(400, "bad-request", "not an order");
    const order: Order = { id: randomUUID(), placedAt: new Date(), ...parsed.data };
    await store.insert(await crypto.seal(order));
    return { status: 201, body: { id: order.id } };
  }

  async function ordersOf(email: string | null): Promise<{ status: number; body: unknown }> {
    if (email === null || !z.email().safeParse(email.trim()).success) {
      throw new Refusal(400, "bad-request", "email must be an e-mail address");
    }
    const rows = await store.byEmailIndex(await crypto.emailCandidates(email));
    const opened = await crypto.open(rows, [
      "customer_email",
      "customer_name",
      "card_number",
      "amount_cents",
    ]);
    const orders = rows.map((row, index) => ({
      id: row.id,
      placedAt: row.placedAt.toISOString(),
      customerEmail: opened[index]!.customer_email,
      customerName: opened[index]!.customer_name,
      card: maskCard(opened[index]!.card_number),
      amountCents: Number(opened[index]!.amount_cents),
    }));
    return { status: 200, body: { orders } };
  }

  async function cardTotals(): Promise<{ status: number; body: unknown }> {
    const rows = await store.all();
    const opened = await crypto.open(rows, ["card_number", "amount_cents"]);
    const totals = new Map<string, { orders: number; totalCents: number }>();
    for (const values of opened) {
      const entry = totals.get(values.card_number) ?? { orders: 0, totalCents: 0 };
      entry.orders += 1;
      entry.totalCents += Number(values.amount_cents);
      totals.set(values.card_number, entry);
    }
    const cards = [...totals]
      .map(([card, entry]) => ({ card: maskCard(card), ...entry }))
      .sort((a, b) => b.totalCents - a.totalCents || a.card.localeCompare(b.card));
    return { status: 200, body: { cards } };
  }

  async function searchByAmount(
    min: string | null,
    max: string | null,
  ): Promise<{ status: number; body: unknown }> {
    const low = cents.safeParse(min ?? "0");
    const high = cents.safeParse(max ?? "1000000000");
    if (!low.success || !high.success || low.data > high.data) {
      throw new Refusal(400, "bad-request", "minCents and maxCents must be whole cents, min ≤ max");
    }
    const rows = await store.all();
    const opened = await crypto.open(rows, ["amount_cents"]);
    const orders = rows
      .map((row, index) => ({
        id: row.id,
        placedAt: row.placedAt.toISOString(),
        amountCents: Number(opened[index]!.amount_cents),
      }))
      .filter((order) => order.amountCents >= low.data && order.amountCents <= high.data);
    return { status: 200, body: { orders } };
  }

  async function handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    let answer: { status: number; body: unknown };
    try {
      if (sealed) throw new Refusal(503, "sealed", "the service's key was revoked; nothing can be read");
      answer = await route(request, new URL(request.url ?? "/", "http://orders"));
    } catch (error) {
      answer = failureAnswer(error);
    }
    request.resume();
    const text = JSON.stringify(answer.body);
    response.writeHead(answer.status, {
      "Content-Type": "application/json; charset=utf-8",
      "Content-Length": String(Buffer.byteLength(text)),
      "Cache-Control": "no-store",
    });
    response.end(text);
    log("request", {
      method: request.method ?? "",
      path: (request.url ?? "").split("?")[0]!,
      status: answer.status,
    });
  }

  function failureAnswer(error: unknown): { status: number; body: unknown } {
    if (error instanceof Refusal)
      return { status: error.status, body: { error: { code: error.code, message: error.message } } };
    if (error instanceof ShieldApiError) {
      onAgentRefusal(error);
      const code = error.status === 0 ? "agent-unavailable" : `agent-${error.code}`;
      return { status: 503, body: { error: { code, message: "the data cannot be read now" } } };
    }
    log("request failed", { code: error instanceof Error && "code" in error ? String(error.code) : "error" });
    return { status: 500, body: { error: { code: "internal", message: "internal error" } } };
  }

  const server: Server = createServer((request, response) => {
    void handle(request, response);
  });

  return {
    async listen(port = 0, host = "127.0.0.1") {
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, host, () => {
          server.off("error", reject);
          resolve();
        });
      });
      await checkAgent();
      const tick = (): void => {
        watchTimer = setTimeout(() => {
          void checkAgent().finally(() => {
            if (!closing) tick();
          });
        }, watchIntervalMs);
        watchTimer.unref();
      };
      tick();
      const address = server.address() as AddressInfo;
      return `http://${address.address}:${address.port}`;
    },
    state: () => (sealed ? "sealed" : "open"),
    rewrapped: async () => {
      while (rewrapJob !== undefined) await rewrapJob;
    },
    checkAgent,
    async close() {
      closing = true;
      if (watchTimer !== undefined) clearTimeout(watchTimer);
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await (rewrapJob ?? Promise.resolve());
    },
  };
}

function maskCard(card: string): string {
  return `•••• ${card.slice(-4)}`;
}

async function readJson(request: IncomingMessage): Promise<unknown> {
  if (request.headers["content-type"]?.split(";")[0]?.trim().toLowerCase() !== "application/json") {
    throw new Refusal(415, "unsupported-media-type", "the body must be application/json");
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new Refusal(413, "too-large", "the body is too large");
    chunks.push(chunk);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    throw new Refusal(400, "bad-request", "the body is not JSON");
  }
}
