import { randomBytes } from "node:crypto";
import { beforeAll, describe, expect, it } from "vitest";
import {
  MAA_DEFAULT_POLICY_HASHES,
  sevSnpMaaClaims,
  sgxMaaClaims,
} from "../../../core/evidence/maa-claims.js";
import { parseSnpReport, snpClaims } from "../../../core/evidence/sevsnp/index.js";
import { parseSgxQuote, sgxClaims } from "../../../core/evidence/sgx/index.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../../core/evidence/simulated/sevsnp.js";
import {
  createSimulatedSgxPlatform,
  type SimulatedSgxPlatform,
} from "../../../core/evidence/simulated/sgx.js";
import type { SevSnpClaims, SgxClaims } from "../../../core/evidence/types.js";

let snp: SimulatedSnpPlatform;
let sgx: SimulatedSgxPlatform;

beforeAll(() => {
  snp = createSimulatedSnpPlatform({ rsaBits: 2048 });
  sgx = createSimulatedSgxPlatform();
});

const hex = (bytes: number): Buffer => randomBytes(bytes);

describe("sevSnpMaaClaims", () => {
  function claimsOf(fields: Parameters<SimulatedSnpPlatform["signReport"]>[0]): SevSnpClaims {
    return snpClaims(parseSnpReport(snp.signReport(fields)));
  }

  it("maps every report field to MAA's claim name and JSON type", () => {
    const fields = {
      guestSvn: 7,
      vmpl: 2,
      familyId: hex(16),
      imageId: hex(16),
      measurement: hex(48),
      hostData: hex(32),
      idKeyDigest: hex(48),
      authorKeyDigest: hex(48),
      reportId: hex(32),
      reportData: hex(64),
      // SMT allowed (bit 16), reserved bit 17, MIGRATE_MA (bit 18)
      policy: 0x70000n,
      reportedTcb: { bootloader: 3, tee: 1, snp: 8, microcode: 115 },
      // Different from REPORTED_TCB, to show which TCB the SVN claims come from.
      currentTcb: { bootloader: 9, tee: 9, snp: 9, microcode: 200 },
    };
    const claims = sevSnpMaaClaims(claimsOf(fields));
    expect(claims).toStrictEqual({
      "x-ms-attestation-type": "sevsnpvm",
      "x-ms-policy-hash": MAA_DEFAULT_POLICY_HASHES.sevsnpvm,
      "x-ms-sevsnpvm-authorkeydigest": fields.authorKeyDigest.toString("hex"),
      "x-ms-sevsnpvm-bootloader-svn": 3,
      "x-ms-sevsnpvm-familyId": fields.familyId.toString("hex"),
      "x-ms-sevsnpvm-guestsvn": 7,
      "x-ms-sevsnpvm-hostdata": fields.hostData.toString("hex"),
      "x-ms-sevsnpvm-idkeydigest": fields.idKeyDigest.toString("hex"),
      "x-ms-sevsnpvm-imageId": fields.imageId.toString("hex"),
      "x-ms-sevsnpvm-is-debuggable": false,
      "x-ms-sevsnpvm-launchmeasurement": fields.measurement.toString("hex"),
      "x-ms-sevsnpvm-microcode-svn": 115,
      "x-ms-sevsnpvm-migration-allowed": true,
      "x-ms-sevsnpvm-reportdata": fields.reportData.toString("hex"),
      "x-ms-sevsnpvm-reportid": fields.reportId.toString("hex"),
      "x-ms-sevsnpvm-smt-allowed": true,
      "x-ms-sevsnpvm-snpfw-svn": 8,
      "x-ms-sevsnpvm-tee-svn": 1,
      "x-ms-sevsnpvm-vmpl": 2,
      "x-ms-ver": "1.0",
    });
  });

  it("writes hex in lowercase with MAA's lengths", () => {
    const claims = sevSnpMaaClaims(
      claimsOf({ measurement: Buffer.alloc(48, 0xab), hostData: Buffer.alloc(32, 0xcd) }),
    );
    expect(claims["x-ms-sevsnpvm-launchmeasurement"]).toBe("ab".repeat(48));
    expect(claims["x-ms-sevsnpvm-hostdata"]).toBe("cd".repeat(32));
    expect(claims["x-ms-sevsnpvm-reportdata"]).toMatch(/^[0-9a-f]{128}$/);
    expect(claims["x-ms-sevsnpvm-familyId"]).toMatch(/^[0-9a-f]{32}$/);
    expect(claims["x-ms-sevsnpvm-reportid"]).toMatch(/^[0-9a-f]{64}$/);
  });

  it("reports a debuggable guest with SMT and migration off", () => {
    const claims = sevSnpMaaClaims(claimsOf({ policy: 0x20000n, debug: true }));
    expect(claims["x-ms-sevsnpvm-is-debuggable"]).toBe(true);
    expect(claims["x-ms-sevsnpvm-smt-allowed"]).toBe(false);
    expect(claims["x-ms-sevsnpvm-migration-allowed"]).toBe(false);
  });

  it("adds x-ms-runtime, x-ms-inittime and x-ms-compliance-status only when given", () => {
    const base = claimsOf({});
    const bare = sevSnpMaaClaims(base);
    for (const name of ["x-ms-runtime", "x-ms-inittime", "x-ms-compliance-status"]) {
      expect(Object.hasOwn(bare, name)).toBe(false);
    }
    const runtime = { keys: [{ kid: "k1", kty: "RSA", key_ops: ["encrypt"], e: "AQAB", n: "abc" }] };
    const full = sevSnpMaaClaims(base, {
      runtime,
      inittime: { policy: "p" },
      complianceStatus: "azure-compliant-uvm",
      policyHash: "custom-hash",
    });
    expect(full["x-ms-runtime"]).toBe(runtime);
    expect(full["x-ms-inittime"]).toEqual({ policy: "p" });
    expect(full["x-ms-compliance-status"]).toBe("azure-compliant-uvm");
    expect(full["x-ms-policy-hash"]).toBe("custom-hash");
  });

  it("refuses caller misuse with TypeError", () => {
    expect(() => sevSnpMaaClaims(null as unknown as SevSnpClaims)).toThrow(TypeError);
    expect(() => sevSnpMaaClaims(claimsOf({}), { complianceStatus: "" })).toThrow(TypeError);
    expect(() => sevSnpMaaClaims(claimsOf({}), { complianceStatus: 7 as unknown as string })).toThrow(
      TypeError,
    );
  });
});

describe("sgxMaaClaims", () => {
  function claimsOf(fields: Parameters<SimulatedSgxPlatform["generateQuote"]>[0]): SgxClaims {
    return sgxClaims(parseSgxQuote(sgx.generateQuote(fields)));
  }

  it("maps the quote to MAA's claims, with the older names MAA's default policy issues", () => {
    const mrEnclave = hex(32).toString("hex");
    const mrSigner = hex(32).toString("hex");
    const reportData = hex(64);
    const runtimeData = Buffer.from("This is some runtime data");
    const claims = sgxMaaClaims(
      claimsOf({ mrEnclave, mrSigner, isvProdId: 3, isvSvn: 9, reportData, debug: false }),
      { runtimeData },
    );
    const policy = {
      "is-debuggable": false,
      "product-id": 3,
      "sgx-mrenclave": mrEnclave,
      "sgx-mrsigner": mrSigner,
      svn: 9,
      tee: "sgx",
    };
    expect(claims).toStrictEqual({
      // The same value MAA put in a real token for this runtime data: base64url, no padding.
      "aas-ehd": "VGhpcyBpcyBzb21lIHJ1bnRpbWUgZGF0YQ",
      ...policy,
      "maa-ehd": "VGhpcyBpcyBzb21lIHJ1bnRpbWUgZGF0YQ",
      "x-ms-attestation-type": "sgx",
      "x-ms-policy": policy,
      "x-ms-policy-hash": MAA_DEFAULT_POLICY_HASHES.sgx,
      "x-ms-sgx-ehd": "VGhpcyBpcyBzb21lIHJ1bnRpbWUgZGF0YQ",
      "x-ms-sgx-is-debuggable": false,
      "x-ms-sgx-mrenclave": mrEnclave,
      "x-ms-sgx-mrsigner": mrSigner,
      "x-ms-sgx-product-id": 3,
      "x-ms-sgx-report-data": reportData.toString("hex"),
      "x-ms-sgx-svn": 9,
      "x-ms-ver": "1.0",
    });
  });

  it("reports a debuggable enclave in every debug claim", () => {
    const claims = sgxMaaClaims(claimsOf({ debug: true }));
    expect(claims["x-ms-sgx-is-debuggable"]).toBe(true);
    expect(claims["is-debuggable"]).toBe(true);
    expect(claims["x-ms-policy"]["is-debuggable"]).toBe(true);
  });

  it("leaves the enclave-held-data claims out without runtime data, and adds x-ms-runtime for JSON", () => {
    const bare = sgxMaaClaims(claimsOf({}));
    for (const name of ["aas-ehd", "maa-ehd", "x-ms-sgx-ehd", "x-ms-runtime"]) {
      expect(Object.hasOwn(bare, name)).toBe(false);
    }
    const runtime = { keys: [] };
    const withJson = sgxMaaClaims(claimsOf({}), { runtimeData: Buffer.from('{"keys":[]}'), runtime });
    expect(withJson["x-ms-runtime"]).toBe(runtime);
    expect(withJson["x-ms-sgx-ehd"]).toBe(Buffer.from('{"keys":[]}').toString("base64url"));
  });

  it("refuses caller misuse with TypeError", () => {
    expect(() => sgxMaaClaims(undefined as unknown as SgxClaims)).toThrow(TypeError);
    expect(() => sgxMaaClaims(claimsOf({}), { runtimeData: "text" as unknown as Uint8Array })).toThrow(
      TypeError,
    );
  });
});
