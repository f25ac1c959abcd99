import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { ShieldError } from "../../../core/errors.js";
import { appraiseClaims, assertAppraised, parseAppraisalPolicy } from "../../../core/appraisal/index.js";

const sha256 = (seed: string) => createHash("sha256").update(seed).digest("hex");
const sha384 = (seed: string) => createHash("sha384").update(seed).digest("hex");
const HOSTDATA = sha256("cce-policy-1");
const LAUNCH = sha384("uvm-1");
const MRENCLAVE = sha256("enclave-1");
const MRSIGNER = sha256("signer-1");

const policy = parseAppraisalPolicy({
  version: 1,
  sevsnpvm: {
    hostData: [HOSTDATA.toUpperCase(), sha256("cce-policy-2")],
    launchMeasurements: [LAUNCH],
    minGuestSvn: 2,
    minTcb: { bootloader: 3, tee: 0, snp: 8, microcode: 115 },
    complianceStatus: ["azure-compliant-uvm", "azure-signed-katacc-uvm"],
  },
  sgx: { mrEnclave: [MRENCLAVE], mrSigner: [MRSIGNER], productId: 1, minSvn: 2 },
});

/** The shape of MAA's ACI container token (azure-wire-formats §1.5). */
function snpClaims(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const claims: Record<string, unknown> = {
    iss: "https://sharedeus.eus.attest.azure.net",
    "x-ms-attestation-type": "sevsnpvm",
    "x-ms-compliance-status": "azure-compliant-uvm",
    "x-ms-sevsnpvm-bootloader-svn": 3,
    "x-ms-sevsnpvm-guestsvn": 2,
    "x-ms-sevsnpvm-hostdata": HOSTDATA,
    "x-ms-sevsnpvm-is-debuggable": false,
    "x-ms-sevsnpvm-launchmeasurement": LAUNCH,
    "x-ms-sevsnpvm-microcode-svn": 115,
    "x-ms-sevsnpvm-migration-allowed": false,
    "x-ms-sevsnpvm-smt-allowed": true,
    "x-ms-sevsnpvm-snpfw-svn": 8,
    "x-ms-sevsnpvm-tee-svn": 0,
    "x-ms-sevsnpvm-vmpl": 0,
    "x-ms-sevsnpvm-uvm-endorsement": { "x-ms-sevsnpvm-guestsvn": "100" },
    "x-ms-ver": "1.0",
  };
  for (const [name, value] of Object.entries(overrides)) {
    if (value === undefined) delete claims[name];
    else claims[name] = value;
  }
  return claims;
}

function sgxClaims(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    "x-ms-attestation-type": "sgx",
    "x-ms-sgx-is-debuggable": false,
    "x-ms-sgx-mrenclave": MRENCLAVE,
    "x-ms-sgx-mrsigner": MRSIGNER,
    "x-ms-sgx-product-id": 1,
    "x-ms-sgx-svn": 2,
    ...overrides,
  };
}

function fields(claims: Record<string, unknown>): string[] {
  return appraiseClaims(claims, policy).violations.map((v) => v.field);
}

describe("appraiseClaims: SEV-SNP", () => {
  it("passes a token that meets every rule", () => {
    const result = appraiseClaims(snpClaims(), policy);
    expect(result).toEqual({ ok: true, attestationType: "sevsnpvm", violations: [] });
    expect(() => assertAppraised(result)).not.toThrow();
  });

  it.each([
    ["debug on", { "x-ms-sevsnpvm-is-debuggable": true }, "x-ms-sevsnpvm-is-debuggable", "true"],
    [
      "debug absent",
      { "x-ms-sevsnpvm-is-debuggable": undefined },
      "x-ms-sevsnpvm-is-debuggable",
      "(missing)",
    ],
    [
      'debug as the string "false"',
      { "x-ms-sevsnpvm-is-debuggable": "false" },
      "x-ms-sevsnpvm-is-debuggable",
      "false",
    ],
    [
      "an unknown hostData",
      { "x-ms-sevsnpvm-hostdata": sha256("other") },
      "x-ms-sevsnpvm-hostdata",
      sha256("other"),
    ],
    ["a short hostData", { "x-ms-sevsnpvm-hostdata": "abcd" }, "x-ms-sevsnpvm-hostdata", "abcd"],
    ["a numeric hostData", { "x-ms-sevsnpvm-hostdata": 5 }, "x-ms-sevsnpvm-hostdata", "5"],
    [
      "an unknown launch measurement",
      { "x-ms-sevsnpvm-launchmeasurement": sha384("x") },
      "x-ms-sevsnpvm-launchmeasurement",
      sha384("x"),
    ],
    ["a low guest SVN", { "x-ms-sevsnpvm-guestsvn": 1 }, "x-ms-sevsnpvm-guestsvn", "1"],
    ["a guest SVN as a string", { "x-ms-sevsnpvm-guestsvn": "5" }, "x-ms-sevsnpvm-guestsvn", "5"],
    ["a fractional guest SVN", { "x-ms-sevsnpvm-guestsvn": 2.5 }, "x-ms-sevsnpvm-guestsvn", "2.5"],
    ["an old bootloader", { "x-ms-sevsnpvm-bootloader-svn": 2 }, "x-ms-sevsnpvm-bootloader-svn", "2"],
    ["an old SNP firmware", { "x-ms-sevsnpvm-snpfw-svn": 7 }, "x-ms-sevsnpvm-snpfw-svn", "7"],
    ["an old microcode", { "x-ms-sevsnpvm-microcode-svn": 114 }, "x-ms-sevsnpvm-microcode-svn", "114"],
    ["a missing TEE SVN", { "x-ms-sevsnpvm-tee-svn": undefined }, "x-ms-sevsnpvm-tee-svn", "(missing)"],
    ["VMPL 1", { "x-ms-sevsnpvm-vmpl": 1 }, "x-ms-sevsnpvm-vmpl", "1"],
    ["VMPL as a string", { "x-ms-sevsnpvm-vmpl": "0" }, "x-ms-sevsnpvm-vmpl", "0"],
    [
      "a CVM compliance status",
      { "x-ms-compliance-status": "azure-compliant-cvm" },
      "x-ms-compliance-status",
      "azure-compliant-cvm",
    ],
    ["no compliance status", { "x-ms-compliance-status": undefined }, "x-ms-compliance-status", "(missing)"],
    [
      "migration allowed",
      { "x-ms-sevsnpvm-migration-allowed": true },
      "x-ms-sevsnpvm-migration-allowed",
      "true",
    ],
    [
      "migration claim absent",
      { "x-ms-sevsnpvm-migration-allowed": undefined },
      "x-ms-sevsnpvm-migration-allowed",
      "(missing)",
    ],
  ])("reports exactly one violation for %s", (_name, overrides, field, actual) => {
    const result = appraiseClaims(snpClaims(overrides), policy);
    expect(result.ok).toBe(false);
    expect(result.violations).toHaveLength(1);
    expect(result.violations[0]?.field).toBe(field);
    expect(result.violations[0]?.actual).toBe(actual);
  });

  it("accepts hostData in either case, and TCB values above the minimum", () => {
    expect(
      fields(snpClaims({ "x-ms-sevsnpvm-hostdata": HOSTDATA.toUpperCase(), "x-ms-sevsnpvm-snpfw-svn": 22 })),
    ).toEqual([]);
  });

  it("reports every violation at once with expected and actual", () => {
    const result = appraiseClaims(
      snpClaims({
        "x-ms-sevsnpvm-is-debuggable": true,
        "x-ms-sevsnpvm-hostdata": sha256("other"),
        "x-ms-sevsnpvm-guestsvn": 1,
        "x-ms-sevsnpvm-microcode-svn": 100,
        "x-ms-sevsnpvm-vmpl": 2,
        "x-ms-sevsnpvm-migration-allowed": true,
      }),
      policy,
    );
    expect(result.violations).toEqual([
      { field: "x-ms-sevsnpvm-is-debuggable", expected: "false (boolean)", actual: "true" },
      {
        field: "x-ms-sevsnpvm-hostdata",
        expected: `one of ${[HOSTDATA, sha256("cce-policy-2")].sort().join(", ")}`,
        actual: sha256("other"),
      },
      { field: "x-ms-sevsnpvm-guestsvn", expected: ">= 2", actual: "1" },
      { field: "x-ms-sevsnpvm-microcode-svn", expected: ">= 115", actual: "100" },
      { field: "x-ms-sevsnpvm-vmpl", expected: "<= 0", actual: "2" },
      { field: "x-ms-sevsnpvm-migration-allowed", expected: "false (boolean)", actual: "true" },
    ]);
    try {
      assertAppraised(result);
      throw new Error("expected a throw");
    } catch (error) {
      expect(error).toBeInstanceOf(ShieldError);
      expect((error as ShieldError).code).toBe("ERR_APPRAISAL_DENIED");
      expect((error as ShieldError).violations).toHaveLength(6);
    }
  });

  it("honours a configured maximum VMPL and allowed migration, and skips unconfigured checks", () => {
    const lenient = parseAppraisalPolicy({
      sevsnpvm: { hostData: [HOSTDATA], maxVmpl: 2, allowMigration: true },
    });
    const claims = snpClaims({
      "x-ms-sevsnpvm-vmpl": 2,
      "x-ms-sevsnpvm-migration-allowed": true,
      "x-ms-sevsnpvm-guestsvn": undefined,
      "x-ms-compliance-status": undefined,
      "x-ms-sevsnpvm-launchmeasurement": undefined,
    });
    expect(appraiseClaims(claims, lenient).ok).toBe(true);
    expect(
      appraiseClaims({ ...claims, "x-ms-sevsnpvm-vmpl": 3 }, lenient).violations.map((v) => v.field),
    ).toEqual(["x-ms-sevsnpvm-vmpl"]);
    // debug stays forbidden however lenient the rest is
    expect(appraiseClaims({ ...claims, "x-ms-sevsnpvm-is-debuggable": true }, lenient).ok).toBe(false);
  });
});

describe("appraiseClaims: SGX and attestation type", () => {
  it("passes a matching SGX token", () => {
    expect(appraiseClaims(sgxClaims(), policy)).toEqual({ ok: true, attestationType: "sgx", violations: [] });
  });

  it.each([
    ["debug on", { "x-ms-sgx-is-debuggable": true }, "x-ms-sgx-is-debuggable"],
    ["debug absent", { "x-ms-sgx-is-debuggable": undefined }, "x-ms-sgx-is-debuggable"],
    ["another enclave", { "x-ms-sgx-mrenclave": sha256("x") }, "x-ms-sgx-mrenclave"],
    ["another signer", { "x-ms-sgx-mrsigner": sha256("x") }, "x-ms-sgx-mrsigner"],
    ["another product", { "x-ms-sgx-product-id": 2 }, "x-ms-sgx-product-id"],
    ["a product id as a string", { "x-ms-sgx-product-id": "1" }, "x-ms-sgx-product-id"],
    ["a low SVN", { "x-ms-sgx-svn": 1 }, "x-ms-sgx-svn"],
  ])("reports exactly one violation for %s", (_name, overrides, field) => {
    const claims = sgxClaims(overrides);
    for (const [k, v] of Object.entries(claims)) if (v === undefined) delete claims[k];
    expect(fields(claims)).toEqual([field]);
  });

  it("rejects a TEE the policy does not configure, and a missing or odd attestation type", () => {
    const sgxOnly = parseAppraisalPolicy({ sgx: { mrSigner: [MRSIGNER] } });
    expect(appraiseClaims(snpClaims(), sgxOnly)).toEqual({
      ok: false,
      attestationType: undefined,
      violations: [{ field: "x-ms-attestation-type", expected: "one of sgx", actual: "sevsnpvm" }],
    });
    expect(fields({})).toEqual(["x-ms-attestation-type"]);
    expect(fields({ "x-ms-attestation-type": ["sgx"] })).toEqual(["x-ms-attestation-type"]);
    expect(fields({ "x-ms-attestation-type": "tdxvm" })).toEqual(["x-ms-attestation-type"]);
  });

  it("never reads inherited members as claims", () => {
    const claims = Object.create({ "x-ms-attestation-type": "sgx" }) as Record<string, unknown>;
    expect(fields(claims)).toEqual(["x-ms-attestation-type"]);
  });

  it("throws TypeError on caller misuse", () => {
    expect(() => appraiseClaims(null as never, policy)).toThrow(TypeError);
    expect(() => appraiseClaims({}, null as never)).toThrow(TypeError);
  });
});

describe("parseAppraisalPolicy", () => {
  it("fills defaults: VMPL 0 and migration forbidden", () => {
    const parsed = parseAppraisalPolicy(JSON.stringify({ sevsnpvm: { hostData: [HOSTDATA] } }));
    expect(parsed.sevsnpvm?.maxVmpl).toBe(0);
    expect(parsed.sevsnpvm?.allowMigration).toBe(false);
    expect(parsed.sevsnpvm?.hostData.has(HOSTDATA)).toBe(true);
  });

  it.each([
    ["no TEE", {}, "$"],
    ["an empty hostData list", { sevsnpvm: { hostData: [] } }, "$.sevsnpvm.hostData"],
    ["a 96-hex hostData", { sevsnpvm: { hostData: [LAUNCH] } }, "$.sevsnpvm.hostData[0]"],
    [
      "a 64-hex launch measurement",
      { sevsnpvm: { hostData: [HOSTDATA], launchMeasurements: [HOSTDATA] } },
      "$.sevsnpvm.launchMeasurements[0]",
    ],
    ["a misspelt member", { sevsnpvm: { hostData: [HOSTDATA], allowDebug: true } }, "$.sevsnpvm.allowDebug"],
    [
      "a TCB value over 255",
      { sevsnpvm: { hostData: [HOSTDATA], minTcb: { snp: 256 } } },
      "$.sevsnpvm.minTcb.snp",
    ],
    [
      "an unknown TCB component",
      { sevsnpvm: { hostData: [HOSTDATA], minTcb: { ucode: 1 } } },
      "$.sevsnpvm.minTcb.ucode",
    ],
    ["a string SVN", { sevsnpvm: { hostData: [HOSTDATA], minGuestSvn: "2" } }, "$.sevsnpvm.minGuestSvn"],
    ["SGX without identities", { sgx: { productId: 1 } }, "$.sgx"],
    ["an unknown version", { version: 2, sgx: { mrSigner: [MRSIGNER] } }, "$.version"],
  ])("rejects %s with ERR_POLICY_MALFORMED at its JSON path", (_name, input, path) => {
    try {
      parseAppraisalPolicy(input);
      throw new Error("expected a throw");
    } catch (error) {
      expect(error).toBeInstanceOf(ShieldError);
      expect((error as ShieldError).code).toBe("ERR_POLICY_MALFORMED");
      expect((error as ShieldError).violations.map((v) => v.field)).toContain(path);
    }
  });

  it("rejects malformed and oversized JSON text", () => {
    expect(() => parseAppraisalPolicy("{")).toThrow(ShieldError);
    expect(() => parseAppraisalPolicy(" ".repeat(1024 * 1024 + 1))).toThrow(
      expect.objectContaining({ code: "ERR_INPUT_TOO_LARGE" }),
    );
  });
});
