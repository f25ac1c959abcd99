/**
 * A local HTTP server with Microsoft Azure Attestation's REST API, in front of the local
 * attestation engine: `POST /attest/SevSnpVm` and `POST /attest/SgxEnclave` with MAA's request
 * bodies and `{"token"}` answers, `GET /certs` (x5c-only JWK set) and
 * `GET /.well-known/openid-configuration`, refusals as `{"error":{"code","message"}}`. The
 * Azure adapter and any other MAA client (the SKR sidecar, Gramine) can be pointed at it
 * unchanged. It binds loopback only.
 *
 * Wire decisions, where MAA's behaviour is not fully documented:
 * - Paths match case-insensitively (the SKR sidecar sends `/attest/SevSnpVM`); `api-version` is
 *   required on `attest` calls (any `YYYY-MM-DD[-preview]` value), not on `/certs` or metadata.
 * - `runtimeData` is required (the binding to REPORT_DATA is the point); a missing `dataType`
 *   means `Binary` (not interpreted). `nonce` may be a string or, as the sidecar sends it, a
 *   JSON unsigned integer; it is echoed as a string with the exact digits sent.
 * - `initTimeData` is honoured for SEV-SNP (HOST_DATA = its SHA-256; JSON becomes
 *   `x-ms-inittime`) and refused for SGX; `draftPolicyForAttestation` is refused: this server
 *   runs no attestation policies. JSON `null` counts as absent, as .NET and Go clients send it.
 * - A refused request answers 400 `InvalidParameter` whose message starts with the failing
 *   check's error code (`ERR_EVIDENCE_REPORT_DATA: ...`); no evidence bytes ever appear in it.
 *
 * `faults` (and its shorthands `failNext` and `delayNext`) is fault injection for tests (MAA
 * throttling, outages, slowness, resets, hangs, restarts; see ../faults.ts); it does nothing
 * until a test sets a fault.
 */
import { createHash } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { z } from "zod";
import { ShieldError, isShieldError } from "../../../core/errors.js";
import type { RuntimeDataType } from "../../../core/ports/attestation.js";
import { silentLogger, type LogFields, type Logger } from "../../../core/ports/logger.js";
import {
  MAA_PATHS,
  decodeBase64Url,
  maaErrorBody,
  refusalMessage,
  type MaaAttestationResponse,
} from "../../maa/wire.js";
import type { LocalAttestationEngine } from "./engine.js";
import {
  FaultPlan,
  FaultSleeper,
  applyConnectionFault,
  closeListening,
  faultStatusCode,
  restartable,
  statusOf,
} from "../faults.js";

export interface LocalMaaServerOptions {
  /**
   * The engine, or a function that builds it once the server's URL is known (so that the
   * token issuer's `iss` can be the URL clients use).
   */
  readonly engine:
    LocalAttestationEngine | ((url: string) => LocalAttestationEngine | Promise<LocalAttestationEngine>);
  /** Loopback only (default 127.0.0.1). */
  readonly host?: "127.0.0.1" | "::1";
  /** Default 0: a free port chosen by the OS. */
  readonly port?: number;
  /** Largest request body accepted (default 1 MiB); larger ones get 413. */
  readonly maxBodyBytes?: number;
  readonly logger?: Logger;
}

export interface LocalMaaServer {
  /** The instance URL, e.g. `http://127.0.0.1:41234` (no trailing slash). */
  readonly url: string;
  readonly engine: LocalAttestationEngine;
  /** Stops listening and drops every open connection. */
  close(): Promise<void>;
  /**
   * Fault injection for tests: the next `count` requests (any path) are answered with `status`
   * and an MAA-shaped error body, without reaching the engine. 429 carries `Retry-After: 1`.
   */
  failNext(status: number, count?: number): void;
  /** Fault injection for tests: the next `count` requests are handled only after `ms` ms. */
  delayNext(ms: number, count?: number): void;
  /** Drops every pending injected failure and delay. */
  clearFaults(): void;
  /** Fault injection per route (`attestSevSnpVm`, `attestSgxEnclave`, `certs`, ...); see ../faults.ts. */
  readonly faults: FaultPlan<MaaRoute>;
  /** Stops listening, drops every connection, and listens on the same port again after `downMs`. */
  restart(downMs: number): Promise<void>;
}

/** The routes faults can be set on; `other` is any path that is not one of MAA's. */
export type MaaRoute = Route | "other";

export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024;
/** How far past the limit an oversized body is read (and discarded) before the connection is cut. */
const DRAIN_FACTOR = 4;
const MAX_NONCE_CHARS = 1024;
/** Runtime data and init-time data, as base64url characters (real runtime data is about 1 KiB). */
const MAX_ATTESTED_DATA_CHARS = 64 * 1024;
const API_VERSION = /^\d{4}-\d{2}-\d{2}(-preview)?$/;

export type Route = "attestSevSnpVm" | "attestSgxEnclave" | "certs" | "openIdConfiguration";

const ROUTES: ReadonlyMap<string, { readonly route: Route; readonly methods: readonly string[] }> = new Map(
  (Object.entries(MAA_PATHS) as [Route, string][]).map(([route, path]) => [
    path.toLowerCase(),
    { route, methods: route.startsWith("attest") ? ["POST"] : ["GET", "HEAD"] },
  ]),
);

export async function startLocalMaaServer(options: LocalMaaServerOptions): Promise<LocalMaaServer> {
  const host = options.host ?? "127.0.0.1";
  if (host !== "127.0.0.1" && host !== "::1") {
    throw new ShieldError("ERR_CONFIG", "the local MAA server binds loopback only (127.0.0.1 or ::1)");
  }
  const port = options.port ?? 0;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new TypeError("port must be 0..65535");
  const maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  if (!Number.isSafeInteger(maxBodyBytes) || maxBodyBytes <= 0) {
    throw new TypeError("maxBodyBytes must be a positive integer");
  }
  const log = options.logger ?? silentLogger;
  const faults = new FaultPlan<MaaRoute>();
  const sleeper = new FaultSleeper();
  let engine: LocalAttestationEngine | undefined =
    typeof options.engine === "function" ? undefined : options.engine;

  const server = createServer((request, response) => {
    const started = performance.now();
    const context: RequestContext = { fields: {} };
    handle(request, response, context)
      .catch((error: unknown) => {
        context.fields = { ...context.fields, error: error instanceof Error ? error.name : "unknown" };
        if (!response.headersSent) sendError(response, 500, "InternalServerError", "internal error");
      })
      .finally(() => {
        const status = response.statusCode;
        const level = status >= 500 ? "error" : status >= 400 ? "warn" : "info";
        log(level, "maa request", {
          method: request.method,
          path: pathOf(request),
          status,
          durationMs: Math.round(performance.now() - started),
          ...context.fields,
        });
      });
  });

  async function handle(request: IncomingMessage, response: ServerResponse, context: RequestContext) {
    const url = new URL(request.url ?? "/", "http://localhost");
    const match = ROUTES.get(url.pathname.toLowerCase());
    const decision = faults.take(match?.route ?? "other");
    if (decision.delayMs > 0) await sleeper.sleep(decision.delayMs);
    if (decision.fault !== undefined) {
      if (applyConnectionFault(decision.fault, request, response, restarter)) return;
      const status = statusOf(decision.fault)!;
      if (status.retryAfterSeconds !== undefined)
        response.setHeader("Retry-After", String(status.retryAfterSeconds));
      sendError(response, status.status, faultStatusCode(status.status), "injected fault");
      return;
    }
    if (match === undefined) {
      sendError(response, 404, "NotFound", "no such resource");
      return;
    }
    if (!match.methods.includes(request.method ?? "")) {
      response.setHeader("Allow", match.methods.join(", "));
      sendError(response, 405, "MethodNotAllowed", `use ${match.methods.join(" or ")}`);
      return;
    }
    if (engine === undefined) {
      sendError(response, 503, "ServiceUnavailable", "the attestation engine is starting");
      return;
    }
    switch (match.route) {
      case "certs":
        sendJson(response, 200, await engine.getSigningCertificates());
        return;
      case "openIdConfiguration":
        sendJson(response, 200, engine.openIdConfiguration());
        return;
      case "attestSevSnpVm":
      case "attestSgxEnclave":
        await attest(match.route, engine, url, request, response, context);
        return;
    }
  }

  async function attest(
    route: "attestSevSnpVm" | "attestSgxEnclave",
    target: LocalAttestationEngine,
    url: URL,
    request: IncomingMessage,
    response: ServerResponse,
    context: RequestContext,
  ): Promise<void> {
    const apiVersion = url.searchParams.get("api-version");
    if (apiVersion === null || !API_VERSION.test(apiVersion)) {
      sendError(
        response,
        400,
        "InvalidParameter",
        apiVersion === null ? "the api-version query parameter is required" : "unsupported api-version",
      );
      return;
    }
    const body = await readBody(request, maxBodyBytes);
    if (body === "too-large") {
      response.setHeader("Connection", "close");
      sendError(response, 413, "RequestEntityTooLarge", `request body exceeds ${maxBodyBytes} bytes`);
      return;
    }
    const parsed = parseAttestBody(route, body);
    if (typeof parsed === "string") {
      sendError(response, 400, "InvalidParameter", parsed);
      return;
    }
    context.fields = { ...context.fields, evidenceSha256: sha256Hex(parsed.evidence) };
    let token: string;
    try {
      token =
        parsed.kind === "sevsnp"
          ? await target.attestSevSnp(parsed.request)
          : await target.attestSgx(parsed.request);
    } catch (error) {
      if (!isShieldError(error)) throw error;
      context.fields = { ...context.fields, code: error.code };
      // Transient failures of the engine itself are outages, not refusals of the evidence.
      if (error.transient) sendError(response, 503, "ServiceUnavailable", "try again later");
      else sendError(response, 400, "InvalidParameter", refusalMessage(error.code, error.message));
      return;
    }
    context.fields = { ...context.fields, tokenSha256: sha256Hex(token) };
    const answer: MaaAttestationResponse = { token };
    sendJson(response, 200, answer);
  }

  let closing: Promise<void> | undefined;
  const restarter = restartable(server, () => closing !== undefined);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const url = `http://${host === "::1" ? "[::1]" : host}:${address.port}`;
  try {
    if (typeof options.engine === "function") engine = await options.engine(url);
  } catch (error) {
    await closeServer(server, sleeper);
    throw error;
  }
  if (engine === undefined) throw new TypeError("engine must be an engine or a function returning one");
  if (engine.issuer !== url) {
    log("warn", "maa token issuer differs from the server URL", { issuer: engine.issuer, url });
  }
  const ready = engine;
  log("info", "local maa server listening", { url });

  return {
    url,
    engine: ready,
    close: () => {
      faults.clear();
      return (closing ??= closeServer(server, sleeper));
    },
    failNext(status: number, count = 1): void {
      if (!Number.isInteger(status) || status < 400 || status > 599) {
        throw new TypeError("status must be an HTTP error status (400..599)");
      }
      faults.inject(
        "*",
        status === 429 ? { kind: "throttle", retryAfterSeconds: 1 } : { kind: "status", status },
        { times: count },
      );
    },
    delayNext(ms: number, count = 1): void {
      if (!Number.isFinite(ms) || ms < 0) throw new TypeError("ms must be a non-negative number");
      faults.inject("*", { kind: "latency", ms }, { times: count });
    },
    clearFaults(): void {
      faults.clear();
    },
    faults,
    restart: (downMs) => restarter.restart(downMs),
  };
}

interface RequestContext {
  fields: LogFields;
}

// ---------------------------------------------------------------------------------------------
// Request bodies

const AttestedDataSchema = z.object({
  data: z.string().max(MAX_ATTESTED_DATA_CHARS),
  dataType: z.enum(["JSON", "Binary"]).nullish(),
});

const CommonBodySchema = {
  runtimeData: AttestedDataSchema.nullish(),
  initTimeData: AttestedDataSchema.nullish(),
  draftPolicyForAttestation: z.string().nullish(),
  nonce: z.union([z.string().max(MAX_NONCE_CHARS), z.number()]).nullish(),
};

// Unknown members are dropped, not refused, as Azure services do.
const SevSnpBodySchema = z.object({ report: z.string().min(1), ...CommonBodySchema });
const SgxBodySchema = z.object({ quote: z.string().min(1), ...CommonBodySchema });

type ParsedAttestBody =
  | {
      readonly kind: "sevsnp";
      readonly evidence: string;
      readonly request: Parameters<LocalAttestationEngine["attestSevSnp"]>[0];
    }
  | {
      readonly kind: "sgx";
      readonly evidence: string;
      readonly request: Parameters<LocalAttestationEngine["attestSgx"]>[0];
    };

/** The request for the engine, or the reason the body is refused. */
function parseAttestBody(
  route: "attestSevSnpVm" | "attestSgxEnclave",
  body: Buffer,
): ParsedAttestBody | string {
  let json: unknown;
  const text = body.toString("utf8");
  try {
    json = JSON.parse(text);
  } catch {
    return "the request body is not valid JSON";
  }
  const schema = route === "attestSevSnpVm" ? SevSnpBodySchema : SgxBodySchema;
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    const fields = [...new Set(parsed.error.issues.map((issue) => issue.path.join(".") || "(body)"))];
    return `the request body is not an ${route === "attestSevSnpVm" ? "AttestSevSnpVmRequest" : "AttestSgxEnclaveRequest"}: ${fields.join(", ")}`;
  }
  const fields = parsed.data;
  if (typeof fields.draftPolicyForAttestation === "string" && fields.draftPolicyForAttestation !== "") {
    return "draftPolicyForAttestation is not supported: this server runs no attestation policies";
  }
  if (fields.runtimeData === null || fields.runtimeData === undefined) return "runtimeData is required";
  const runtimeData = decodeBase64Url(fields.runtimeData.data);
  if (runtimeData === undefined) return "runtimeData.data is not base64url";
  const nonce = nonceOf(fields.nonce, text);
  if (nonce === false) return "nonce must be a string or an unsigned integer";
  const common = {
    runtimeData,
    runtimeDataType: dataTypeOf(fields.runtimeData.dataType),
    ...(nonce === undefined ? {} : { nonce }),
  };

  if ("report" in fields) {
    let initTime: { initTimeData: Buffer; initTimeDataType: RuntimeDataType } | undefined;
    if (fields.initTimeData !== null && fields.initTimeData !== undefined) {
      const initTimeData = decodeBase64Url(fields.initTimeData.data);
      if (initTimeData === undefined) return "initTimeData.data is not base64url";
      initTime = { initTimeData, initTimeDataType: dataTypeOf(fields.initTimeData.dataType) };
    }
    return {
      kind: "sevsnp",
      evidence: fields.report,
      request: { report: fields.report, ...common, ...initTime },
    };
  }
  if (fields.initTimeData !== null && fields.initTimeData !== undefined) {
    return "initTimeData is not supported for SGX enclaves by this server";
  }
  const quote = decodeBase64Url(fields.quote);
  if (quote === undefined) return "quote is not base64url";
  return { kind: "sgx", evidence: fields.quote, request: { quote, ...common } };
}

/** MAA's wire default when `dataType` is absent: binary, not interpreted. */
function dataTypeOf(dataType: RuntimeDataType | null | undefined): RuntimeDataType {
  return dataType ?? "Binary";
}

/**
 * The nonce to echo, as a string; `false` when it is a number that is not an unsigned integer.
 * A number is echoed with the exact digits the client wrote: the sidecar sends a random uint64,
 * which a JavaScript number cannot hold exactly.
 */
function nonceOf(nonce: string | number | null | undefined, body: string): string | undefined | false {
  if (nonce === null || nonce === undefined) return undefined;
  if (typeof nonce === "string") return nonce;
  const digits = rawTopLevelValue(body, "nonce");
  return digits !== undefined && /^(0|[1-9]\d{0,19})$/.test(digits) ? digits : false;
}

/**
 * The source text of a scalar member of the top-level object of a JSON text that `JSON.parse`
 * accepted; the last one wins, as in `JSON.parse`. Strings and nesting are skipped over, so a
 * member of that name inside a nested object or a string does not count.
 */
function rawTopLevelValue(json: string, name: string): string | undefined {
  let depth = 0;
  let found: string | undefined;
  for (let i = 0; i < json.length; i++) {
    const c = json[i];
    if (c === '"') {
      const end = endOfString(json, i);
      if (depth === 1) {
        let next = skipWhitespace(json, end + 1);
        if (json[next] === ":" && (JSON.parse(json.slice(i, end + 1)) as string) === name) {
          next = skipWhitespace(json, next + 1);
          let stop = next;
          while (stop < json.length && /[-+.0-9eE]/.test(json[stop]!)) stop++;
          found = json.slice(next, stop);
        }
      }
      i = end;
    } else if (c === "{" || c === "[") {
      depth++;
    } else if (c === "}" || c === "]") {
      depth--;
    }
  }
  return found;
}

function endOfString(json: string, start: number): number {
  for (let i = start + 1; i < json.length; i++) {
    if (json[i] === "\\") i++;
    else if (json[i] === '"') return i;
  }
  return json.length;
}

function skipWhitespace(json: string, from: number): number {
  let i = from;
  while (i < json.length && (json[i] === " " || json[i] === "\t" || json[i] === "\n" || json[i] === "\r"))
    i++;
  return i;
}

/**
 * Reads a request body of at most `maxBytes`. An oversized body is read on (and discarded) up
 * to a bound, so the client gets the 413 rather than a reset connection; past the bound, or
 * when Content-Length already says it is too large, the answer does not wait for it.
 */
function readBody(request: IncomingMessage, maxBytes: number): Promise<Buffer | "too-large"> {
  const declared = Number(request.headers["content-length"]);
  if (Number.isFinite(declared) && declared > maxBytes * DRAIN_FACTOR) return Promise.resolve("too-large");
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let total = 0;
    let settled = false;
    const settle = (value: Buffer | "too-large") => {
      if (settled) return;
      settled = true;
      resolve(value);
    };
    request.on("data", (chunk: Buffer) => {
      total += chunk.length;
      if (total <= maxBytes) chunks.push(chunk);
      else if (total > maxBytes * DRAIN_FACTOR) settle("too-large");
    });
    request.on("end", () => settle(total > maxBytes ? "too-large" : Buffer.concat(chunks, total)));
    request.on("error", (error) => {
      if (!settled) {
        settled = true;
        reject(error);
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Responses

function sendJson(response: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  response.writeHead(status, {
    "Content-Type": "application/json; charset=utf-8",
    "Content-Length": Buffer.byteLength(text),
    "Cache-Control": "no-store",
  });
  response.end(text);
}

function sendError(response: ServerResponse, status: number, code: string, message: string): void {
  sendJson(response, status, maaErrorBody(code, message));
}

function pathOf(request: IncomingMessage): string {
  const raw = request.url ?? "/";
  const query = raw.indexOf("?");
  const path = query < 0 ? raw : raw.slice(0, query);
  return path.length <= 128 ? path : `${path.slice(0, 128)}...`;
}

function sha256Hex(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

// ---------------------------------------------------------------------------------------------
// Shutdown

function closeServer(server: Server, sleeper: FaultSleeper): Promise<void> {
  // Pending injected delays end at once, so shutdown never waits for one.
  sleeper.wakeAll();
  return closeListening(server);
}
