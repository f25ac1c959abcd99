import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  evaluateReleasePolicy,
  formatReleaseDecision,
  parseReleasePolicy,
  type ClaimClauseResult,
  type ClaimOperator,
  type ClaimValue,
  type ReleasePolicy,
} from "../../../core/policy/index.js";

const MAA = "https://sharedeus2.eus2.attest.azure.net";
const hex = (seed: string) => createHash("sha256").update(seed).digest("hex");
const HOSTDATA = hex("cce-policy-1");

/** Shape of Microsoft's kata-cc demo release policy. */
const kataPolicy = parseReleasePolicy({
  version: "1.0.0",
  anyOf: [
    {
      authority: MAA,
      allOf: [
        { claim: "x-ms-attestation-type", equals: "sevsnpvm" },
        { claim: "x-ms-sevsnpvm-hostdata", equals: HOSTDATA },
        { claim: "x-ms-compliance-status", equals: "azure-signed-katacc-uvm" },
        { claim: "x-ms-sevsnpvm-is-debuggable", equals: "false" },
      ],
    },
  ],
});

/** Shape of the ACI policy the SKR sidecar's importkey tool builds (string "false" / "0"). */
const aciPolicy = parseReleasePolicy({
  version: "1.0.0",
  anyOf: [
    {
      authority: MAA,
      allOf: [
        { claim: "x-ms-sevsnpvm-hostdata", equals: HOSTDATA },
        { claim: "x-ms-compliance-status", equals: "azure-compliant-uvm" },
        { claim: "x-ms-sevsnpvm-is-debuggable", equals: "false" },
        { claim: "x-ms-sevsnpvm-vmpl", equals: "0" },
      ],
    },
  ],
});

/** Shape of Microsoft's CVM data-disk policy: regions with and without "/", nested anyOf, dot paths. */
const cvmPolicy = parseReleasePolicy({
  version: "1.0.0",
  anyOf: ["https://sharedeus.eus.attest.azure.net/", "https://sharedweu.weu.attest.azure.net"].map(
    (authority) => ({
      authority,
      allOf: [
        {
          anyOf: [
            { claim: "x-ms-isolation-tee.x-ms-attestation-type", equals: "sevsnpvm" },
            { claim: "x-ms-isolation-tee.x-ms-attestation-type", equals: "tdxvm" },
          ],
        },
        { claim: "x-ms-isolation-tee.x-ms-compliance-status", equals: "azure-compliant-cvm" },
      ],
    }),
  ),
});

function containerClaims(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    iss: MAA,
    "x-ms-attestation-type": "sevsnpvm",
    "x-ms-compliance-status": "azure-signed-katacc-uvm",
    "x-ms-sevsnpvm-hostdata": HOSTDATA,
    "x-ms-sevsnpvm-is-debuggable": false,
    "x-ms-sevsnpvm-vmpl": 0,
    "x-ms-sevsnpvm-guestsvn": 2,
    ...overrides,
  };
}

function single(claim: string, operator: ClaimOperator, value: ClaimValue): ReleasePolicy {
  return parseReleasePolicy({
    version: "1.0.0",
    anyOf: [{ authority: MAA, allOf: [{ claim, [operator]: value }] }],
  });
}

function leaf(policy: ReleasePolicy, claims: Record<string, unknown>): ClaimClauseResult {
  const clause = evaluateReleasePolicy(policy, { issuer: MAA, claims }).authorities[0]?.clauses.clauses[0];
  if (clause?.kind !== "claim") throw new Error("expected a claim clause");
  return clause;
}

describe("evaluateReleasePolicy: Microsoft's policy shapes", () => {
  it("releases the kata-cc policy to a matching token and explains every clause", () => {
    const decision = evaluateReleasePolicy(kataPolicy, { issuer: MAA, claims: containerClaims() });
    expect(decision.released).toBe(true);
    expect(decision.violations).toEqual([]);
    expect(decision.bestAuthority).toBe(0);
    const result = decision.authorities[0];
    expect(result?.result).toBe("satisfied");
    expect(result?.clauses.clauses).toHaveLength(4);
    expect(result?.clauses.clauses[3]).toMatchObject({
      claim: "x-ms-sevsnpvm-is-debuggable",
      operator: "equals",
      expected: "false",
      actual: "false",
      passed: true,
    });
    expect(decision.summary).toContain("released");
  });

  it("refuses the kata-cc policy for another hostData, debug, or the ACI compliance status", () => {
    const other = evaluateReleasePolicy(kataPolicy, {
      issuer: MAA,
      claims: containerClaims({ "x-ms-sevsnpvm-hostdata": hex("other") }),
    });
    expect(other.released).toBe(false);
    expect(other.violations).toEqual([
      { field: "x-ms-sevsnpvm-hostdata", expected: `equals ${HOSTDATA}`, actual: hex("other") },
    ]);
    const debug = evaluateReleasePolicy(kataPolicy, {
      issuer: MAA,
      claims: containerClaims({ "x-ms-sevsnpvm-is-debuggable": true }),
    });
    expect(debug.violations).toEqual([
      { field: "x-ms-sevsnpvm-is-debuggable", expected: "equals false", actual: "true" },
    ]);
    const aci = evaluateReleasePolicy(kataPolicy, {
      issuer: MAA,
      claims: containerClaims({ "x-ms-compliance-status": "azure-compliant-uvm" }),
    });
    expect(aci.released).toBe(false);
    expect(aci.summary).toContain("x-ms-compliance-status");
  });

  it('releases the ACI policy whose "false"/"0" strings meet boolean and number claims', () => {
    const claims = containerClaims({ "x-ms-compliance-status": "azure-compliant-uvm" });
    expect(evaluateReleasePolicy(aciPolicy, { issuer: MAA, claims }).released).toBe(true);
    const vmpl2 = evaluateReleasePolicy(aciPolicy, {
      issuer: MAA,
      claims: { ...claims, "x-ms-sevsnpvm-vmpl": 2 },
    });
    expect(vmpl2.violations).toEqual([{ field: "x-ms-sevsnpvm-vmpl", expected: "equals 0", actual: "2" }]);
  });

  it("releases the CVM policy through dot paths and the nested anyOf, for both TEE types", () => {
    for (const tee of ["sevsnpvm", "tdxvm"]) {
      const claims = {
        "x-ms-isolation-tee": {
          "x-ms-attestation-type": tee,
          "x-ms-compliance-status": "azure-compliant-cvm",
        },
      };
      expect(
        evaluateReleasePolicy(cvmPolicy, { issuer: "https://sharedweu.weu.attest.azure.net", claims })
          .released,
      ).toBe(true);
    }
  });

  it("refuses the CVM policy for sgx, listing both failed alternatives of the nested anyOf", () => {
    const claims = {
      "x-ms-isolation-tee": {
        "x-ms-attestation-type": "sgx",
        "x-ms-compliance-status": "azure-compliant-cvm",
      },
    };
    const decision = evaluateReleasePolicy(cvmPolicy, {
      issuer: "https://sharedweu.weu.attest.azure.net",
      claims,
    });
    expect(decision.released).toBe(false);
    expect(decision.bestAuthority).toBe(1);
    expect(decision.violations.map((v) => v.expected)).toEqual(["equals sevsnpvm", "equals tdxvm"]);
    expect(decision.authorities[0]?.result).toBe("issuer-mismatch");
    expect(decision.authorities[1]?.result).toBe("conditions-not-met");
    expect(formatReleaseDecision(decision)).toContain(
      "FAIL x-ms-isolation-tee.x-ms-attestation-type equals tdxvm",
    );
  });

  it("refuses the CVM policy when the claims sit at the top level instead of under x-ms-isolation-tee", () => {
    const claims = { "x-ms-attestation-type": "sevsnpvm", "x-ms-compliance-status": "azure-compliant-cvm" };
    const decision = evaluateReleasePolicy(cvmPolicy, {
      issuer: "https://sharedweu.weu.attest.azure.net",
      claims,
    });
    expect(decision.released).toBe(false);
    expect(decision.violations.every((v) => v.actual === "(missing)")).toBe(true);
  });
});

describe("evaluateReleasePolicy: issuer matching", () => {
  const claims = {
    "x-ms-isolation-tee": {
      "x-ms-attestation-type": "sevsnpvm",
      "x-ms-compliance-status": "azure-compliant-cvm",
    },
  };

  it("matches an authority with a trailing slash to an iss without one, and the reverse", () => {
    expect(
      evaluateReleasePolicy(cvmPolicy, { issuer: "https://sharedeus.eus.attest.azure.net", claims }).released,
    ).toBe(true);
    expect(
      evaluateReleasePolicy(cvmPolicy, { issuer: "https://sharedweu.weu.attest.azure.net/", claims })
        .released,
    ).toBe(true);
  });

  it("matches the host case-insensitively", () => {
    expect(
      evaluateReleasePolicy(cvmPolicy, { issuer: "https://SharedWEU.weu.attest.azure.net", claims }).released,
    ).toBe(true);
  });

  it("refuses an issuer that matches no authority, even when the claims would pass", () => {
    const decision = evaluateReleasePolicy(cvmPolicy, { issuer: "https://evil.example", claims });
    expect(decision.released).toBe(false);
    expect(decision.bestAuthority).toBeUndefined();
    expect(decision.violations).toEqual([
      {
        field: "iss",
        expected: "one of https://sharedeus.eus.attest.azure.net/, https://sharedweu.weu.attest.azure.net",
        actual: "https://evil.example",
      },
    ]);
    expect(decision.authorities.every((a) => a.result === "issuer-mismatch" && a.conditionsMet)).toBe(true);
    expect(decision.summary).toContain("matches no authority");
  });

  it("picks, among matching authorities, the one with the fewest failures as the explanation", () => {
    const policy = parseReleasePolicy({
      version: "1.0.0",
      anyOf: [
        {
          authority: MAA,
          allOf: [
            { claim: "a", equals: "1" },
            { claim: "b", equals: "1" },
          ],
        },
        {
          authority: `${MAA}/`,
          allOf: [
            { claim: "a", equals: "1" },
            { claim: "c", equals: "1" },
          ],
        },
      ],
    });
    const decision = evaluateReleasePolicy(policy, { issuer: MAA, claims: { a: "1", b: "2", c: "1" } });
    expect(decision.released).toBe(true);
    expect(decision.bestAuthority).toBe(1);
    const denied = evaluateReleasePolicy(policy, { issuer: MAA, claims: { a: "1", b: "2", c: "2" } });
    expect(denied.bestAuthority).toBe(0);
    expect(denied.violations).toEqual([{ field: "b", expected: "equals 1", actual: "2" }]);
  });
});

describe("evaluateReleasePolicy: claim conditions", () => {
  it("fails a missing claim, for every operator including exists false", () => {
    for (const [operator, value] of [
      ["equals", "x"],
      ["notEquals", "x"],
      ["less", 1],
      ["greaterOrEquals", 1],
      ["exists", true],
      ["exists", false],
    ] as const) {
      const result = leaf(single("absent", operator, value), {});
      expect(result.passed).toBe(false);
      expect(result.actual).toBeUndefined();
      expect(result.reason).toBe("claim is absent");
    }
  });

  it("treats null claims as absent", () => {
    expect(leaf(single("a", "exists", true), { a: null }).passed).toBe(false);
    expect(leaf(single("a", "equals", "null"), { a: null }).passed).toBe(false);
  });

  it("exists true passes for a present claim of any type; exists false never passes", () => {
    for (const value of ["", 0, false, { x: 1 }, [1]]) {
      expect(leaf(single("a", "exists", true), { a: value }).passed).toBe(true);
      expect(leaf(single("a", "exists", false), { a: value }).passed).toBe(false);
    }
  });

  it("compares booleans and numbers through their string forms, on either side", () => {
    expect(leaf(single("b", "equals", "false"), { b: false }).passed).toBe(true);
    expect(leaf(single("b", "equals", false), { b: false }).passed).toBe(true);
    expect(leaf(single("b", "equals", false), { b: "false" }).passed).toBe(true);
    expect(leaf(single("b", "equals", "false"), { b: true }).passed).toBe(false);
    expect(leaf(single("b", "equals", "False"), { b: false }).passed).toBe(false);
    expect(leaf(single("n", "equals", "0"), { n: 0 }).passed).toBe(true);
    expect(leaf(single("n", "equals", 0), { n: "0" }).passed).toBe(true);
    expect(leaf(single("n", "equals", 0), { n: 0 }).passed).toBe(true);
    expect(leaf(single("n", "equals", "00"), { n: 0 }).passed).toBe(false);
    expect(leaf(single("n", "equals", "1.0"), { n: 1 }).passed).toBe(false);
  });

  it("compares strings case-sensitively for equals, and notEquals passes only when they differ in any case", () => {
    const upper = HOSTDATA.toUpperCase();
    expect(leaf(single("h", "equals", upper), { h: HOSTDATA }).passed).toBe(false);
    expect(leaf(single("h", "equals", HOSTDATA), { h: HOSTDATA }).passed).toBe(true);
    expect(leaf(single("h", "notEquals", upper), { h: HOSTDATA })).toMatchObject({
      passed: false,
      reason: "values are equal ignoring case",
    });
    expect(leaf(single("h", "notEquals", HOSTDATA), { h: HOSTDATA }).passed).toBe(false);
    expect(leaf(single("h", "notEquals", "other"), { h: HOSTDATA }).passed).toBe(true);
  });

  it.each([
    ["less", 5, [4, true], [5, false], [6, false]],
    ["lessOrEquals", 5, [4, true], [5, true], [6, false]],
    ["greater", 5, [4, false], [5, false], [6, true]],
    ["greaterOrEquals", 5, [4, false], [5, true], [6, true]],
  ] as const)("%s compares numerically at its boundary", (operator, bound, below, at, above) => {
    for (const [claim, passed] of [below, at, above]) {
      expect(leaf(single("svn", operator, bound), { svn: claim }).passed).toBe(passed);
      expect(leaf(single("svn", operator, String(bound)), { svn: String(claim) }).passed).toBe(passed);
    }
  });

  it("orders numerically, not lexically, and accepts decimals", () => {
    expect(leaf(single("svn", "greater", "9"), { svn: "10" }).passed).toBe(true);
    expect(leaf(single("svn", "less", 1.5), { svn: 1.25 }).passed).toBe(true);
    expect(leaf(single("svn", "greaterOrEquals", -1), { svn: 0 }).passed).toBe(true);
  });

  it("fails ordering on non-numeric values with a reason", () => {
    expect(leaf(single("svn", "greater", 1), { svn: "abc" })).toMatchObject({
      passed: false,
      reason: "claim is not a number",
    });
    expect(leaf(single("svn", "greater", 1), { svn: true })).toMatchObject({
      passed: false,
      reason: "claim is not a number",
    });
    expect(leaf(single("svn", "greater", 1), { svn: "0x10" }).passed).toBe(false);
    expect(leaf(single("svn", "greater", 1), { svn: "1e3" }).passed).toBe(false);
    expect(leaf(single("svn", "greater", "one"), { svn: 5 })).toMatchObject({
      passed: false,
      reason: "policy value is not a number",
    });
  });

  it("navigates nested objects and fails when the path goes through an array", () => {
    const claims = { "x-ms-runtime": { keys: [{ kid: "k" }], "vm-configuration": { "secure-boot": true } } };
    expect(leaf(single("x-ms-runtime.vm-configuration.secure-boot", "equals", "true"), claims).passed).toBe(
      true,
    );
    expect(leaf(single("x-ms-runtime.keys.0.kid", "equals", "k"), claims)).toMatchObject({
      passed: false,
      reason: "claim path goes through an array (not supported)",
    });
    expect(leaf(single("x-ms-runtime.keys", "equals", "k"), claims)).toMatchObject({
      passed: false,
      actual: "(array)",
    });
    expect(leaf(single("x-ms-runtime", "equals", "x"), claims)).toMatchObject({
      passed: false,
      actual: "(object)",
    });
    expect(leaf(single("x-ms-runtime.missing.deeper", "equals", "x"), claims).passed).toBe(false);
    expect(leaf(single("x-ms-runtime.vm-configuration.secure-boot.x", "exists", true), claims).passed).toBe(
      false,
    );
  });

  it("never reads inherited members such as constructor or __proto__", () => {
    expect(leaf(single("constructor", "exists", true), {}).passed).toBe(false);
    expect(leaf(single("__proto__", "exists", true), {}).passed).toBe(false);
    expect(leaf(single("a.toString", "exists", true), { a: {} }).passed).toBe(false);
  });
});

describe("evaluateReleasePolicy: groups", () => {
  it("evaluates anyOf inside allOf inside an authority anyOf", () => {
    const policy = parseReleasePolicy({
      version: "1.0.0",
      anyOf: [
        {
          authority: MAA,
          anyOf: [
            { claim: "override", equals: "yes" },
            {
              allOf: [
                { claim: "x-ms-sevsnpvm-is-debuggable", equals: "false" },
                {
                  anyOf: [
                    { claim: "h", equals: "1" },
                    { claim: "h", equals: "2" },
                  ],
                },
              ],
            },
          ],
        },
      ],
    });
    const ok = (claims: Record<string, unknown>) =>
      evaluateReleasePolicy(policy, { issuer: MAA, claims }).released;
    expect(ok({ "x-ms-sevsnpvm-is-debuggable": false, h: "2" })).toBe(true);
    expect(ok({ "x-ms-sevsnpvm-is-debuggable": false, h: "3" })).toBe(false);
    expect(ok({ "x-ms-sevsnpvm-is-debuggable": true, h: "1" })).toBe(false);
    expect(ok({ override: "yes" })).toBe(true);
    const denied = evaluateReleasePolicy(policy, {
      issuer: MAA,
      claims: { "x-ms-sevsnpvm-is-debuggable": true, h: "3" },
    });
    expect(denied.violations.map((v) => v.field)).toEqual([
      "override",
      "x-ms-sevsnpvm-is-debuggable",
      "h",
      "h",
    ]);
  });

  it("fails closed on empty groups in a hand-built model", () => {
    const policy: ReleasePolicy = {
      version: "1.0.0",
      authorities: [{ authority: MAA, kind: "allOf", conditions: [] }],
    };
    const decision = evaluateReleasePolicy(policy, { issuer: MAA, claims: {} });
    expect(decision.released).toBe(false);
    expect(decision.violations).toEqual([{ field: "allOf", expected: "conditions", actual: "(empty)" }]);
  });

  it("releases nothing to claims without an issuer, and says no authority matched", () => {
    const decision = evaluateReleasePolicy(kataPolicy, { issuer: undefined, claims: containerClaims() });
    expect(decision.released).toBe(false);
    expect(decision.bestAuthority).toBeUndefined();
    expect(decision.authorities.map((a) => a.result)).toEqual(["issuer-mismatch"]);
    expect(decision.violations).toEqual([{ field: "iss", expected: `one of ${MAA}`, actual: "(missing)" }]);
    expect(decision.summary).toBe(`not released: the claims have no iss, so no authority matches (${MAA})`);
  });

  it("throws TypeError on caller misuse", () => {
    expect(() => evaluateReleasePolicy(kataPolicy, { issuer: 1 } as never)).toThrow(TypeError);
    expect(() => evaluateReleasePolicy(kataPolicy, { issuer: MAA, claims: null } as never)).toThrow(
      TypeError,
    );
    expect(() => evaluateReleasePolicy({} as never, { issuer: MAA, claims: {} })).toThrow(TypeError);
  });

  it("is fast enough to run per release", () => {
    const claims = containerClaims();
    const started = process.hrtime.bigint();
    for (let i = 0; i < 10_000; i++) evaluateReleasePolicy(kataPolicy, { issuer: MAA, claims });
    const perCallMicros = Number(process.hrtime.bigint() - started) / 1000 / 10_000;
    expect(perCallMicros).toBeLessThan(200);
  });
});
