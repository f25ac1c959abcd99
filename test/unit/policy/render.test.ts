import { createHash } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ShieldError } from "../../../core/errors.js";
import {
  checkSafePolicyChange,
  evaluateReleasePolicy,
  parseAllowedMeasurements,
  parseReleasePolicy,
  releasePolicyToJson,
  renderReleasePolicy,
  serializeReleasePolicy,
} from "../../../core/policy/index.js";

const MAA = "https://sharedeus2.eus2.attest.azure.net";
const hex = (seed: string) => createHash("sha256").update(seed).digest("hex");
const OLD = hex("image-v1");
const NEW = hex("image-v2");

function snpClaims(hostData: string, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    "x-ms-attestation-type": "sevsnpvm",
    "x-ms-compliance-status": "azure-signed-katacc-uvm",
    "x-ms-sevsnpvm-hostdata": hostData,
    "x-ms-sevsnpvm-is-debuggable": false,
    "x-ms-sevsnpvm-vmpl": 0,
    ...overrides,
  };
}

function sgxClaims(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    "x-ms-attestation-type": "sgx",
    "x-ms-sgx-is-debuggable": false,
    "x-ms-sgx-mrenclave": hex("enclave-1"),
    "x-ms-sgx-mrsigner": hex("signer-1"),
    "x-ms-sgx-product-id": 1,
    "x-ms-sgx-svn": 3,
    ...overrides,
  };
}

function expectCode(fn: () => unknown, code: string): ShieldError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(ShieldError);
    expect((error as ShieldError).code).toBe(code);
    return error as ShieldError;
  }
  throw new Error(`expected ${code}`);
}

const rollout = {
  sevsnpvm: { complianceStatus: "azure-signed-katacc-uvm", hostData: [NEW, OLD.toUpperCase(), NEW], vmpl: 0 },
};

describe("renderReleasePolicy", () => {
  it("renders one authority with the fixed guards and an anyOf over sorted, lower-cased, unique hostData", () => {
    const policy = renderReleasePolicy({ authority: `${MAA}/`, measurements: rollout });
    expect(releasePolicyToJson(policy)).toEqual({
      version: "1.0.0",
      anyOf: [
        {
          authority: MAA,
          allOf: [
            { claim: "x-ms-attestation-type", equals: "sevsnpvm" },
            { claim: "x-ms-sevsnpvm-is-debuggable", equals: "false" },
            { claim: "x-ms-compliance-status", equals: "azure-signed-katacc-uvm" },
            { claim: "x-ms-sevsnpvm-vmpl", equals: "0" },
            {
              anyOf: [OLD, NEW].sort().map((h) => ({ claim: "x-ms-sevsnpvm-hostdata", equals: h })),
            },
          ],
        },
      ],
    });
  });

  it("is deterministic: the same set in any order renders the same bytes, and re-parses", () => {
    const a = renderReleasePolicy({ authority: MAA, measurements: { sevsnpvm: { hostData: [OLD, NEW] } } });
    const b = renderReleasePolicy({ authority: MAA, measurements: { sevsnpvm: { hostData: [NEW, OLD] } } });
    expect(serializeReleasePolicy(a)).toBe(serializeReleasePolicy(b));
    expect(parseReleasePolicy(serializeReleasePolicy(a))).toEqual(a);
  });

  it("releases for each allowed measurement and refuses others, debug, wrong TEE and wrong issuer", () => {
    const policy = renderReleasePolicy({ authority: MAA, measurements: rollout });
    const released = (claims: Record<string, unknown>, issuer = MAA) =>
      evaluateReleasePolicy(policy, { issuer, claims }).released;
    expect(released(snpClaims(OLD))).toBe(true);
    expect(released(snpClaims(NEW))).toBe(true);
    expect(released(snpClaims(hex("image-v3")))).toBe(false);
    expect(released(snpClaims(NEW, { "x-ms-sevsnpvm-is-debuggable": true }))).toBe(false);
    expect(released(snpClaims(NEW, { "x-ms-sevsnpvm-is-debuggable": undefined }))).toBe(false);
    expect(released(snpClaims(NEW, { "x-ms-attestation-type": "sgx" }))).toBe(false);
    expect(released(snpClaims(NEW, { "x-ms-compliance-status": "azure-compliant-uvm" }))).toBe(false);
    expect(released(snpClaims(NEW, { "x-ms-sevsnpvm-vmpl": 1 }))).toBe(false);
    expect(released(snpClaims(NEW), "https://other.attest.azure.net")).toBe(false);
  });

  it("renders SGX with product id, minimum SVN and both identity lists", () => {
    const policy = renderReleasePolicy({
      authority: MAA,
      measurements: {
        sgx: { mrEnclave: [hex("enclave-1")], mrSigner: [hex("signer-1")], productId: 1, minSvn: 3 },
      },
    });
    const released = (claims: Record<string, unknown>) =>
      evaluateReleasePolicy(policy, { issuer: MAA, claims }).released;
    expect(released(sgxClaims())).toBe(true);
    expect(released(sgxClaims({ "x-ms-sgx-svn": 4 }))).toBe(true);
    expect(released(sgxClaims({ "x-ms-sgx-svn": 2 }))).toBe(false);
    expect(released(sgxClaims({ "x-ms-sgx-is-debuggable": true }))).toBe(false);
    expect(released(sgxClaims({ "x-ms-sgx-product-id": 2 }))).toBe(false);
    expect(released(sgxClaims({ "x-ms-sgx-mrenclave": hex("enclave-2") }))).toBe(false);
    expect(released(sgxClaims({ "x-ms-sgx-mrsigner": hex("signer-2") }))).toBe(false);
    expect(JSON.stringify(releasePolicyToJson(policy))).toContain(
      '{"claim":"x-ms-sgx-is-debuggable","equals":"false"}',
    );
  });

  it("renders one entry per TEE when both are allowed, each keeping its own guards", () => {
    const policy = renderReleasePolicy({
      authority: MAA,
      measurements: { sevsnpvm: { hostData: [OLD] }, sgx: { mrSigner: [hex("signer-1")] } },
    });
    expect(policy.authorities).toHaveLength(2);
    expect(evaluateReleasePolicy(policy, { issuer: MAA, claims: snpClaims(OLD) }).released).toBe(true);
    expect(evaluateReleasePolicy(policy, { issuer: MAA, claims: sgxClaims() }).released).toBe(true);
    expect(
      evaluateReleasePolicy(policy, { issuer: MAA, claims: sgxClaims({ "x-ms-sgx-is-debuggable": true }) })
        .released,
    ).toBe(false);
  });

  it("produces a policy that passes the safe-change guard against itself and a successor", () => {
    const v1 = renderReleasePolicy({ authority: MAA, measurements: { sevsnpvm: { hostData: [OLD] } } });
    const v2 = renderReleasePolicy({ authority: MAA, measurements: { sevsnpvm: { hostData: [OLD, NEW] } } });
    expect(checkSafePolicyChange(v1, v2)).toEqual([]);
    expect(checkSafePolicyChange(v2, v1)).toEqual([]);
  });

  it("rejects an authority that is not an http(s) URL", () => {
    for (const authority of [
      "sharedeus2.eus2.attest.azure.net",
      "ftp://x.example",
      "https://x.example/?a=1",
      "",
    ]) {
      expectCode(() => renderReleasePolicy({ authority, measurements: rollout }), "ERR_POLICY_MALFORMED");
    }
    expect(() => renderReleasePolicy({ authority: 1 as never, measurements: rollout })).toThrow(TypeError);
  });

  it("a rendered policy releases exactly for claims whose hostData is in the allowed set", () => {
    const hexString = fc
      .uint8Array({ minLength: 32, maxLength: 32 })
      .map((b) => Buffer.from(b).toString("hex"));
    fc.assert(
      fc.property(
        fc.uniqueArray(hexString, { minLength: 1, maxLength: 6 }),
        hexString,
        fc.boolean(),
        (allowed, probe, debug) => {
          const policy = renderReleasePolicy({
            authority: MAA,
            measurements: { sevsnpvm: { hostData: allowed } },
          });
          for (const hostData of [...allowed, probe]) {
            const claims = snpClaims(hostData, { "x-ms-sevsnpvm-is-debuggable": debug });
            const released = evaluateReleasePolicy(policy, { issuer: MAA, claims }).released;
            expect(released).toBe(!debug && allowed.includes(hostData));
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe("parseAllowedMeasurements", () => {
  it("parses JSON text and normalizes hex lists", () => {
    const parsed = parseAllowedMeasurements(JSON.stringify({ version: 1, ...rollout }));
    expect(parsed).toEqual({
      sevsnpvm: { complianceStatus: "azure-signed-katacc-uvm", hostData: [OLD, NEW].sort(), vmpl: 0 },
    });
  });

  it.each([
    ["no TEE", {}, "$"],
    ["an empty hostData list", { sevsnpvm: { hostData: [] } }, "$.sevsnpvm.hostData"],
    ["short hex", { sevsnpvm: { hostData: ["abcd"] } }, "$.sevsnpvm.hostData[0]"],
    ["non-hex", { sevsnpvm: { hostData: ["z".repeat(64)] } }, "$.sevsnpvm.hostData[0]"],
    [
      "an unknown compliance status",
      { sevsnpvm: { hostData: [OLD], complianceStatus: "azure-compliant-vm" } },
      "$.sevsnpvm.complianceStatus",
    ],
    ["a VMPL out of range", { sevsnpvm: { hostData: [OLD], vmpl: 4 } }, "$.sevsnpvm.vmpl"],
    ["a misspelt member", { sevsnpvm: { hostdata: [OLD] } }, "$.sevsnpvm.hostdata"],
    ["SGX without identities", { sgx: { productId: 1 } }, "$.sgx"],
    ["a negative SVN", { sgx: { mrSigner: [OLD], minSvn: -1 } }, "$.sgx.minSvn"],
    ["an unknown version", { version: 2, sevsnpvm: { hostData: [OLD] } }, "$.version"],
  ])("rejects %s with the JSON path", (_name, input, path) => {
    const error = expectCode(() => parseAllowedMeasurements(input), "ERR_POLICY_MALFORMED");
    expect(error.violations.map((v) => v.field)).toContain(path);
  });

  it("rejects text that is not JSON, and oversized text", () => {
    expectCode(() => parseAllowedMeasurements("{"), "ERR_POLICY_MALFORMED");
    expectCode(() => parseAllowedMeasurements(" ".repeat(1024 * 1024 + 1)), "ERR_INPUT_TOO_LARGE");
  });
});
