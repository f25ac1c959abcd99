/**
 * File and network access for the command-line tool. Reading is bounded: an operator pointing
 * `--report` at the wrong file gets a typed error, not a process that reads gigabytes.
 */
import { readFile, stat } from "node:fs/promises";
import { ShieldError } from "../core/errors.js";

export const DEFAULT_MAX_INPUT_BYTES = 1024 * 1024;

export async function readInput(
  path: string,
  what: string,
  maxBytes = DEFAULT_MAX_INPUT_BYTES,
): Promise<Buffer> {
  let size: number;
  try {
    const info = await stat(path);
    if (!info.isFile()) throw new ShieldError("ERR_IO", `${what}: ${path} is not a regular file`);
    size = info.size;
  } catch (cause) {
    if (cause instanceof ShieldError) throw cause;
    throw new ShieldError("ERR_IO", `${what}: cannot read ${path}`, { cause });
  }
  if (size > maxBytes) {
    throw new ShieldError("ERR_INPUT_TOO_LARGE", `${what}: ${size} bytes exceeds the ${maxBytes}-byte limit`);
  }
  try {
    return await readFile(path);
  } catch (cause) {
    throw new ShieldError("ERR_IO", `${what}: cannot read ${path}`, { cause });
  }
}

export async function readText(
  path: string,
  what: string,
  maxBytes = DEFAULT_MAX_INPUT_BYTES,
): Promise<string> {
  return (await readInput(path, what, maxBytes)).toString("utf8");
}

/** Parses JSON from an untrusted file; a syntax error is ERR_INPUT_MALFORMED, not a stack trace. */
export async function readJson(
  path: string,
  what: string,
  maxBytes = DEFAULT_MAX_INPUT_BYTES,
): Promise<unknown> {
  const text = await readText(path, what, maxBytes);
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new ShieldError("ERR_INPUT_MALFORMED", `${what}: not valid JSON`);
  }
}

/** GET a JSON document with a timeout; network failures are ERR_NETWORK (exit code 3). */
export async function fetchJson(
  url: string,
  timeoutMs = 10_000,
  maxBytes = DEFAULT_MAX_INPUT_BYTES,
): Promise<unknown> {
  let response: Response;
  try {
    response = await fetch(url, {
      signal: AbortSignal.timeout(timeoutMs),
      headers: { accept: "application/json" },
    });
  } catch (cause) {
    throw new ShieldError("ERR_NETWORK", `GET ${url} failed`, { cause });
  }
  if (response.status === 429) throw new ShieldError("ERR_THROTTLED", `GET ${url}: HTTP 429`);
  if (response.status >= 500)
    throw new ShieldError("ERR_UPSTREAM_UNAVAILABLE", `GET ${url}: HTTP ${response.status}`);
  if (!response.ok) throw new ShieldError("ERR_NETWORK", `GET ${url}: HTTP ${response.status}`);
  const body = Buffer.from(await response.arrayBuffer());
  if (body.length > maxBytes) throw new ShieldError("ERR_INPUT_TOO_LARGE", `GET ${url}: response too large`);
  try {
    return JSON.parse(body.toString("utf8")) as unknown;
  } catch {
    throw new ShieldError("ERR_INPUT_MALFORMED", `GET ${url}: response is not JSON`);
  }
}
