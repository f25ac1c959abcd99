/**
 * Edits a Key Vault release policy measurement by measurement — the only change a rollout makes
 * (DESIGN §6 rule 6) — and compares policies by meaning.
 *
 * A measurement names one claim per value: SEV-SNP `hostData` → `x-ms-sevsnpvm-hostdata`, SGX
 * `mrenclave` → `x-ms-sgx-mrenclave` and `mrsigner` → `x-ms-sgx-mrsigner`. The edit touches only
 * the authority entries whose allOf pins the TEE's attestation type, and in each only the
 * conditions on that claim: an `equals` on it, or an anyOf of such equals. Those become one anyOf
 * of the resulting values, sorted, where the first of them stood; every other condition (the
 * attestation type, `is-debuggable`, compliance status, VMPL, SVNs) is kept exactly as it was.
 * An edit is refused, with the version's policy untouched, when it would leave an entry that
 * allows nothing, when an entry does not pin the claim at all (it would allow any measurement,
 * and narrowing it is a decision for people, not a pipeline), or when no entry of the TEE exists.
 *
 * Comparison by meaning: Key Vault returns policies normalised (minified, members reordered,
 * booleans as strings — azure-wire-formats §9), so a read-back is compared after putting both
 * sides in one canonical form: issuers as `normalizeIssuer` has them, values as the strings Key
 * Vault compares, and anyOf/allOf lists as sets.
 */
import { ShieldError, type Violation } from "../errors.js";
import type { Measurement } from "../messages/index.js";
import {
  claimValueToString,
  normalizeIssuer,
  RELEASE_CLAIMS,
  type AuthorityRule,
  type ClaimCondition,
  type Condition,
  type ReleasePolicy,
} from "../policy/index.js";

export interface MeasurementClaim {
  /** The value of `x-ms-attestation-type` for the TEE. */
  readonly attestationType: "sevsnpvm" | "sgx";
  readonly claim: string;
  readonly value: string;
}

/** The claims a measurement pins, one per value it carries. */
export function measurementClaims(measurement: Measurement): MeasurementClaim[] {
  if (measurement.tee === "sevsnp") {
    return [
      { attestationType: "sevsnpvm", claim: RELEASE_CLAIMS.sevSnpHostData, value: measurement.hostData },
    ];
  }
  const out: MeasurementClaim[] = [];
  if (measurement.mrenclave !== undefined)
    out.push({ attestationType: "sgx", claim: RELEASE_CLAIMS.sgxMrEnclave, value: measurement.mrenclave });
  if (measurement.mrsigner !== undefined)
    out.push({ attestationType: "sgx", claim: RELEASE_CLAIMS.sgxMrSigner, value: measurement.mrsigner });
  return out;
}

export interface MeasurementEdit {
  readonly add: readonly Measurement[];
  readonly remove: readonly Measurement[];
}

function isTypeCondition(condition: Condition, attestationType: string): boolean {
  return (
    condition.kind === "claim" &&
    condition.claim === RELEASE_CLAIMS.attestationType &&
    condition.operator === "equals" &&
    claimValueToString(condition.value) === attestationType
  );
}

/** An equals on `claim`, or an anyOf of nothing but equals on `claim`: the values it allows. */
function pinnedValues(condition: Condition, claim: string): string[] | undefined {
  const equalsOn = (c: Condition): c is ClaimCondition =>
    c.kind === "claim" && c.claim === claim && c.operator === "equals";
  if (equalsOn(condition)) return [claimValueToString(condition.value) ?? String(condition.value)];
  if (condition.kind === "anyOf" && condition.conditions.every(equalsOn)) {
    return condition.conditions.map(
      (c) => claimValueToString(c.kind === "claim" ? c.value : undefined) ?? "",
    );
  }
  return undefined;
}

function editRule(
  rule: AuthorityRule,
  claim: string,
  add: ReadonlySet<string>,
  remove: ReadonlySet<string>,
  where: string,
  problems: Violation[],
): AuthorityRule {
  const values = new Set<string>();
  let firstIndex = -1;
  const kept: (Condition | undefined)[] = rule.conditions.map((condition, index) => {
    const pinned = pinnedValues(condition, claim);
    if (pinned === undefined) return condition;
    if (firstIndex === -1) firstIndex = index;
    pinned.forEach((v) => values.add(v.toLowerCase()));
    return undefined;
  });
  if (firstIndex === -1) {
    problems.push({
      field: `${where} ${claim}`,
      expected: "pinned to a list of measurements",
      actual: "any value",
    });
    return rule;
  }
  for (const v of add) values.add(v);
  for (const v of remove) values.delete(v);
  if (values.size === 0) {
    problems.push({ field: `${where} ${claim}`, expected: "at least one measurement", actual: "none left" });
    return rule;
  }
  const pinned: Condition = {
    kind: "anyOf",
    conditions: [...values].sort().map((value) => ({ kind: "claim", claim, operator: "equals", value })),
  };
  kept[firstIndex] = pinned;
  return { ...rule, conditions: kept.filter((c): c is Condition => c !== undefined) };
}

/**
 * The policy with `add` allowed and `remove` no longer allowed. Throws `ERR_POLICY_UNSAFE_CHANGE`
 * naming every entry it cannot edit safely (see the module comment); never edits partly.
 */
export function editMeasurements(policy: ReleasePolicy, edit: MeasurementEdit): ReleasePolicy {
  const byClaim = new Map<string, { type: string; add: Set<string>; remove: Set<string> }>();
  const entry = (c: MeasurementClaim) => {
    let found = byClaim.get(c.claim);
    if (found === undefined)
      byClaim.set(c.claim, (found = { type: c.attestationType, add: new Set(), remove: new Set() }));
    return found;
  };
  edit.add.flatMap(measurementClaims).forEach((c) => entry(c).add.add(c.value.toLowerCase()));
  edit.remove.flatMap(measurementClaims).forEach((c) => entry(c).remove.add(c.value.toLowerCase()));
  const problems: Violation[] = [];
  let authorities = policy.authorities;
  for (const [claim, change] of byClaim) {
    let matched = false;
    authorities = authorities.map((rule, index) => {
      if (rule.kind !== "allOf" || !rule.conditions.some((c) => isTypeCondition(c, change.type))) return rule;
      matched = true;
      return editRule(
        rule,
        claim,
        change.add,
        change.remove,
        `anyOf[${index}] (${rule.authority})`,
        problems,
      );
    });
    if (!matched && change.add.size > 0) {
      problems.push({
        field: claim,
        expected: `an authority entry whose allOf requires x-ms-attestation-type ${change.type}`,
        actual: "none",
      });
    }
  }
  if (problems.length > 0) {
    throw new ShieldError(
      "ERR_POLICY_UNSAFE_CHANGE",
      `release policy cannot be edited safely: ${problems[0]!.field}`,
      {
        violations: problems,
      },
    );
  }
  return { version: policy.version, authorities };
}

function canonicalCondition(condition: Condition): string {
  if (condition.kind === "claim") {
    const value = claimValueToString(condition.value) ?? JSON.stringify(condition.value);
    return JSON.stringify([condition.claim, condition.operator, value]);
  }
  return `${condition.kind}(${condition.conditions.map(canonicalCondition).sort().join(",")})`;
}

/** One string per meaning: equal for policies Key Vault evaluates alike after normalising. */
export function canonicalPolicyForm(policy: ReleasePolicy): string {
  const rules = policy.authorities
    .map(
      (rule) =>
        `${normalizeIssuer(rule.authority)}|${canonicalCondition({ kind: rule.kind, conditions: rule.conditions })}`,
    )
    .sort();
  return `${policy.version === "0.2" ? "1.0.0" : policy.version}:${rules.join(";")}`;
}

export function samePolicyMeaning(a: ReleasePolicy, b: ReleasePolicy): boolean {
  return canonicalPolicyForm(a) === canonicalPolicyForm(b);
}
