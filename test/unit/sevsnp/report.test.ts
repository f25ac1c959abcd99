import { describe, expect, it } from "vitest";
import {
  SNP_REPORT_SIZE,
  decodeSnpPolicy,
  decodeSnpTcb,
  encodeSnpReport,
  encodeSnpTcb,
  isSnpReport,
  parseSnpReport,
  snpClaims,
  snpProductFromCpuid,
  writeSnpSignature,
  type SnpReportFields,
} from "../../../core/evidence/sevsnp/index.js";
import { expectCode, flipped, withU32 } from "./helpers.js";

const bytes = (n: number, fill: number): Buffer => Buffer.alloc(n, fill);
const tcb = { bootloader: 3, tee: 0, snp: 8, microcode: 115 };

function fields(overrides: Partial<SnpReportFields> = {}): SnpReportFields {
  return {
    version: 3,
    guestSvn: 4,
    policy: 0x3001fn,
    familyId: bytes(16, 0x01),
    imageId: bytes(16, 0x02),
    vmpl: 1,
    signatureAlgo: 1,
    currentTcb: { bootloader: 4, tee: 0, snp: 24, microcode: 219 },
    platformInfo: 0x25n,
    authorKeyEn: true,
    maskChipKey: false,
    signingKey: "vcek",
    reportData: bytes(64, 0x03),
    measurement: bytes(48, 0x04),
    hostData: bytes(32, 0x05),
    idKeyDigest: bytes(48, 0x06),
    authorKeyDigest: bytes(48, 0x07),
    reportId: bytes(32, 0x08),
    reportIdMa: bytes(32, 0xff),
    reportedTcb: tcb,
    cpuid: { family: 0x19, model: 0x11, stepping: 0x01 },
    chipId: bytes(64, 0x09),
    committedTcb: tcb,
    currentVersion: { major: 1, minor: 55, build: 21 },
    committedVersion: { major: 1, minor: 55, build: 20 },
    launchTcb: tcb,
    ...overrides,
  };
}

describe("parseSnpReport", () => {
  it("reads every field at its offset", () => {
    const raw = encodeSnpReport(fields());
    writeSnpSignature(
      raw,
      Buffer.concat([bytes(47, 0), Buffer.from([0xaa]), bytes(47, 0), Buffer.from([0xbb])]),
    );
    const r = parseSnpReport(raw);
    expect(r.version).toBe(3);
    expect(r.guestSvn).toBe(4);
    expect(r.policy.value).toBe(0x3001fn);
    expect(r.policy).toMatchObject({
      abiMinor: 0x1f,
      abiMajor: 0,
      smt: true,
      debug: false,
      migrateMa: false,
    });
    expect(r.familyId).toEqual(bytes(16, 1));
    expect(r.imageId).toEqual(bytes(16, 2));
    expect(r.vmpl).toBe(1);
    expect(r.signatureAlgo).toBe(1);
    expect(r.currentTcb).toMatchObject({ bootloader: 4, snp: 24, microcode: 219, raw: "db18000000000004" });
    expect(r.platformInfo).toMatchObject({
      value: 0x25n,
      smtEnabled: true,
      tsmeEnabled: false,
      eccEnabled: true,
      aliasCheckComplete: true,
    });
    expect(r.flags).toBe(1);
    expect(r.authorKeyEn).toBe(true);
    expect(r.maskChipKey).toBe(false);
    expect(r.signingKey).toBe("vcek");
    expect(r.reportData).toEqual(bytes(64, 3));
    expect(r.measurement).toEqual(bytes(48, 4));
    expect(r.hostData).toEqual(bytes(32, 5));
    expect(r.idKeyDigest).toEqual(bytes(48, 6));
    expect(r.authorKeyDigest).toEqual(bytes(48, 7));
    expect(r.reportId).toEqual(bytes(32, 8));
    expect(r.reportIdMa).toEqual(bytes(32, 0xff));
    expect(r.reportedTcb).toMatchObject({ ...tcb, value: 0x7308000000000003n, raw: "7308000000000003" });
    expect(r.cpuid).toEqual({ family: 0x19, model: 0x11, stepping: 1 });
    expect(r.product).toBe("Genoa");
    expect(r.chipId).toEqual(bytes(64, 9));
    expect(r.committedTcb.raw).toBe("7308000000000003");
    expect(r.currentVersion).toEqual({ major: 1, minor: 55, build: 21 });
    expect(r.committedVersion).toEqual({ major: 1, minor: 55, build: 20 });
    expect(r.launchTcb.raw).toBe("7308000000000003");
    expect(r.launchMitVector).toBeUndefined();
    expect(r.signedBytes.length).toBe(0x2a0);
    expect(r.signedBytes).toEqual(raw.subarray(0, 0x2a0));
    // R and S are stored little-endian; the parser gives them big-endian
    expect(r.signature.r.length).toBe(72);
    expect(r.signature.r[71]).toBe(0xaa);
    expect(r.signature.s[71]).toBe(0xbb);
    expect(r.signature.r.subarray(0, 71)).toEqual(bytes(71, 0));
  });

  it("copies its input and marks its output as genuine", () => {
    const raw = encodeSnpReport(fields());
    const r = parseSnpReport(raw);
    raw.fill(0xee, 0x90, 0xc0);
    expect(r.measurement).toEqual(bytes(48, 4));
    expect(isSnpReport(r)).toBe(true);
    expect(isSnpReport({ ...r })).toBe(false);
    expect(Object.isFrozen(r)).toBe(true);
  });

  it("reads version 2 without CPUID and version 5 with mitigation vectors", () => {
    const v2 = parseSnpReport(encodeSnpReport(fields({ version: 2 })));
    expect(v2.cpuid).toBeUndefined();
    expect(v2.product).toBe("unknown");
    const v4 = parseSnpReport(encodeSnpReport(fields({ version: 4 })));
    expect(v4.cpuid?.family).toBe(0x19);
    const v5 = parseSnpReport(
      encodeSnpReport(fields({ version: 5, launchMitVector: 0x11n, currentMitVector: 0x13n })),
    );
    expect(v5.launchMitVector).toBe(0x11n);
    expect(v5.currentMitVector).toBe(0x13n);
    expect(snpClaims(v5).launchMitVector).toBe("0000000000000011");
  });

  it("decodes Turin TCBs with the Turin layout", () => {
    const turinTcb = { fmc: 1, bootloader: 2, tee: 3, snp: 4, microcode: 5 };
    const r = parseSnpReport(
      encodeSnpReport(fields({ cpuid: { family: 0x1a, model: 0x02, stepping: 0 }, reportedTcb: turinTcb })),
    );
    expect(r.product).toBe("Turin");
    expect(r.tcbLayout).toBe("turin");
    expect(r.reportedTcb).toMatchObject(turinTcb);
    expect(r.reportedTcb.raw).toBe("0500000004030201");
  });

  it("rejects wrong sizes", () => {
    const raw = encodeSnpReport(fields());
    for (const size of [0, 1, SNP_REPORT_SIZE - 1, SNP_REPORT_SIZE + 1, 4096]) {
      const input = Buffer.alloc(size);
      raw.copy(input, 0, 0, Math.min(size, raw.length));
      expectCode(() => parseSnpReport(input), "ERR_EVIDENCE_MALFORMED");
    }
  });

  it("rejects versions whose layout is not known", () => {
    for (const version of [0, 1, 6, 0xffffffff]) {
      expectCode(
        () => parseSnpReport(withU32(encodeSnpReport(fields()), 0, version)),
        "ERR_EVIDENCE_VERSION",
      );
    }
  });

  it("rejects signature algorithms other than ECDSA P-384/SHA-384", () => {
    for (const algo of [0, 2, 0x100]) {
      expectCode(
        () => parseSnpReport(withU32(encodeSnpReport(fields()), 0x34, algo)),
        "ERR_EVIDENCE_UNSUPPORTED",
      );
    }
  });

  it("rejects unsigned reports and reserved signing keys", () => {
    for (const key of [2, 6, 7]) {
      expectCode(
        () => parseSnpReport(withU32(encodeSnpReport(fields()), 0x48, key << 2)),
        "ERR_EVIDENCE_UNSUPPORTED",
      );
    }
  });

  it("rejects non-zero reserved bytes for the report's version", () => {
    const v3 = encodeSnpReport(fields());
    for (const offset of [0x4c, 0x18b, 0x19f, 0x1eb, 0x1ef, 0x1f8, 0x29f, 0x2a0 + 144, 0x49f]) {
      expectCode(() => parseSnpReport(flipped(v3, offset)), "ERR_EVIDENCE_MALFORMED");
    }
    expectCode(() => parseSnpReport(withU32(v3, 0x48, 1 << 5)), "ERR_EVIDENCE_MALFORMED");
    // 0x188 holds CPUID in version 3 but is reserved in version 2
    const v2 = encodeSnpReport(fields({ version: 2 }));
    expectCode(() => parseSnpReport(flipped(v2, 0x188)), "ERR_EVIDENCE_MALFORMED");
    // 0x1F8 holds LAUNCH_MIT_VECTOR in version 5
    const v5 = encodeSnpReport(fields({ version: 5 }));
    expect(parseSnpReport(flipped(v5, 0x1f8)).launchMitVector).toBe(1n);
    expectCode(() => parseSnpReport(flipped(v5, 0x208)), "ERR_EVIDENCE_MALFORMED");
  });

  it("throws TypeError for non-bytes", () => {
    expect(() => parseSnpReport("report" as unknown as Uint8Array)).toThrow(TypeError);
  });
});

describe("report field helpers", () => {
  it("decodes and encodes TCB versions", () => {
    expect(decodeSnpTcb(0x7308000000000003n, "milan-genoa")).toMatchObject({
      bootloader: 3,
      tee: 0,
      snp: 8,
      microcode: 0x73,
    });
    expect(decodeSnpTcb(0x541700000000000an, "milan-genoa")).toMatchObject({
      bootloader: 10,
      tee: 0,
      snp: 23,
      microcode: 84,
    });
    expect(encodeSnpTcb(tcb, "milan-genoa")).toBe(0x7308000000000003n);
    expect(encodeSnpTcb({ fmc: 1, bootloader: 2, tee: 3, snp: 4, microcode: 5 }, "turin")).toBe(
      0x0500000004030201n,
    );
    expect(() => encodeSnpTcb({ ...tcb, microcode: 256 }, "milan-genoa")).toThrow(TypeError);
  });

  it("decodes guest policy bits", () => {
    expect(decodeSnpPolicy(0xb0000n)).toMatchObject({
      smt: true,
      debug: true,
      migrateMa: false,
      singleSocket: false,
    });
    expect(decodeSnpPolicy(0x30000n | (1n << 20n) | (1n << 18n))).toMatchObject({
      singleSocket: true,
      migrateMa: true,
      debug: false,
    });
    expect(decodeSnpPolicy(0x20000n | (0x3n << 21n))).toMatchObject({
      cxlAllowed: true,
      memAes256Xts: true,
      raplDisabled: false,
    });
    expect(decodeSnpPolicy(0x0a01n)).toMatchObject({ abiMajor: 10, abiMinor: 1 });
  });

  it("names products from CPUID family and model", () => {
    expect(snpProductFromCpuid(0x19, 0x01)).toBe("Milan");
    expect(snpProductFromCpuid(0x19, 0x11)).toBe("Genoa");
    expect(snpProductFromCpuid(0x19, 0xa0)).toBe("Genoa");
    expect(snpProductFromCpuid(0x1a, 0x02)).toBe("Turin");
    expect(snpProductFromCpuid(0x17, 0x31)).toBe("unknown");
  });

  it("refuses byte fields of the wrong size when encoding", () => {
    expect(() => encodeSnpReport(fields({ measurement: bytes(32, 0) }))).toThrow(TypeError);
  });
});
