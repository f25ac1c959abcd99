/**
 * HTTP for the local evidence services (Microsoft's attestation sidecar on localhost, Azure's
 * THIM endpoint on the link-local metadata address): one request with a deadline, a bounded
 * response body, no redirects, and failures as typed errors. Responses are untrusted input:
 * callers parse them from `unknown` with a schema.
 */
import { ShieldError } from "../../core/errors.js";
import { errnoOf } from "./device-files.js";

export interface HttpCall {
  readonly url: string;
  readonly method: "GET" | "POST";
  readonly headers?: Readonly<Record<string, string>>;
  /** Sent as JSON. */
  readonly json?: unknown;
  readonly timeoutMs: number;
  /** Larger bodies are refused (ERR_EVIDENCE_MALFORMED). */
  readonly maxBytes: number;
  /** The service's name for messages, e.g. "attestation sidecar". */
  readonly service: string;
}

export interface HttpAnswer {
  readonly status: number;
  readonly body: Buffer;
}

/**
 * Makes one call and returns any status with its body. Throws ERR_TIMEOUT when the deadline
 * passes (connecting, waiting or reading), ERR_NETWORK when the service cannot be reached, and
 * ERR_EVIDENCE_MALFORMED for an oversized body.
 */
export async function httpCall(call: HttpCall): Promise<HttpAnswer> {
  const signal = AbortSignal.timeout(call.timeoutMs);
  const headers: Record<string, string> = { accept: "application/json", ...call.headers };
  if (call.json !== undefined) headers["content-type"] = "application/json";
  try {
    const response = await fetch(call.url, {
      method: call.method,
      headers,
      ...(call.json === undefined ? {} : { body: JSON.stringify(call.json) }),
      redirect: "manual",
      signal,
    });
    const body = await readBounded(response, call);
    return { status: response.status, body };
  } catch (error) {
    throw transportError(error, call, signal);
  }
}

/** The typed error for a non-2xx status. */
export function statusError(service: string, status: number, what: string): ShieldError {
  const message = `${service} answered HTTP ${status} to ${what}`;
  if (status >= 500) return new ShieldError("ERR_UPSTREAM_UNAVAILABLE", message);
  if (status === 429) return new ShieldError("ERR_THROTTLED", message);
  if (status === 408) return new ShieldError("ERR_TIMEOUT", message);
  return new ShieldError("ERR_EVIDENCE_UNSUPPORTED", message);
}

/** Parses a JSON body from `unknown`; ERR_EVIDENCE_MALFORMED when it is not JSON. */
export function jsonBody(answer: HttpAnswer, service: string): unknown {
  try {
    return JSON.parse(answer.body.toString("utf8")) as unknown;
  } catch (cause) {
    throw new ShieldError("ERR_EVIDENCE_MALFORMED", `${service} answered with a body that is not JSON`, {
      cause,
    });
  }
}

async function readBounded(response: Response, call: HttpCall): Promise<Buffer> {
  const declared = Number(response.headers.get("content-length") ?? "NaN");
  if (Number.isFinite(declared) && declared > call.maxBytes) {
    await response.body?.cancel();
    throw tooLarge(call);
  }
  if (response.body === null) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  let total = 0;
  // Leaving the loop early cancels the stream, so an oversized body is not read to its end.
  for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
    total += chunk.byteLength;
    if (total > call.maxBytes) throw tooLarge(call);
    chunks.push(Buffer.from(chunk));
  }
  return Buffer.concat(chunks, total);
}

function tooLarge(call: HttpCall): ShieldError {
  return new ShieldError("ERR_EVIDENCE_MALFORMED", `${call.service} response exceeds ${call.maxBytes} bytes`);
}

function transportError(error: unknown, call: HttpCall, signal: AbortSignal): ShieldError {
  if (error instanceof ShieldError) return error;
  if (signal.aborted) {
    return new ShieldError("ERR_TIMEOUT", `${call.service} did not answer within ${call.timeoutMs} ms`, {
      cause: error,
    });
  }
  // undici reports connection failures as TypeError("fetch failed") with the system error as cause.
  const cause = error instanceof Error ? error.cause : undefined;
  const errno = errnoOf(cause) ?? "";
  return new ShieldError(
    "ERR_NETWORK",
    `${call.service} unreachable at ${origin(call.url)}${errno ? ` (${errno})` : ""}`,
    {
      cause: error,
    },
  );
}

function origin(url: string): string {
  try {
    return new URL(url).origin;
  } catch {
    return "an invalid URL";
  }
}
