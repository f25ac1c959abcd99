/**
 * Transparent mode: a loopback PostgreSQL proxy in the agent for applications that cannot change
 * a line. The application connects to it as to its database; the proxy encrypts the configured
 * columns on the way in and decrypts them on the way out with the agent's own encryption engine
 * (KeyOperations: the key never leaves the agent, not even to the proxy's caller), over the
 * simple and the extended query protocol. What it cannot rewrite safely it refuses with an
 * ErrorResponse — SQLSTATE 0A000, the Shield code in DETAIL — and the server is made to fail
 * the same statement (a statement that cannot parse is sent in its place), so transaction state,
 * the extended protocol's skip-to-Sync and ReadyForQuery stay exactly as a real error leaves them.
 *
 * Per connection:
 * 1. startup: TLS and GSS requests are declined (loopback), a CancelRequest is forwarded to the
 *    server; the application authenticates to the proxy with a cleartext password (its own
 *    credential, compared in constant time); the proxy connects to the server itself
 *    (upstream.ts), reads where the protected columns live (table OID, attribute number), and
 *    hands the server's greeting on;
 * 2. every frontend message is read in order: `Query` and `Parse` texts are planned (sql.ts) —
 *    passed on unchanged, rewritten, or refused; `Bind` values of protected parameters are
 *    encrypted or turned into blind indexes; `Execute` of a portal whose columns the proxy has
 *    not seen gets a `Describe` first, whose answer is kept back; `FunctionCall` is refused;
 * 3. every backend message is matched to the frontend message it answers (a queue, cut back to
 *    the next Sync after an error): `DataRow` values of protected columns are decrypted, blind
 *    index columns are dropped from rows and descriptions, `ParameterDescription` shows the
 *    statement's own parameters.
 *
 * Fail closed: when the agent is revoked or fails, every connection gets a FATAL ErrorResponse
 * and is closed at once, and new ones are refused; a value that does not decrypt ends the
 * connection rather than reach the application as something else.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { createServer, type AddressInfo, type Server, type Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { serialize } from "pg-protocol";
import type { ParameterDescriptionMessage, RowDescriptionMessage } from "pg-protocol/dist/messages.js";
import { ShieldError, isShieldError } from "../../core/errors.js";
import { silentLogger, type Logger } from "../../core/ports/logger.js";
import { isLoopback, type Secret } from "../config.js";
import type { KeyOperations } from "../encryption.js";
import type { AgentState } from "../state-machine.js";
import { columnAssociatedData, columnIndexContext, type ProxyColumns } from "./columns.js";
import { planStatement, type LiteralSealer, type Plan, type ProtectedColumn } from "./sql.js";
import { connectUpstream, sendCancel, type UpstreamSettings } from "./upstream.js";
import {
  CANCEL_REQUEST_CODE,
  FrameReader,
  GSSENC_REQUEST_CODE,
  PROTOCOL_3_0,
  SSL_REQUEST_CODE,
  decodeBackend,
  readBind,
  readDataRow,
  readExecutePortal,
  readParse,
  readQuery,
  readStartupPacket,
  readTarget,
  startupParameters,
  writeAuthentication,
  writeBind,
  writeDataRow,
  writeError,
  writeParameterDescription,
  writeRowDescription,
  type FieldDescription,
  type Frame,
} from "./wire.js";

export interface PgProxyAgent {
  state(): AgentState;
  subscribe(listener: (state: AgentState) => void): () => void;
}

export interface PgProxyOptions {
  /** Loopback only unless `allowNonLoopback`: plaintext crosses this socket. */
  readonly listen: { readonly host: string; readonly port: number };
  readonly allowNonLoopback?: boolean;
  readonly upstream: UpstreamSettings;
  /** The application's password for the proxy (not the database's). */
  readonly clientPassword: Secret;
  /** The user name the application logs in with (default: the upstream user). */
  readonly clientUser?: string;
  readonly columns: ProxyColumns;
  readonly operations: KeyOperations;
  readonly agent: PgProxyAgent;
  readonly logger?: Logger;
}

export interface PgProxy {
  readonly host: string;
  readonly port: number;
  /** Open client connections. */
  connections(): number;
  close(): Promise<void>;
}

/** Text sent to the server in place of a refused statement: it never parses, so the server fails too. */
const REFUSED_SQL = "SHIELD PROXY REFUSED THIS STATEMENT";
/** Startup parameters passed on to the server; anything else (`options`, `replication`) is not. */
const FORWARDED_PARAMETERS = new Set([
  "application_name",
  "client_encoding",
  "DateStyle",
  "TimeZone",
  "extra_float_digits",
  "IntervalStyle",
  "search_path",
]);
const TEXT_OID = 25;
/**
 * Client encodings the proxy reads statements in: it lexes UTF-8, and in these the server reads
 * every ASCII byte as that character. In SJIS, BIG5, GBK, UHC, GB18030 and JOHAB the second byte
 * of a character can be ASCII (`\`, letters), so the server would read a text differently.
 */
const CLIENT_ENCODINGS = new Set(["UTF8", "SQL_ASCII"]);

interface ErrorFields {
  readonly severity: "ERROR" | "FATAL";
  readonly sqlState: string;
  readonly message: string;
  readonly detail: string;
  readonly hint?: string;
}

function refusalFields(error: ShieldError): ErrorFields {
  return {
    severity: "ERROR",
    sqlState: "0A000",
    message: `shield proxy refused the statement: ${error.message}`,
    detail: error.code,
    hint: "The proxy rewrites only statements it can keep plaintext out of the database with; see docs/transparent-proxy.md.",
  };
}

/** The FATAL answer for a failure that ends the connection. */
function fatalFields(error: unknown): ErrorFields {
  const code = isShieldError(error) ? error.code : "ERR_INTERNAL";
  switch (code) {
    case "ERR_PROXY_KEY_UNAVAILABLE":
      return {
        severity: "FATAL",
        sqlState: (error as ShieldError).message.includes("not held yet") ? "57P03" : "28000",
        message: `shield proxy: ${(error as ShieldError).message}`,
        detail: code,
      };
    case "ERR_PROXY_STORED_VALUE":
      return {
        severity: "FATAL",
        sqlState: "XX001",
        message: `shield proxy: ${(error as ShieldError).message}`,
        detail: code,
      };
    case "ERR_PROXY_AUTH":
      return {
        severity: "FATAL",
        sqlState: "28P01",
        message: `shield proxy: ${(error as ShieldError).message}`,
        detail: code,
      };
    case "ERR_PROXY_PROTOCOL":
      return {
        severity: "FATAL",
        sqlState: "08P01",
        message: `shield proxy: ${(error as ShieldError).message}`,
        detail: code,
      };
    case "ERR_UPSTREAM_UNAVAILABLE":
      return {
        severity: "FATAL",
        sqlState: "08006",
        message: `shield proxy: ${(error as ShieldError).message}`,
        detail: code,
      };
    default:
      return {
        severity: "FATAL",
        sqlState: "XX000",
        message: "shield proxy: internal error",
        detail: "ERR_INTERNAL",
      };
  }
}

/** Encryption, blind indexes and decryption of one column, through the agent's engine. */
class ColumnCrypto implements LiteralSealer {
  readonly #operations: KeyOperations;
  readonly #keyName: string;
  readonly #available: () => void;

  constructor(operations: KeyOperations, keyName: string, available: () => void) {
    this.#operations = operations;
    this.#keyName = keyName;
    this.#available = available;
  }

  encryptBytes(column: ProtectedColumn, value: Uint8Array): string {
    this.#available();
    return this.#keyed(
      () => this.#operations.encrypt(this.#keyName, value, columnAssociatedData(column)).ciphertext,
    );
  }

  indexBytes(column: ProtectedColumn, value: Uint8Array): { hmac: string; candidates: string[] } {
    this.#available();
    const index = this.#keyed(() => this.#operations.hmac(this.#keyName, value, columnIndexContext(column)));
    return { hmac: index.hmac, candidates: index.candidates.map((candidate) => candidate.hmac) };
  }

  decrypt(column: ProtectedColumn, stored: Buffer): Buffer {
    this.#available();
    try {
      return this.#operations.decrypt(this.#keyName, stored.toString("latin1"), columnAssociatedData(column))
        .plaintext;
    } catch (error) {
      if (isShieldError(error) && error.code === "ERR_KEY_VERSION_REVOKED") {
        throw new ShieldError("ERR_PROXY_KEY_UNAVAILABLE", "the key version of a stored value was revoked");
      }
      throw new ShieldError(
        "ERR_PROXY_STORED_VALUE",
        `a stored value of ${column.table}.${column.column} does not decrypt (${isShieldError(error) ? error.code : "error"})`,
      );
    }
  }

  encrypt(column: ProtectedColumn, value: string): string {
    return this.encryptBytes(column, Buffer.from(value, "utf8"));
  }
  index(column: ProtectedColumn, value: string): string {
    return this.indexBytes(column, Buffer.from(value, "utf8")).hmac;
  }
  candidates(column: ProtectedColumn, value: string): readonly string[] {
    return this.indexBytes(column, Buffer.from(value, "utf8")).candidates;
  }

  #keyed<T>(run: () => T): T {
    try {
      return run();
    } catch (error) {
      throw new ShieldError("ERR_PROXY_KEY_UNAVAILABLE", "the key cannot be used", { cause: error });
    }
  }
}

/** Where protected values and blind indexes sit in result rows: `tableOID:attnum` → its role. */
type Catalog = ReadonlyMap<string, { readonly column: ProtectedColumn; readonly role: "value" | "index" }>;

/** What a RowDescription means for the DataRows after it. */
interface RowShape {
  /** Undefined: rows pass unchanged. */
  readonly keep?: readonly number[];
  readonly decrypt?: ReadonlyMap<number, ProtectedColumn>;
  readonly fields: readonly FieldDescription[];
}

type Pending =
  | {
      readonly kind: "parse";
      readonly refusal?: ShieldError;
      /** The statement this Parse (re)defines, and what the proxy held for it before. */
      readonly statement?: { readonly name: string; readonly plan?: Plan; readonly shape?: RowShape };
    }
  | { readonly kind: "bind" }
  | { readonly kind: "close" }
  | { readonly kind: "describe-statement"; readonly name: string }
  | { readonly kind: "describe-portal"; readonly name: string; readonly swallow: boolean }
  | { readonly kind: "execute"; readonly portal: string }
  | { readonly kind: "sync" }
  | { readonly kind: "query"; readonly refusal?: ShieldError };

export async function startPgProxy(options: PgProxyOptions): Promise<PgProxy> {
  if (!isLoopback(options.listen.host) && options.allowNonLoopback !== true) {
    throw new ShieldError("ERR_CONFIG", `the pg proxy listens on loopback only, not ${options.listen.host}`);
  }
  const log = options.logger ?? silentLogger;
  const sessions = new Set<Session>();
  const keyName = options.columns.keyName;
  const unavailable = (): ShieldError | undefined => {
    const state = options.agent.state().name;
    if (state === "revoked" || state === "failed") {
      return new ShieldError("ERR_PROXY_KEY_UNAVAILABLE", `the agent is ${state}; the proxy serves no data`);
    }
    if (options.operations.decryptingVersions(keyName).length === 0) {
      return new ShieldError("ERR_PROXY_KEY_UNAVAILABLE", `the key is not held yet (agent ${state})`);
    }
    return undefined;
  };
  const crypto = new ColumnCrypto(options.operations, keyName, () => {
    const refusal = unavailable();
    if (refusal !== undefined) throw refusal;
  });
  const unsubscribe = options.agent.subscribe((state) => {
    if (state.name !== "revoked" && state.name !== "failed") return;
    const error = new ShieldError(
      "ERR_PROXY_KEY_UNAVAILABLE",
      `the agent is ${state.name}; the proxy serves no data`,
    );
    for (const session of sessions) session.fail(error);
    if (sessions.size > 0) log("warn", "pg proxy closed its connections", { state: state.name });
  });

  const server: Server = createServer((socket) => {
    const session = new Session(socket, options, crypto, unavailable, log, () => sessions.delete(session));
    sessions.add(session);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.listen.port, options.listen.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  log("info", "pg proxy listening", { host: address.address, port: address.port });
  return {
    host: address.address,
    port: address.port,
    connections: () => sessions.size,
    async close() {
      unsubscribe();
      for (const session of sessions) session.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

class Session {
  readonly #client: Socket;
  #upstream: Socket | TLSSocket | undefined;
  readonly #options: PgProxyOptions;
  readonly #crypto: ColumnCrypto;
  readonly #unavailable: () => ShieldError | undefined;
  readonly #log: Logger;
  readonly #onClose: () => void;
  #startup: Buffer = Buffer.alloc(0);
  #phase: "startup" | "password" | "connecting" | "ready" | "closed" = "startup";
  #parameters = new Map<string, string>();
  readonly #clientFrames = new FrameReader();
  #upstreamFrames = new FrameReader();
  /** Client frames that arrived while the upstream connection was being set up. */
  readonly #early: Frame[] = [];
  #catalog: Catalog = new Map();
  readonly #statements = new Map<string, Plan>();
  readonly #portals = new Map<string, { statement: string; shape?: RowShape }>();
  readonly #statementShapes = new Map<string, RowShape>();
  readonly #pending: Pending[] = [];
  #skipping = false;
  #queryShape: RowShape | undefined;
  #standardConformingStrings = true;
  /** Queries and Syncs sent to the server and not yet answered with ReadyForQuery. */
  #unsettled = 0;
  /** An Execute went to the server since the last Sync: it may have changed a setting already. */
  #executedInBatch = false;

  constructor(
    client: Socket,
    options: PgProxyOptions,
    crypto: ColumnCrypto,
    unavailable: () => ShieldError | undefined,
    log: Logger,
    onClose: () => void,
  ) {
    this.#client = client;
    this.#options = options;
    this.#crypto = crypto;
    this.#unavailable = unavailable;
    this.#log = log;
    this.#onClose = onClose;
    client.setNoDelay(true);
    client.on("data", (chunk: Buffer) => this.#guard(() => this.#fromClient(chunk)));
    client.on("error", () => this.destroy());
    client.on("close", () => this.destroy());
  }

  /** Ends the connection with a FATAL ErrorResponse for `error`. */
  fail(error: unknown): void {
    if (this.#phase === "closed") return;
    const fields = fatalFields(error);
    this.#log("warn", "pg proxy connection ended", { code: fields.detail });
    this.#client.end(writeError(fields));
    this.destroy();
  }

  destroy(): void {
    if (this.#phase === "closed") return;
    this.#phase = "closed";
    this.#upstream?.destroy();
    this.#client.destroy();
    this.#onClose();
  }

  #guard(run: () => void): void {
    try {
      run();
    } catch (error) {
      this.fail(error);
    }
  }

  #fromClient(chunk: Buffer): void {
    if (this.#phase === "closed") return;
    if (this.#phase === "startup") {
      this.#startup = Buffer.concat([this.#startup, chunk]);
      this.#readStartup();
      return;
    }
    const frames = this.#clientFrames.push(chunk);
    if (this.#phase === "password") {
      const [first, ...rest] = frames;
      if (first === undefined) return;
      this.#early.push(...rest);
      this.#checkPassword(first);
      return;
    }
    if (this.#phase === "connecting") {
      this.#early.push(...frames);
      return;
    }
    for (const frame of frames) this.#clientMessage(frame);
  }

  #readStartup(): void {
    for (;;) {
      const read = readStartupPacket(this.#startup);
      if (read === undefined) return;
      this.#startup = read.rest;
      const code = read.packet.readInt32BE(4);
      if (code === SSL_REQUEST_CODE || code === GSSENC_REQUEST_CODE) {
        // Loopback inside the pod: nothing to encrypt against, and no certificate to present.
        this.#client.write("N");
        continue;
      }
      if (code === CANCEL_REQUEST_CODE) {
        void sendCancel(this.#options.upstream, read.packet).catch(() => undefined);
        this.destroy();
        return;
      }
      if (code !== PROTOCOL_3_0) throw new ShieldError("ERR_PROXY_PROTOCOL", "only protocol 3.0 is spoken");
      this.#parameters = startupParameters(read.packet);
      const refusal = this.#unavailable();
      if (refusal !== undefined) throw refusal;
      if (this.#parameters.has("replication"))
        throw new ShieldError("ERR_PROXY_AUTH", "replication connections are refused");
      const user = this.#options.clientUser ?? this.#options.upstream.user;
      if (this.#parameters.get("user") !== user)
        throw new ShieldError("ERR_PROXY_AUTH", "password authentication failed");
      const database = this.#parameters.get("database") ?? user;
      if (database !== this.#options.upstream.database) {
        throw new ShieldError("ERR_PROXY_AUTH", "the proxy serves one database only");
      }
      this.#phase = "password";
      this.#client.write(writeAuthentication(3));
      if (this.#startup.length > 0) {
        const rest = this.#startup;
        this.#startup = Buffer.alloc(0);
        this.#fromClient(rest);
      }
      return;
    }
  }

  #checkPassword(frame: Frame): void {
    if (frame.type !== "p") throw new ShieldError("ERR_PROXY_PROTOCOL", "expected a password message");
    const given = frame.body.subarray(0, Math.max(0, frame.body.length - 1));
    const digest = (bytes: Buffer): Buffer => createHash("sha256").update(bytes).digest();
    const expected = Buffer.from(this.#options.clientPassword.reveal(), "utf8");
    if (!timingSafeEqual(digest(given), digest(expected))) {
      throw new ShieldError("ERR_PROXY_AUTH", "password authentication failed");
    }
    this.#phase = "connecting";
    void this.#connect().catch((error: unknown) => this.fail(error));
  }

  async #connect(): Promise<void> {
    const forwarded = new Map<string, string>();
    for (const [name, value] of this.#parameters)
      if (FORWARDED_PARAMETERS.has(name)) forwarded.set(name, value);
    const tables = [...this.#options.columns.schema.tables.keys()];
    const lookup =
      "SELECT c.relname, a.attname, c.oid::int8, a.attnum FROM pg_catalog.pg_attribute a " +
      "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid WHERE a.attnum > 0 AND NOT a.attisdropped " +
      `AND c.relkind IN ('r', 'p') AND pg_catalog.pg_table_is_visible(c.oid) AND c.relname IN (${tables
        .map((table) => `'${table}'`)
        .join(", ")})`;
    const upstream = await connectUpstream(this.#options.upstream, forwarded, lookup);
    if (this.#phase === "closed") {
      upstream.socket.destroy();
      return;
    }
    this.#upstream = upstream.socket;
    this.#upstreamFrames = upstream.reader;
    this.#catalog = this.#readCatalog(upstream.rows);
    upstream.socket.on("data", (chunk: Buffer) =>
      this.#guard(() => {
        for (const frame of this.#upstreamFrames.push(chunk)) this.#serverMessage(frame);
      }),
    );
    upstream.socket.on("error", () =>
      this.fail(new ShieldError("ERR_UPSTREAM_UNAVAILABLE", "the server connection failed")),
    );
    upstream.socket.on("close", () => this.destroy());
    this.#client.write(writeAuthentication(0));
    for (const frame of upstream.greeting) this.#serverMessage(frame, true);
    this.#phase = "ready";
    this.#log("info", "pg proxy connection open", {});
    const rest = upstream.reader.rest();
    if (rest.length > 0) {
      this.#upstreamFrames = new FrameReader();
      for (const frame of this.#upstreamFrames.push(Buffer.from(rest))) this.#serverMessage(frame);
    }
    for (const frame of this.#early.splice(0)) this.#clientMessage(frame);
  }

  #readCatalog(rows: readonly (readonly (Buffer | null)[])[]): Catalog {
    const catalog = new Map<string, { column: ProtectedColumn; role: "value" | "index" }>();
    for (const row of rows) {
      const [table, attribute, oid, attnum] = row.map((value) => value?.toString("utf8") ?? "");
      const columns = this.#options.columns.schema.tables.get(table!);
      if (columns === undefined) continue;
      for (const column of columns.values()) {
        if (column.column === attribute) catalog.set(`${oid}:${attnum}`, { column, role: "value" });
        if (column.index === attribute) catalog.set(`${oid}:${attnum}`, { column, role: "index" });
      }
    }
    return catalog;
  }

  #toServer(bytes: Buffer): void {
    this.#upstream!.write(bytes);
  }

  #toClient(bytes: Buffer): void {
    this.#client.write(bytes);
  }

  #plan(text: string): Plan {
    // The server reports a changed client_encoding only at its next ReadyForQuery: until then a
    // statement behind one may be read in another encoding, which only pure ASCII survives.
    // eslint-disable-next-line no-control-regex -- everything beyond ASCII is the point
    if ((this.#unsettled > 0 || this.#executedInBatch) && /[^\u0000-\u007f]/.test(text)) {
      throw new ShieldError(
        "ERR_PROXY_UNSAFE_STATEMENT",
        "a statement with non-ASCII text sent before the server answered the one before it",
      );
    }
    return planStatement(text, this.#options.columns.schema, {
      standardConformingStrings: this.#standardConformingStrings,
      sealer: this.#crypto,
    });
  }

  /** Makes the server fail in the refused message's place; the error it answers with becomes ours. */
  #refuseExtended(error: ShieldError): void {
    this.#log("info", "pg proxy refused a statement", { code: error.code, reason: error.message });
    this.#skipping = true;
    this.#pending.push({ kind: "parse", refusal: error });
    this.#toServer(serialize.parse({ name: "", text: REFUSED_SQL, types: [] }));
  }

  #clientMessage(frame: Frame): void {
    if (this.#phase === "closed") return;
    const refusal = this.#unavailable();
    if (refusal !== undefined) throw refusal;
    if (this.#skipping && frame.type !== "S" && frame.type !== "X") return;
    switch (frame.type) {
      case "Q": {
        let plan: Plan;
        try {
          plan = this.#plan(readQuery(frame.body));
        } catch (error) {
          if (!isShieldError(error) || error.code !== "ERR_PROXY_UNSAFE_STATEMENT") throw error;
          this.#log("info", "pg proxy refused a statement", { code: error.code, reason: error.message });
          this.#pending.push({ kind: "query", refusal: error });
          this.#unsettled++;
          this.#toServer(serialize.query(REFUSED_SQL));
          return;
        }
        this.#pending.push({ kind: "query" });
        this.#unsettled++;
        this.#toServer(plan.untouched ? frame.raw : serialize.query(plan.text));
        return;
      }
      case "P": {
        const parse = readParse(frame.body);
        let plan: Plan;
        try {
          plan = this.#plan(parse.text);
        } catch (error) {
          if (!isShieldError(error) || error.code !== "ERR_PROXY_UNSAFE_STATEMENT") throw error;
          this.#refuseExtended(error);
          return;
        }
        // Kept until the server answers: a Parse it refuses (a named statement that exists, a
        // type it does not know) leaves its own statement as it was, and so must the proxy.
        const previous = this.#statements.get(parse.name);
        const previousShape = this.#statementShapes.get(parse.name);
        this.#statements.set(parse.name, plan);
        this.#statementShapes.delete(parse.name);
        this.#pending.push({
          kind: "parse",
          statement: {
            name: parse.name,
            ...(previous === undefined ? {} : { plan: previous }),
            ...(previousShape === undefined ? {} : { shape: previousShape }),
          },
        });
        if (plan.untouched) {
          this.#toServer(frame.raw);
          return;
        }
        const types = plan.parameters.map((rule) =>
          rule.kind === "keep" ? (parse.types[rule.from - 1] ?? 0) : 0,
        );
        this.#toServer(serialize.parse({ name: parse.name, text: plan.text, types }));
        return;
      }
      case "B": {
        const bind = readBind(frame.body);
        const plan = this.#statements.get(bind.statement);
        this.#portals.set(bind.portal, {
          statement: bind.statement,
          ...(this.#statementShapes.has(bind.statement)
            ? { shape: this.#statementShapes.get(bind.statement)! }
            : {}),
        });
        if (plan === undefined) {
          // Not one the proxy planned (e.g. made by an SQL PREPARE): its values cannot be sealed.
          this.#refuseExtended(
            new ShieldError("ERR_PROXY_UNSAFE_STATEMENT", "a Bind of a statement the proxy has not planned"),
          );
          return;
        }
        this.#pending.push({ kind: "bind" });
        if (plan.untouched) {
          this.#toServer(frame.raw);
          return;
        }
        if (bind.values.length !== plan.originalParameters) {
          this.#pending.pop();
          this.#refuseExtended(
            new ShieldError(
              "ERR_PROXY_UNSAFE_STATEMENT",
              "a Bind whose values do not match its statement's parameters",
            ),
          );
          return;
        }
        this.#toServer(writeBind(this.#bindValues(bind, plan)));
        return;
      }
      case "D": {
        const target = readTarget(frame.body);
        this.#pending.push(
          target.kind === "S"
            ? { kind: "describe-statement", name: target.name }
            : { kind: "describe-portal", name: target.name, swallow: false },
        );
        this.#toServer(frame.raw);
        return;
      }
      case "E": {
        const portal = readExecutePortal(frame.body);
        if (this.#portals.get(portal)?.shape === undefined) {
          // Rows are only decrypted against a description; ask for one and keep the answer.
          this.#pending.push({ kind: "describe-portal", name: portal, swallow: true });
          this.#toServer(serialize.describe({ type: "P", name: portal }));
        }
        this.#pending.push({ kind: "execute", portal });
        this.#executedInBatch = true;
        this.#toServer(frame.raw);
        return;
      }
      case "C": {
        const target = readTarget(frame.body);
        if (target.kind === "S") {
          this.#statements.delete(target.name);
          this.#statementShapes.delete(target.name);
        } else this.#portals.delete(target.name);
        this.#pending.push({ kind: "close" });
        this.#toServer(frame.raw);
        return;
      }
      case "S":
        this.#skipping = false;
        this.#pending.push({ kind: "sync" });
        this.#unsettled++;
        this.#executedInBatch = false;
        this.#toServer(frame.raw);
        return;
      case "H":
      case "d":
      case "c":
      case "f":
        this.#toServer(frame.raw);
        return;
      case "X":
        this.#toServer(frame.raw);
        this.destroy();
        return;
      case "F": {
        const error = new ShieldError("ERR_PROXY_UNSAFE_STATEMENT", "the fast-path function call interface");
        this.#pending.push({ kind: "query", refusal: error });
        this.#unsettled++;
        this.#toServer(serialize.query(REFUSED_SQL));
        return;
      }
      default:
        throw new ShieldError("ERR_PROXY_PROTOCOL", "a frontend message the proxy does not know");
    }
  }

  #bindValues(bind: ReturnType<typeof readBind>, plan: Plan): ReturnType<typeof readBind> {
    const formats: number[] = [];
    const values: (Buffer | null)[] = [];
    for (const rule of plan.parameters) {
      const value = bind.values[rule.from - 1] ?? null;
      const format = bind.formats[rule.from - 1] ?? 0;
      if (rule.kind === "keep") {
        formats.push(format);
        values.push(value);
        continue;
      }
      // A protected column is text: its binary form is its bytes, as its text form is.
      formats.push(0);
      if (value === null) {
        values.push(null);
        continue;
      }
      if (rule.kind === "encrypt")
        values.push(Buffer.from(this.#crypto.encryptBytes(rule.column, value), "latin1"));
      else if (rule.kind === "index")
        values.push(Buffer.from(this.#crypto.indexBytes(rule.column, value).hmac, "latin1"));
      else {
        const candidates = this.#crypto.indexBytes(rule.column, value).candidates;
        values.push(Buffer.from(`{${candidates.map((candidate) => `"${candidate}"`).join(",")}}`, "latin1"));
      }
    }
    return { ...bind, formats, values };
  }

  #shape(description: RowDescriptionMessage): RowShape {
    const fields: FieldDescription[] = description.fields.map((field) => ({
      name: field.name,
      tableID: field.tableID,
      columnID: field.columnID,
      dataTypeID: field.dataTypeID,
      dataTypeSize: field.dataTypeSize,
      dataTypeModifier: field.dataTypeModifier,
      format: field.format,
    }));
    const keep: number[] = [];
    const decrypt = new Map<number, ProtectedColumn>();
    let changed = false;
    for (const [position, field] of fields.entries()) {
      const entry = this.#catalog.get(`${field.tableID}:${field.columnID}`);
      if (entry?.role === "index") {
        changed = true;
        continue;
      }
      if (entry?.role === "value") {
        decrypt.set(keep.length, entry.column);
        changed = true;
      }
      keep.push(position);
    }
    return changed ? { keep, decrypt, fields } : { fields };
  }

  #forwardDescription(frame: Frame, shape: RowShape): void {
    if (shape.keep === undefined) this.#toClient(frame.raw);
    else this.#toClient(writeRowDescription(shape.keep.map((position) => shape.fields[position]!)));
  }

  #row(frame: Frame, shape: RowShape | undefined): void {
    if (shape === undefined) throw new ShieldError("ERR_PROXY_PROTOCOL", "a row without a description");
    if (shape.keep === undefined) {
      this.#toClient(frame.raw);
      return;
    }
    const stored = readDataRow(frame.body);
    const values = shape.keep.map((position) => stored[position] ?? null);
    const opened: Buffer[] = [];
    try {
      for (const [position, column] of shape.decrypt!) {
        const value = values[position];
        if (value === null || value === undefined) continue;
        const plaintext = this.#crypto.decrypt(column, value);
        opened.push(plaintext);
        values[position] = plaintext;
      }
      this.#toClient(writeDataRow(values));
    } finally {
      for (const plaintext of opened) plaintext.fill(0);
    }
  }

  #serverMessage(frame: Frame, greeting = false): void {
    if (this.#phase === "closed") return;
    const head = this.#pending[0];
    switch (frame.type) {
      case "S": {
        const status = decodeBackend(frame) as unknown as { parameterName: string; parameterValue: string };
        if (status.parameterName === "standard_conforming_strings") {
          this.#standardConformingStrings = status.parameterValue === "on";
        }
        if (status.parameterName === "client_encoding" && !CLIENT_ENCODINGS.has(status.parameterValue)) {
          throw new ShieldError(
            "ERR_PROXY_PROTOCOL",
            "the proxy reads statements in UTF8 only; set client_encoding to UTF8",
          );
        }
        this.#toClient(frame.raw);
        return;
      }
      case "N":
      case "A":
      case "K":
        this.#toClient(frame.raw);
        return;
      case "E": {
        if (
          head !== undefined &&
          (head.kind === "parse" || head.kind === "query") &&
          head.refusal !== undefined
        ) {
          this.#toClient(writeError(refusalFields(head.refusal)));
        } else {
          this.#toClient(frame.raw);
        }
        // An error in the extended protocol: the server skips to the next Sync, and so do we.
        const undone: Pending[] = [];
        if (head !== undefined && head.kind !== "query" && head.kind !== "sync") {
          while (this.#pending.length > 0 && this.#pending[0]!.kind !== "sync") {
            undone.push(this.#pending.shift()!);
          }
        }
        // Parses the server refused or skipped define nothing: latest first, each statement goes
        // back to what the server still has.
        for (const entry of undone.reverse()) {
          if (entry.kind !== "parse" || entry.statement === undefined) continue;
          const { name, plan, shape } = entry.statement;
          // A refused Parse of the unnamed statement has dropped the one before it.
          const dropped = entry === head && name === "";
          if (dropped || plan === undefined) {
            this.#statements.delete(name);
            this.#statementShapes.delete(name);
          } else {
            this.#statements.set(name, plan);
            if (shape === undefined) this.#statementShapes.delete(name);
            else this.#statementShapes.set(name, shape);
          }
        }
        return;
      }
      case "1":
      case "2":
      case "3":
        this.#pending.shift();
        this.#toClient(frame.raw);
        return;
      case "t": {
        if (head?.kind !== "describe-statement")
          throw new ShieldError("ERR_PROXY_PROTOCOL", "an unexpected ParameterDescription");
        const plan = this.#statements.get(head.name);
        if (plan === undefined || plan.untouched) {
          this.#toClient(frame.raw);
          return;
        }
        const { dataTypeIDs } = decodeBackend(frame) as ParameterDescriptionMessage;
        const types = plan.parameters
          .slice(0, plan.originalParameters)
          .map((rule, i) => (rule.kind === "keep" ? (dataTypeIDs[i] ?? 0) : TEXT_OID));
        this.#toClient(writeParameterDescription(types));
        return;
      }
      case "T": {
        const shape = this.#shape(decodeBackend(frame) as RowDescriptionMessage);
        if (head?.kind === "describe-statement") {
          this.#statementShapes.set(head.name, shape);
          this.#pending.shift();
          this.#forwardDescription(frame, shape);
        } else if (head?.kind === "describe-portal") {
          const portal = this.#portals.get(head.name);
          if (portal !== undefined) portal.shape = shape;
          this.#pending.shift();
          if (!head.swallow) this.#forwardDescription(frame, shape);
        } else if (head?.kind === "query") {
          this.#queryShape = shape;
          this.#forwardDescription(frame, shape);
        } else {
          throw new ShieldError("ERR_PROXY_PROTOCOL", "an unexpected RowDescription");
        }
        return;
      }
      case "n": {
        const noRows: RowShape = { fields: [] };
        if (head?.kind === "describe-statement") {
          this.#statementShapes.set(head.name, noRows);
        } else if (head?.kind === "describe-portal") {
          const portal = this.#portals.get(head.name);
          if (portal !== undefined) portal.shape = noRows;
          if (head.swallow) {
            this.#pending.shift();
            return;
          }
        }
        this.#pending.shift();
        this.#toClient(frame.raw);
        return;
      }
      case "D":
        this.#row(
          frame,
          head?.kind === "execute"
            ? this.#portals.get(head.portal)?.shape
            : head?.kind === "query"
              ? this.#queryShape
              : undefined,
        );
        return;
      case "C":
      case "I":
      case "s":
        if (head?.kind === "execute") this.#pending.shift();
        else this.#queryShape = undefined;
        this.#toClient(frame.raw);
        return;
      case "Z":
        if (!greeting) {
          this.#unsettled = Math.max(0, this.#unsettled - 1);
          while (this.#pending.length > 0) {
            const done = this.#pending.shift()!;
            if (done.kind === "sync" || done.kind === "query") break;
          }
          this.#queryShape = undefined;
        }
        this.#toClient(frame.raw);
        return;
      default:
        // Copy responses and data, FunctionCallResponse: nothing protected travels in them, as
        // COPY of a protected table and function calls are refused before they reach the server.
        this.#toClient(frame.raw);
    }
  }
}
