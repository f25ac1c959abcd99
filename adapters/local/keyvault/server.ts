/**
 * A local Key Vault-compatible HTTP server: the REST subset this project uses, in front of the
 * local engine, so that the real `@azure/keyvault-keys` client — challenge authentication, URL
 * templates, serializers, retry policy — is what talks to it in the embedded default and tests.
 *
 * | method | path                                                   | operation                |
 * |--------|--------------------------------------------------------|--------------------------|
 * | POST   | `/keys/{name}/create`                                  | create (or new version)  |
 * | GET    | `/keys/{name}`, `/keys/{name}/`, `/keys/{name}/{ver}`  | get                      |
 * | GET    | `/keys/{name}/versions`                                | list versions (paged)    |
 * | PATCH  | `/keys/{name}`, `/keys/{name}/`, `/keys/{name}/{ver}`  | update one version       |
 * | POST   | `/keys/{name}/release`, `/keys/{name}//release`, `/keys/{name}/{ver}/release` | release |
 * | POST   | `/keys/{name}/rotate`                                  | rotate                   |
 * | POST   | `/keys/{name}/{ver}/sign`, `/keys/{name}//sign`        | sign a digest (RS256)    |
 * | GET/PUT| `/keys/{name}/rotationpolicy`                          | rotation policy          |
 * | PUT    | `/secrets/{name}`                                      | set a secret (new version) |
 * | GET    | `/secrets/{name}`, `/secrets/{name}/`, `/secrets/{name}/{ver}` | get a secret     |
 *
 * (The SDK sends `GET /keys/{name}/` for the current version and `/keys/{name}/release` or
 * `/keys/{name}//release` when the version is undefined or empty.) Authentication is Key
 * Vault's challenge: a request without a bearer token gets 401 with `WWW-Authenticate: Bearer
 * authorization="https://login.microsoftonline.com/<tenant>", resource="https://vault.azure.net"`,
 * and only the configured token is accepted (compared in constant time). Errors have Key Vault's
 * shape `{"error": {"code", "message"}}`; bodies are size-limited and schema-checked before use.
 * Logs carry method, operation, status and duration — never a body, a token or key material.
 *
 * `faults` (and its shorthand `failNext`) is fault injection for tests, per operation (see
 * ../faults.ts); faults apply to authenticated requests only, so the SDK's challenge round trip
 * is never what fails. Nothing is injected until a test sets a fault.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { performance } from "node:perf_hooks";
import type { z } from "zod";
import { ShieldError, isShieldError } from "../../../core/errors.js";
import { silentLogger, type Logger } from "../../../core/ports/logger.js";
import { LocalKeyVaultError, type LocalKeyVault, type ReleasePolicyInput } from "./engine.js";
import {
  createLocalSecrets,
  isSecretName,
  secretBundleToWire,
  setSecretBodySchema,
  type LocalSecrets,
} from "./secrets.js";
import {
  SUPPORTED_API_VERSIONS,
  createKeyBodySchema,
  dateFromSeconds,
  given,
  keyBundleToWire,
  keyItemToWire,
  releaseBodySchema,
  signBodySchema,
  rotationPolicyBodySchema,
  rotationPolicyToWire,
  updateKeyBodySchema,
  type ReleasePolicyWireBody,
} from "./wire.js";
import {
  FaultPlan,
  FaultSleeper,
  applyConnectionFault,
  closeListening,
  faultStatusCode,
  restartable,
  statusOf,
} from "../faults.js";

export interface LocalKeyVaultServerOptions {
  readonly engine: LocalKeyVault;
  /** A loopback address (default 127.0.0.1). */
  readonly host?: string;
  /** Default 0: a free port chosen by the OS. */
  readonly port?: number;
  /** The one bearer token accepted; a random one is made when absent. */
  readonly accessToken?: string;
  /** Named in the challenge's `authorization` URL (default all zeros). */
  readonly tenantId?: string;
  readonly logger?: Logger;
  /** Request body limit (default 256 KiB: a 64 KiB token or policy, with room to spare). */
  readonly maxBodyBytes?: number;
  /** The vault's secrets (secrets.ts); an empty store when absent. */
  readonly secrets?: LocalSecrets;
}

export interface LocalKeyVaultServerStats {
  readonly requests: number;
  /** Answered 401 (challenges included). */
  readonly unauthorized: number;
  readonly injectedFaults: number;
  /** Requests answered 200, per operation (e.g. `release`, `sign`). */
  readonly answered: Readonly<Partial<Record<KeyVaultRoute, number>>>;
}

/** The routes faults can be set on: an operation, or `other` for anything else. */
export type KeyVaultRoute = Operation | SecretRoute["operation"] | "other";

export interface LocalKeyVaultServer {
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  readonly accessToken: string;
  /**
   * Answers the next `count` authenticated requests with `status` (429, 408 or 5xx) before
   * they reach the engine; for tests of transient failures. Off unless called.
   */
  failNext(status: number, count?: number, options?: { retryAfterSeconds?: number }): void;
  /** Fault injection per operation (`release`, `sign`, `get`, ...); see ../faults.ts. */
  readonly faults: FaultPlan<KeyVaultRoute>;
  /** Stops listening, drops every connection, and listens on the same port again after `downMs`. */
  restart(downMs: number): Promise<void>;
  stats(): LocalKeyVaultServerStats;
  /** The secrets it serves (tests and the embedded default set the webhook key here). */
  readonly secrets: LocalSecrets;
  close(): Promise<void>;
}

const DEFAULT_MAX_BODY_BYTES = 256 * 1024;
const DEFAULT_TENANT_ID = "00000000-0000-0000-0000-000000000000";
const VAULT_RESOURCE = "https://vault.azure.net";
const MAX_PAGE_SIZE = 25;

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

function isLoopbackHost(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127(\.\d{1,3}){3}$/.test(host);
}

type Operation =
  | "create"
  | "get"
  | "versions"
  | "update"
  | "release"
  | "rotate"
  | "sign"
  | "getRotationPolicy"
  | "setRotationPolicy";

interface Route {
  readonly operation: Operation;
  readonly name: string;
  /** Undefined: the current version. */
  readonly version?: string;
}

/** Matches a request path to an operation; undefined when nothing matches. */
function matchRoute(method: string, pathname: string): Route | undefined {
  const segments = pathname.split("/");
  if (segments[0] !== "" || segments[1] !== "keys" || segments.length < 3) return undefined;
  let name: string;
  try {
    name = decodeURIComponent(segments[2]!);
  } catch {
    return undefined;
  }
  if (name === "") return undefined;
  const rest = segments.slice(3);
  const latest = rest.length === 0 || (rest.length === 1 && rest[0] === "");
  const one = rest.length === 1 ? rest[0]! : undefined;
  switch (method) {
    case "GET":
      if (latest) return { operation: "get", name };
      if (one === "versions") return { operation: "versions", name };
      if (one === "rotationpolicy") return { operation: "getRotationPolicy", name };
      if (one !== undefined) return { operation: "get", name, version: one };
      return undefined;
    case "PATCH":
      if (latest) return { operation: "update", name };
      if (one !== undefined) return { operation: "update", name, version: one };
      return undefined;
    case "PUT":
      return one === "rotationpolicy" ? { operation: "setRotationPolicy", name } : undefined;
    case "POST":
      if (one === "create") return { operation: "create", name };
      if (one === "rotate") return { operation: "rotate", name };
      if (one === "release") return { operation: "release", name };
      if (rest.length === 2 && rest[1] === "sign") {
        return rest[0] === "" ? { operation: "sign", name } : { operation: "sign", name, version: rest[0] };
      }
      if (rest.length === 2 && rest[1] === "release") {
        return rest[0] === ""
          ? { operation: "release", name }
          : { operation: "release", name, version: rest[0] };
      }
      return undefined;
    default:
      return undefined;
  }
}

interface SecretRoute {
  readonly operation: "getSecret" | "setSecret";
  readonly name: string;
  readonly version?: string;
}

function matchSecretRoute(method: string, pathname: string): SecretRoute | undefined {
  const segments = pathname.split("/");
  if (segments[0] !== "" || segments[1] !== "secrets" || segments.length < 3 || segments.length > 4)
    return undefined;
  const name = segments[2]!;
  if (!isSecretName(name)) return undefined;
  const version = segments[3];
  if (method === "GET")
    return version === undefined || version === ""
      ? { operation: "getSecret", name }
      : { operation: "getSecret", name, version };
  if (method === "PUT" && version === undefined) return { operation: "setSecret", name };
  return undefined;
}

function readBody(request: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(request.headers["content-length"]);
    if (Number.isFinite(declared) && declared > limit) {
      reject(new HttpError(413, "BadParameter", `request body exceeds ${limit} bytes`));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let failed = false;
    request.on("data", (chunk: Buffer) => {
      if (failed) return;
      size += chunk.length;
      if (size > limit) {
        failed = true;
        reject(new HttpError(413, "BadParameter", `request body exceeds ${limit} bytes`));
        return;
      }
      chunks.push(chunk);
    });
    request.on("end", () => {
      if (!failed) resolve(Buffer.concat(chunks));
    });
    request.on("error", (error) => {
      if (!failed) reject(error);
    });
  });
}

function parseJsonBody<T extends z.ZodType>(body: Buffer, schema: T): z.infer<T> {
  if (body.length === 0) throw new HttpError(400, "BadParameter", "a request body is required");
  let json: unknown;
  try {
    json = JSON.parse(body.toString("utf8"));
  } catch {
    throw new HttpError(400, "BadParameter", "the request body is not valid JSON");
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    const path = parsed.error.issues[0]?.path.map(String).join(".") ?? "";
    throw new HttpError(400, "BadParameter", `the request body is malformed at ${path || "top level"}`);
  }
  return parsed.data;
}

function policyInput(wire: ReleasePolicyWireBody | null | undefined): ReleasePolicyInput | undefined {
  if (wire === null || wire === undefined) return undefined;
  const contentType = given(wire.contentType);
  const immutable = given(wire.immutable);
  return {
    data: wire.data,
    ...(contentType === undefined ? {} : { contentType }),
    ...(immutable === undefined ? {} : { immutable }),
  };
}

function digest(text: string): Buffer {
  return createHash("sha256").update(text, "utf8").digest();
}

/** Starts the server on a loopback address; resolves once it is listening. */
export async function startLocalKeyVaultServer(
  options: LocalKeyVaultServerOptions,
): Promise<LocalKeyVaultServer> {
  const { engine } = options;
  if (typeof engine?.release !== "function") throw new TypeError("engine must be a LocalKeyVault");
  const host = options.host ?? "127.0.0.1";
  if (!isLoopbackHost(host)) {
    throw new ShieldError("ERR_CONFIG", "the local Key Vault server binds only to a loopback address");
  }
  const logger = options.logger ?? silentLogger;
  const maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const accessToken = options.accessToken ?? randomBytes(32).toString("base64url");
  if (accessToken.length < 16) throw new TypeError("accessToken must be at least 16 characters");
  const expectedTokenDigest = digest(accessToken);
  const challenge = `Bearer authorization="https://login.microsoftonline.com/${options.tenantId ?? DEFAULT_TENANT_ID}", resource="${VAULT_RESOURCE}"`;

  const counters = { requests: 0, unauthorized: 0, injectedFaults: 0 };
  const secrets = options.secrets ?? createLocalSecrets();
  const faults = new FaultPlan<KeyVaultRoute>();
  const sleeper = new FaultSleeper();
  const answered: Partial<Record<KeyVaultRoute, number>> = {};
  let closing: Promise<void> | undefined;
  let baseUrl = "";

  const send = (
    response: ServerResponse,
    status: number,
    body: unknown,
    headers: Record<string, string> = {},
  ): void => {
    const text = body === undefined ? "" : JSON.stringify(body);
    response.writeHead(status, {
      ...(text === "" ? {} : { "content-type": "application/json; charset=utf-8" }),
      "content-length": String(Buffer.byteLength(text)),
      "x-ms-request-id": randomBytes(16).toString("hex"),
      ...headers,
    });
    response.end(text);
  };

  const sendError = (
    response: ServerResponse,
    status: number,
    code: string,
    message: string,
    headers = {},
  ): void => send(response, status, { error: { code, message } }, headers);

  /** Whether the request carries the accepted bearer token. */
  const authorized = (header: string | undefined): "missing" | "invalid" | "ok" => {
    if (header === undefined) return "missing";
    const match = /^Bearer (\S+)$/i.exec(header);
    if (match === null) return "missing";
    // Equal-length digests, so the comparison's time says nothing about the token.
    return timingSafeEqual(digest(match[1]!), expectedTokenDigest) ? "ok" : "invalid";
  };

  const dispatch = async (
    route: Route,
    request: IncomingMessage,
    url: URL,
    apiVersion: string,
  ): Promise<unknown> => {
    const body = request.method === "GET" ? Buffer.alloc(0) : await readBody(request, maxBodyBytes);
    switch (route.operation) {
      case "create": {
        const parsed = parseJsonBody(body, createKeyBodySchema);
        const attributes = parsed.attributes ?? undefined;
        const created = await engine.createKey(route.name, {
          kty: parsed.kty,
          keySize: given(parsed.key_size),
          publicExponent: given(parsed.public_exponent),
          curve: given(parsed.crv),
          keyOps: given(parsed.key_ops),
          enabled: given(attributes?.enabled),
          exportable: given(attributes?.exportable),
          notBefore: dateFromSeconds(attributes?.nbf),
          expires: dateFromSeconds(attributes?.exp),
          tags: given(parsed.tags),
          releasePolicy: policyInput(parsed.release_policy),
        });
        return keyBundleToWire(created);
      }
      case "get":
        return keyBundleToWire(await engine.getKey(route.name, route.version));
      case "versions": {
        const versions = await engine.listVersions(route.name);
        const requestedSize = Number(url.searchParams.get("maxresults") ?? MAX_PAGE_SIZE);
        const pageSize = Number.isInteger(requestedSize)
          ? Math.min(Math.max(requestedSize, 1), MAX_PAGE_SIZE)
          : MAX_PAGE_SIZE;
        const offset = Number(url.searchParams.get("$skiptoken") ?? 0);
        if (!Number.isInteger(offset) || offset < 0)
          throw new HttpError(400, "BadParameter", "invalid $skiptoken");
        const page = versions.slice(offset, offset + pageSize);
        const next = offset + pageSize;
        const nextLink =
          next < versions.length
            ? `${baseUrl}/keys/${encodeURIComponent(route.name)}/versions?api-version=${encodeURIComponent(apiVersion)}&$skiptoken=${next}&maxresults=${pageSize}`
            : null;
        return { value: page.map(keyItemToWire), nextLink };
      }
      case "update": {
        const parsed = parseJsonBody(body, updateKeyBodySchema);
        const attributes = parsed.attributes ?? undefined;
        const updated = await engine.updateKey(route.name, route.version, {
          keyOps: given(parsed.key_ops),
          enabled: given(attributes?.enabled),
          exportable: given(attributes?.exportable),
          notBefore: dateFromSeconds(attributes?.nbf),
          expires: dateFromSeconds(attributes?.exp),
          tags: given(parsed.tags),
          releasePolicy: policyInput(parsed.release_policy),
        });
        return keyBundleToWire(updated);
      }
      case "release": {
        const parsed = parseJsonBody(body, releaseBodySchema);
        return engine.release(route.name, route.version, {
          target: parsed.target,
          enc: given(parsed.enc),
          nonce: given(parsed.nonce),
          apiVersion,
        });
      }
      case "rotate":
        return keyBundleToWire(await engine.rotateKey(route.name));
      case "sign": {
        const parsed = parseJsonBody(body, signBodySchema);
        const digest = Buffer.from(parsed.value, "base64url");
        const signed = await engine.sign(route.name, route.version, parsed.alg, digest);
        return { kid: signed.kid, value: signed.value.toString("base64url") };
      }
      case "getRotationPolicy":
        return rotationPolicyToWire(
          `${engine.vaultUrl}/keys/${route.name}/rotationpolicy`,
          await engine.getRotationPolicy(route.name),
        );
      case "setRotationPolicy": {
        const parsed = parseJsonBody(body, rotationPolicyBodySchema);
        const expiryTime = given(parsed.attributes?.expiryTime);
        const policy = await engine.setRotationPolicy(route.name, {
          lifetimeActions: (parsed.lifetimeActions ?? []).map((action) => {
            const timeAfterCreate = given(action.trigger?.timeAfterCreate);
            const timeBeforeExpiry = given(action.trigger?.timeBeforeExpiry);
            return {
              action: action.action.type,
              ...(timeAfterCreate === undefined ? {} : { timeAfterCreate }),
              ...(timeBeforeExpiry === undefined ? {} : { timeBeforeExpiry }),
            };
          }),
          ...(expiryTime === undefined ? {} : { expiryTime }),
        });
        return rotationPolicyToWire(`${engine.vaultUrl}/keys/${route.name}/rotationpolicy`, policy);
      }
    }
  };

  const dispatchSecret = async (route: SecretRoute, request: IncomingMessage): Promise<unknown> => {
    if (route.operation === "setSecret") {
      const body = parseJsonBody(await readBody(request, maxBodyBytes), setSecretBodySchema);
      const contentType = given(body.contentType);
      return secretBundleToWire(
        baseUrl,
        secrets.set(route.name, body.value, contentType === undefined ? {} : { contentType }),
      );
    }
    const secret = secrets.get(route.name, route.version);
    if (secret === undefined) {
      throw new HttpError(
        404,
        "SecretNotFound",
        `A secret with (name/id) ${route.name} was not found in this key vault.`,
      );
    }
    return secretBundleToWire(baseUrl, secret);
  };

  const handle = async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
    const started = performance.now();
    const method = request.method ?? "GET";
    let operation = "unknown";
    let keyName: string | undefined;
    counters.requests++;
    try {
      const url = new URL(request.url ?? "/", "http://127.0.0.1");
      const route = matchRoute(method, url.pathname);
      const secretRoute = matchSecretRoute(method, url.pathname);
      if (route !== undefined) {
        operation = route.operation;
        keyName = route.name;
      } else if (secretRoute !== undefined) operation = secretRoute.operation;
      // Challenge first, before anything is read: the SDK's first request is sent without a
      // token and without its body, and is repeated with both once the challenge is answered.
      const auth = authorized(request.headers.authorization);
      if (auth !== "ok") {
        request.resume();
        counters.unauthorized++;
        sendError(
          response,
          401,
          "Unauthorized",
          auth === "missing"
            ? "AKV10000: Request is missing a Bearer or PoP token."
            : "The access token is not valid.",
          { "www-authenticate": challenge },
        );
        return;
      }
      const decision = faults.take(route?.operation ?? secretRoute?.operation ?? "other");
      if (decision.delayMs > 0) await sleeper.sleep(decision.delayMs);
      if (decision.fault !== undefined) {
        counters.injectedFaults++;
        if (applyConnectionFault(decision.fault, request, response, restarter)) return;
        request.resume();
        const fault = statusOf(decision.fault)!;
        sendError(
          response,
          fault.status,
          fault.status === 429 ? "Throttled" : faultStatusCode(fault.status),
          "The service is temporarily unable to handle the request.",
          fault.retryAfterSeconds === undefined ? {} : { "retry-after": String(fault.retryAfterSeconds) },
        );
        return;
      }
      const apiVersion = url.searchParams.get("api-version");
      if (apiVersion === null || !SUPPORTED_API_VERSIONS.includes(apiVersion)) {
        throw new HttpError(
          400,
          "BadParameter",
          `api-version must be one of ${SUPPORTED_API_VERSIONS.join(", ")}`,
        );
      }
      if (secretRoute !== undefined) {
        send(response, 200, await dispatchSecret(secretRoute, request));
        answered[secretRoute.operation] = (answered[secretRoute.operation] ?? 0) + 1;
        return;
      }
      if (route === undefined) throw new HttpError(404, "NotFound", "no such operation");
      const result = await dispatch(route, request, url, apiVersion);
      send(response, 200, result);
      answered[route.operation] = (answered[route.operation] ?? 0) + 1;
    } catch (error) {
      request.resume();
      if (error instanceof HttpError) {
        sendError(
          response,
          error.status,
          error.code,
          error.message,
          error.status === 413 ? { connection: "close" } : {},
        );
      } else if (error instanceof LocalKeyVaultError) {
        sendError(response, error.status, error.vaultCode, error.message);
      } else if (isShieldError(error)) {
        sendError(
          response,
          error.transient ? 503 : 400,
          error.transient ? "ServiceUnavailable" : "BadParameter",
          error.message,
        );
      } else {
        logger("error", "keyvault request failed", {
          operation,
          error: error instanceof Error ? error.name : typeof error,
        });
        sendError(response, 500, "InternalServerError", "internal error");
      }
    } finally {
      logger("info", "keyvault request", {
        method,
        operation,
        key: keyName,
        status: response.statusCode,
        ms: Math.round((performance.now() - started) * 10) / 10,
      });
    }
  };

  const server: Server = createServer((request, response) => {
    void handle(request, response);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const restarter = restartable(server, () => closing !== undefined);
  const address = server.address() as AddressInfo;
  baseUrl = `http://${address.family === "IPv6" ? `[${address.address}]` : address.address}:${address.port}`;

  return {
    url: baseUrl,
    accessToken,
    failNext(status, count = 1, faultOptions = {}) {
      if (
        !Number.isInteger(status) ||
        !(status === 408 || status === 429 || (status >= 500 && status <= 599))
      ) {
        throw new TypeError("status must be 408, 429 or 5xx");
      }
      if (!Number.isInteger(count) || count < 0) throw new TypeError("count must be a non-negative integer");
      faults.inject(
        "*",
        {
          kind: "status",
          status,
          ...(faultOptions.retryAfterSeconds === undefined
            ? {}
            : { retryAfterSeconds: faultOptions.retryAfterSeconds }),
        },
        { times: count },
      );
    },
    faults,
    restart: (downMs) => restarter.restart(downMs),
    stats: () => ({ ...counters, answered: { ...answered } }),
    secrets,
    // Keep-alive sockets of SDK clients would otherwise hold the server open: closeListening
    // drops them; pending injected delays end at once.
    close: () => {
      faults.clear();
      sleeper.wakeAll();
      return (closing ??= closeListening(server));
    },
  };
}
