/**
 * HTTP for the local evidence services (Microsoft's attestation sidecar on localhost, Azure's
 * THIM endpoint on the link-local metadata address): one request with a deadline, a bounded
 * response body, no redirects, and failures as typed errors. Responses are untrusted input:
 * callers parse them from `unknown` with a schema.
 */
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
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
 * ERR_EVIDENCE_MALFORMED for an oversized body. Built on `node:http` rather than `fetch`: the
 * agent runs with `--jitless` to stay small, and Node's fetch needs WebAssembly.
 */
export function httpCall(call: HttpCall): Promise<HttpAnswer> {
  const headers: Record<string, string> = { accept: "application/json", ...call.headers };
  const body = call.json === undefined ? undefined : Buffer.from(JSON.stringify(call.json), "utf8");
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    headers["content-length"] = String(body.length);
  }
  let url: URL;
  try {
    url = new URL(call.url);
  } catch (cause) {
    return Promise.reject(
      new ShieldError("ERR_NETWORK", `${call.service} unreachable at an invalid URL`, { cause }),
    );
  }
  const send = url.protocol === "https:" ? httpsRequest : httpRequest;
  return new Promise<HttpAnswer>((resolve, reject) => {
    let settled = false;
    const finish = (error: ShieldError | undefined, answer?: HttpAnswer) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (error !== undefined) {
        request.destroy();
        reject(error);
      } else resolve(answer!);
    };
    const timer = setTimeout(
      () =>
        finish(new ShieldError("ERR_TIMEOUT", `${call.service} did not answer within ${call.timeoutMs} ms`)),
      call.timeoutMs,
    );
    timer.unref();
    const request = send(url, { method: call.method, headers }, (response) => {
      const declared = Number(response.headers["content-length"] ?? "NaN");
      if (Number.isFinite(declared) && declared > call.maxBytes) {
        response.destroy();
        finish(tooLarge(call));
        return;
      }
      const chunks: Buffer[] = [];
      let total = 0;
      response.on("data", (chunk: Buffer) => {
        total += chunk.length;
        if (total > call.maxBytes) {
          response.destroy();
          finish(tooLarge(call));
          return;
        }
        chunks.push(chunk);
      });
      response.on("end", () =>
        finish(undefined, { status: response.statusCode ?? 0, body: Buffer.concat(chunks, total) }),
      );
      response.on("error", (error) => finish(networkError(error, call)));
    });
    request.on("error", (error) => finish(networkError(error, call)));
    request.end(body);
  });
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

function tooLarge(call: HttpCall): ShieldError {
  return new ShieldError("ERR_EVIDENCE_MALFORMED", `${call.service} response exceeds ${call.maxBytes} bytes`);
}

function networkError(error: unknown, call: HttpCall): ShieldError {
  const errno = errnoOf(error) ?? "";
  return new ShieldError(
    "ERR_NETWORK",
    `${call.service} unreachable at ${origin(call.url)}${errno ? ` (${errno})` : ""}`,
    { cause: error },
  );
}

function origin(url: string): string {
  try {
    return new URL(url).origin;
  } catch {
    return "an invalid URL";
  }
}
