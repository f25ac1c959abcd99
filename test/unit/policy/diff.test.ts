import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { ShieldError } from "../../../core/errors.js";
import {
  assertSafePolicyChange,
  assertSafeReleasePolicy,
  checkSafePolicyChange,
  checkSafeReleasePolicy,
  diffReleasePolicies,
  formatPolicyDiff,
  parseReleasePolicy,
  policyMeasurements,
  renderReleasePolicy,
  type ReleasePolicy,
} from "../../../core/policy/index.js";

const MAA = "https://sharedeus2.eus2.attest.azure.net";
const OTHER = "https://sharedweu.weu.attest.azure.net";
const hex = (seed: string) => createHash("sha256").update(seed).digest("hex");
const V1 = hex("image-v1");
const V2 = hex("image-v2");

const render = (hostData: string[], authority = MAA) =>
  renderReleasePolicy({
    authority,
    measurements: { sevsnpvm: { complianceStatus: "azure-compliant-uvm", hostData } },
  });

/** Builds a one-authority policy from a list of conditions. */
function policyOf(conditions: unknown[], authority = MAA, kind: "allOf" | "anyOf" = "allOf"): ReleasePolicy {
  return parseReleasePolicy({ version: "1.0.0", anyOf: [{ authority, [kind]: conditions }] });
}

const TYPE = { claim: "x-ms-attestation-type", equals: "sevsnpvm" };
const NOT_DEBUG = { claim: "x-ms-sevsnpvm-is-debuggable", equals: "false" };
const hostData = (h: string) => ({ claim: "x-ms-sevsnpvm-hostdata", equals: h });

describe("diffReleasePolicies", () => {
  it("reports a new measurement added during a rollout, and nothing else", () => {
    const diff = diffReleasePolicies(render([V1]), render([V1, V2]));
    expect(diff.unchanged).toBe(false);
    expect(diff.measurementsAdded).toEqual([{ authority: MAA, claim: "x-ms-sevsnpvm-hostdata", value: V2 }]);
    expect(diff.measurementsRemoved).toEqual([]);
    expect(diff.conditionsAdded).toEqual([]);
    expect(diff.conditionsRemoved).toEqual([]);
    expect(diff.authoritiesAdded).toEqual([]);
    expect(diff.restructured).toBe(false);
    expect(formatPolicyDiff(diff)).toBe(`+ measurement x-ms-sevsnpvm-hostdata ${V2} (${MAA})`);
  });

  it("reports the old measurement retired after the grace period", () => {
    const diff = diffReleasePolicies(render([V1, V2]), render([V2]));
    expect(diff.measurementsRemoved).toEqual([
      { authority: MAA, claim: "x-ms-sevsnpvm-hostdata", value: V1 },
    ]);
    expect(diff.measurementsAdded).toEqual([]);
    expect(formatPolicyDiff(diff)).toContain(`- measurement x-ms-sevsnpvm-hostdata ${V1}`);
  });

  it("says unchanged for identical policies", () => {
    const diff = diffReleasePolicies(render([V1, V2]), render([V2, V1]));
    expect(diff.unchanged).toBe(true);
    expect(formatPolicyDiff(diff)).toBe("no changes");
  });

  it("treats one-entry-per-measurement and an anyOf of measurements as the same set", () => {
    const perEntry = parseReleasePolicy({
      version: "1.0.0",
      anyOf: [V1, V2].map((h) => ({ authority: `${MAA}/`, allOf: [TYPE, NOT_DEBUG, hostData(h)] })),
    });
    const nested = policyOf([TYPE, NOT_DEBUG, { anyOf: [hostData(V1), hostData(V2)] }]);
    const diff = diffReleasePolicies(perEntry, nested);
    expect(diff.measurementsAdded).toEqual([]);
    expect(diff.measurementsRemoved).toEqual([]);
    expect(diff.restructured).toBe(true);
    expect(formatPolicyDiff(diff)).toContain("reordered or regrouped");
    const values = (p: ReleasePolicy) => policyMeasurements(p).map((m) => `${m.claim}=${m.value}`);
    expect(values(perEntry)).toEqual(values(nested));
    expect(values(nested)).toEqual([V1, V2].sort().map((h) => `x-ms-sevsnpvm-hostdata=${h}`));
  });

  it("reports added and removed authorities with their measurements, and other conditions", () => {
    const from = render([V1]);
    const to = parseReleasePolicy({
      version: "1.0.0",
      anyOf: [
        {
          authority: OTHER,
          allOf: [TYPE, NOT_DEBUG, { claim: "x-ms-sevsnpvm-vmpl", equals: "0" }, hostData(V2)],
        },
      ],
    });
    const diff = diffReleasePolicies(from, to);
    expect(diff.authoritiesAdded).toEqual([OTHER]);
    expect(diff.authoritiesRemoved).toEqual([MAA]);
    expect(diff.measurementsAdded).toEqual([
      { authority: OTHER, claim: "x-ms-sevsnpvm-hostdata", value: V2 },
    ]);
    expect(diff.measurementsRemoved).toEqual([
      { authority: MAA, claim: "x-ms-sevsnpvm-hostdata", value: V1 },
    ]);
    expect(diff.conditionsAdded).toContainEqual({
      authority: OTHER,
      claim: "x-ms-sevsnpvm-vmpl",
      operator: "equals",
      value: "0",
    });
    expect(diff.conditionsRemoved).toContainEqual({
      authority: MAA,
      claim: "x-ms-compliance-status",
      operator: "equals",
      value: "azure-compliant-uvm",
    });
    const text = formatPolicyDiff(diff);
    expect(text).toContain(`+ authority ${OTHER}`);
    expect(text).toContain(`- authority ${MAA}`);
  });

  it("reports a version change", () => {
    const legacy = parseReleasePolicy({ version: "0.2", anyOf: [{ authority: MAA, allOf: [TYPE] }] });
    const current = parseReleasePolicy({ version: "1.0.0", anyOf: [{ authority: MAA, allOf: [TYPE] }] });
    const diff = diffReleasePolicies(legacy, current);
    expect(diff.version).toEqual({ from: "0.2", to: "1.0.0" });
    expect(formatPolicyDiff(diff)).toBe("~ version 0.2 -> 1.0.0");
  });
});

describe("checkSafePolicyChange (DESIGN rule 6)", () => {
  const base = policyOf([TYPE, NOT_DEBUG, { anyOf: [hostData(V1)] }]);

  it("allows adding and retiring measurements", () => {
    expect(
      checkSafePolicyChange(base, policyOf([TYPE, NOT_DEBUG, { anyOf: [hostData(V1), hostData(V2)] }])),
    ).toEqual([]);
    expect(checkSafePolicyChange(base, policyOf([TYPE, NOT_DEBUG, hostData(V2)]))).toEqual([]);
  });

  it("flags dropping the is-debuggable condition", () => {
    const violations = checkSafePolicyChange(base, policyOf([TYPE, hostData(V1)]));
    expect(violations).toEqual([
      {
        field: `anyOf[0] (${MAA}) is-debuggable`,
        expected: 'equals "false" on every path',
        actual: "not required",
      },
    ]);
  });

  it("flags dropping the attestation-type condition", () => {
    const violations = checkSafePolicyChange(base, policyOf([NOT_DEBUG, hostData(V1)]));
    expect(violations).toEqual([
      {
        field: `anyOf[0] (${MAA}) x-ms-attestation-type`,
        expected: "required, one of sevsnpvm",
        actual: "not required",
      },
    ]);
  });

  it("flags widening the attestation type", () => {
    const violations = checkSafePolicyChange(
      base,
      policyOf([
        { anyOf: [TYPE, { claim: "x-ms-attestation-type", equals: "sgx" }] },
        NOT_DEBUG,
        hostData(V1),
      ]),
    );
    expect(violations).toEqual([
      {
        field: `anyOf[0] (${MAA}) x-ms-attestation-type`,
        expected: "one of sevsnpvm",
        actual: "also allows sgx",
      },
    ]);
  });

  it("flags a guard moved into an anyOf alternative that can be bypassed", () => {
    const bypass = policyOf([TYPE, { anyOf: [NOT_DEBUG, hostData(V1)] }]);
    expect(checkSafePolicyChange(base, bypass).map((v) => v.field)).toEqual([
      `anyOf[0] (${MAA}) is-debuggable`,
    ]);
  });

  it("accepts a guard held on every alternative of an anyOf", () => {
    const everyPath = policyOf([
      TYPE,
      { anyOf: [{ allOf: [NOT_DEBUG, hostData(V1)] }, { allOf: [NOT_DEBUG, hostData(V2)] }] },
    ]);
    expect(checkSafePolicyChange(base, everyPath)).toEqual([]);
  });

  it('flags a debug condition that no longer says "false", or uses another operator', () => {
    const wrongValue = policyOf([
      TYPE,
      { claim: "x-ms-sevsnpvm-is-debuggable", equals: "true" },
      hostData(V1),
    ]);
    const otherOperator = policyOf([
      TYPE,
      { claim: "x-ms-sevsnpvm-is-debuggable", notEquals: "true" },
      hostData(V1),
    ]);
    expect(checkSafePolicyChange(base, wrongValue)).toHaveLength(1);
    expect(checkSafePolicyChange(base, otherOperator)).toHaveLength(1);
  });

  it("flags a new authority entry without the guards, for the same or a new issuer", () => {
    const sameIssuer = parseReleasePolicy({
      version: "1.0.0",
      anyOf: [
        { authority: MAA, allOf: [TYPE, NOT_DEBUG, hostData(V1)] },
        { authority: `${MAA}/`, allOf: [hostData(V2)] },
      ],
    });
    expect(checkSafePolicyChange(base, sameIssuer).map((v) => v.field)).toEqual([
      `anyOf[1] (${MAA}/) is-debuggable`,
      `anyOf[1] (${MAA}/) x-ms-attestation-type`,
    ]);
    const newIssuer = parseReleasePolicy({
      version: "1.0.0",
      anyOf: [
        { authority: MAA, allOf: [TYPE, NOT_DEBUG, hostData(V1)] },
        { authority: OTHER, allOf: [TYPE, hostData(V2)] },
      ],
    });
    expect(checkSafePolicyChange(base, newIssuer).map((v) => v.field)).toEqual([
      `anyOf[1] (${OTHER}) is-debuggable`,
    ]);
  });

  it("does not invent requirements the old policy never had", () => {
    const cvm = policyOf([{ claim: "x-ms-isolation-tee.x-ms-attestation-type", equals: "sevsnpvm" }]);
    expect(checkSafePolicyChange(cvm, cvm)).toEqual([]);
    const unguarded = policyOf([hostData(V1)]);
    expect(checkSafePolicyChange(unguarded, policyOf([hostData(V2)]))).toEqual([]);
  });

  it("assertSafePolicyChange throws ERR_POLICY_UNSAFE_CHANGE with every violation", () => {
    expect(() => assertSafePolicyChange(base, render([V2]))).not.toThrow();
    try {
      assertSafePolicyChange(base, policyOf([hostData(V1)]));
      throw new Error("expected a throw");
    } catch (error) {
      expect(error).toBeInstanceOf(ShieldError);
      expect((error as ShieldError).code).toBe("ERR_POLICY_UNSAFE_CHANGE");
      expect((error as ShieldError).violations).toHaveLength(2);
    }
  });
});

describe("spoofed guard claims (claims the workload writes, or paths MAA never issues)", () => {
  const base = policyOf([TYPE, NOT_DEBUG, hostData(V1)]);
  const spoofedDebug = [
    "x-ms-runtime.x-ms-sevsnpvm-is-debuggable",
    "x-ms-runtime.x-ms-sgx-is-debuggable",
    "x-ms-runtime.is-debuggable",
    "foo.x-ms-sevsnpvm-is-debuggable",
    "x-ms-isolation-tee.x-ms-runtime.x-ms-sevsnpvm-is-debuggable",
    "x-ms-isolation-tee.x-ms-isolation-tee.x-ms-sevsnpvm-is-debuggable",
    "x-ms-isolation-tee.is-debuggable",
    "x-ms-custom-is-debuggable",
    "X-MS-SEVSNPVM-IS-DEBUGGABLE",
  ];
  const spoofedType = [
    "x-ms-runtime.x-ms-attestation-type",
    "foo.x-ms-attestation-type",
    "x-ms-inittime.x-ms-attestation-type",
    "x-ms-isolation-tee.x-ms-runtime.x-ms-attestation-type",
    "x-ms-isolation-tee.x-ms-isolation-tee.x-ms-attestation-type",
  ];

  it.each(spoofedDebug)("does not count %s as the debug condition", (claim) => {
    const spoofed = policyOf([TYPE, { claim, equals: "false" }, hostData(V1)]);
    expect(checkSafePolicyChange(base, spoofed).map((v) => v.field)).toEqual([
      `anyOf[0] (${MAA}) is-debuggable`,
    ]);
    expect(checkSafeReleasePolicy(spoofed).map((v) => v.field)).toEqual([`anyOf[0] (${MAA}) is-debuggable`]);
  });

  it.each(spoofedType)("does not count %s as the attestation-type condition", (claim) => {
    const spoofed = policyOf([{ claim, equals: "sevsnpvm" }, NOT_DEBUG, hostData(V1)]);
    expect(checkSafePolicyChange(base, spoofed).map((v) => v.field)).toEqual([
      `anyOf[0] (${MAA}) x-ms-attestation-type`,
    ]);
    expect(checkSafeReleasePolicy(spoofed).map((v) => v.field)).toEqual([
      `anyOf[0] (${MAA}) x-ms-attestation-type`,
    ]);
  });

  it("gives a spoofed predecessor no say: its guards are not a baseline either", () => {
    const spoofedFrom = policyOf([
      { claim: "x-ms-runtime.x-ms-attestation-type", equals: "sevsnpvm" },
      { claim: "x-ms-runtime.x-ms-sevsnpvm-is-debuggable", equals: "false" },
      hostData(V1),
    ]);
    expect(checkSafeReleasePolicy(spoofedFrom)).toHaveLength(2);
  });

  it("accepts the exact names MAA issues, at the top level and under x-ms-isolation-tee.", () => {
    const forms = [
      [TYPE, NOT_DEBUG],
      [TYPE, { claim: "x-ms-sgx-is-debuggable", equals: "false" }],
      [TYPE, { claim: "is-debuggable", equals: false }],
      [
        { claim: "x-ms-isolation-tee.x-ms-attestation-type", equals: "sevsnpvm" },
        { claim: "x-ms-isolation-tee.x-ms-sevsnpvm-is-debuggable", equals: "false" },
      ],
      [
        { claim: "x-ms-isolation-tee.x-ms-attestation-type", equals: "sgx" },
        { claim: "x-ms-isolation-tee.x-ms-sgx-is-debuggable", equals: "false" },
      ],
      [
        { claim: "x-ms-attestation-type", equals: "azurevm" },
        { claim: "x-ms-isolation-tee.x-ms-sevsnpvm-is-debuggable", equals: false },
      ],
    ];
    for (const guards of forms) {
      expect(checkSafeReleasePolicy(policyOf([...guards, hostData(V1)]))).toEqual([]);
    }
    // As a change, the same sevsnpvm guards under x-ms-isolation-tee. keep what the old policy had.
    expect(checkSafePolicyChange(base, policyOf([...forms[3]!, hostData(V1)]))).toEqual([]);
  });
});

describe("checkSafeReleasePolicy (a policy without a predecessor)", () => {
  it("accepts every rendered policy", () => {
    expect(checkSafeReleasePolicy(render([V1, V2]))).toEqual([]);
    const sgx = renderReleasePolicy({ authority: MAA, measurements: { sgx: { mrEnclave: [V1] } } });
    expect(checkSafeReleasePolicy(sgx)).toEqual([]);
  });

  it("names the missing condition and the authority entry", () => {
    const policy = parseReleasePolicy({
      version: "1.0.0",
      anyOf: [
        { authority: MAA, allOf: [TYPE, NOT_DEBUG, hostData(V1)] },
        { authority: OTHER, allOf: [TYPE, hostData(V2)] },
        { authority: `${MAA}/`, allOf: [NOT_DEBUG, hostData(V2)] },
      ],
    });
    expect(checkSafeReleasePolicy(policy)).toEqual([
      {
        field: `anyOf[1] (${OTHER}) is-debuggable`,
        expected: 'x-ms-sevsnpvm-is-debuggable or x-ms-sgx-is-debuggable equals "false" on every path',
        actual: "not required",
      },
      {
        field: `anyOf[2] (${MAA}/) x-ms-attestation-type`,
        expected: "x-ms-attestation-type equals a type on every path",
        actual: "not required",
      },
    ]);
  });

  it("requires the guards on every path, with the value false and the equals operator", () => {
    expect(checkSafeReleasePolicy(policyOf([TYPE, { anyOf: [NOT_DEBUG, hostData(V1)] }]))).toHaveLength(1);
    expect(
      checkSafeReleasePolicy(policyOf([TYPE, { claim: "x-ms-sevsnpvm-is-debuggable", equals: "true" }])),
    ).toHaveLength(1);
    expect(
      checkSafeReleasePolicy(policyOf([TYPE, { claim: "x-ms-sevsnpvm-is-debuggable", notEquals: "true" }])),
    ).toHaveLength(1);
    expect(
      checkSafeReleasePolicy(policyOf([TYPE, NOT_DEBUG, hostData(V1)], MAA, "anyOf")).map((v) => v.field),
    ).toEqual([`anyOf[0] (${MAA}) is-debuggable`, `anyOf[0] (${MAA}) x-ms-attestation-type`]);
  });

  it("assertSafeReleasePolicy throws ERR_POLICY_UNSAFE with every violation", () => {
    expect(() => assertSafeReleasePolicy(render([V1]))).not.toThrow();
    try {
      assertSafeReleasePolicy(policyOf([hostData(V1)]));
      throw new Error("expected a throw");
    } catch (error) {
      expect(error).toBeInstanceOf(ShieldError);
      expect((error as ShieldError).code).toBe("ERR_POLICY_UNSAFE");
      expect((error as ShieldError).transient).toBe(false);
      expect((error as ShieldError).violations.map((v) => v.field)).toEqual([
        `anyOf[0] (${MAA}) is-debuggable`,
        `anyOf[0] (${MAA}) x-ms-attestation-type`,
      ]);
    }
  });
});
