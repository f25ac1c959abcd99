/**
 * Calling the Functions app's operator endpoints: the base URL from `--url`, the function key
 * from `--function-key-file` or `SHIELD_FUNCTION_KEY` (never from a flag, so it stays out of
 * shell history and process lists), sent as `x-functions-key`.
 */
import { ShieldError } from "../../core/errors.js";
import { UsageError, optionalString, requireString, type OptionValues } from "../command.js";
import { readText } from "../io.js";

export const FUNCTIONS_OPTIONS = {
  url: { type: "string" },
  "function-key-file": { type: "string" },
} as const;

export const FUNCTIONS_USAGE = [
  "  --url URL              the Functions app (https://<app>.azurewebsites.net)",
  "  --function-key-file F  the function key (or SHIELD_FUNCTION_KEY)",
];

export interface FunctionsAnswer {
  readonly status: number;
  readonly body: Record<string, unknown>;
}

/** One request to `<url>/api/<path>`; ERR_NETWORK when it gets no HTTP answer or no JSON. */
export async function callFunctions(
  values: OptionValues,
  method: "GET" | "POST",
  path: string,
): Promise<FunctionsAnswer> {
  const base = requireString(values, "url").replace(/\/+$/, "");
  if (!/^https?:\/\//.test(base)) throw new UsageError("--url must be an http(s) URL");
  const keyFile = optionalString(values, "function-key-file");
  const functionKey =
    keyFile === undefined
      ? process.env["SHIELD_FUNCTION_KEY"]
      : (await readText(keyFile, "--function-key-file", 4096)).trim();
  const target = `${base}/api/${path}`;
  let response: Response;
  try {
    response = await fetch(target, {
      method,
      headers: { accept: "application/json", ...(functionKey ? { "x-functions-key": functionKey } : {}) },
      signal: AbortSignal.timeout(30_000),
    });
  } catch (cause) {
    throw new ShieldError("ERR_NETWORK", `${method} ${target} failed`, { cause });
  }
  let body: unknown;
  try {
    body = await response.json();
  } catch {
    body = undefined;
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new ShieldError(
      "ERR_NETWORK",
      `${method} ${target}: HTTP ${response.status} without a JSON answer`,
    );
  }
  return { status: response.status, body: body as Record<string, unknown> };
}

/** A refusal the endpoint answered with `{error: {code, message}}`, else a generic one. */
export function refusalOf(answer: FunctionsAnswer): { code: string; message: string } {
  const error = answer.body["error"] as { code?: unknown; message?: unknown } | undefined;
  return {
    code: typeof error?.code === "string" ? error.code : `HTTP_${answer.status}`,
    message: typeof error?.message === "string" ? error.message : `HTTP ${answer.status}`,
  };
}
