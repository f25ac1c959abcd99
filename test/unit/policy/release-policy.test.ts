import { describe, expect, it } from "vitest";
import { ShieldError } from "../../../core/errors.js";
import {
  authorityMatchesIssuer,
  encodeReleasePolicy,
  MAX_CONDITION_DEPTH,
  MAX_RELEASE_POLICY_BYTES,
  normalizeIssuer,
  parseReleasePolicy,
  releasePolicyToJson,
  serializeReleasePolicy,
} from "../../../core/policy/index.js";

const MAA = "https://sharedeus2.eus2.attest.azure.net";
const HOSTDATA = "fef932e0103f6132437e8a1223f32efc4bea63342f893b5124645224ef29ba73";

/** Shape of Microsoft's kata-cc demo policy (confidential-container-demos kafka/setup-key.sh). */
const kataPolicy = {
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
  version: "1.0.0",
};

function expectShieldError(fn: () => unknown, code: string): ShieldError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(ShieldError);
    expect((error as ShieldError).code).toBe(code);
    return error as ShieldError;
  }
  throw new Error(`expected ${code}`);
}

function withCondition(condition: unknown): unknown {
  return { version: "1.0.0", anyOf: [{ authority: MAA, allOf: [condition] }] };
}

describe("parseReleasePolicy: accepted forms", () => {
  it("parses the kata-cc demo policy into the model", () => {
    const policy = parseReleasePolicy(kataPolicy);
    expect(policy.version).toBe("1.0.0");
    expect(policy.authorities).toHaveLength(1);
    const rule = policy.authorities[0];
    expect(rule?.authority).toBe(MAA);
    expect(rule?.kind).toBe("allOf");
    expect(rule?.conditions[3]).toEqual({
      kind: "claim",
      claim: "x-ms-sevsnpvm-is-debuggable",
      operator: "equals",
      value: "false",
    });
  });

  it("accepts JSON text, UTF-8 bytes and the Key Vault wrapper with base64url data", () => {
    const text = JSON.stringify(kataPolicy);
    const fromText = parseReleasePolicy(text);
    expect(parseReleasePolicy(new TextEncoder().encode(text))).toEqual(fromText);
    const wrapper = {
      contentType: "application/json; charset=utf-8; version=1.0",
      data: Buffer.from(text).toString("base64url"),
    };
    expect(parseReleasePolicy(wrapper)).toEqual(fromText);
    expect(parseReleasePolicy({ data: wrapper.data, immutable: false })).toEqual(fromText);
  });

  it("round-trips through the wire encoding and keeps member order stable", () => {
    const policy = parseReleasePolicy(kataPolicy);
    const wire = encodeReleasePolicy(policy, { immutable: false });
    expect(wire.contentType).toBe("application/json; charset=utf-8");
    expect(wire.immutable).toBe(false);
    expect(wire.data).not.toMatch(/[+/=]/);
    expect(parseReleasePolicy(wire)).toEqual(policy);
    expect(serializeReleasePolicy(policy).startsWith('{"version":"1.0.0","anyOf":[{"authority":')).toBe(true);
    expect(releasePolicyToJson(policy).anyOf[0]).toEqual(kataPolicy.anyOf[0]);
  });

  it("accepts nested anyOf inside allOf inside anyOf, and authority-level anyOf", () => {
    const policy = parseReleasePolicy({
      version: "1.0.0",
      anyOf: [
        {
          authority: MAA,
          anyOf: [
            {
              allOf: [
                {
                  anyOf: [
                    { claim: "a", equals: "1" },
                    { claim: "a", equals: 2 },
                  ],
                },
                { claim: "b.c", exists: true },
              ],
            },
          ],
        },
      ],
    });
    expect(policy.authorities[0]?.kind).toBe("anyOf");
    expect(releasePolicyToJson(policy).anyOf[0]).toMatchObject({
      anyOf: [{ allOf: [{ anyOf: [{}, {}] }, {}] }],
    });
  });

  it("accepts every operator with string, number and boolean values; exists also as a string", () => {
    const policy = parseReleasePolicy({
      version: "1.0.0",
      anyOf: [
        {
          authority: MAA,
          allOf: [
            { claim: "a", equals: true },
            { claim: "a", notEquals: "x" },
            { claim: "n", less: 3 },
            { claim: "n", lessOrEquals: "3" },
            { claim: "n", greater: 1.5 },
            { claim: "n", greaterOrEquals: 0 },
            { claim: "a", exists: "false" },
          ],
        },
      ],
    });
    const ops = policy.authorities[0]?.conditions.map((c) =>
      c.kind === "claim" ? [c.operator, c.value] : null,
    );
    expect(ops).toEqual([
      ["equals", true],
      ["notEquals", "x"],
      ["less", 3],
      ["lessOrEquals", "3"],
      ["greater", 1.5],
      ["greaterOrEquals", 0],
      ["exists", false],
    ]);
  });

  it('reads the legacy "0.2" version as the same grammar and keeps it', () => {
    const policy = parseReleasePolicy({ ...kataPolicy, version: "0.2" });
    expect(policy.version).toBe("0.2");
    expect(serializeReleasePolicy(policy)).toContain('"version":"0.2"');
  });
});

describe("parseReleasePolicy: rejected input", () => {
  it("rejects unknown, missing and non-string versions with ERR_POLICY_VERSION", () => {
    for (const version of ["1.0.2", "1.0", 1, null]) {
      const error = expectShieldError(
        () => parseReleasePolicy({ ...kataPolicy, version }),
        "ERR_POLICY_VERSION",
      );
      expect(error.violations[0]?.field).toBe("$.version");
    }
    expectShieldError(() => parseReleasePolicy({ anyOf: kataPolicy.anyOf }), "ERR_POLICY_VERSION");
  });

  it("rejects documents that are not policies", () => {
    expectShieldError(() => parseReleasePolicy({ keys: [] }), "ERR_POLICY_MALFORMED");
    expectShieldError(() => parseReleasePolicy([kataPolicy]), "ERR_POLICY_MALFORMED");
    expectShieldError(() => parseReleasePolicy("{not json"), "ERR_POLICY_MALFORMED");
    expectShieldError(
      () => parseReleasePolicy(JSON.stringify(kataPolicy).slice(0, 40)),
      "ERR_POLICY_MALFORMED",
    );
    expectShieldError(() => parseReleasePolicy(new Uint8Array([0xff, 0xfe, 0x7b])), "ERR_POLICY_MALFORMED");
  });

  it("rejects a top-level allOf (Microsoft's CVM vmid doc example) and an empty top-level anyOf", () => {
    const error = expectShieldError(
      () => parseReleasePolicy({ version: "1.0.0", allOf: kataPolicy.anyOf }),
      "ERR_POLICY_MALFORMED",
    );
    expect(error.violations.map((v) => v.field)).toEqual(expect.arrayContaining(["$.anyOf", "$.allOf"]));
    expectShieldError(() => parseReleasePolicy({ version: "1.0.0", anyOf: [] }), "ERR_POLICY_MALFORMED");
  });

  it.each([
    ["an unknown operator", { claim: "a", contains: "x" }, "$.anyOf[0].allOf[0].contains"],
    ["two operators", { claim: "a", equals: "x", notEquals: "y" }, "$.anyOf[0].allOf[0]"],
    ["no operator", { claim: "a" }, "$.anyOf[0].allOf[0]"],
    ["an empty claim", { claim: "", equals: "x" }, "$.anyOf[0].allOf[0].claim"],
    ["an empty path segment", { claim: "a..b", equals: "x" }, "$.anyOf[0].allOf[0].claim"],
    ["an object value", { claim: "a", equals: { x: 1 } }, "$.anyOf[0].allOf[0].equals"],
    ["an array value", { claim: "a", equals: ["x"] }, "$.anyOf[0].allOf[0].equals"],
    ["a null value", { claim: "a", equals: null }, "$.anyOf[0].allOf[0].equals"],
    ["a non-boolean exists", { claim: "a", exists: "yes" }, "$.anyOf[0].allOf[0].exists"],
    ["an empty anyOf", { anyOf: [] }, "$.anyOf[0].allOf[0].anyOf"],
    ["anyOf and allOf together", { anyOf: [{ claim: "a", equals: "1" }], allOf: [] }, "$.anyOf[0].allOf[0]"],
    [
      "an extra member in a group",
      { anyOf: [{ claim: "a", equals: "1" }], note: "x" },
      "$.anyOf[0].allOf[0].note",
    ],
    ["a string as condition", "x-ms-attestation-type", "$.anyOf[0].allOf[0]"],
  ])("rejects a condition with %s, naming its JSON path", (_name, condition, path) => {
    const error = expectShieldError(
      () => parseReleasePolicy(withCondition(condition)),
      "ERR_POLICY_MALFORMED",
    );
    expect(error.violations.map((v) => v.field)).toContain(path);
  });

  it.each([
    ["both anyOf and allOf", { authority: MAA, anyOf: [{ claim: "a", equals: "1" }], allOf: [] }],
    ["neither anyOf nor allOf", { authority: MAA }],
    ["an empty authority", { authority: "", allOf: [{ claim: "a", equals: "1" }] }],
    ["a non-string authority", { authority: 1, allOf: [{ claim: "a", equals: "1" }] }],
    ["an empty allOf", { authority: MAA, allOf: [] }],
    ["an unknown member", { authority: MAA, allOf: [{ claim: "a", equals: "1" }], issuer: MAA }],
  ])("rejects an authority with %s", (_name, authority) => {
    const error = expectShieldError(
      () => parseReleasePolicy({ version: "1.0.0", anyOf: [authority] }),
      "ERR_POLICY_MALFORMED",
    );
    expect(error.violations[0]?.field.startsWith("$.anyOf[0]")).toBe(true);
  });

  it("reports every problem at once, not just the first", () => {
    const error = expectShieldError(
      () =>
        parseReleasePolicy({
          version: "1.0.0",
          anyOf: [
            { authority: MAA, allOf: [{ claim: "a", bogus: 1 }] },
            { authority: MAA, allOf: [{ claim: "b", equals: "1", less: 2 }] },
          ],
        }),
      "ERR_POLICY_MALFORMED",
    );
    const fields = error.violations.map((v) => v.field);
    expect(fields).toContain("$.anyOf[0].allOf[0].bogus");
    expect(fields).toContain("$.anyOf[1].allOf[0]");
  });

  it("rejects nesting deeper than the limit", () => {
    let condition: unknown = { claim: "a", equals: "1" };
    for (let i = 0; i < MAX_CONDITION_DEPTH + 1; i++) condition = { allOf: [condition] };
    expectShieldError(() => parseReleasePolicy(withCondition(condition)), "ERR_POLICY_MALFORMED");
  });

  it("rejects oversized policies in every input form with ERR_INPUT_TOO_LARGE", () => {
    const many = Array.from({ length: 1200 }, (_, i) => ({
      claim: "x-ms-sevsnpvm-hostdata",
      equals: `${i}`.padStart(64, "0"),
    }));
    const big = { version: "1.0.0", anyOf: [{ authority: MAA, anyOf: many }] };
    const text = JSON.stringify(big);
    expect(text.length).toBeGreaterThan(MAX_RELEASE_POLICY_BYTES);
    expectShieldError(() => parseReleasePolicy(big), "ERR_INPUT_TOO_LARGE");
    expectShieldError(() => parseReleasePolicy(text), "ERR_INPUT_TOO_LARGE");
    expectShieldError(() => parseReleasePolicy(Buffer.from(text)), "ERR_INPUT_TOO_LARGE");
    expectShieldError(
      () => parseReleasePolicy({ data: Buffer.from(text).toString("base64url") }),
      "ERR_INPUT_TOO_LARGE",
    );
  });

  it("rejects malformed wrappers: bad alphabet, bad content type, undecodable data", () => {
    const data = Buffer.from(JSON.stringify(kataPolicy)).toString("base64url");
    expectShieldError(() => parseReleasePolicy({ data: `${data}*` }), "ERR_POLICY_MALFORMED");
    expectShieldError(() => parseReleasePolicy({ contentType: "text/plain", data }), "ERR_POLICY_MALFORMED");
    expectShieldError(() => parseReleasePolicy({ data, extra: 1 }), "ERR_POLICY_MALFORMED");
    expectShieldError(
      () => parseReleasePolicy({ data: Buffer.from("{").toString("base64url") }),
      "ERR_POLICY_MALFORMED",
    );
  });

  it("opens the wrapper once and does not decode JSON twice", () => {
    const text = JSON.stringify(kataPolicy);
    expectShieldError(() => parseReleasePolicy(JSON.stringify(text)), "ERR_POLICY_MALFORMED");
    const inner = { data: Buffer.from(text).toString("base64url") };
    const outer = { data: Buffer.from(JSON.stringify(inner)).toString("base64url") };
    expectShieldError(() => parseReleasePolicy(outer), "ERR_POLICY_MALFORMED");
  });

  it("rejects cyclic objects as malformed, not with a crash", () => {
    const cyclic: Record<string, unknown> = { version: "1.0.0" };
    cyclic["anyOf"] = [cyclic];
    expectShieldError(() => parseReleasePolicy(cyclic), "ERR_POLICY_MALFORMED");
  });
});

describe("issuer matching", () => {
  it("ignores trailing slashes both ways and the case of scheme and host", () => {
    expect(authorityMatchesIssuer(`${MAA}/`, MAA)).toBe(true);
    expect(authorityMatchesIssuer(MAA, `${MAA}/`)).toBe(true);
    expect(authorityMatchesIssuer("HTTPS://SharedEUS2.eus2.attest.azure.net", MAA)).toBe(true);
    expect(normalizeIssuer("https://Host.example/Path/")).toBe("https://host.example/Path");
  });

  it("keeps path case, ports and other hosts distinct", () => {
    expect(authorityMatchesIssuer("https://host.example/a", "https://host.example/A")).toBe(false);
    expect(authorityMatchesIssuer("https://host.example:443", "https://host.example")).toBe(false);
    expect(authorityMatchesIssuer("http://host.example", "https://host.example")).toBe(false);
    expect(authorityMatchesIssuer(`${MAA}.evil.example`, MAA)).toBe(false);
    expect(authorityMatchesIssuer("/", "")).toBe(false);
  });

  it("compares authorities without a scheme exactly (Key Vault's own grammar example)", () => {
    expect(authorityMatchesIssuer("my.attestation.com", "my.attestation.com")).toBe(true);
    expect(authorityMatchesIssuer("my.attestation.com", "https://my.attestation.com")).toBe(false);
  });
});
