/**
 * What changes between two release policies, measurement by measurement, and whether the change
 * is one the project may apply (DESIGN §6 rule 6: a change may add or retire measurements but
 * never drop the `is-debuggable = false` or the attestation-type condition), and whether a policy
 * written without a predecessor carries both conditions at all.
 *
 * Authority entries are grouped by issuer (compared as {@link normalizeIssuer} does), so a
 * policy with one entry per measurement and one with an anyOf of measurements under a single
 * entry diff as the same set. A measurement is an `equals` condition on a measurement claim
 * (`x-ms-sevsnpvm-hostdata`, `x-ms-sevsnpvm-launchmeasurement`, `x-ms-sgx-mrenclave`,
 * `x-ms-sgx-mrsigner`, also under `x-ms-isolation-tee.`); every other claim condition is a
 * "condition". Changes that only move conditions around are reported as `restructured`.
 */
import { ShieldError, type Violation } from "../errors.js";
import { claimValueToString } from "./evaluate.js";
import {
  normalizeIssuer,
  serializeReleasePolicy,
  type AuthorityRule,
  type ClaimCondition,
  type ClaimOperator,
  type ClaimValue,
  type Condition,
  type ReleasePolicy,
} from "./release-policy.js";

export const MEASUREMENT_CLAIMS: ReadonlySet<string> = new Set([
  "x-ms-sevsnpvm-hostdata",
  "x-ms-sevsnpvm-launchmeasurement",
  "x-ms-sgx-mrenclave",
  "x-ms-sgx-mrsigner",
]);

const ISOLATION_TEE_PREFIX = "x-ms-isolation-tee.";

export interface MeasurementRef {
  readonly authority: string;
  readonly claim: string;
  readonly value: string;
}

export interface ConditionRef {
  readonly authority: string;
  readonly claim: string;
  readonly operator: ClaimOperator;
  readonly value: ClaimValue;
}

export interface PolicyDiff {
  readonly version: { readonly from: string; readonly to: string } | undefined;
  readonly authoritiesAdded: readonly string[];
  readonly authoritiesRemoved: readonly string[];
  readonly measurementsAdded: readonly MeasurementRef[];
  readonly measurementsRemoved: readonly MeasurementRef[];
  readonly conditionsAdded: readonly ConditionRef[];
  readonly conditionsRemoved: readonly ConditionRef[];
  /** The policies differ, but only in order or nesting, not in the sets above. */
  readonly restructured: boolean;
  /** The two policies serialize to the same bytes. */
  readonly unchanged: boolean;
}

function baseClaimName(claim: string): string {
  return claim.startsWith(ISOLATION_TEE_PREFIX) ? claim.slice(ISOLATION_TEE_PREFIX.length) : claim;
}

export function isMeasurementCondition(condition: ClaimCondition): boolean {
  return condition.operator === "equals" && MEASUREMENT_CLAIMS.has(baseClaimName(condition.claim));
}

function claimConditions(conditions: readonly Condition[], out: ClaimCondition[] = []): ClaimCondition[] {
  for (const condition of conditions) {
    if (condition.kind === "claim") out.push(condition);
    else claimConditions(condition.conditions, out);
  }
  return out;
}

interface AuthorityGroup {
  /** The authority as first written in the policy. */
  readonly authority: string;
  readonly measurements: Map<string, MeasurementRef>;
  readonly conditions: Map<string, ConditionRef>;
}

function groupByAuthority(policy: ReleasePolicy): Map<string, AuthorityGroup> {
  const groups = new Map<string, AuthorityGroup>();
  for (const rule of policy.authorities) {
    const key = normalizeIssuer(rule.authority);
    let group = groups.get(key);
    if (group === undefined) {
      group = { authority: rule.authority, measurements: new Map(), conditions: new Map() };
      groups.set(key, group);
    }
    for (const c of claimConditions(rule.conditions)) {
      if (isMeasurementCondition(c)) {
        const value = claimValueToString(c.value) ?? String(c.value);
        group.measurements.set(`${c.claim}\u0000${value}`, {
          authority: group.authority,
          claim: c.claim,
          value,
        });
      } else {
        group.conditions.set(`${c.claim}\u0000${c.operator}\u0000${JSON.stringify(c.value)}`, {
          authority: group.authority,
          claim: c.claim,
          operator: c.operator,
          value: c.value,
        });
      }
    }
  }
  return groups;
}

/** Every allowed measurement in a policy, grouped by issuer, sorted. */
export function policyMeasurements(policy: ReleasePolicy): MeasurementRef[] {
  const out: MeasurementRef[] = [];
  for (const group of groupByAuthority(policy).values()) out.push(...group.measurements.values());
  return out.sort(compareRefs);
}

function compareRefs(
  a: { authority: string; claim: string },
  b: { authority: string; claim: string },
): number {
  const byAuthority = normalizeIssuer(a.authority).localeCompare(normalizeIssuer(b.authority));
  if (byAuthority !== 0) return byAuthority;
  const byClaim = a.claim.localeCompare(b.claim);
  if (byClaim !== 0) return byClaim;
  return JSON.stringify(a).localeCompare(JSON.stringify(b));
}

function missingFrom<T>(source: Map<string, T> | undefined, other: Map<string, T> | undefined): T[] {
  if (source === undefined) return [];
  return [...source.entries()].filter(([key]) => other === undefined || !other.has(key)).map(([, v]) => v);
}

/** Diffs two parsed release policies. */
export function diffReleasePolicies(from: ReleasePolicy, to: ReleasePolicy): PolicyDiff {
  const a = groupByAuthority(from);
  const b = groupByAuthority(to);
  const keys = [...new Set([...a.keys(), ...b.keys()])].sort();
  const measurementsAdded: MeasurementRef[] = [];
  const measurementsRemoved: MeasurementRef[] = [];
  const conditionsAdded: ConditionRef[] = [];
  const conditionsRemoved: ConditionRef[] = [];
  for (const key of keys) {
    const before = a.get(key);
    const after = b.get(key);
    measurementsAdded.push(...missingFrom(after?.measurements, before?.measurements));
    measurementsRemoved.push(...missingFrom(before?.measurements, after?.measurements));
    conditionsAdded.push(...missingFrom(after?.conditions, before?.conditions));
    conditionsRemoved.push(...missingFrom(before?.conditions, after?.conditions));
  }
  const authoritiesAdded = keys.filter((k) => !a.has(k)).map((k) => b.get(k)?.authority ?? k);
  const authoritiesRemoved = keys.filter((k) => !b.has(k)).map((k) => a.get(k)?.authority ?? k);
  const unchanged = serializeReleasePolicy(from) === serializeReleasePolicy(to);
  const version = from.version === to.version ? undefined : { from: from.version, to: to.version };
  const setsChanged =
    authoritiesAdded.length +
      authoritiesRemoved.length +
      measurementsAdded.length +
      measurementsRemoved.length +
      conditionsAdded.length +
      conditionsRemoved.length >
    0;
  return {
    version,
    authoritiesAdded,
    authoritiesRemoved,
    measurementsAdded: measurementsAdded.sort(compareRefs),
    measurementsRemoved: measurementsRemoved.sort(compareRefs),
    conditionsAdded: conditionsAdded.sort(compareRefs),
    conditionsRemoved: conditionsRemoved.sort(compareRefs),
    restructured: !unchanged && !setsChanged && version === undefined,
    unchanged,
  };
}

/** The diff as lines for people: `+`/`-` per authority, measurement and condition. */
export function formatPolicyDiff(diff: PolicyDiff): string {
  if (diff.unchanged) return "no changes";
  const lines: string[] = [];
  if (diff.version !== undefined) lines.push(`~ version ${diff.version.from} -> ${diff.version.to}`);
  for (const a of diff.authoritiesAdded) lines.push(`+ authority ${a}`);
  for (const a of diff.authoritiesRemoved) lines.push(`- authority ${a}`);
  for (const m of diff.measurementsAdded) lines.push(`+ measurement ${m.claim} ${m.value} (${m.authority})`);
  for (const m of diff.measurementsRemoved)
    lines.push(`- measurement ${m.claim} ${m.value} (${m.authority})`);
  for (const c of diff.conditionsAdded) {
    lines.push(`+ condition ${c.claim} ${c.operator} ${JSON.stringify(c.value)} (${c.authority})`);
  }
  for (const c of diff.conditionsRemoved) {
    lines.push(`- condition ${c.claim} ${c.operator} ${JSON.stringify(c.value)} (${c.authority})`);
  }
  if (diff.restructured) lines.push("~ conditions reordered or regrouped; none added or removed");
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------------
// Safe-change guard (DESIGN §6 rule 6)

/** What an authority entry guarantees on every path to release. */
interface Guards {
  /** Some debug claim MAA issues must equal "false" (see {@link isDebuggableClaim}). */
  readonly notDebuggable: boolean;
  /** The attestation types the entry can release to; undefined when it does not constrain it. */
  readonly attestationTypes: ReadonlySet<string> | undefined;
}

/** The debug claims MAA issues, at the top level or under `x-ms-isolation-tee.` (CVM tokens). */
const DEBUG_CLAIMS: ReadonlySet<string> = new Set(["x-ms-sevsnpvm-is-debuggable", "x-ms-sgx-is-debuggable"]);
/** MAA's deprecated SGX alias, issued at the top level only (azure-wire-formats §1.6). */
const DEPRECATED_SGX_DEBUG_CLAIM = "is-debuggable";
const ATTESTATION_TYPE_CLAIM = "x-ms-attestation-type";

/**
 * Claim names are matched exactly: a policy path such as `x-ms-runtime.x-ms-sevsnpvm-is-debuggable`
 * reads runtime data the workload wrote itself, so it guarantees nothing about the hardware.
 */
function isDebuggableClaim(claim: string): boolean {
  if (claim === DEPRECATED_SGX_DEBUG_CLAIM || DEBUG_CLAIMS.has(claim)) return true;
  return claim.startsWith(ISOLATION_TEE_PREFIX) && DEBUG_CLAIMS.has(claim.slice(ISOLATION_TEE_PREFIX.length));
}

function isAttestationTypeClaim(claim: string): boolean {
  return claim === ATTESTATION_TYPE_CLAIM || claim === ISOLATION_TEE_PREFIX + ATTESTATION_TYPE_CLAIM;
}

function intersect(a: ReadonlySet<string> | undefined, b: ReadonlySet<string> | undefined) {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return new Set([...a].filter((v) => b.has(v)));
}

/**
 * allOf guarantees what any child guarantees; anyOf guarantees only what every alternative
 * guarantees (attestation types: the union of the alternatives' sets).
 */
function guardsOf(kind: "anyOf" | "allOf", conditions: readonly Condition[]): Guards {
  const children = conditions.map((c): Guards => {
    if (c.kind !== "claim") return guardsOf(c.kind, c.conditions);
    const text = claimValueToString(c.value);
    return {
      notDebuggable: c.operator === "equals" && isDebuggableClaim(c.claim) && text === "false",
      attestationTypes:
        c.operator === "equals" && isAttestationTypeClaim(c.claim) && text !== undefined
          ? new Set([text])
          : undefined,
    };
  });
  if (kind === "allOf") {
    return {
      notDebuggable: children.some((g) => g.notDebuggable),
      attestationTypes: children.reduce<ReadonlySet<string> | undefined>(
        (acc, g) => intersect(acc, g.attestationTypes),
        undefined,
      ),
    };
  }
  const constrained = children.every((g) => g.attestationTypes !== undefined);
  return {
    notDebuggable: children.length > 0 && children.every((g) => g.notDebuggable),
    attestationTypes:
      constrained && children.length > 0
        ? new Set(children.flatMap((g) => [...(g.attestationTypes ?? [])]))
        : undefined,
  };
}

function ruleGuards(rule: AuthorityRule): Guards {
  return guardsOf(rule.kind, rule.conditions);
}

interface Baseline {
  readonly notDebuggable: boolean;
  readonly attestationTypes: ReadonlySet<string> | undefined;
}

function baselines(policy: ReleasePolicy): { byIssuer: Map<string, Baseline>; policyWide: Baseline } {
  const grouped = new Map<string, Guards[]>();
  for (const rule of policy.authorities) {
    const key = normalizeIssuer(rule.authority);
    grouped.set(key, [...(grouped.get(key) ?? []), ruleGuards(rule)]);
  }
  const byIssuer = new Map<string, Baseline>();
  for (const [key, guards] of grouped) {
    const typed = guards.every((g) => g.attestationTypes !== undefined);
    byIssuer.set(key, {
      notDebuggable: guards.every((g) => g.notDebuggable),
      attestationTypes: typed ? new Set(guards.flatMap((g) => [...(g.attestationTypes ?? [])])) : undefined,
    });
  }
  const values = [...byIssuer.values()];
  const typedValues = values.filter((v) => v.attestationTypes !== undefined);
  return {
    byIssuer,
    policyWide: {
      notDebuggable: values.some((v) => v.notDebuggable),
      attestationTypes:
        typedValues.length > 0
          ? new Set(typedValues.flatMap((v) => [...(v.attestationTypes ?? [])]))
          : undefined,
    },
  };
}

/**
 * The reasons a change from `from` to `to` is unsafe (empty when it is safe). For every authority
 * entry of `to`: if `from` guaranteed `is-debuggable = false` for that issuer (for a new issuer:
 * anywhere), the entry must guarantee it too; and if `from` constrained the attestation type for
 * that issuer (for a new issuer: anywhere), the entry must constrain it to a subset of the types
 * `from` allowed. "Guarantee" means on every path through the entry's anyOf/allOf.
 */
export function checkSafePolicyChange(from: ReleasePolicy, to: ReleasePolicy): Violation[] {
  const { byIssuer, policyWide } = baselines(from);
  const violations: Violation[] = [];
  to.authorities.forEach((rule, index) => {
    const baseline = byIssuer.get(normalizeIssuer(rule.authority)) ?? policyWide;
    const guards = ruleGuards(rule);
    const where = `anyOf[${index}] (${rule.authority})`;
    if (baseline.notDebuggable && !guards.notDebuggable) {
      violations.push({
        field: `${where} is-debuggable`,
        expected: 'equals "false" on every path',
        actual: "not required",
      });
    }
    const allowed = baseline.attestationTypes;
    if (allowed !== undefined) {
      const sorted = [...allowed].sort().join(", ");
      if (guards.attestationTypes === undefined) {
        violations.push({
          field: `${where} x-ms-attestation-type`,
          expected: `required, one of ${sorted}`,
          actual: "not required",
        });
      } else {
        const extra = [...guards.attestationTypes].filter((t) => !allowed.has(t)).sort();
        if (extra.length > 0) {
          violations.push({
            field: `${where} x-ms-attestation-type`,
            expected: `one of ${sorted}`,
            actual: `also allows ${extra.join(", ")}`,
          });
        }
      }
    }
  });
  return violations;
}

/**
 * The reasons a release policy written without a predecessor (a new key or version) is unsafe
 * (empty when it is safe): every authority entry must guarantee, on every path through its
 * anyOf/allOf, that a debug claim MAA issues equals "false" and that the attestation type is
 * constrained.
 */
export function checkSafeReleasePolicy(policy: ReleasePolicy): Violation[] {
  const violations: Violation[] = [];
  policy.authorities.forEach((rule, index) => {
    const guards = ruleGuards(rule);
    const where = `anyOf[${index}] (${rule.authority})`;
    if (!guards.notDebuggable) {
      violations.push({
        field: `${where} is-debuggable`,
        expected: `${[...DEBUG_CLAIMS].join(" or ")} equals "false" on every path`,
        actual: "not required",
      });
    }
    if (guards.attestationTypes === undefined) {
      violations.push({
        field: `${where} x-ms-attestation-type`,
        expected: `${ATTESTATION_TYPE_CLAIM} equals a type on every path`,
        actual: "not required",
      });
    }
  });
  return violations;
}

/** Throws `ERR_POLICY_UNSAFE` listing every violation when the policy is unsafe. */
export function assertSafeReleasePolicy(policy: ReleasePolicy): void {
  const violations = checkSafeReleasePolicy(policy);
  if (violations.length > 0) {
    throw new ShieldError(
      "ERR_POLICY_UNSAFE",
      `release policy lacks a required condition (${violations.length} violation(s))`,
      { violations },
    );
  }
}

/** Throws `ERR_POLICY_UNSAFE_CHANGE` listing every violation when the change is unsafe. */
export function assertSafePolicyChange(from: ReleasePolicy, to: ReleasePolicy): void {
  const violations = checkSafePolicyChange(from, to);
  if (violations.length > 0) {
    throw new ShieldError(
      "ERR_POLICY_UNSAFE_CHANGE",
      `release policy change drops a required condition (${violations.length} violation(s))`,
      { violations },
    );
  }
}

/**
 * True when two policies release to exactly the same tokens by construction: the same
 * authorities (issuers compared normalised) with the same conditions, compared in the string
 * form Key Vault compares claims in, in any order. Key Vault returns policies normalised
 * (reordered, booleans and numbers as strings), so a policy read back is compared with this,
 * never byte for byte.
 */
export function samePolicyMeaning(a: ReleasePolicy, b: ReleasePolicy): boolean {
  return canonicalPolicy(a) === canonicalPolicy(b);
}

function canonicalPolicy(policy: ReleasePolicy): string {
  const rules = policy.authorities
    .map((rule) =>
      JSON.stringify([normalizeIssuer(rule.authority), canonicalGroup(rule.kind, rule.conditions)]),
    )
    .sort();
  return JSON.stringify([...new Set(rules)]);
}

function canonicalGroup(kind: "anyOf" | "allOf", conditions: readonly Condition[]): string {
  const parts = conditions.map((c) =>
    c.kind === "claim"
      ? JSON.stringify([c.claim, c.operator, claimValueToString(c.value) ?? String(c.value)])
      : canonicalGroup(c.kind, c.conditions),
  );
  // One condition is the same under anyOf and allOf.
  const label = parts.length === 1 ? "one" : kind;
  return JSON.stringify([label, [...new Set(parts)].sort()]);
}
