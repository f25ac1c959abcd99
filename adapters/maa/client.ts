/**
 * The AttestationService port on Microsoft Azure Attestation, over plain HTTPS (Node's fetch, no
 * SDK): `POST /attest/SevSnpVm` and `/attest/SgxEnclave` with MAA's request bodies, `GET /certs`
 * and the OpenID metadata. It turns every HTTP outcome into a typed result: a token, a transient
 * failure (429 ERR_THROTTLED, 5xx ERR_UPSTREAM_UNAVAILABLE, ERR_TIMEOUT, ERR_NETWORK) for the
 * caller to retry — there are no retries in here; wrap the client with `retrying()` — or a
 * terminal one (400 refusal of the evidence, 401/403 and other misconfiguration ERR_CONFIG).
 * Responses are read up to a size limit. Nothing it logs or throws carries evidence, tokens or
 * MAA's free-text messages; only status codes, MAA's error code and SHA-256 hashes.
 */
import { serviceOrigin } from "../loopback.js";
import { createHash } from "node:crypto";
import { ShieldError, type ShieldErrorCode } from "../../core/errors.js";
import type {
  AttestSevSnpRequest,
  AttestSgxRequest,
  AttestationService,
  RuntimeDataType,
} from "../../core/ports/attestation.js";
import { silentLogger, type LogFields, type Logger } from "../../core/ports/logger.js";
import {
  MAA_API_VERSION,
  MAA_PATHS,
  MAA_SCOPE,
  encodeBase64Url,
  refusalCodeOf,
  type MaaAttestSevSnpVmBody,
  type MaaAttestSgxEnclaveBody,
} from "./wire.js";

/** The part of `@azure/core-auth`'s TokenCredential the client uses. */
export interface MaaCredential {
  getToken(scopes: string): Promise<{ readonly token: string } | null>;
}

export interface MaaClientOptions {
  /** The attestation provider, e.g. `https://sharedeus.eus.attest.azure.net`; https, or http on loopback. */
  readonly instanceUrl: string;
  readonly fetch?: typeof fetch;
  /** Default `2022-08-01`. */
  readonly apiVersion?: string;
  /** Per call, covering the request and reading the answer (default 30 s). */
  readonly timeoutMs?: number;
  /**
   * Sends `Authorization: Bearer` for scope `https://attest.azure.net/.default`. Optional: shared
   * providers are used anonymously, as the SKR sidecar does.
   */
  readonly credential?: MaaCredential;
  readonly logger?: Logger;
  /** Largest answer read (default 1 MiB). */
  readonly maxResponseBytes?: number;
}

export interface MaaClient extends AttestationService {
  /** `GET /.well-known/openid-configuration`, as `unknown` (snake_case members). */
  getOpenIdConfiguration(): Promise<unknown>;
}

export const DEFAULT_MAA_TIMEOUT_MS = 30_000;
export const DEFAULT_MAA_MAX_RESPONSE_BYTES = 1024 * 1024;
/** Error bodies are read only this far: only their `error.code` is used. */
const MAX_ERROR_BODY_BYTES = 64 * 1024;
const USER_AGENT = "shield-acc-maa-client";
/** The runtime data of this project is always JSON; callers may say otherwise. */
const DEFAULT_DATA_TYPE: RuntimeDataType = "JSON";
const MAA_ERROR_CODE = /^[A-Za-z][A-Za-z0-9_.-]{0,63}$/;
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

type Operation = "attestSevSnpVm" | "attestSgxEnclave" | "certs" | "openIdConfiguration";

export function createMaaClient(options: MaaClientOptions): MaaClient {
  const base = instanceBase(options.instanceUrl);
  const fetchImpl = options.fetch ?? globalThis.fetch;
  if (typeof fetchImpl !== "function") throw new TypeError("fetch must be a function");
  const apiVersion = options.apiVersion ?? MAA_API_VERSION;
  if (!/^\d{4}-\d{2}-\d{2}(-preview)?$/.test(apiVersion))
    throw new TypeError("apiVersion must look like 2022-08-01");
  const timeoutMs = positiveInteger(options.timeoutMs ?? DEFAULT_MAA_TIMEOUT_MS, "timeoutMs");
  const maxResponseBytes = positiveInteger(
    options.maxResponseBytes ?? DEFAULT_MAA_MAX_RESPONSE_BYTES,
    "maxResponseBytes",
  );
  const credential = options.credential;
  if (credential !== undefined && typeof credential.getToken !== "function") {
    throw new TypeError("credential must have a getToken(scope) method");
  }
  const log = options.logger ?? silentLogger;

  /**
   * One HTTP exchange: request, status mapping, size-limited read, JSON parse, then `read` to
   * check the answer's shape. Logs one line per call, with hashes only.
   */
  async function call<T>(
    operation: Operation,
    body: MaaAttestSevSnpVmBody | MaaAttestSgxEnclaveBody | undefined,
    read: (answer: unknown) => { readonly value: T; readonly fields?: LogFields },
    evidenceSha256?: string,
  ): Promise<T> {
    const attest = body !== undefined;
    const query = attest ? `?api-version=${encodeURIComponent(apiVersion)}` : "";
    const headers: Record<string, string> = { Accept: "application/json", "User-Agent": USER_AGENT };
    if (attest) headers["Content-Type"] = "application/json";
    const started = performance.now();
    let fields: LogFields = { operation, evidenceSha256 };
    const controller = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    try {
      if (credential !== undefined) headers.Authorization = `Bearer ${await accessToken(credential)}`;
      timer = setTimeout(() => controller.abort(), timeoutMs);
      let status: number;
      let text: Buffer | "too-large";
      try {
        const response = await fetchImpl(`${base}${MAA_PATHS[operation]}${query}`, {
          method: attest ? "POST" : "GET",
          headers,
          ...(attest ? { body: JSON.stringify(body) } : {}),
          signal: controller.signal,
          redirect: "manual",
        });
        status = response.status;
        fields = { ...fields, status };
        const ok = status >= 200 && status < 300;
        text = await readLimited(response, ok ? maxResponseBytes : MAX_ERROR_BODY_BYTES);
      } catch (error) {
        throw transportFailure(error, controller.signal.aborted, timeoutMs);
      }
      if (status < 200 || status >= 300) {
        const maaError = text === "too-large" ? undefined : maaErrorOf(text);
        fields = { ...fields, maaCode: maaError?.code };
        throw httpFailure(operation, status, maaError);
      }
      if (text === "too-large") throw malformedAnswer(operation, `answer exceeds ${maxResponseBytes} bytes`);
      const answer = read(parseAnswer(operation, text));
      fields = { ...fields, ...answer.fields };
      return answer.value;
    } catch (error) {
      fields = { ...fields, code: error instanceof ShieldError ? error.code : "unexpected" };
      throw error;
    } finally {
      clearTimeout(timer);
      const failed = fields.code !== undefined;
      log(failed ? "warn" : "info", "maa call", {
        ...fields,
        durationMs: Math.round(performance.now() - started),
      });
    }
  }

  function attest(
    operation: "attestSevSnpVm" | "attestSgxEnclave",
    body: MaaAttestSevSnpVmBody | MaaAttestSgxEnclaveBody,
    evidence: string,
  ): Promise<string> {
    return call(operation, body, readToken, sha256Hex(evidence));
  }

  return {
    issuer: base,

    async attestSevSnp(request: AttestSevSnpRequest): Promise<string> {
      checkRequest(request);
      if (typeof request.report !== "string" || request.report.length === 0) {
        throw new TypeError("report must be a non-empty string");
      }
      const body: MaaAttestSevSnpVmBody = {
        report: request.report,
        runtimeData: attestedData(request),
        ...(request.nonce === undefined ? {} : { nonce: request.nonce }),
      };
      return attest("attestSevSnpVm", body, request.report);
    },

    async attestSgx(request: AttestSgxRequest): Promise<string> {
      checkRequest(request);
      if (!(request.quote instanceof Uint8Array) || request.quote.length === 0) {
        throw new TypeError("quote must be a non-empty Uint8Array");
      }
      const quote = encodeBase64Url(request.quote);
      const body: MaaAttestSgxEnclaveBody = {
        quote,
        runtimeData: attestedData(request),
        ...(request.nonce === undefined ? {} : { nonce: request.nonce }),
      };
      return attest("attestSgxEnclave", body, quote);
    },

    getSigningCertificates: () => call("certs", undefined, asIs),
    getOpenIdConfiguration: () => call("openIdConfiguration", undefined, asIs),
  };
}

// ---------------------------------------------------------------------------------------------
// Requests

/** The instance URL as an origin: https (or http on loopback), no path, query or credentials. */
function instanceBase(instanceUrl: string): string {
  if (typeof instanceUrl !== "string") throw new TypeError("instanceUrl must be a string");
  return serviceOrigin(instanceUrl, {
    invalid: "the MAA instance URL is not a URL",
    notOrigin: "the MAA instance URL must be an origin, such as https://name.region.attest.azure.net",
    insecure: "the MAA instance URL must be https (http only on loopback)",
  }).origin;
}

function checkRequest(request: AttestSevSnpRequest | AttestSgxRequest): void {
  if (typeof request !== "object" || request === null) throw new TypeError("request must be an object");
  if (!(request.runtimeData instanceof Uint8Array)) throw new TypeError("runtimeData must be a Uint8Array");
  const type: unknown = request.runtimeDataType;
  if (type !== undefined && type !== "JSON" && type !== "Binary") {
    throw new TypeError('runtimeDataType must be "JSON" or "Binary"');
  }
  if (request.nonce !== undefined && typeof request.nonce !== "string")
    throw new TypeError("nonce must be a string");
}

function attestedData(request: AttestSevSnpRequest | AttestSgxRequest): MaaAttestSevSnpVmBody["runtimeData"] {
  return {
    data: encodeBase64Url(request.runtimeData),
    dataType: request.runtimeDataType ?? DEFAULT_DATA_TYPE,
  };
}

async function accessToken(credential: MaaCredential): Promise<string> {
  let token: { readonly token: string } | null;
  try {
    token = await credential.getToken(MAA_SCOPE);
  } catch (cause) {
    throw new ShieldError("ERR_CONFIG", "could not obtain an access token for MAA", { cause });
  }
  if (token === null || typeof token?.token !== "string" || token.token === "") {
    throw new ShieldError("ERR_CONFIG", "the credential returned no access token for MAA");
  }
  return token.token;
}

// ---------------------------------------------------------------------------------------------
// Answers

async function readLimited(response: Response, limit: number): Promise<Buffer | "too-large"> {
  const declared = Number(response.headers.get("content-length"));
  if (Number.isFinite(declared) && declared > limit) {
    await response.body?.cancel();
    return "too-large";
  }
  if (response.body === null) return Buffer.alloc(0);
  const reader: ReadableStreamDefaultReader<Uint8Array> = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > limit) {
      await reader.cancel();
      return "too-large";
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks, total);
}

/** An attest answer: `{"token": "<compact JWT>"}`. */
function readToken(answer: unknown): { value: string; fields: LogFields } {
  const token = isObject(answer) ? answer.token : undefined;
  if (typeof token !== "string" || !COMPACT_JWS.test(token)) {
    throw new ShieldError("ERR_TOKEN_MALFORMED", "MAA answered without a compact JWT in `token`");
  }
  return { value: token, fields: { tokenSha256: sha256Hex(token) } };
}

/** `/certs` and metadata are handed on as `unknown`, for the trust core to parse. */
function asIs(answer: unknown): { value: unknown } {
  return { value: answer };
}

function parseAnswer(operation: Operation, body: Buffer): unknown {
  try {
    return JSON.parse(body.toString("utf8")) as unknown;
  } catch {
    throw malformedAnswer(operation, "answer is not JSON");
  }
}

function malformedAnswer(operation: Operation, reason: string): ShieldError {
  const code: ShieldErrorCode =
    operation === "certs"
      ? "ERR_JWKS_MALFORMED"
      : operation === "openIdConfiguration"
        ? "ERR_INPUT_MALFORMED"
        : "ERR_TOKEN_MALFORMED";
  return new ShieldError(code, `MAA ${operation} ${reason}`);
}

interface MaaError {
  /** MAA's `error.code`, when it is a plain identifier. */
  readonly code?: string;
  /** Our error code, when the answer comes from the local MAA-compatible server. */
  readonly refusal?: ShieldErrorCode;
}

function maaErrorOf(body: Buffer): MaaError | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString("utf8"));
  } catch {
    return undefined;
  }
  const error = isObject(parsed) ? parsed.error : undefined;
  if (!isObject(error)) return undefined;
  const code = typeof error.code === "string" && MAA_ERROR_CODE.test(error.code) ? error.code : undefined;
  const refusal = refusalCodeOf(error.message);
  return { ...(code === undefined ? {} : { code }), ...(refusal === undefined ? {} : { refusal }) };
}

/** An HTTP answer that is not a success, as a typed error. MAA's free-text message is never copied. */
function httpFailure(operation: Operation, status: number, maaError: MaaError | undefined): ShieldError {
  const detail = `HTTP ${status}${maaError?.code === undefined ? "" : `, ${maaError.code}`}`;
  const attest = operation === "attestSevSnpVm" || operation === "attestSgxEnclave";
  if (status === 429) return new ShieldError("ERR_THROTTLED", `MAA throttled the request (${detail})`);
  if (status === 408) return new ShieldError("ERR_TIMEOUT", `MAA timed out the request (${detail})`);
  if (status >= 500) return new ShieldError("ERR_UPSTREAM_UNAVAILABLE", `MAA is unavailable (${detail})`);
  if (status === 401 || status === 403) {
    return new ShieldError("ERR_CONFIG", `MAA refused the caller's credentials (${detail})`);
  }
  if (status === 413)
    return new ShieldError("ERR_INPUT_TOO_LARGE", `MAA refused the request as too large (${detail})`);
  if (status === 404 || status < 400 || !attest) {
    return new ShieldError(
      "ERR_CONFIG",
      `MAA ${operation} is not served at the configured instance (${detail})`,
    );
  }
  const refusal = maaError?.refusal;
  return new ShieldError(
    refusal ?? "ERR_EVIDENCE_MALFORMED",
    `MAA refused the evidence (${detail}${refusal === undefined ? "" : `, ${refusal}`})`,
  );
}

function transportFailure(error: unknown, aborted: boolean, timeoutMs: number): ShieldError {
  if (error instanceof ShieldError) return error;
  if (aborted)
    return new ShieldError("ERR_TIMEOUT", `MAA did not answer within ${timeoutMs} ms`, { cause: error });
  return new ShieldError("ERR_NETWORK", "could not reach MAA", { cause: error });
}

function positiveInteger(value: number, name: string): number {
  if (!Number.isSafeInteger(value) || value <= 0) throw new TypeError(`${name} must be a positive integer`);
  return value;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function sha256Hex(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}
