/**
 * Key Vault / Managed HSM secure key release policy: the model, its parser and its wire encoding.
 *
 * The grammar is Microsoft's "secure key release policy grammar" (learn.microsoft.com
 * /azure/key-vault/keys/policy-grammar): `{version: "1.0.0", anyOf: [authority, ...]}`, where an
 * authority is `{authority: <issuer>, anyOf | allOf: [condition, ...]}` and a condition is either a
 * claim condition `{claim: <dot path>, <operator>: <string | number | boolean>}` or a nested
 * `{anyOf | allOf: [condition, ...]}`. The parser accepts the policy as an object, as JSON text or
 * bytes, or inside Key Vault's wire wrapper `{contentType, data: BASE64URL(JSON)}`, and rejects
 * anything outside the grammar with `ERR_POLICY_MALFORMED` / `ERR_POLICY_VERSION`, naming the JSON
 * path of every problem. Parsing is strict on purpose: a policy this module cannot read exactly is
 * a policy nothing here may act on.
 */
import { z } from "zod";
import { ShieldError, type Violation } from "../errors.js";

/** The grammar version Key Vault documents, and the one this project writes. */
export const RELEASE_POLICY_VERSION = "1.0.0";
/**
 * Older version string with the same grammar. Microsoft's confidential-sidecar-containers
 * `importkey` tool once wrote it and its encfs README shows Managed HSM accepting such a policy;
 * it is read as an equivalent of 1.0.0 and never written.
 */
export const LEGACY_RELEASE_POLICY_VERSION = "0.2";
export type ReleasePolicyVersion = typeof RELEASE_POLICY_VERSION | typeof LEGACY_RELEASE_POLICY_VERSION;

/** The content type Key Vault uses for the `release_policy` wrapper. */
export const RELEASE_POLICY_CONTENT_TYPE = "application/json; charset=utf-8";

/** Largest policy accepted, as UTF-8 JSON (Microsoft's 25-region CVM policy is about 11 KiB). */
export const MAX_RELEASE_POLICY_BYTES = 64 * 1024;
/** Deepest nesting of anyOf/allOf accepted below an authority. */
export const MAX_CONDITION_DEPTH = 16;

export const CLAIM_OPERATORS = [
  "equals",
  "notEquals",
  "less",
  "lessOrEquals",
  "greater",
  "greaterOrEquals",
  "exists",
] as const;
export type ClaimOperator = (typeof CLAIM_OPERATORS)[number];
export type ClaimValue = string | number | boolean;

/** `{claim, <operator>: value}`; `claim` is a dot path into the token's claims. */
export interface ClaimCondition {
  readonly kind: "claim";
  readonly claim: string;
  readonly operator: ClaimOperator;
  readonly value: ClaimValue;
}

/** `{anyOf: [...]}` or `{allOf: [...]}`. */
export interface GroupCondition {
  readonly kind: "anyOf" | "allOf";
  readonly conditions: readonly Condition[];
}

export type Condition = ClaimCondition | GroupCondition;

/** One entry of the policy's top-level anyOf: an issuer and the conditions on its tokens. */
export interface AuthorityRule {
  readonly authority: string;
  /** Whether the authority's own condition list is an anyOf or an allOf. */
  readonly kind: "anyOf" | "allOf";
  readonly conditions: readonly Condition[];
}

export interface ReleasePolicy {
  readonly version: ReleasePolicyVersion;
  /** The policy's top-level anyOf: a key is released if any one of these is satisfied. */
  readonly authorities: readonly AuthorityRule[];
}

/** JSON shapes on the wire, as Key Vault stores them. */
export type ClaimConditionJson = { claim: string } & Partial<Record<ClaimOperator, ClaimValue>>;
export type GroupConditionJson = { anyOf: ConditionJson[] } | { allOf: ConditionJson[] };
export type ConditionJson = ClaimConditionJson | GroupConditionJson;
export type AuthorityRuleJson = { authority: string } & (
  { anyOf: ConditionJson[] } | { allOf: ConditionJson[] }
);
export interface ReleasePolicyJson {
  version: string;
  anyOf: AuthorityRuleJson[];
}

/** Key Vault's `release_policy` wrapper (REST `KeyReleasePolicy`). */
export interface KeyReleasePolicyWire {
  contentType: string;
  data: string;
  immutable?: boolean;
}

// ---------------------------------------------------------------------------------------------
// Parsing

const MAX_REPORTED_PROBLEMS = 20;
const BASE64URL = /^[A-Za-z0-9_-]*={0,2}$/;
const JSON_CONTENT_TYPE = /^application\/json\s*(;.*)?$/i;
const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/;

const claimValueSchema = z.union([z.string(), z.number(), z.boolean()], {
  error: "a string, number or boolean",
});
const existsValueSchema = z.union([z.boolean(), z.enum(["true", "false"])], {
  error: 'true, false, "true" or "false"',
});
const conditionArraySchema = z.array(z.unknown()).min(1, "must hold at least one condition");
const claimConditionSchema = z.strictObject({
  claim: z.string().min(1, "must be a non-empty claim name"),
  equals: claimValueSchema.optional(),
  notEquals: claimValueSchema.optional(),
  less: claimValueSchema.optional(),
  lessOrEquals: claimValueSchema.optional(),
  greater: claimValueSchema.optional(),
  greaterOrEquals: claimValueSchema.optional(),
  exists: existsValueSchema.optional(),
});
const anyOfSchema = z.strictObject({ anyOf: conditionArraySchema });
const allOfSchema = z.strictObject({ allOf: conditionArraySchema });
const authorityAnyOfSchema = z.strictObject({
  authority: z.string().min(1, "must be a non-empty issuer"),
  anyOf: conditionArraySchema,
});
const authorityAllOfSchema = z.strictObject({
  authority: z.string().min(1, "must be a non-empty issuer"),
  allOf: conditionArraySchema,
});
const policySchema = z.strictObject({
  version: z.string(),
  anyOf: z.array(z.unknown()).min(1, "must hold at least one authority"),
});
const wrapperSchema = z.strictObject({
  contentType: z.string().regex(JSON_CONTENT_TYPE, "must be application/json").optional(),
  data: z.string().min(1).regex(BASE64URL, "must be base64url"),
  immutable: z.boolean().optional(),
});

type PathSegment = string | number;

/** `$.anyOf[0].allOf[2].claim` */
export function jsonPath(path: readonly PathSegment[]): string {
  let out = "$";
  for (const segment of path) {
    if (typeof segment === "number") out += `[${segment}]`;
    else if (IDENTIFIER.test(segment)) out += `.${segment}`;
    else out += `[${JSON.stringify(segment)}]`;
  }
  return out;
}

/** zod's issues for `root` as violations (JSON path, what was expected, what was there). */
export function zodViolations(error: z.ZodError, root: unknown, limit = MAX_REPORTED_PROBLEMS): Violation[] {
  const problems = new ProblemList(limit);
  problems.addZod([], root, error);
  return problems.items;
}

class ProblemList {
  constructor(private readonly limit = MAX_REPORTED_PROBLEMS) {}
  readonly items: Violation[] = [];
  add(path: readonly PathSegment[], expected: string, actual: string): void {
    if (this.items.length < this.limit) this.items.push({ field: jsonPath(path), expected, actual });
  }
  /** Records zod's issues for `node`, found at `base`, with the offending value's kind. */
  addZod(base: readonly PathSegment[], node: unknown, error: z.ZodError): void {
    for (const issue of error.issues) {
      const relative = issue.path.filter((p): p is PathSegment => typeof p !== "symbol");
      const path = [...base, ...relative];
      if (issue.code === "unrecognized_keys") {
        for (const key of issue.keys) this.add([...path, key], "no such member", "present");
      } else {
        this.add(path, issue.message, summarize(valueAt(node, relative)));
      }
    }
  }
}

function typeName(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

/** A short, safe rendering of an offending value for a problem report. */
function summarize(value: unknown): string {
  if (value === undefined) return "missing";
  if (typeof value === "string")
    return value.length <= 80 ? JSON.stringify(value) : `string of ${value.length} chars`;
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  if (Array.isArray(value)) return `array of ${value.length}`;
  return typeName(value);
}

function valueAt(node: unknown, path: readonly PathSegment[]): unknown {
  let current = node;
  for (const segment of path) {
    if (typeof current !== "object" || current === null) return undefined;
    current = (current as Record<PathSegment, unknown>)[segment];
  }
  return current;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function malformed(message: string, violations: readonly Violation[] = []): ShieldError {
  return new ShieldError("ERR_POLICY_MALFORMED", message, { violations });
}

function decodeJsonText(text: string, what: string): unknown {
  if (Buffer.byteLength(text, "utf8") > MAX_RELEASE_POLICY_BYTES) {
    throw new ShieldError("ERR_INPUT_TOO_LARGE", `${what} exceeds ${MAX_RELEASE_POLICY_BYTES} bytes`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (cause) {
    throw new ShieldError("ERR_POLICY_MALFORMED", `${what} is not valid JSON`, { cause });
  }
}

function decodeJsonBytes(bytes: Uint8Array, what: string): unknown {
  if (bytes.length > MAX_RELEASE_POLICY_BYTES) {
    throw new ShieldError("ERR_INPUT_TOO_LARGE", `${what} exceeds ${MAX_RELEASE_POLICY_BYTES} bytes`);
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (cause) {
    throw new ShieldError("ERR_POLICY_MALFORMED", `${what} is not UTF-8`, { cause });
  }
  return decodeJsonText(text, what);
}

/** JSON text and bytes become the parsed value; the `{contentType, data}` wrapper is opened once. */
function toPolicyDocument(input: unknown): unknown {
  const decoded =
    typeof input === "string"
      ? decodeJsonText(input, "release policy")
      : input instanceof Uint8Array
        ? decodeJsonBytes(input, "release policy")
        : input;
  if (isPlainObject(decoded) && Object.hasOwn(decoded, "data") && !Object.hasOwn(decoded, "anyOf")) {
    return openWrapper(decoded);
  }
  if (decoded === input && isPlainObject(input)) checkObjectSize(input);
  return decoded;
}

function openWrapper(wrapper: Record<string, unknown>): unknown {
  const data = wrapper["data"];
  if (typeof data === "string" && data.length > Math.ceil((MAX_RELEASE_POLICY_BYTES * 4) / 3) + 4) {
    throw new ShieldError("ERR_INPUT_TOO_LARGE", `release policy exceeds ${MAX_RELEASE_POLICY_BYTES} bytes`);
  }
  const parsed = wrapperSchema.safeParse(wrapper);
  if (!parsed.success) {
    const problems = new ProblemList();
    problems.addZod([], wrapper, parsed.error);
    throw malformed("release policy wrapper is malformed", problems.items);
  }
  return decodeJsonBytes(Buffer.from(parsed.data.data, "base64url"), "release policy data");
}

/** An already-parsed object has no byte length; measure its JSON form. */
function checkObjectSize(input: Record<string, unknown>): void {
  let size: number;
  try {
    size = Buffer.byteLength(JSON.stringify(input), "utf8");
  } catch (cause) {
    throw new ShieldError("ERR_POLICY_MALFORMED", "release policy is not serializable as JSON", { cause });
  }
  if (size > MAX_RELEASE_POLICY_BYTES) {
    throw new ShieldError("ERR_INPUT_TOO_LARGE", `release policy exceeds ${MAX_RELEASE_POLICY_BYTES} bytes`);
  }
}

function parseVersion(document: Record<string, unknown>): ReleasePolicyVersion {
  const version = document["version"];
  if (version === RELEASE_POLICY_VERSION || version === LEGACY_RELEASE_POLICY_VERSION) return version;
  const actual =
    version === undefined ? "missing" : typeof version === "string" ? version : typeName(version);
  throw new ShieldError("ERR_POLICY_VERSION", `unsupported release policy version: ${actual}`, {
    violations: [{ field: "$.version", expected: `"${RELEASE_POLICY_VERSION}" (or legacy "0.2")`, actual }],
  });
}

function parseCondition(
  node: unknown,
  path: readonly PathSegment[],
  depth: number,
  problems: ProblemList,
): Condition | undefined {
  if (!isPlainObject(node)) {
    problems.add(path, "a condition object", typeName(node));
    return undefined;
  }
  if (Object.hasOwn(node, "claim")) return parseClaimCondition(node, path, problems);
  const hasAnyOf = Object.hasOwn(node, "anyOf");
  const hasAllOf = Object.hasOwn(node, "allOf");
  if (hasAnyOf && hasAllOf) {
    problems.add(path, "exactly one of anyOf, allOf", "both");
    return undefined;
  }
  if (!hasAnyOf && !hasAllOf) {
    problems.add(
      path,
      "a claim condition or an anyOf/allOf group",
      `members ${Object.keys(node).join(", ") || "(none)"}`,
    );
    return undefined;
  }
  const kind = hasAnyOf ? "anyOf" : "allOf";
  if (depth >= MAX_CONDITION_DEPTH) {
    problems.add(path, `nesting at most ${MAX_CONDITION_DEPTH} deep`, "deeper");
    return undefined;
  }
  const parsed = (kind === "anyOf" ? anyOfSchema : allOfSchema).safeParse(node);
  if (!parsed.success) {
    problems.addZod(path, node, parsed.error);
    return undefined;
  }
  const children = kind === "anyOf" ? (node["anyOf"] as unknown[]) : (node["allOf"] as unknown[]);
  const conditions = parseConditionList(children, [...path, kind], depth + 1, problems);
  return conditions === undefined ? undefined : { kind, conditions };
}

function parseConditionList(
  nodes: readonly unknown[],
  path: readonly PathSegment[],
  depth: number,
  problems: ProblemList,
): Condition[] | undefined {
  const out: Condition[] = [];
  let ok = true;
  nodes.forEach((child, index) => {
    const condition = parseCondition(child, [...path, index], depth, problems);
    if (condition === undefined) ok = false;
    else out.push(condition);
  });
  return ok ? out : undefined;
}

function parseClaimCondition(
  node: Record<string, unknown>,
  path: readonly PathSegment[],
  problems: ProblemList,
): ClaimCondition | undefined {
  const operators = CLAIM_OPERATORS.filter((op) => Object.hasOwn(node, op));
  const parsed = claimConditionSchema.safeParse(node);
  if (!parsed.success) {
    problems.addZod(path, node, parsed.error);
    return undefined;
  }
  const [operator, ...extra] = operators;
  if (operator === undefined || extra.length > 0) {
    problems.add(
      path,
      `exactly one operator of ${CLAIM_OPERATORS.join(", ")}`,
      operator === undefined ? "none" : operators.join(", "),
    );
    return undefined;
  }
  const claim = parsed.data.claim;
  if (claim.split(".").some((segment) => segment.length === 0)) {
    problems.add([...path, "claim"], "a dot path without empty segments", claim);
    return undefined;
  }
  let value = parsed.data[operator] as ClaimValue;
  // Azure Policy, which the grammar is modelled on, writes exists as "true"/"false".
  if (operator === "exists" && typeof value === "string") value = value === "true";
  return { kind: "claim", claim, operator, value };
}

function parseAuthority(
  node: unknown,
  path: readonly PathSegment[],
  problems: ProblemList,
): AuthorityRule | undefined {
  if (!isPlainObject(node)) {
    problems.add(path, "an authority object", typeName(node));
    return undefined;
  }
  const hasAnyOf = Object.hasOwn(node, "anyOf");
  const hasAllOf = Object.hasOwn(node, "allOf");
  if (hasAnyOf === hasAllOf) {
    problems.add(path, "exactly one of anyOf, allOf", hasAnyOf ? "both" : "neither");
    return undefined;
  }
  const kind = hasAnyOf ? "anyOf" : "allOf";
  const parsed = (kind === "anyOf" ? authorityAnyOfSchema : authorityAllOfSchema).safeParse(node);
  if (!parsed.success) {
    problems.addZod(path, node, parsed.error);
    return undefined;
  }
  const children = kind === "anyOf" ? (node["anyOf"] as unknown[]) : (node["allOf"] as unknown[]);
  const conditions = parseConditionList(children, [...path, kind], 1, problems);
  return conditions === undefined ? undefined : { authority: parsed.data.authority, kind, conditions };
}

/**
 * Parses a release policy from untrusted input: a JSON value, JSON text (string or UTF-8 bytes),
 * or Key Vault's wrapper `{contentType?, data: BASE64URL(JSON), immutable?}`.
 *
 * Checks, in order: 1. size (`ERR_INPUT_TOO_LARGE` over {@link MAX_RELEASE_POLICY_BYTES});
 * 2. wrapper shape and encoding; 3. JSON syntax; 4. `version` is "1.0.0" or legacy "0.2"
 * (`ERR_POLICY_VERSION`); 5. the grammar: no unknown members, exactly one of anyOf/allOf per
 * authority and group, exactly one operator per claim condition, non-empty lists, scalar values,
 * nesting depth (`ERR_POLICY_MALFORMED`, every problem listed with its JSON path).
 */
export function parseReleasePolicy(input: unknown): ReleasePolicy {
  const document = toPolicyDocument(input);
  if (!isPlainObject(document)) {
    throw malformed("release policy must be a JSON object", [
      { field: "$", expected: "object", actual: typeName(document) },
    ]);
  }
  if (!Object.hasOwn(document, "version") && !Object.hasOwn(document, "anyOf")) {
    throw malformed("not a release policy: neither version nor anyOf", [
      {
        field: "$",
        expected: "{version, anyOf}",
        actual: `members ${Object.keys(document).slice(0, 10).join(", ")}`,
      },
    ]);
  }
  const version = parseVersion(document);
  const problems = new ProblemList();
  const top = policySchema.safeParse(document);
  if (!top.success) {
    problems.addZod([], document, top.error);
    throw malformed(`release policy is malformed at ${problems.items[0]?.field ?? "$"}`, problems.items);
  }
  const authorities: AuthorityRule[] = [];
  top.data.anyOf.forEach((node, index) => {
    const rule = parseAuthority(node, ["anyOf", index], problems);
    if (rule !== undefined) authorities.push(rule);
  });
  if (problems.items.length > 0) {
    throw malformed(`release policy is malformed at ${problems.items[0]?.field ?? "$"}`, problems.items);
  }
  return { version, authorities };
}

// ---------------------------------------------------------------------------------------------
// Serialization

function conditionToJson(condition: Condition): ConditionJson {
  if (condition.kind === "claim") {
    return { claim: condition.claim, [condition.operator]: condition.value };
  }
  const conditions = condition.conditions.map(conditionToJson);
  return condition.kind === "anyOf" ? { anyOf: conditions } : { allOf: conditions };
}

/** The policy in Key Vault's JSON shape (members in a fixed order, so output is stable). */
export function releasePolicyToJson(policy: ReleasePolicy): ReleasePolicyJson {
  return {
    version: policy.version,
    anyOf: policy.authorities.map((rule): AuthorityRuleJson => {
      const conditions = rule.conditions.map(conditionToJson);
      return rule.kind === "anyOf"
        ? { authority: rule.authority, anyOf: conditions }
        : { authority: rule.authority, allOf: conditions };
    }),
  };
}

/** Compact JSON text of the policy, the bytes Key Vault stores. */
export function serializeReleasePolicy(policy: ReleasePolicy): string {
  return JSON.stringify(releasePolicyToJson(policy));
}

/** Key Vault's wire wrapper for create/import/update (`data` = BASE64URL of the JSON). */
export function encodeReleasePolicy(
  policy: ReleasePolicy,
  options: { immutable?: boolean } = {},
): KeyReleasePolicyWire {
  const wire: KeyReleasePolicyWire = {
    contentType: RELEASE_POLICY_CONTENT_TYPE,
    data: Buffer.from(serializeReleasePolicy(policy), "utf8").toString("base64url"),
  };
  if (options.immutable !== undefined) wire.immutable = options.immutable;
  return wire;
}

// ---------------------------------------------------------------------------------------------
// Authority matching

/**
 * The form in which an authority and a token's `iss` are compared. Trailing slashes are dropped
 * (Microsoft's published CVM policy writes the same MAA issuers with and without one) and the
 * scheme and host are lower-cased (they are case-insensitive in URLs); the path keeps its case.
 * A value without `scheme://` is compared as written, minus trailing slashes. No other
 * normalization: no percent-decoding, no dot-segment removal, no default-port removal.
 */
export function normalizeIssuer(issuer: string): string {
  let end = issuer.length;
  while (end > 0 && issuer.charCodeAt(end - 1) === 0x2f) end--;
  const trimmed = issuer.slice(0, end);
  const schemeEnd = trimmed.indexOf("://");
  if (schemeEnd <= 0) return trimmed;
  const pathStart = trimmed.indexOf("/", schemeEnd + 3);
  return pathStart === -1
    ? trimmed.toLowerCase()
    : trimmed.slice(0, pathStart).toLowerCase() + trimmed.slice(pathStart);
}

/** Whether a policy authority names the issuer of a token (see {@link normalizeIssuer}). */
export function authorityMatchesIssuer(authority: string, issuer: string): boolean {
  const a = normalizeIssuer(authority);
  return a.length > 0 && a === normalizeIssuer(issuer);
}
