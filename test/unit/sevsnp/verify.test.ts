import { createHash, generateKeyPairSync, type X509Certificate } from "node:crypto";
import { beforeAll, describe, expect, it } from "vitest";
import { buildCertificate, derToPem, type DistinguishedName } from "../../../core/x509/certificate.js";
import {
  amdRootsTrust,
  createSnpVerifier,
  parseSnpReport,
  verifySnpEvidence,
  buildMaaSnpEnvelope,
  type SnpVerifier,
} from "../../../core/evidence/sevsnp/index.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../../core/evidence/simulated/sevsnp.js";
import { AT, expectCode, flipped, shieldError } from "./helpers.js";
import { malformedSnpChain, textForms, type MalformedSnpChain } from "../../support/malformed-evidence.js";

const ORG = "Shield-ACC simulated TEE";
const name = (cn: string): DistinguishedName => [
  ["O", ORG],
  ["CN", cn],
];

const rogue = generateKeyPairSync("rsa", { modulusLength: 2048 });

/** An intermediate with the same name and key as `original`, but signed by a key no ARK owns. */
function forgedIntermediate(original: X509Certificate, cn: string): X509Certificate {
  return buildCertificate({
    subject: name(cn),
    issuer: name("ARK-Simulated"),
    serialNumber: 2n,
    notBefore: new Date("2020-01-01T00:00:00Z"),
    notAfter: new Date("2049-12-31T23:59:59Z"),
    publicKey: original.publicKey,
    signingKey: rogue.privateKey,
    signatureAlgorithm: "rsa-pss-sha384",
    isCa: true,
  });
}

describe("SEV-SNP verifier", () => {
  let vcekPlatform: SimulatedSnpPlatform;
  let vlekPlatform: SimulatedSnpPlatform;
  let otherPlatform: SimulatedSnpPlatform;
  let shortPlatform: SimulatedSnpPlatform;
  let turinPlatform: SimulatedSnpPlatform;
  let verifier: SnpVerifier;
  const runtimeData = Buffer.from('{"keys":[]}');
  const reportData = createHash("sha256").update(runtimeData).digest();

  beforeAll(() => {
    vcekPlatform = createSimulatedSnpPlatform({ rsaBits: 2048 });
    vlekPlatform = createSimulatedSnpPlatform({ rsaBits: 2048, signingKey: "vlek" });
    otherPlatform = createSimulatedSnpPlatform({ rsaBits: 2048 });
    shortPlatform = createSimulatedSnpPlatform({
      rsaBits: 2048,
      notBefore: new Date("2025-01-01T00:00:00Z"),
      notAfter: new Date("2028-01-01T00:00:00Z"),
    });
    turinPlatform = createSimulatedSnpPlatform({
      rsaBits: 2048,
      product: "Turin",
      reportedTcb: { fmc: 1, bootloader: 2, tee: 3, snp: 4, microcode: 5 },
    });
    verifier = createSnpVerifier({
      trustedRoots: [vcekPlatform.ark, vlekPlatform.ark, shortPlatform.ark, turinPlatform.ark],
    });
  });

  const input = (p: SimulatedSnpPlatform, report: Uint8Array) => ({
    report,
    vcek: p.leaf,
    chain: [p.intermediate, p.ark],
    at: AT,
  });

  describe("a good report", () => {
    it("verifies and yields the claims it was signed with", () => {
      const measurement = Buffer.alloc(48, 0xa1);
      const hostData = Buffer.alloc(32, 0xb2);
      const report = vcekPlatform.signReport({ reportData, measurement, hostData, guestSvn: 7, vmpl: 0 });
      const result = verifier.verify({ ...input(vcekPlatform, report), expectedReportData: reportData });
      expect(result.signer).toBe("vcek");
      expect(result.product).toBe("Milan");
      const c = result.claims;
      expect(c.version).toBe(3);
      expect(c.guestSvn).toBe(7);
      expect(c.vmpl).toBe(0);
      expect(c.measurement).toBe(measurement.toString("hex"));
      expect(c.hostData).toBe(hostData.toString("hex"));
      expect(c.reportData).toBe(reportData.toString("hex") + "00".repeat(32));
      expect(c.debug).toBe(false);
      expect(c.policy).toMatchObject({
        raw: "0000000000030000",
        abiMajor: 0,
        abiMinor: 0,
        smt: true,
        debug: false,
      });
      expect(c.policy.migrateMa).toBe(false);
      expect(c.policy.singleSocket).toBe(false);
      expect(c.reportedTcb).toEqual({
        bootloader: 3,
        tee: 0,
        snp: 8,
        microcode: 115,
        raw: "7308000000000003",
      });
      expect(c.chipId).toBe(vcekPlatform.chipId.toString("hex"));
      expect(c.signingKey).toBe("vcek");
      expect(c.cpuid).toEqual({ family: 0x19, model: 0x01, stepping: 0x01 });
      expect(c.platformInfo.smtEnabled).toBe(true);
      expect(c.measurement).toMatch(/^[0-9a-f]{96}$/);
    });

    it("reports the debug policy bit", () => {
      const report = vcekPlatform.signReport({ debug: true });
      const { claims } = verifier.verify(input(vcekPlatform, report));
      expect(claims.debug).toBe(true);
      expect(claims.policy.debug).toBe(true);
      expect(claims.policy.raw).toBe("00000000000b0000");
    });

    it("accepts a report already parsed, and a chain in any order", () => {
      const report = parseSnpReport(vcekPlatform.signReport());
      const result = verifier.verify({
        ...input(vcekPlatform, report.raw),
        report,
        chain: [vcekPlatform.ark, vcekPlatform.intermediate],
      });
      expect(result.report).toBe(report);
    });

    it("accepts version 2 and version 5 reports", () => {
      const v2 = verifier.verify(input(vcekPlatform, vcekPlatform.signReport({ version: 2 })));
      expect(v2.claims.cpuid).toBeUndefined();
      expect(v2.product).toBe("Milan"); // from the chain's names
      const v5 = verifier.verify(
        input(
          vcekPlatform,
          vcekPlatform.signReport({ version: 5, launchMitVector: 3n, currentMitVector: 7n }),
        ),
      );
      expect(v5.claims.launchMitVector).toBe("0000000000000003");
      expect(v5.claims.currentMitVector).toBe("0000000000000007");
    });

    it("verifies Turin reports with the Turin TCB layout and an 8-byte hardware ID", () => {
      const result = verifier.verify(input(turinPlatform, turinPlatform.signReport()));
      expect(result.product).toBe("Turin");
      expect(result.claims.reportedTcb).toMatchObject({
        fmc: 1,
        bootloader: 2,
        tee: 3,
        snp: 4,
        microcode: 5,
      });
      expect(result.claims.chipId.slice(16)).toBe("00".repeat(56));
    });

    it("verifies through the one-call form, from parts and from an MAA envelope", () => {
      const report = vcekPlatform.signReport({ reportData });
      const options = { trustedRoots: [vcekPlatform.ark], at: AT, expectedReportData: reportData };
      expect(
        verifySnpEvidence(
          { report, vcek: vcekPlatform.leaf, chain: [vcekPlatform.intermediate, vcekPlatform.ark] },
          options,
        ).signer,
      ).toBe("vcek");
      const envelope = buildMaaSnpEnvelope({
        report,
        vcek: vcekPlatform.leafPem,
        chain: vcekPlatform.chainPem,
      });
      expect(
        verifySnpEvidence(envelope, options).claims.reportData.startsWith(reportData.toString("hex")),
      ).toBe(true);
    });
  });

  describe("check 1: parse", () => {
    it("rejects a report of the wrong size", () => {
      const report = vcekPlatform.signReport();
      expectCode(
        () => verifier.verify(input(vcekPlatform, report.subarray(0, 1183))),
        "ERR_EVIDENCE_MALFORMED",
      );
      expectCode(
        () => verifier.verify(input(vcekPlatform, Buffer.concat([report, Buffer.alloc(1)]))),
        "ERR_EVIDENCE_MALFORMED",
      );
    });

    it("rejects an unknown version even when correctly signed", () => {
      expectCode(
        () => verifier.verify(input(vcekPlatform, vcekPlatform.signReport({ version: 6 }))),
        "ERR_EVIDENCE_VERSION",
      );
    });

    it("rejects a signature algorithm other than ECDSA P-384", () => {
      expectCode(
        () => verifier.verify(input(vcekPlatform, vcekPlatform.signReport({ signatureAlgo: 2 }))),
        "ERR_EVIDENCE_UNSUPPORTED",
      );
    });
  });

  describe("check 2: trusted root", () => {
    it("rejects a chain whose ARK is not trusted", () => {
      const report = otherPlatform.signReport();
      expectCode(() => verifier.verify(input(otherPlatform, report)), "ERR_EVIDENCE_UNTRUSTED_ROOT");
    });

    it("does not trust the simulated ARK when only AMD's roots are configured", () => {
      const amdOnly = createSnpVerifier({ trustedRoots: amdRootsTrust() });
      expectCode(
        () => amdOnly.verify(input(vcekPlatform, vcekPlatform.signReport())),
        "ERR_EVIDENCE_UNTRUSTED_ROOT",
      );
    });

    it("trusts a simulated ARK named by its SPKI fingerprint", () => {
      const fingerprint = createHash("sha256")
        .update(vcekPlatform.ark.publicKey.export({ type: "spki", format: "der" }))
        .digest("hex");
      const byFingerprint = createSnpVerifier({ trustedRoots: [fingerprint] });
      expect(byFingerprint.verify(input(vcekPlatform, vcekPlatform.signReport())).signer).toBe("vcek");
    });

    it("rejects a chain without an ARK unless the ARK certificate itself is configured", () => {
      const report = vcekPlatform.signReport();
      const noArk = { ...input(vcekPlatform, report), chain: [vcekPlatform.intermediate] };
      const byFingerprint = createSnpVerifier({ trustedRoots: amdRootsTrust() });
      expectCode(() => byFingerprint.verify(noArk), "ERR_EVIDENCE_UNTRUSTED_ROOT");
      expect(verifier.verify(noArk).signer).toBe("vcek");
    });
  });

  describe("check 3: certificate chain", () => {
    it("rejects an ASK signed by another ARK", () => {
      const forged = forgedIntermediate(vcekPlatform.intermediate, "SEV-Milan");
      const report = vcekPlatform.signReport();
      const error = expectCode(
        () => verifier.verify({ ...input(vcekPlatform, report), chain: [forged, vcekPlatform.ark] }),
        "ERR_EVIDENCE_CHAIN",
      );
      expect(error.message).toMatch(/ASK signature/);
    });

    it("rejects a VCEK issued by another platform's ASK", () => {
      const report = otherPlatform.signReport();
      expectCode(
        () =>
          verifier.verify({
            ...input(otherPlatform, report),
            chain: [vcekPlatform.intermediate, vcekPlatform.ark],
          }),
        "ERR_EVIDENCE_CHAIN",
      );
    });

    it("verifies a VLEK report with the ASVK, ignoring an ASK in the same bundle", () => {
      const decoyAsk = forgedIntermediate(vlekPlatform.intermediate, "SEV-Milan");
      const report = vlekPlatform.signReport({ reportData });
      const result = verifier.verify({
        ...input(vlekPlatform, report),
        chain: [decoyAsk, vlekPlatform.ark, vlekPlatform.intermediate],
      });
      expect(result.signer).toBe("vlek");
      expect(result.claims.signingKey).toBe("vlek");
      expect(result.claims.chipId).toBe("00".repeat(64));
    });

    it("rejects a VLEK report when the chain only has an ASK", () => {
      const report = vlekPlatform.signReport();
      const forgedAsk = forgedIntermediate(vlekPlatform.intermediate, "SEV-Milan");
      const error = expectCode(
        () => verifier.verify({ ...input(vlekPlatform, report), chain: [forgedAsk, vlekPlatform.ark] }),
        "ERR_EVIDENCE_CHAIN",
      );
      expect(error.message).toMatch(/no ASVK/);
    });

    it("rejects a report whose SIGNING_KEY says VLEK when the leaf is a VCEK", () => {
      const claimsVlek = vcekPlatform.signReport({ signingKey: "vlek" });
      expectCode(() => verifier.verify(input(vcekPlatform, claimsVlek)), "ERR_EVIDENCE_CHAIN");
    });
  });

  describe("check 4: certificate validity", () => {
    it("rejects a chain used after its notAfter, naming the VCEK", () => {
      const report = shortPlatform.signReport();
      const error = expectCode(
        () => verifier.verify({ ...input(shortPlatform, report), at: new Date("2028-01-02T00:00:00Z") }),
        "ERR_EVIDENCE_CERT_EXPIRED",
      );
      expect(error.violations.map((v) => v.field)).toContain("VCEK.validity");
    });

    it("rejects a chain used before its notBefore", () => {
      const report = shortPlatform.signReport();
      expectCode(
        () => verifier.verify({ ...input(shortPlatform, report), at: new Date("2024-12-31T00:00:00Z") }),
        "ERR_EVIDENCE_CERT_EXPIRED",
      );
    });

    it("accepts the same chain inside its validity", () => {
      const report = shortPlatform.signReport();
      expect(
        verifier.verify({ ...input(shortPlatform, report), at: new Date("2027-12-31T00:00:00Z") }).signer,
      ).toBe("vcek");
    });
  });

  describe("check 5: report signature", () => {
    it("rejects a report with a flipped byte in the signed area", () => {
      const report = vcekPlatform.signReport();
      expectCode(() => verifier.verify(input(vcekPlatform, flipped(report, 0x90))), "ERR_EVIDENCE_SIGNATURE");
      expectCode(() => verifier.verify(input(vcekPlatform, flipped(report, 0x50))), "ERR_EVIDENCE_SIGNATURE");
    });

    it("rejects a report with a flipped signature byte", () => {
      const report = vcekPlatform.signReport();
      expectCode(
        () => verifier.verify(input(vcekPlatform, flipped(report, 0x2a0))),
        "ERR_EVIDENCE_SIGNATURE",
      );
      expectCode(
        () => verifier.verify(input(vcekPlatform, flipped(report, 0x2e8 + 10))),
        "ERR_EVIDENCE_SIGNATURE",
      );
    });

    it("rejects R or S values wider than P-384 allows", () => {
      const report = vcekPlatform.signReport();
      expectCode(
        () => verifier.verify(input(vcekPlatform, flipped(report, 0x2a0 + 48))),
        "ERR_EVIDENCE_SIGNATURE",
      );
    });

    it("rejects a report signed by another chip's VCEK", () => {
      const report = otherPlatform.signReport();
      expectCode(() => verifier.verify({ ...input(vcekPlatform, report) }), "ERR_EVIDENCE_SIGNATURE");
    });
  });

  describe("check 6: reported TCB", () => {
    it("rejects a report whose REPORTED_TCB is not the VCEK's TCB, listing each difference", () => {
      const report = vcekPlatform.signReport({
        reportedTcb: { bootloader: 3, tee: 0, snp: 9, microcode: 116 },
      });
      const error = expectCode(
        () => verifier.verify(input(vcekPlatform, report)),
        "ERR_EVIDENCE_TCB_MISMATCH",
      );
      expect(error.violations).toEqual([
        { field: "reportedTcb.snp", expected: "8", actual: "9" },
        { field: "reportedTcb.microcode", expected: "115", actual: "116" },
      ]);
    });

    it("compares the FMC SPL on Turin", () => {
      const report = turinPlatform.signReport({
        reportedTcb: { fmc: 2, bootloader: 2, tee: 3, snp: 4, microcode: 5 },
      });
      const error = expectCode(
        () => verifier.verify(input(turinPlatform, report)),
        "ERR_EVIDENCE_TCB_MISMATCH",
      );
      expect(error.violations).toEqual([{ field: "reportedTcb.fmc", expected: "1", actual: "2" }]);
    });

    it("does not check the current TCB against the VCEK", () => {
      const report = vcekPlatform.signReport({
        currentTcb: { bootloader: 9, tee: 9, snp: 9, microcode: 200 },
      });
      expect(verifier.verify(input(vcekPlatform, report)).claims.currentTcb.microcode).toBe(200);
    });
  });

  describe("check 7: chip ID", () => {
    it("rejects a report whose CHIP_ID is not the VCEK's hardware ID", () => {
      const report = vcekPlatform.signReport({ chipId: Buffer.alloc(64, 0x5a) });
      const error = expectCode(
        () => verifier.verify(input(vcekPlatform, report)),
        "ERR_EVIDENCE_CHIP_MISMATCH",
      );
      expect(error.violations[0]).toMatchObject({ field: "chipId", actual: "5a".repeat(64) });
    });

    it("skips the chip check when MASK_CHIP_KEY is set", () => {
      const report = vcekPlatform.signReport({ maskChipKey: true });
      const { claims } = verifier.verify(input(vcekPlatform, report));
      expect(claims.maskChipKey).toBe(true);
      expect(claims.chipId).toBe("00".repeat(64));
    });

    it("skips the chip check for VLEK reports", () => {
      const report = vlekPlatform.signReport({ chipId: Buffer.alloc(64, 0x11) });
      expect(verifier.verify(input(vlekPlatform, report)).signer).toBe("vlek");
    });
  });

  describe("check 8: report data", () => {
    it("accepts 32 bytes (then 32 zero bytes) and 64 bytes", () => {
      const report = vcekPlatform.signReport({ reportData });
      expect(verifier.verify({ ...input(vcekPlatform, report), expectedReportData: reportData }).signer).toBe(
        "vcek",
      );
      const full = Buffer.concat([reportData, Buffer.alloc(32)]);
      expect(verifier.verify({ ...input(vcekPlatform, report), expectedReportData: full }).signer).toBe(
        "vcek",
      );
    });

    it("rejects a report whose REPORT_DATA differs, saying what was expected", () => {
      const report = vcekPlatform.signReport({ reportData });
      const other = createHash("sha256").update("other runtime data").digest();
      const error = expectCode(
        () => verifier.verify({ ...input(vcekPlatform, report), expectedReportData: other }),
        "ERR_EVIDENCE_REPORT_DATA",
      );
      expect(error.violations[0]).toMatchObject({
        field: "reportData",
        expected: other.toString("hex") + "00".repeat(32),
      });
    });

    it("does not accept 32 matching bytes when the upper half of REPORT_DATA is not zero", () => {
      const report = vcekPlatform.signReport({
        reportData: Buffer.concat([reportData, Buffer.alloc(32, 1)]),
      });
      expectCode(
        () => verifier.verify({ ...input(vcekPlatform, report), expectedReportData: reportData }),
        "ERR_EVIDENCE_REPORT_DATA",
      );
    });
  });

  describe("caller misuse", () => {
    it("throws TypeError for bad arguments", () => {
      const report = vcekPlatform.signReport();
      expect(() => verifier.verify({ ...input(vcekPlatform, report), at: new Date("nope") })).toThrow(
        TypeError,
      );
      expect(() =>
        verifier.verify({ ...input(vcekPlatform, report), expectedReportData: Buffer.alloc(16) }),
      ).toThrow(TypeError);
      const lookAlike = { ...parseSnpReport(report) };
      expect(() => verifier.verify({ ...input(vcekPlatform, report), report: lookAlike })).toThrow(TypeError);
      expect(() => createSnpVerifier({ trustedRoots: [] })).toThrow(TypeError);
      expect(() => createSnpVerifier({ trustedRoots: ["abc"] })).toThrow(TypeError);
    });
  });

  describe("chain cache", () => {
    it("never turns a failure into a success", () => {
      const cached = createSnpVerifier({ trustedRoots: [vcekPlatform.ark], chainCacheSize: 4 });
      const report = vcekPlatform.signReport();
      const good = input(vcekPlatform, report);
      expect(cached.verify(good).signer).toBe("vcek");
      const forged = forgedIntermediate(vcekPlatform.intermediate, "SEV-Milan");
      expectCode(() => cached.verify({ ...good, chain: [forged, vcekPlatform.ark] }), "ERR_EVIDENCE_CHAIN");
      expectCode(() => cached.verify({ ...good, chain: [forged, vcekPlatform.ark] }), "ERR_EVIDENCE_CHAIN");
      expectCode(
        () => cached.verify(input(otherPlatform, otherPlatform.signReport())),
        "ERR_EVIDENCE_UNTRUSTED_ROOT",
      );
      expect(cached.verify(good).signer).toBe("vcek");
    });

    it("still checks validity, signature and report fields on a cache hit", () => {
      const cached = createSnpVerifier({ trustedRoots: [vcekPlatform.ark] });
      const report = vcekPlatform.signReport({ reportData });
      cached.verify(input(vcekPlatform, report));
      expectCode(
        () => cached.verify({ ...input(vcekPlatform, report), at: new Date("2050-06-01T00:00:00Z") }),
        "ERR_EVIDENCE_CERT_EXPIRED",
      );
      expectCode(() => cached.verify(input(vcekPlatform, flipped(report, 0xc0))), "ERR_EVIDENCE_SIGNATURE");
      const tcb = vcekPlatform.signReport({ reportedTcb: { bootloader: 4, tee: 0, snp: 8, microcode: 115 } });
      expectCode(() => cached.verify(input(vcekPlatform, tcb)), "ERR_EVIDENCE_TCB_MISMATCH");
      expectCode(
        () => cached.verify({ ...input(vcekPlatform, report), expectedReportData: Buffer.alloc(32) }),
        "ERR_EVIDENCE_REPORT_DATA",
      );
    });

    it("keys on the signing key too: a VLEK-flagged report does not reuse a VCEK chain result", () => {
      const cached = createSnpVerifier({ trustedRoots: [vcekPlatform.ark] });
      const report = vcekPlatform.signReport();
      cached.verify(input(vcekPlatform, report));
      expectCode(
        () => cached.verify(input(vcekPlatform, flipped(report, 0x48, 0b100))),
        "ERR_EVIDENCE_CHAIN",
      );
    });

    it("works with the cache turned off and with a cache of one", () => {
      for (const size of [0, 1]) {
        const v = createSnpVerifier({
          trustedRoots: [vcekPlatform.ark, vlekPlatform.ark],
          chainCacheSize: size,
        });
        for (let i = 0; i < 2; i++) {
          expect(v.verify(input(vcekPlatform, vcekPlatform.signReport())).signer).toBe("vcek");
          expect(v.verify(input(vlekPlatform, vlekPlatform.signReport())).signer).toBe("vlek");
        }
      }
      expect(() => createSnpVerifier({ trustedRoots: [vcekPlatform.ark], chainCacheSize: -1 })).toThrow(
        TypeError,
      );
    });
  });

  it("never puts evidence bytes into error messages", () => {
    const report = vcekPlatform.signReport({ reportData });
    const error = shieldError(() => verifier.verify(input(vcekPlatform, flipped(report, 0x2a0))));
    expect(error.message).not.toContain(report.subarray(0x2a0, 0x2b0).toString("hex"));
    expect(JSON.stringify(error)).not.toContain(reportData.toString("hex"));
  });
});

describe("SEV-SNP verifier: certificates whose key does not decode", () => {
  let platform: SimulatedSnpPlatform;
  let bad: MalformedSnpChain;
  let verifier: SnpVerifier;

  beforeAll(() => {
    platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
    bad = malformedSnpChain();
    verifier = createSnpVerifier({ trustedRoots: [bad.ark], chainCacheSize: 4 });
  });

  /** Typed, terminal, and free of the key's bytes. */
  function expectChainError(f: () => unknown): void {
    const error = expectCode(f, "ERR_EVIDENCE_CHAIN");
    expect(error.transient).toBe(false);
    const text = `${error.message} ${JSON.stringify(error.toJSON())}`;
    for (const form of textForms(bad.point.subarray(1, 17))) expect(text).not.toContain(form);
  }

  it("refuses a VCEK whose SubjectPublicKeyInfo holds a P-384 point off the curve", () => {
    expect(bad.offCurveVcek.verify(bad.ask.publicKey)).toBe(true); // only the key is wrong
    const input = {
      report: platform.signReport(),
      vcek: bad.offCurveVcek,
      chain: [bad.ask, bad.ark],
      at: AT,
    };
    expectChainError(() => verifier.verify(input));
    // A failure is not cached into a success.
    expectChainError(() => verifier.verify(input));
  });

  it("gets past the chain with the same chain's well-formed certificates", () => {
    // The report is signed by another platform's key: the first check that can fail is check 5.
    const report = platform.signReport();
    expectCode(
      () => verifier.verify({ report, vcek: bad.vcek, chain: [bad.ask, bad.ark], at: AT }),
      "ERR_EVIDENCE_SIGNATURE",
    );
  });

  it("refuses an ASK whose key does not decode", () => {
    const report = platform.signReport();
    expectChainError(() =>
      verifier.verify({ report, vcek: bad.vcek, chain: [bad.offCurveAsk, bad.ark], at: AT }),
    );
  });

  it("refuses the same through the one-call form, from an MAA envelope", () => {
    const report = platform.signReport();
    const envelope = buildMaaSnpEnvelope({ report, vcek: bad.offCurveVcek, chain: [bad.ask, bad.ark] });
    expectChainError(() => verifySnpEvidence(envelope, { trustedRoots: [bad.ark], at: AT }));
  });

  it("refuses a garbage or truncated certificate in an envelope's chain", () => {
    const report = platform.signReport();
    const ask = bad.ask.raw;
    for (const chain of [
      "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
      derToPem(ask.subarray(0, ask.length - 1)) + derToPem(bad.ark.raw),
    ]) {
      const envelope = buildMaaSnpEnvelope({ report, vcek: platform.leafPem, chain });
      expectChainError(() => verifySnpEvidence(envelope, { trustedRoots: [bad.ark], at: AT }));
    }
  });

  it("treats a trusted root whose key does not decode as the caller's mistake", () => {
    expect(() => createSnpVerifier({ trustedRoots: [bad.offCurveAsk] })).toThrow(TypeError);
  });
});
