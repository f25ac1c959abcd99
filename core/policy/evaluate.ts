/**
 * Evaluates a Key Vault release policy against the claims of an attestation token, the way Key
 * Vault decides a `release` call, and explains the outcome clause by clause.
 *
 * Semantics (Key Vault's policy grammar page, with the gaps it leaves closed the strict way):
 * - The policy is an anyOf over authorities. An authority counts only when it names the token's
 *   issuer ({@link authorityMatchesIssuer}: trailing "/" ignored, scheme and host case-insensitive);
 *   claims without an `iss` match no authority, so nothing is released to them.
 * - `claim` is a dot path through nested objects; an array anywhere on the path fails the
 *   condition ("array specifications aren't presently supported").
 * - A missing (or null) claim fails every condition, `exists: false` included — the grammar page
 *   says a condition on an absent claim "is considered to haven't been met" and names no
 *   exception. `exists: true` passes for any present, non-null value.
 * - Values compare as strings: booleans as "true"/"false", numbers as their decimal form, on
 *   both the claim and the policy side, so `"equals": "false"` matches a boolean false claim and
 *   `"equals": "0"` a number 0, as in Microsoft's published policies. Objects and arrays never
 *   compare.
 * - `equals` is case-sensitive (Key Vault does not document its rule; MAA writes hex
 *   measurements in lower case). `notEquals` passes only when the values differ even ignoring
 *   case, so it is strict under either rule.
 * - `less`/`lessOrEquals`/`greater`/`greaterOrEquals` compare numerically when both sides are
 *   finite numbers or decimal numeric strings; anything else fails the condition.
 * - An empty anyOf/allOf (possible only in a hand-built model) fails.
 * Every branch is evaluated (no short-circuit) so the explanation is complete.
 */
import type { Violation } from "../errors.js";
import {
  authorityMatchesIssuer,
  type AuthorityRule,
  type ClaimCondition,
  type ClaimOperator,
  type Condition,
  type ReleasePolicy,
} from "./release-policy.js";

export interface ReleaseToken {
  /** The token's `iss`; undefined when the claims carry none (then no authority matches). */
  readonly issuer: string | undefined;
  /** The token's verified claims. */
  readonly claims: Readonly<Record<string, unknown>>;
}

export interface ClaimClauseResult {
  readonly kind: "claim";
  readonly claim: string;
  readonly operator: ClaimOperator;
  /** The policy's value, in the string form it is compared in. */
  readonly expected: string;
  /** The claim's value as compared; undefined when the claim is absent. */
  readonly actual: string | undefined;
  readonly passed: boolean;
  /** Why it passed or failed, in one short sentence. */
  readonly reason: string;
}

export interface GroupClauseResult {
  readonly kind: "anyOf" | "allOf";
  readonly passed: boolean;
  readonly reason: string;
  readonly clauses: readonly ClauseResult[];
}

export type ClauseResult = ClaimClauseResult | GroupClauseResult;

export type AuthorityOutcome = "satisfied" | "conditions-not-met" | "issuer-mismatch";

export interface AuthorityResult {
  readonly authority: string;
  /** Whether this authority names the token's issuer. */
  readonly issuerMatched: boolean;
  /** Whether the authority's conditions hold, regardless of the issuer. */
  readonly conditionsMet: boolean;
  /** `satisfied` only when the issuer matches and the conditions hold. */
  readonly result: AuthorityOutcome;
  /** The authority's own anyOf/allOf with every clause below it. */
  readonly clauses: GroupClauseResult;
}

export interface ReleaseDecision {
  readonly released: boolean;
  /** Index into `authorities` of the entry that released, or of the closest candidate. */
  readonly bestAuthority: number | undefined;
  readonly authorities: readonly AuthorityResult[];
  /**
   * Failing leaf conditions of the best candidate authority (the issuer-matching one with the
   * fewest failures), or the issuer itself when no authority names it. Empty when released.
   */
  readonly violations: readonly Violation[];
  readonly summary: string;
}

// Decimal numbers as written in JSON text, without exponent.
const DECIMAL = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$/;

type Lookup =
  { readonly found: true; readonly value: unknown } | { readonly found: false; readonly reason: string };

/** Walks a dot path through plain objects; own members only, so `__proto__` etc. are absent. */
function lookupClaim(claims: Readonly<Record<string, unknown>>, claim: string): Lookup {
  let current: unknown = claims;
  let start = 0;
  for (;;) {
    const dot = claim.indexOf(".", start);
    const segment = dot === -1 ? claim.slice(start) : claim.slice(start, dot);
    if (Array.isArray(current))
      return { found: false, reason: "claim path goes through an array (not supported)" };
    if (typeof current !== "object" || current === null || !Object.hasOwn(current, segment)) {
      return { found: false, reason: "claim is absent" };
    }
    current = (current as Record<string, unknown>)[segment];
    if (dot === -1) break;
    start = dot + 1;
  }
  if (current === undefined || current === null) return { found: false, reason: "claim is absent" };
  return { found: true, value: current };
}

/** The string form a scalar is compared in; undefined for objects and arrays. */
export function claimValueToString(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value === "number") return Number.isFinite(value) ? String(value) : undefined;
  return undefined;
}

function toNumber(value: unknown): number | undefined {
  if (typeof value === "number") return Number.isFinite(value) ? value : undefined;
  if (typeof value === "string" && DECIMAL.test(value)) {
    const n = Number(value);
    return Number.isFinite(n) ? n : undefined;
  }
  return undefined;
}

function describeActual(value: unknown): string {
  const text = claimValueToString(value);
  if (text !== undefined) return text;
  return Array.isArray(value) ? "(array)" : "(object)";
}

const ORDERING: Partial<Record<ClaimOperator, (a: number, b: number) => boolean>> = {
  less: (a, b) => a < b,
  lessOrEquals: (a, b) => a <= b,
  greater: (a, b) => a > b,
  greaterOrEquals: (a, b) => a >= b,
};

function evaluateClaim(
  condition: ClaimCondition,
  claims: Readonly<Record<string, unknown>>,
): ClaimClauseResult {
  const { claim, operator, value } = condition;
  const expected = claimValueToString(value) ?? String(value);
  const result = (passed: boolean, actual: string | undefined, reason: string): ClaimClauseResult => ({
    kind: "claim",
    claim,
    operator,
    expected,
    actual,
    passed,
    reason,
  });
  const lookup = lookupClaim(claims, claim);
  if (operator === "exists") {
    if (!lookup.found) return result(false, undefined, lookup.reason);
    return value === true
      ? result(true, describeActual(lookup.value), "claim is present")
      : result(false, describeActual(lookup.value), "claim is present but the policy requires it absent");
  }
  if (!lookup.found) return result(false, undefined, lookup.reason);
  const actualText = claimValueToString(lookup.value);
  if (actualText === undefined) {
    return result(false, describeActual(lookup.value), "claim is an object or array and cannot be compared");
  }
  switch (operator) {
    case "equals":
      return actualText === expected
        ? result(true, actualText, "values are equal")
        : result(false, actualText, "values differ");
    case "notEquals":
      return actualText.toLowerCase() !== expected.toLowerCase()
        ? result(true, actualText, "values differ")
        : result(
            false,
            actualText,
            actualText === expected ? "values are equal" : "values are equal ignoring case",
          );
    default: {
      const compare = ORDERING[operator];
      const a = toNumber(lookup.value);
      const b = toNumber(value);
      if (compare === undefined) return result(false, actualText, `unknown operator ${String(operator)}`);
      if (a === undefined) return result(false, actualText, "claim is not a number");
      if (b === undefined) return result(false, actualText, "policy value is not a number");
      return compare(a, b)
        ? result(true, actualText, `${actualText} ${operator} ${expected}`)
        : result(false, actualText, `${actualText} is not ${operator} ${expected}`);
    }
  }
}

function evaluateGroup(
  kind: "anyOf" | "allOf",
  conditions: readonly Condition[],
  claims: Readonly<Record<string, unknown>>,
): GroupClauseResult {
  const clauses = conditions.map((condition) =>
    condition.kind === "claim"
      ? evaluateClaim(condition, claims)
      : evaluateGroup(condition.kind, condition.conditions, claims),
  );
  const passedCount = clauses.reduce((n, clause) => (clause.passed ? n + 1 : n), 0);
  if (clauses.length === 0) return { kind, passed: false, reason: `empty ${kind}`, clauses };
  if (kind === "allOf") {
    const passed = passedCount === clauses.length;
    return {
      kind,
      passed,
      reason: passed
        ? "all conditions hold"
        : `${clauses.length - passedCount} of ${clauses.length} conditions fail`,
      clauses,
    };
  }
  const passed = passedCount > 0;
  return {
    kind,
    passed,
    reason: passed ? `${passedCount} of ${clauses.length} alternatives hold` : "no alternative holds",
    clauses,
  };
}

function evaluateAuthority(rule: AuthorityRule, token: ReleaseToken): AuthorityResult {
  const issuerMatched = token.issuer !== undefined && authorityMatchesIssuer(rule.authority, token.issuer);
  const clauses = evaluateGroup(rule.kind, rule.conditions, token.claims);
  const result: AuthorityOutcome = !issuerMatched
    ? "issuer-mismatch"
    : clauses.passed
      ? "satisfied"
      : "conditions-not-met";
  return { authority: rule.authority, issuerMatched, conditionsMet: clauses.passed, result, clauses };
}

/** The failing leaves below a clause: the reasons it did not hold. */
export function failingClaimClauses(clause: ClauseResult): ClaimClauseResult[] {
  const out: ClaimClauseResult[] = [];
  const walk = (node: ClauseResult): void => {
    if (node.passed) return;
    if (node.kind === "claim") out.push(node);
    else node.clauses.forEach(walk);
  };
  walk(clause);
  return out;
}

function clauseViolation(clause: ClaimClauseResult): Violation {
  return {
    field: clause.claim,
    expected: `${clause.operator} ${clause.expected}`,
    actual: clause.actual ?? "(missing)",
  };
}

function groupViolations(group: GroupClauseResult): Violation[] {
  const leaves = failingClaimClauses(group).map(clauseViolation);
  // A failing group with no failing leaf is an empty group somewhere below.
  return leaves.length > 0 || group.passed
    ? leaves
    : [{ field: group.kind, expected: "conditions", actual: "(empty)" }];
}

function summarizeDecision(
  released: boolean,
  token: ReleaseToken,
  authorities: readonly AuthorityResult[],
  best: number | undefined,
  violations: readonly Violation[],
): string {
  const chosen = best === undefined ? undefined : authorities[best];
  if (released && chosen !== undefined) return `released: authority ${chosen.authority} is satisfied`;
  if (chosen === undefined) {
    const names = authorities.map((a) => a.authority).join(", ");
    return token.issuer === undefined
      ? `not released: the claims have no iss, so no authority matches (${names})`
      : `not released: issuer ${token.issuer} matches no authority (${names})`;
  }
  const details = violations.map((v) => `${v.field} (expected ${v.expected}, actual ${v.actual})`).join("; ");
  return `not released: authority ${chosen.authority}: ${violations.length} condition(s) fail: ${details}`;
}

/**
 * Decides whether Key Vault would release a key under `policy` to a token from `token.issuer`
 * with `token.claims`, and explains why. Pure and allocation-light: safe to run per request.
 */
export function evaluateReleasePolicy(policy: ReleasePolicy, token: ReleaseToken): ReleaseDecision {
  if (
    typeof token !== "object" ||
    token === null ||
    (token.issuer !== undefined && typeof token.issuer !== "string")
  ) {
    throw new TypeError("token.issuer must be a string or undefined");
  }
  if (typeof token.claims !== "object" || token.claims === null || Array.isArray(token.claims)) {
    throw new TypeError("token.claims must be an object");
  }
  const rules: unknown = typeof policy === "object" && policy !== null ? policy.authorities : undefined;
  if (!Array.isArray(rules)) throw new TypeError("policy must be a parsed ReleasePolicy");
  const authorities = policy.authorities.map((rule) => evaluateAuthority(rule, token));
  const releasedAt = authorities.findIndex((a) => a.result === "satisfied");
  if (releasedAt !== -1) {
    return {
      released: true,
      bestAuthority: releasedAt,
      authorities,
      violations: [],
      summary: summarizeDecision(true, token, authorities, releasedAt, []),
    };
  }
  let best: number | undefined;
  let bestViolations: Violation[] = [];
  authorities.forEach((a, index) => {
    if (!a.issuerMatched) return;
    const found = groupViolations(a.clauses);
    if (best === undefined || found.length < bestViolations.length) {
      best = index;
      bestViolations = found;
    }
  });
  const violations: Violation[] =
    best === undefined
      ? [
          {
            field: "iss",
            expected: `one of ${authorities.map((a) => a.authority).join(", ")}`,
            actual: token.issuer ?? "(missing)",
          },
        ]
      : bestViolations;
  return {
    released: false,
    bestAuthority: best,
    authorities,
    violations,
    summary: summarizeDecision(false, token, authorities, best, violations),
  };
}

/** Multi-line, human-readable explanation of a decision (for `policy test` without `--json`). */
export function formatReleaseDecision(decision: ReleaseDecision): string {
  const lines: string[] = [decision.summary];
  const walk = (clause: ClauseResult, depth: number): void => {
    const pad = "  ".repeat(depth);
    const mark = clause.passed ? "ok  " : "FAIL";
    if (clause.kind === "claim") {
      lines.push(
        `${pad}${mark} ${clause.claim} ${clause.operator} ${clause.expected} (actual ${clause.actual ?? "(missing)"}): ${clause.reason}`,
      );
    } else {
      lines.push(`${pad}${mark} ${clause.kind}: ${clause.reason}`);
      for (const child of clause.clauses) walk(child, depth + 1);
    }
  };
  decision.authorities.forEach((a, index) => {
    lines.push(`authority[${index}] ${a.authority}: ${a.result}`);
    walk(a.clauses, 1);
  });
  return lines.join("\n");
}
