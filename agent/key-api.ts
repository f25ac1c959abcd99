/**
 * The local key API for the application next to the agent (same pod or container group). It
 * listens on loopback (127.0.0.1:8280 by default) or a Unix socket, and refuses any other address
 * unless `allowNonLoopback` is set (`SHIELD_ALLOW_NON_LOOPBACK=true`): the keys it serves must
 * not be reachable from the network.
 *
 * Routes (GET only; anything else is 405):
 *
 * | route | answer |
 * |---|---|
 * | `/keys/{name}` | the current version. `oct`: raw bytes, `application/octet-stream`. RSA/EC: the private key as PKCS #8 PEM, `application/x-pem-file`. With `Accept: application/json`: `{name, version, kty, key}` (`key` base64url) for `oct`, `{name, version, kty, jwk}` (private JWK) for RSA/EC. Headers `X-Key-Name`, `X-Key-Version`, `X-Key-Type`; `Cache-Control: no-store`. |
 * | `/keys/{name}?version=V` | that version, while it is held (current and previous, see held-keys.ts) |
 * | `/status` | agent id, state, reason, `attestedUntil`, provider, runtime key id, configured keys and held names and versions — never material |
 * | `/metrics` | Prometheus text (0.0.4): state, attestations by verdict, control messages accepted and dropped by reason, key versions held (metrics.ts) — never material |
 * | `/healthz` | 200 while the process serves requests |
 * | `/readyz` | 200 only when the agent is trusted and holds a current version of every configured key; else 503 with what is missing |
 * | `POST /v1/{encrypt,decrypt,rewrap,hmac}/{name}` | encryption as a service: the key stays here (encryption-api.ts) |
 *
 * With `serveKeyMaterial: false` (`SHIELD_SERVE_KEYS=false`) `/keys/{name}` answers 403
 * `key-export-disabled` for every name: an application that only uses the encryption routes
 * then cannot read a key even if it, or whoever controls it, asks.
 *
 * Before any route (every route, `/status` and the probes included):
 * - 421 Misdirected Request unless `Host` names this API (TCP only, see {@link hostAllowed}): a
 *   web page whose DNS name was rebound to 127.0.0.1 makes the browser send its own name, and
 *   must not read keys; a missing or repeated `Host` is refused the same way. Over a Unix
 *   socket no browser can reach the API, and `Host` is not checked;
 * - 400 for a request target that is not a path (absolute-form names another authority);
 * - 401 with `WWW-Authenticate: Bearer` when a bearer token is configured
 *   (`SHIELD_KEY_API_TOKEN_FILE`) and the request does not carry it, on every route but
 *   `/healthz`: `/status` and `/readyz` name the keys and versions held, which a container that
 *   must not read keys has no need to learn; `/healthz` says only that the process answers.
 *
 * Status codes of `/keys/{name}`:
 * - 404: the name is not a configured key (or not a key name at all), or `?version=` names a
 *   version that is not held and was never revoked (never received, or dropped after a rotation);
 * - 403: the agent is `revoked` (every key) or `failed` (its attestation was denied or failed
 *   for good: no key will come without a restart), or the version asked for was wiped because a
 *   revocation named it;
 * - 503 with `Retry-After`: the key is not held yet (starting, attesting, re-attesting after a
 *   lapse) or the agent is stopping;
 * - 400: a malformed query (`version` repeated or not a Key Vault version).
 *
 * Every error body is `{"error": {"code", "message"}}` with a {@link KeyApiErrorCode} and a fixed
 * message: never key material, the token, or anything the request sent (not even the `Host`).
 * Every request is logged with method, path (without query) and status only.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { lstat, readFile, stat, unlink } from "node:fs/promises";
import {
  STATUS_CODES,
  createServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from "node:http";
import { isIPv4, isIPv6, type AddressInfo, type Socket } from "node:net";
import { ShieldError } from "../core/errors.js";
import { KEY_NAME_PATTERN, KEY_VERSION_PATTERN } from "../core/messages/fields.js";
import { silentLogger, type Logger } from "../core/ports/logger.js";
import type { AgentStatus } from "./agent.js";
import { Secret, isLoopback, type ListenAddress } from "./config.js";
import type { HeldKeyVersion, HeldKeysView } from "./held-keys.js";
import { keyContentType, keyFileBytes, keyJson } from "./key-format.js";
import { KeyOperations, type MinimumVersions } from "./encryption.js";
import { PROMETHEUS_CONTENT_TYPE, renderAgentMetrics } from "./metrics.js";
import { answerEncryption, encryptionRoute, type EncryptionErrorCode } from "./encryption-api.js";

/** What the API reads from the agent. */
export interface KeySource {
  status(): AgentStatus;
  readonly keys: HeldKeysView;
  readonly configuredKeys: readonly string[];
}

export interface KeyApiOptions {
  readonly listen: ListenAddress;
  /** Must be true to bind a TCP address other than loopback. */
  readonly allowNonLoopback?: boolean;
  readonly agent: KeySource;
  readonly logger?: Logger;
  /**
   * When given, every route but `/healthz` needs `Authorization: Bearer <token>`; at least
   * {@link MIN_BEARER_TOKEN_LENGTH} characters (see {@link readKeyApiToken}).
   */
  readonly bearerToken?: Secret;
  /** Per key name, the oldest version the encryption routes still decrypt (SHIELD_MIN_DECRYPTION_VERSIONS). */
  readonly minDecryptionVersions?: MinimumVersions;
  /** False: `/keys/{name}` never answers with key material (default true). */
  readonly serveKeyMaterial?: boolean;
}

/** The `code` of every error body the key API sends. */
export type KeyApiErrorCode =
  | "misdirected"
  | "bad-request"
  | "unauthorized"
  | "method-not-allowed"
  | "not-found"
  | "unknown-key"
  | "bad-version"
  | "revoked"
  | "failed"
  | "unknown-version"
  | "not-ready"
  | "headers-too-large"
  | "timeout"
  | "internal"
  | "key-export-disabled"
  | EncryptionErrorCode;

/** Shortest bearer token accepted: 32 characters of base64 carry 192 bits. */
export const MIN_BEARER_TOKEN_LENGTH = 32;

/** A token file is one line; anything larger is not one. */
const MAX_TOKEN_FILE_BYTES = 4096;

/** RFC 6750's b64token: what fits in an `Authorization` header as it is. */
const BEARER_TOKEN_PATTERN = /^[A-Za-z0-9\-._~+/]+=*$/;

/** The names a browser only ever resolves to this machine (never a rebindable DNS name). */
const LOOPBACK_HOST_NAMES: readonly string[] = ["127.0.0.1", "localhost", "[::1]"];

export interface KeyApi {
  /** `http://host:port` for TCP (the port the OS chose when 0 was asked for), else `unix:/path`. */
  readonly url: string;
  readonly address: ListenAddress;
  close(): Promise<void>;
}

const RETRY_AFTER_SECONDS = "2";

export async function startKeyApi(options: KeyApiOptions): Promise<KeyApi> {
  const { listen, agent } = options;
  const log = options.logger ?? silentLogger;
  checkListen(listen, options.allowNonLoopback === true);
  const tokenDigest = options.bearerToken === undefined ? undefined : bearerTokenDigest(options.bearerToken);
  const operations = new KeyOperations(agent.keys, options.minDecryptionVersions);
  // Set once listening (before any connection is accepted); undefined for a Unix socket.
  let tcpPort: number | undefined;

  // Without a Host header Node would answer 400 itself; the Host check answers 421 instead.
  const server = createServer({ requireHostHeader: false }, (request, response) => {
    const failed = (error: unknown): number => {
      if (!response.headersSent) sendJson(response, 500, errorBody("internal", "internal error"));
      else response.destroy();
      log("error", "key api failure", { code: error instanceof ShieldError ? error.code : "Error" });
      return 500;
    };
    const logged = (status: number): void => {
      const path = pathOf(request.url);
      const probe = path === "/healthz" || path === "/readyz";
      log(probe ? "debug" : "info", "key api request", { method: request.method ?? "", path, status });
    };
    let outcome: number | Promise<number>;
    try {
      outcome = handle(
        { agent, tcpPort, tokenDigest, operations, serveKeyMaterial: options.serveKeyMaterial !== false },
        request,
        response,
      );
    } catch (error) {
      outcome = failed(error);
    }
    if (typeof outcome === "number") logged(outcome);
    else void outcome.catch(failed).then(logged);
  });
  server.on("clientError", (error: NodeJS.ErrnoException, socket: Socket) => {
    const status = clientErrorStatus(error.code);
    log("info", "key api unparsable request", { status });
    sendClientError(socket, status);
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 10_000;
  server.keepAliveTimeout = 5_000;

  if (listen.kind === "unix") await removeStaleSocket(listen.path);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    const done = (): void => {
      server.off("error", reject);
      if (listen.kind === "tcp") tcpPort = (server.address() as AddressInfo).port;
      resolve();
    };
    if (listen.kind === "unix") server.listen(listen.path, done);
    else server.listen(listen.port, listen.host, done);
  });

  const address = boundAddress(server, listen);
  const url =
    address.kind === "unix" ? `unix:${address.path}` : `http://${hostForUrl(address.host)}:${address.port}`;
  log("info", "key api listening", { address: url });
  return {
    url,
    address,
    close: () => closeServer(server),
  };
}

/** Refuses a non-loopback TCP address unless explicitly allowed (ERR_CONFIG). */
export function checkListen(listen: ListenAddress, allowNonLoopback: boolean): void {
  if (listen.kind === "tcp" && !isLoopback(listen.host) && !allowNonLoopback) {
    throw new ShieldError(
      "ERR_CONFIG",
      `refusing to serve keys on ${listen.host}, which is not a loopback address; set SHIELD_ALLOW_NON_LOOPBACK=true to allow it`,
    );
  }
}

/**
 * Reads the key API's bearer token from `path` (SHIELD_KEY_API_TOKEN_FILE): one token, with
 * surrounding whitespace (the newline `echo` or a Kubernetes secret may add) ignored. Refused
 * with ERR_CONFIG when the file cannot be read, is not a regular file of at most 4 KiB, or does
 * not hold one RFC 6750 token of at least {@link MIN_BEARER_TOKEN_LENGTH} characters (e.g.
 * `openssl rand -base64 48`). No message shows the file's content.
 */
export async function readKeyApiToken(path: string): Promise<Secret> {
  const refuse = (why: string): ShieldError =>
    new ShieldError("ERR_CONFIG", `SHIELD_KEY_API_TOKEN_FILE ${path} ${why}`);
  let bytes: Buffer;
  try {
    const info = await stat(path);
    if (!info.isFile()) throw refuse("is not a file");
    if (info.size > MAX_TOKEN_FILE_BYTES) throw refuse(`is larger than ${MAX_TOKEN_FILE_BYTES} bytes`);
    bytes = await readFile(path);
  } catch (error) {
    if (error instanceof ShieldError) throw error;
    throw refuse(`cannot be read (${(error as NodeJS.ErrnoException).code ?? "error"})`);
  }
  const token = bytes.toString("utf8").trim();
  bytes.fill(0);
  const problem = bearerTokenProblem(token);
  if (problem !== undefined) throw refuse(problem);
  return new Secret(token);
}

function bearerTokenProblem(token: string): string | undefined {
  if (token.length < MIN_BEARER_TOKEN_LENGTH) {
    return `must hold a token of at least ${MIN_BEARER_TOKEN_LENGTH} characters`;
  }
  if (!BEARER_TOKEN_PATTERN.test(token)) {
    return "must hold one token of A-Z a-z 0-9 - . _ ~ + / (then = padding) and nothing else";
  }
  return undefined;
}

/** Only the token's SHA-256 is kept: comparing two digests of equal length takes the same time. */
function bearerTokenDigest(token: Secret): Buffer {
  if (!(token instanceof Secret)) throw new TypeError("bearerToken must be a Secret");
  const problem = bearerTokenProblem(token.reveal());
  if (problem !== undefined) throw new TypeError(`bearerToken ${problem}`);
  return createHash("sha256").update(token.reveal(), "utf8").digest();
}

interface RequestContext {
  readonly agent: KeySource;
  /** The bound TCP port; undefined on a Unix socket. */
  readonly tcpPort: number | undefined;
  /** SHA-256 of the bearer token, when one is required. */
  readonly tokenDigest: Buffer | undefined;
  readonly operations: KeyOperations;
  readonly serveKeyMaterial: boolean;
}

function handle(
  context: RequestContext,
  request: IncomingMessage,
  response: ServerResponse,
): number | Promise<number> {
  const { agent, tcpPort, tokenDigest } = context;
  // Only the encryption routes read a body; every other one is discarded unread.
  if (!(request.url ?? "").startsWith("/v1/")) request.resume();
  if (tcpPort !== undefined && !hostAllowed(request, tcpPort)) {
    return sendJson(response, 421, errorBody("misdirected", "the Host header does not name this key API"));
  }
  const target = request.url ?? "";
  if (!target.startsWith("/")) {
    return sendJson(response, 400, errorBody("bad-request", "the request target must be a path"));
  }
  const url = new URL(target, "http://key-api");
  const path = url.pathname;
  if (tokenDigest !== undefined && path !== "/healthz") {
    const presented = bearerToken(request);
    if (presented === undefined || !tokenMatches(presented, tokenDigest)) {
      // RFC 6750 §3: no error attribute when no credentials came at all.
      response.setHeader(
        "WWW-Authenticate",
        presented === undefined
          ? 'Bearer realm="shield-key-api"'
          : 'Bearer realm="shield-key-api", error="invalid_token"',
      );
      return sendJson(
        response,
        401,
        errorBody("unauthorized", "this route needs the key API's bearer token"),
      );
    }
  }
  const encryption = encryptionRoute(path);
  if (encryption !== undefined) {
    if (request.method !== "POST") {
      request.resume();
      response.setHeader("Allow", "POST");
      return sendJson(response, 405, errorBody("method-not-allowed", "only POST is served here"));
    }
    const source = { configuredKeys: agent.configuredKeys, state: () => agent.status().state };
    return answerEncryption(source, context.operations, encryption, request).then((answer) => {
      for (const [name, value] of Object.entries(answer.headers ?? {})) response.setHeader(name, value);
      return sendJson(response, answer.status, answer.body);
    });
  }
  request.resume();
  if (path.startsWith("/v1/")) return sendJson(response, 404, errorBody("not-found", "no such route"));
  if (request.method !== "GET") {
    response.setHeader("Allow", "GET");
    return sendJson(response, 405, errorBody("method-not-allowed", "only GET is served"));
  }
  if (path === "/healthz") return sendJson(response, 200, { status: "ok" });
  if (path === "/readyz") return readiness(agent, response);
  if (path === "/status") return sendJson(response, 200, agent.status());
  if (path === "/metrics") return sendText(response, 200, renderAgentMetrics(agent.status()));
  const match = /^\/keys\/([^/]+)$/.exec(path);
  if (match !== null && !context.serveKeyMaterial) {
    return sendJson(
      response,
      403,
      errorBody("key-export-disabled", "this agent serves no key material; use the encryption API"),
    );
  }
  if (match !== null) return serveKey(agent, match[1]!, url.searchParams, request, response);
  return sendJson(response, 404, errorBody("not-found", "no such route"));
}

/**
 * True when `Host` is one of {@link LOOPBACK_HOST_NAMES}, or the IP address the connection
 * arrived on written as a literal (so a listener allowed beyond loopback answers its own
 * address), followed by exactly the bound port. A Host without a port means port 80 (HTTP's
 * default), so it passes only when that is the port bound. Exactly one Host header must come.
 */
function hostAllowed(request: IncomingMessage, port: number): boolean {
  const values = request.headersDistinct["host"];
  if (values === undefined || values.length !== 1) return false;
  const match = /^(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::([0-9]{1,5}))?$/.exec(values[0]!.toLowerCase());
  if (match === null) return false;
  const name = match[1]!;
  const givenPort = match[2];
  if (givenPort === undefined ? port !== 80 : givenPort !== String(port)) return false;
  return LOOPBACK_HOST_NAMES.includes(name) || name === arrivalAddress(request.socket);
}

/** The local address of the connection as a URL host: IPv6 in brackets, IPv4-mapped unwrapped. */
function arrivalAddress(socket: Socket): string | undefined {
  const address = socket.localAddress?.toLowerCase();
  if (address === undefined) return undefined;
  const mapped = address.startsWith("::ffff:") ? address.slice("::ffff:".length) : undefined;
  if (mapped !== undefined && isIPv4(mapped)) return mapped;
  return isIPv6(address) ? `[${address}]` : address;
}

/** The token of a single `Authorization: Bearer <token>` header, else undefined. */
function bearerToken(request: IncomingMessage): string | undefined {
  const values = request.headersDistinct["authorization"];
  if (values === undefined || values.length !== 1) return undefined;
  const match = /^Bearer +(\S+) *$/i.exec(values[0]!);
  return match?.[1];
}

function tokenMatches(presented: string, expectedDigest: Buffer): boolean {
  return timingSafeEqual(createHash("sha256").update(presented, "utf8").digest(), expectedDigest);
}

function readiness(agent: KeySource, response: ServerResponse): number {
  const status = agent.status();
  const missing = agent.configuredKeys.filter((name) => agent.keys.currentVersion(name) === undefined);
  const trusted = status.state === "trusted" || status.state === "re-attesting";
  if (trusted && missing.length === 0) return sendJson(response, 200, { ready: true, state: status.state });
  return sendJson(response, 503, { ready: false, state: status.state, missing });
}

function serveKey(
  agent: KeySource,
  name: string,
  query: URLSearchParams,
  request: IncomingMessage,
  response: ServerResponse,
): number {
  if (!KEY_NAME_PATTERN.test(name) || !agent.configuredKeys.includes(name)) {
    return sendJson(response, 404, errorBody("unknown-key", "no such key"));
  }
  const versions = query.getAll("version");
  if (versions.length > 1 || (versions.length === 1 && !KEY_VERSION_PATTERN.test(versions[0]!))) {
    return sendJson(response, 400, errorBody("bad-version", "version must be one Key Vault key version"));
  }
  const version = versions[0];
  const state = agent.status().state;
  if (state === "revoked" || state === "failed") {
    return sendJson(response, 403, errorBody(state, `the agent is ${state}; it serves no keys`));
  }
  const held = agent.keys.get(name, version);
  if (held !== undefined) return sendKey(held, request, response);
  // Only a version asked for by name: a revoked version of a key not held now says nothing about
  // the version the next trusted result brings (the agent's own revocation is its state above).
  if (version !== undefined && agent.keys.wasRevoked(name, version)) {
    return sendJson(response, 403, errorBody("revoked", "this key version was revoked"));
  }
  if (version !== undefined && agent.keys.currentVersion(name) !== undefined) {
    return sendJson(response, 404, errorBody("unknown-version", "this version is not held"));
  }
  response.setHeader("Retry-After", RETRY_AFTER_SECONDS);
  return sendJson(response, 503, errorBody("not-ready", `the key is not held yet (agent ${state})`));
}

function sendKey(key: HeldKeyVersion, request: IncomingMessage, response: ServerResponse): number {
  response.setHeader("X-Key-Name", key.name);
  response.setHeader("X-Key-Version", key.version);
  response.setHeader("X-Key-Type", key.kty);
  if (wantsJson(request.headers.accept)) return sendJson(response, 200, keyJson(key));
  const body = keyFileBytes(key);
  response.writeHead(200, {
    "Content-Type": keyContentType(key),
    "Content-Length": String(body.length),
    "Cache-Control": "no-store",
  });
  // A copy made for this response (a revocation wiping the store's Buffer during a slow write
  // must not turn the body into zeros): zeroed once the response is done with it.
  response.once("close", () => body.fill(0));
  response.end(body);
  return 200;
}

function wantsJson(accept: string | undefined): boolean {
  if (accept === undefined) return false;
  return accept
    .split(",")
    .map((part) => part.split(";")[0]!.trim().toLowerCase())
    .includes("application/json");
}

function sendJson(response: ServerResponse, status: number, body: unknown): number {
  const text = JSON.stringify(body);
  response.writeHead(status, {
    "Content-Type": "application/json; charset=utf-8",
    "Content-Length": String(Buffer.byteLength(text)),
    "Cache-Control": "no-store",
  });
  response.end(text);
  return status;
}

function sendText(response: ServerResponse, status: number, text: string): number {
  response.writeHead(status, {
    "Content-Type": PROMETHEUS_CONTENT_TYPE,
    "Content-Length": String(Buffer.byteLength(text)),
    "Cache-Control": "no-store",
  });
  response.end(text);
  return status;
}

function errorBody(
  code: KeyApiErrorCode,
  message: string,
): { error: { code: KeyApiErrorCode; message: string } } {
  return { error: { code, message } };
}

function clientErrorStatus(code: string | undefined): 400 | 408 | 431 {
  if (code === "HPE_HEADER_OVERFLOW") return 431;
  if (code === "ERR_HTTP_REQUEST_TIMEOUT") return 408;
  return 400;
}

/**
 * Node's own answer to a request it cannot parse has no body; this one has the same JSON error
 * body as every other. Only on a connection that has sent nothing yet: once a response went out
 * on it, another could be half written, and the connection is just closed.
 */
function sendClientError(socket: Socket, status: 400 | 408 | 431): void {
  if (!socket.writable || socket.bytesWritten > 0) {
    socket.destroy();
    return;
  }
  const code: KeyApiErrorCode =
    status === 431 ? "headers-too-large" : status === 408 ? "timeout" : "bad-request";
  const message =
    status === 431
      ? "the request headers are too large"
      : status === 408
        ? "the request took too long"
        : "the request is not valid HTTP";
  const text = JSON.stringify(errorBody(code, message));
  socket.end(
    [
      `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ""}`,
      "Content-Type: application/json; charset=utf-8",
      `Content-Length: ${Buffer.byteLength(text)}`,
      "Cache-Control: no-store",
      "Connection: close",
      "",
      text,
    ].join("\r\n"),
  );
}

/** The path without its query, for logs. */
function pathOf(url: string | undefined): string {
  const path = (url ?? "/").split("?")[0]!;
  return path.length > 256 ? `${path.slice(0, 256)}…` : path;
}

function boundAddress(server: Server, listen: ListenAddress): ListenAddress {
  if (listen.kind === "unix") return listen;
  const info = server.address() as AddressInfo;
  return { kind: "tcp", host: listen.host, port: info.port };
}

function hostForUrl(host: string): string {
  return host.includes(":") ? `[${host}]` : host;
}

/** A socket file left by an earlier run would make listen fail; anything else is left alone. */
async function removeStaleSocket(path: string): Promise<void> {
  try {
    const info = await lstat(path);
    if (!info.isSocket()) {
      throw new ShieldError("ERR_CONFIG", `SHIELD_LISTEN ${path} exists and is not a socket`);
    }
    await unlink(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
    throw error;
  }
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve, reject) => {
    server.close((error) => (error === undefined ? resolve() : reject(error)));
    server.closeAllConnections();
  });
}
