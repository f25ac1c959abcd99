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
 * | `/healthz` | 200 while the process serves requests |
 * | `/readyz` | 200 only when the agent is trusted and holds a current version of every configured key; else 503 with what is missing |
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
 * Every request is logged with method, path (without query) and status only.
 */
import { lstat, unlink } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { ShieldError } from "../core/errors.js";
import { KEY_NAME_PATTERN, KEY_VERSION_PATTERN } from "../core/messages/fields.js";
import { silentLogger, type Logger } from "../core/ports/logger.js";
import type { AgentStatus } from "./agent.js";
import { isLoopback, type ListenAddress } from "./config.js";
import type { HeldKeyVersion, HeldKeysView } from "./held-keys.js";
import { keyContentType, keyFileBytes, keyJson } from "./key-format.js";

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
}

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

  const server = createServer((request, response) => {
    let status = 500;
    try {
      status = handle(agent, request, response);
    } catch (error) {
      status = 500;
      if (!response.headersSent) sendJson(response, 500, errorBody("internal", "internal error"));
      else response.destroy();
      log("error", "key api failure", { code: error instanceof ShieldError ? error.code : "Error" });
    }
    const path = pathOf(request.url);
    const probe = path === "/healthz" || path === "/readyz";
    log(probe ? "debug" : "info", "key api request", { method: request.method ?? "", path, status });
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 10_000;
  server.keepAliveTimeout = 5_000;

  if (listen.kind === "unix") await removeStaleSocket(listen.path);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    const done = (): void => {
      server.off("error", reject);
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

function handle(agent: KeySource, request: IncomingMessage, response: ServerResponse): number {
  // Bodies are never read: nothing here takes input beyond the path and the query.
  request.resume();
  if (request.method !== "GET") {
    response.setHeader("Allow", "GET");
    return sendJson(response, 405, errorBody("method-not-allowed", "only GET is served"));
  }
  const url = new URL(request.url ?? "/", "http://key-api");
  const path = url.pathname;
  if (path === "/healthz") return sendJson(response, 200, { status: "ok" });
  if (path === "/readyz") return readiness(agent, response);
  if (path === "/status") return sendJson(response, 200, agent.status());
  const match = /^\/keys\/([^/]+)$/.exec(path);
  if (match !== null) return serveKey(agent, match[1]!, url.searchParams, request, response);
  return sendJson(response, 404, errorBody("not-found", "no such route"));
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

function errorBody(code: string, message: string): { error: { code: string; message: string } } {
  return { error: { code, message } };
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
