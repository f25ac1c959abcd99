/**
 * The one way in for a message: size limit, JSON, version, type, schema — in that order, each
 * failure a `ShieldError`. Violations name the JSON path, the expected shape and only the
 * shape of what was found (type and length), never its content: a rejected message may hold
 * evidence or a token.
 */
import { ShieldError, type Violation } from "../errors.js";
import { MESSAGE_TYPES, V1_SCHEMAS, type Message, type MessageByType, type MessageType } from "./v1.js";
import type { z } from "zod";

export const SUPPORTED_MESSAGE_VERSIONS = [1] as const;
/** Service Bus Standard's message limit; Premium allows more, callers may pass a larger bound. */
export const DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024;
/** Enough to fix a message; a flood of violations helps nobody and costs memory. */
const MAX_REPORTED_VIOLATIONS = 32;

export interface ParseOptions {
  /** Largest accepted body, in bytes of UTF-8 JSON. */
  readonly maxBytes: number;
}

/**
 * Parses a message body from a queue or an HTTP request.
 *
 * 1. size: the body's UTF-8 JSON is at most `maxBytes` (ERR_INPUT_TOO_LARGE);
 * 2. JSON: strings and bytes parse as UTF-8 JSON, objects re-serialize (ERR_MESSAGE_SCHEMA);
 * 3. envelope: a JSON object (ERR_MESSAGE_SCHEMA);
 * 4. version: an integer this code supports (ERR_MESSAGE_VERSION; not an integer: ERR_MESSAGE_SCHEMA);
 * 5. type: a known message type (ERR_MESSAGE_SCHEMA);
 * 6. schema: the type's schema, all violations at once (ERR_MESSAGE_SCHEMA).
 */
export function parseMessage(body: unknown, options: ParseOptions): Message {
  checkOptions(options);
  const json = readJson(body, options.maxBytes);
  const envelope = checkEnvelope(json);
  checkVersion(envelope);
  const type = checkType(envelope);
  return checkSchema(type, envelope);
}

function parseAs<T extends MessageType>(type: T) {
  return (body: unknown, options: ParseOptions): MessageByType[T] => {
    const message = parseMessage(body, options);
    if (message.type !== type) {
      throw new ShieldError("ERR_MESSAGE_SCHEMA", `expected a ${type} message`, {
        // A parsed message's type is one of the known names, so it can be shown as is.
        violations: [{ field: "type", expected: type, actual: message.type }],
      });
    }
    return message as MessageByType[T];
  };
}

export const parseChallengeRequest = parseAs("challenge-request");
export const parseAttestationRequest = parseAs("attestation-request");
export const parseAttestationResult = parseAs("attestation-result");
export const parseChallenge = parseAs("challenge");
export const parseKeyEvent = parseAs("key-event");
export const parsePolicyUpdate = parseAs("policy-update");
export const parseRotateKey = parseAs("rotate-key");

function checkOptions(options: ParseOptions): void {
  if (
    typeof options !== "object" ||
    options === null ||
    !Number.isSafeInteger(options.maxBytes) ||
    options.maxBytes <= 0
  ) {
    throw new TypeError("parseMessage: options.maxBytes must be a positive integer");
  }
}

const UTF8 = new TextDecoder("utf-8", { fatal: true });

/** Steps 1 and 2. Objects are re-serialized so the schema sees plain JSON data, nothing else. */
function readJson(body: unknown, maxBytes: number): unknown {
  let text: string;
  if (typeof body === "string") {
    // UTF-16 length bounds UTF-8 length from below, so an oversize string is refused before it is encoded.
    if (body.length > maxBytes || Buffer.byteLength(body, "utf8") > maxBytes) throw tooLarge(maxBytes);
    text = body;
  } else if (body instanceof Uint8Array) {
    if (body.byteLength > maxBytes) throw tooLarge(maxBytes);
    try {
      text = UTF8.decode(body);
    } catch {
      throw new ShieldError("ERR_MESSAGE_SCHEMA", "message body is not valid UTF-8");
    }
  } else {
    let serialized: string | undefined;
    try {
      serialized = JSON.stringify(body);
    } catch {
      // Cycles, BigInt values, or nesting deeper than the stack.
      throw new ShieldError("ERR_MESSAGE_SCHEMA", "message body is not JSON data");
    }
    if (serialized === undefined) throw new ShieldError("ERR_MESSAGE_SCHEMA", "message body is empty");
    if (Buffer.byteLength(serialized, "utf8") > maxBytes) throw tooLarge(maxBytes);
    text = serialized;
  }
  try {
    return JSON.parse(text) as unknown;
  } catch {
    // The SyntaxError's text quotes the input, so it is neither repeated nor kept as the cause.
    throw new ShieldError("ERR_MESSAGE_SCHEMA", "message body is not valid JSON");
  }
}

function tooLarge(maxBytes: number): ShieldError {
  return new ShieldError("ERR_INPUT_TOO_LARGE", `message body is larger than ${maxBytes} bytes`);
}

function checkEnvelope(json: unknown): Record<string, unknown> {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ShieldError("ERR_MESSAGE_SCHEMA", "message is not a JSON object", {
      violations: [{ field: "(message)", expected: "object", actual: describeShape(json) }],
    });
  }
  return json as Record<string, unknown>;
}

function checkVersion(envelope: Record<string, unknown>): void {
  const version = envelope["version"];
  const supported = SUPPORTED_MESSAGE_VERSIONS.join(", ");
  if (!Number.isSafeInteger(version)) {
    throw new ShieldError(
      "ERR_MESSAGE_SCHEMA",
      `message has no integer version; supported versions: ${supported}`,
      {
        violations: [
          { field: "version", expected: `integer, one of ${supported}`, actual: describeShape(version) },
        ],
      },
    );
  }
  if (!(SUPPORTED_MESSAGE_VERSIONS as readonly unknown[]).includes(version)) {
    throw new ShieldError(
      "ERR_MESSAGE_VERSION",
      `message version ${String(version)} is not supported; supported versions: ${supported}`,
      { violations: [{ field: "version", expected: `one of ${supported}`, actual: String(version) }] },
    );
  }
}

function checkType(envelope: Record<string, unknown>): MessageType {
  const type = envelope["type"];
  if (typeof type !== "string" || !(MESSAGE_TYPES as readonly string[]).includes(type)) {
    throw new ShieldError("ERR_MESSAGE_SCHEMA", "unknown message type", {
      violations: [
        { field: "type", expected: `one of ${MESSAGE_TYPES.join(", ")}`, actual: describeShape(type) },
      ],
    });
  }
  return type as MessageType;
}

function checkSchema<T extends MessageType>(type: T, envelope: Record<string, unknown>): MessageByType[T] {
  const schema = V1_SCHEMAS[type] as z.ZodType<MessageByType[T]>;
  const result = schema.safeParse(envelope);
  if (result.success) return result.data;
  const violations = issuesToViolations(result.error.issues, envelope);
  const shown = violations.slice(0, MAX_REPORTED_VIOLATIONS);
  const more = violations.length - shown.length;
  const count = `${violations.length} violation${violations.length === 1 ? "" : "s"}`;
  throw new ShieldError(
    "ERR_MESSAGE_SCHEMA",
    `${type} message does not match its schema (${count}${more > 0 ? `, first ${shown.length} listed` : ""})`,
    { violations: shown },
  );
}

/**
 * Turns schema issues into violations that carry paths and shapes, never input values. A field
 * failing several checks (too long and wrong characters) is reported once: its checks share one
 * description of the expected shape.
 */
export function issuesToViolations(issues: readonly z.core.$ZodIssue[], input: unknown): Violation[] {
  const out: Violation[] = [];
  const seen = new Set<string>();
  const push = (violation: Violation): void => {
    const key = `${violation.field}\n${violation.expected}`;
    if (seen.has(key)) return;
    seen.add(key);
    out.push(violation);
  };
  for (const issue of issues) {
    const path = issue.path;
    if (issue.code === "unrecognized_keys") {
      for (const key of issue.keys) {
        push({ field: formatPath([...path, safeKey(key)]), expected: "no such property", actual: "present" });
      }
      continue;
    }
    const expected =
      issue.code === "invalid_union" && "options" in issue && Array.isArray(issue.options)
        ? `one of ${issue.options.map(String).join(", ")}`
        : issue.message;
    push({ field: formatPath(path), expected, actual: describeShape(valueAt(input, path)) });
  }
  return out;
}

const SAFE_KEY = /^[A-Za-z][A-Za-z0-9_-]{0,31}$/;

/** Property names come from the sender too; only short plain ones are repeated. */
function safeKey(key: string): string {
  return SAFE_KEY.test(key) ? key : "(unrecognized property)";
}

export function formatPath(path: readonly PropertyKey[]): string {
  if (path.length === 0) return "(message)";
  let out = "";
  for (const segment of path) {
    if (typeof segment === "number") out += `[${segment}]`;
    else out += out === "" ? String(segment) : `.${String(segment)}`;
  }
  return out;
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let current: unknown = input;
  for (const segment of path) {
    if (typeof current !== "object" || current === null) return undefined;
    if (typeof segment === "symbol" || !Object.hasOwn(current, segment)) return undefined;
    current = (current as Record<string | number, unknown>)[segment];
  }
  return current;
}

/** The shape of a value: its type, with lengths; numbers and booleans as they are. */
export function describeShape(value: unknown): string {
  if (value === undefined) return "missing";
  if (value === null) return "null";
  if (typeof value === "string") return `string of length ${value.length}`;
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  if (Array.isArray(value)) return `array of length ${value.length}`;
  return typeof value;
}
