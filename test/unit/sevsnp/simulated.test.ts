import {
  createSimulatedSnpPlatform as createForState,
  exportSimulatedSnpPlatform,
  restoreSimulatedSnpPlatform,
  type SimulatedSnpPlatformState,
} from "../../../core/evidence/simulated/sevsnp.js";
import { createSnpVerifier } from "../../../core/evidence/sevsnp/index.js";
import { beforeAll, describe, expect, it } from "vitest";
import { KeyObject } from "node:crypto";
import { loadCertificates, readExtensions } from "../../../core/x509/certificate.js";
import { parseSnpReport } from "../../../core/evidence/sevsnp/index.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../../core/evidence/simulated/sevsnp.js";

const AMD_OID = "1.3.6.1.4.1.3704.1";

describe("simulated SEV-SNP platform", () => {
  let vcek: SimulatedSnpPlatform;
  let vlek: SimulatedSnpPlatform;

  beforeAll(() => {
    vcek = createSimulatedSnpPlatform({
      rsaBits: 2048,
      reportedTcb: { bootloader: 4, tee: 0, snp: 24, microcode: 219 },
    });
    vlek = createSimulatedSnpPlatform({ rsaBits: 2048, signingKey: "vlek", product: "Genoa" });
  });

  it("builds an AMD-shaped chain under a self-signed simulated ARK", () => {
    expect(vcek.ark.subject).toContain("CN=ARK-Simulated");
    expect(vcek.ark.subject).toContain("O=Shield-ACC simulated TEE");
    expect(vcek.ark.issuer).toBe(vcek.ark.subject);
    expect(vcek.ark.verify(vcek.ark.publicKey)).toBe(true);
    expect(vcek.ark.ca).toBe(true);
    expect(vcek.intermediate.subject).toContain("CN=SEV-Milan");
    expect(vcek.intermediate.verify(vcek.ark.publicKey)).toBe(true);
    expect(vcek.leaf.subject).toContain("CN=SEV-VCEK");
    expect(vcek.leaf.verify(vcek.intermediate.publicKey)).toBe(true);
    expect(vcek.leaf.publicKey.asymmetricKeyDetails?.namedCurve).toBe("secp384r1");
    expect(vlek.intermediate.subject).toContain("CN=SEV-VLEK-Genoa");
    expect(vlek.leaf.subject).toContain("CN=SEV-VLEK");
  });

  it("serves the chain as AMD KDS does: intermediate, then ARK", () => {
    const chain = loadCertificates(vcek.chainPem);
    expect(chain.map((c) => c.raw)).toEqual([vcek.intermediate.raw, vcek.ark.raw]);
    expect(loadCertificates(vcek.leafPem)[0]!.raw).toEqual(vcek.leaf.raw);
  });

  it("encodes the VCEK extensions as AMD does: SPLs as INTEGER, hardware ID as raw bytes", () => {
    const ext = readExtensions(vcek.leaf);
    expect(ext.get(`${AMD_OID}.3.1`)?.value).toEqual(Buffer.from([0x02, 0x01, 0x04]));
    expect(ext.get(`${AMD_OID}.3.2`)?.value).toEqual(Buffer.from([0x02, 0x01, 0x00]));
    expect(ext.get(`${AMD_OID}.3.3`)?.value).toEqual(Buffer.from([0x02, 0x01, 0x18]));
    // 219 needs a leading zero byte to stay positive, as in real VCEKs (02 02 00 DB)
    expect(ext.get(`${AMD_OID}.3.8`)?.value).toEqual(Buffer.from([0x02, 0x02, 0x00, 0xdb]));
    expect(ext.get(`${AMD_OID}.4`)?.value).toEqual(vcek.chipId);
    expect(vcek.chipId.length).toBe(64);
    expect(ext.get(`${AMD_OID}.2`)?.value).toEqual(Buffer.from([0x16, 0x05, ...Buffer.from("Milan")]));
  });

  it("gives a VLEK no hardware ID and zeroes CHIP_ID in its reports", () => {
    expect(readExtensions(vlek.leaf).has(`${AMD_OID}.4`)).toBe(false);
    const report = parseSnpReport(vlek.signReport());
    expect(report.signingKey).toBe("vlek");
    expect(report.chipId).toEqual(Buffer.alloc(64));
  });

  it("signs version 3 reports with the chosen fields and consistent defaults", () => {
    const report = parseSnpReport(
      vcek.signReport({
        reportData: Buffer.alloc(32, 1),
        hostData: Buffer.alloc(32, 2),
        vmpl: 2,
        guestSvn: 9,
      }),
    );
    expect(report.version).toBe(3);
    expect(report.reportData).toEqual(Buffer.concat([Buffer.alloc(32, 1), Buffer.alloc(32)]));
    expect(report.hostData).toEqual(Buffer.alloc(32, 2));
    expect(report.vmpl).toBe(2);
    expect(report.guestSvn).toBe(9);
    expect(report.reportedTcb).toMatchObject({ bootloader: 4, snp: 24, microcode: 219 });
    expect(report.chipId).toEqual(vcek.chipId);
    expect(report.policy.debug).toBe(false);
    expect(report.product).toBe("Milan");
    expect(parseSnpReport(vcek.signReport({ debug: true })).policy.debug).toBe(true);
    expect(() => vcek.signReport({ reportData: Buffer.alloc(16) })).toThrow(TypeError);
  });

  it("keeps the leaf private key inside", () => {
    const values = Object.values(vcek) as unknown[];
    expect(values.some((v) => v instanceof KeyObject)).toBe(false);
    expect(Object.isFrozen(vcek)).toBe(true);
    expect(JSON.stringify(Object.keys(vcek))).not.toMatch(/private/i);
  });

  it("rejects a chip ID of the wrong size", () => {
    expect(() => createSimulatedSnpPlatform({ rsaBits: 2048, chipId: Buffer.alloc(32) })).toThrow(TypeError);
  });
});

describe("simulated platform state", () => {
  it("restores a platform whose reports verify under the original root", () => {
    const original = createForState({ rsaBits: 2048 });
    const restored = restoreSimulatedSnpPlatform(
      JSON.parse(JSON.stringify(exportSimulatedSnpPlatform(original))) as SimulatedSnpPlatformState,
    );
    const report = restored.signReport({ reportData: Buffer.alloc(32, 1) });
    const verification = createSnpVerifier({ trustedRoots: [original.ark] }).verify({
      report,
      vcek: original.leaf,
      chain: [original.intermediate, original.ark],
      at: new Date("2030-01-01T00:00:00Z"),
    });
    expect(verification.claims.reportData.startsWith("01".repeat(32))).toBe(true);
    expect(() => exportSimulatedSnpPlatform({ ...original })).toThrow(TypeError);
  });
});
