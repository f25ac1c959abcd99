import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { createSnpVerifier } from "../../../core/evidence/sevsnp/index.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../../core/evidence/simulated/sevsnp.js";
import { loadCertificates } from "../../../core/x509/certificate.js";
import { SNP_CERT_GUIDS, encodeSnpCertTable } from "../../../agent/evidence/cert-table.js";
import { createConfigfsTsmProvider, type ConfigfsTsmOptions } from "../../../agent/evidence/configfs-tsm.js";
import type { Evidence } from "../../../agent/evidence/provider.js";
import { createThimClient } from "../../../agent/evidence/thim.js";
import {
  createFakeTsmKernel,
  rejectsWithCode,
  startFakeHttpServer,
  tempDir,
  thimDocument,
  thimRoute,
  type FakeHttpServer,
  type FakeTsmKernel,
  type FakeTsmKernelOptions,
} from "./fakes.js";

const AT = new Date("2030-01-01T00:00:00Z");

let platform: SimulatedSnpPlatform;
let vlekPlatform: SimulatedSnpPlatform;
let otherPlatform: SimulatedSnpPlatform;
const cleanup: (() => Promise<void>)[] = [];

beforeAll(() => {
  platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  vlekPlatform = createSimulatedSnpPlatform({ rsaBits: 2048, signingKey: "vlek", product: "Genoa" });
  otherPlatform = createSimulatedSnpPlatform({
    rsaBits: 2048,
    reportedTcb: { bootloader: 4, tee: 0, snp: 24, microcode: 219 },
  });
});

afterEach(async () => {
  for (const close of cleanup.splice(0)) await close();
});

async function kernel(options: Partial<FakeTsmKernelOptions> = {}): Promise<FakeTsmKernel> {
  const fake = await createFakeTsmKernel({ platform, ...options });
  cleanup.push(() => fake.close());
  return fake;
}

async function server(route: Parameters<typeof startFakeHttpServer>[0]): Promise<FakeHttpServer> {
  const fake = await startFakeHttpServer(route);
  cleanup.push(() => fake.close());
  return fake;
}

function provider(fake: FakeTsmKernel, options: Partial<ConfigfsTsmOptions> = {}) {
  return createConfigfsTsmProvider({
    root: fake.root,
    files: fake.files,
    collateral: { securityContext: false },
    ...options,
  });
}

const reportData = (): Buffer => randomBytes(64);

/** An outblob that records every report the kernel hands out. */
function recordingOutblob(): { outblob: (inblob: Buffer) => Buffer; reports: Buffer[] } {
  const reports: Buffer[] = [];
  return {
    reports,
    outblob: (inblob) => {
      const report = platform.signReport({ reportData: inblob });
      reports.push(report);
      return report;
    },
  };
}

/** The raw report of SEV-SNP evidence, checked to carry `data` as its REPORT_DATA. */
function reportOf(evidence: Evidence, data: Buffer): Buffer {
  expect(evidence.tee).toBe("sevsnp");
  if (evidence.format !== "raw") throw new Error("expected raw SEV-SNP evidence");
  const report = Buffer.from(evidence.report, "base64url");
  expect(report.subarray(0x50, 0x90)).toEqual(data);
  return report;
}

describe("configfs-tsm provider", () => {
  it("writes inblob, reads outblob and auxblob, and returns verifiable evidence", async () => {
    const fake = await kernel();
    const data = reportData();
    const evidence = await provider(fake).collect(data);
    expect(evidence.tee).toBe("sevsnp");
    expect(evidence.format).toBe("raw");
    if (evidence.format !== "raw") throw new Error("unreachable");
    expect(fake.inblobs).toEqual([data]);
    const report = Buffer.from(evidence.report, "base64url");
    expect(report.length).toBe(1184);
    expect(report.subarray(0x50, 0x90)).toEqual(data);
    const chain = loadCertificates(evidence.vcekChain);
    expect(chain.map((cert) => cert.raw)).toEqual([
      platform.leaf.raw,
      platform.intermediate.raw,
      platform.ark.raw,
    ]);
    // The evidence verifies with the trust core when the simulated root is trusted.
    const verified = createSnpVerifier({ trustedRoots: [platform.ark] }).verify({
      report,
      vcek: chain[0]!,
      chain: chain.slice(1),
      at: AT,
      expectedReportData: data,
    });
    expect(verified.signer).toBe("vcek");
    expect(await fake.entries()).toEqual([]);
  });

  it("takes the VLEK from the table when the report is VLEK-signed", async () => {
    const fake = await kernel({ platform: vlekPlatform });
    const evidence = await provider(fake).collect(reportData());
    if (evidence.format !== "raw") throw new Error("unreachable");
    expect(loadCertificates(evidence.vcekChain)[0]!.raw).toEqual(vlekPlatform.leaf.raw);
  });

  it("writes privlevel when configured and counts it in the generation check", async () => {
    const kernelReports = recordingOutblob();
    const fake = await kernel({ outblob: kernelReports.outblob });
    const data = reportData();
    const evidence = await provider(fake, { privlevel: 2 }).collect(data);
    expect(fake.privlevels).toEqual(["2"]);
    expect(reportOf(evidence, data)).toEqual(kernelReports.reports[0]);
    expect(() => createConfigfsTsmProvider({ privlevel: 4 })).toThrow(TypeError);
  });

  it("uses a fresh entry per collection and removes it", async () => {
    const fake = await kernel();
    const names: string[] = [];
    const tsm = provider(fake, { entryName: () => `e${names.push("x")}` });
    const [first, second] = [reportData(), reportData()];
    reportOf(await tsm.collect(first), first);
    reportOf(await tsm.collect(second), second);
    expect(names.length).toBe(2);
    expect(await fake.entries()).toEqual([]);
  });

  it("retries once when another writer changes the entry, then fails with ERR_CONFLICT", async () => {
    const kernelReports = recordingOutblob();
    const once = await kernel({ interfere: 1, outblob: kernelReports.outblob });
    const data = reportData();
    const evidence = await provider(once).collect(data);
    expect(once.inblobs).toEqual([data, data]);
    // The report of the retry, not the one read while the entry was being changed.
    expect(kernelReports.reports).toHaveLength(2);
    expect(reportOf(evidence, data)).toEqual(kernelReports.reports[1]);
    expect(await once.entries()).toEqual([]);

    const twice = await kernel({ interfere: 2 });
    await rejectsWithCode(provider(twice).collect(reportData()), "ERR_CONFLICT");
    expect(await twice.entries()).toEqual([]);
  });

  it("refuses a report entry whose provider is another TEE", async () => {
    const fake = await kernel({ provider: "tdx_guest" });
    const error = await rejectsWithCode(provider(fake).collect(reportData()), "ERR_EVIDENCE_UNSUPPORTED");
    expect(error.message).toContain("tdx_guest");
    expect(await fake.entries()).toEqual([]);
  });

  it("fails with ERR_EVIDENCE_UNSUPPORTED when the interface is missing", async () => {
    const fake = await kernel();
    const tsm = provider(fake, { root: join(fake.root, "missing") });
    await rejectsWithCode(tsm.collect(reportData()), "ERR_EVIDENCE_UNSUPPORTED");
  });

  it.each([
    ["short", 1183],
    ["long", 1185],
    ["empty", 0],
  ])("refuses a %s outblob with ERR_EVIDENCE_MALFORMED", async (_label, size) => {
    const fake = await kernel({
      outblob: (inblob) =>
        Buffer.concat([platform.signReport({ reportData: inblob }), Buffer.alloc(2)]).subarray(0, size),
    });
    await rejectsWithCode(provider(fake).collect(reportData()), "ERR_EVIDENCE_MALFORMED");
  });

  it("refuses an outblob that does not parse as a report", async () => {
    const fake = await kernel({
      outblob: (inblob) => platform.signReport({ reportData: inblob, version: 99 }),
    });
    await rejectsWithCode(provider(fake).collect(reportData()), "ERR_EVIDENCE_VERSION");
  });

  it("refuses a report that does not echo the REPORT_DATA written", async () => {
    const fake = await kernel({ outblob: () => platform.signReport({ reportData: Buffer.alloc(64, 7) }) });
    const error = await rejectsWithCode(provider(fake).collect(reportData()), "ERR_EVIDENCE_REPORT_DATA");
    expect(error.violations[0]?.field).toBe("reportData");
  });

  it("refuses a malformed auxblob", async () => {
    const table = encodeSnpCertTable([{ guid: SNP_CERT_GUIDS.vcek, data: platform.leaf.raw }]);
    const truncated = await kernel({ auxblob: () => table.subarray(0, 30) });
    await rejectsWithCode(provider(truncated).collect(reportData()), "ERR_EVIDENCE_MALFORMED");
    const garbage = await kernel({
      auxblob: () =>
        encodeSnpCertTable([{ guid: SNP_CERT_GUIDS.vcek, data: Buffer.from("not a certificate") }]),
    });
    await rejectsWithCode(provider(garbage).collect(reportData()), "ERR_EVIDENCE_MALFORMED");
  });

  it("maps device errors: busy is transient, firmware failure is ERR_IO", async () => {
    const busy = await kernel({ outblobErrno: "EBUSY" });
    const error = await rejectsWithCode(provider(busy).collect(reportData()), "ERR_UPSTREAM_UNAVAILABLE");
    expect(error.transient).toBe(true);
    const failed = await kernel({ outblobErrno: "EIO" });
    await rejectsWithCode(provider(failed).collect(reportData()), "ERR_IO");
    expect(await failed.entries()).toEqual([]);
  });

  it("rejects misuse: REPORT_DATA must be 64 bytes", async () => {
    const fake = await kernel();
    await expect(provider(fake).collect(Buffer.alloc(32))).rejects.toThrow(TypeError);
  });

  describe("when the host supplies no certificates", () => {
    it("falls back to THIM, checking its TCB against the report", async () => {
      const fake = await kernel({ auxblob: () => Buffer.alloc(0) });
      const thim = await server(thimRoute(() => thimDocument(platform)));
      const evidence = await provider(fake, {
        collateral: { securityContext: false, thim: createThimClient({ url: thim.url }) },
      }).collect(reportData());
      if (evidence.format !== "raw") throw new Error("unreachable");
      expect(loadCertificates(evidence.vcekChain).map((c) => c.raw)).toEqual([
        platform.leaf.raw,
        platform.intermediate.raw,
        platform.ark.raw,
      ]);
      expect(thim.requests[0]?.headers["metadata"]).toBe("true");
    });

    it("treats a missing auxblob file like an empty one", async () => {
      const fake = await kernel({ hasAuxblob: false });
      const thim = await server(thimRoute(() => thimDocument(platform)));
      const data = reportData();
      const evidence = await provider(fake, {
        collateral: { securityContext: false, thim: createThimClient({ url: thim.url }) },
      }).collect(data);
      reportOf(evidence, data);
      if (evidence.format !== "raw") throw new Error("unreachable");
      expect(loadCertificates(evidence.vcekChain).map((c) => c.raw)).toEqual([
        platform.leaf.raw,
        platform.intermediate.raw,
        platform.ark.raw,
      ]);
      expect(thim.requests).toHaveLength(1);
    });

    it("refuses THIM certificates for another TCB (ERR_EVIDENCE_TCB_MISMATCH)", async () => {
      const fake = await kernel({ auxblob: () => Buffer.alloc(0) });
      const thim = await server(thimRoute(() => thimDocument(otherPlatform)));
      const error = await rejectsWithCode(
        provider(fake, {
          collateral: { securityContext: false, thim: createThimClient({ url: thim.url }) },
        }).collect(reportData()),
        "ERR_EVIDENCE_TCB_MISMATCH",
      );
      expect(error.violations[0]).toMatchObject({ field: "tcbm", actual: "db18000000000004" });
    });

    it("reports a THIM timeout as ERR_TIMEOUT and a THIM 500 as ERR_UPSTREAM_UNAVAILABLE", async () => {
      const fake = await kernel({ auxblob: () => Buffer.alloc(0) });
      const hanging = await server(thimRoute(() => "hang"));
      await rejectsWithCode(
        provider(fake, {
          collateral: { securityContext: false, thim: createThimClient({ url: hanging.url, timeoutMs: 50 }) },
        }).collect(reportData()),
        "ERR_TIMEOUT",
      );
      const failing = await server(() => ({ status: 500, body: { error: "internal" } }));
      await rejectsWithCode(
        provider(fake, {
          collateral: { securityContext: false, thim: createThimClient({ url: failing.url }) },
        }).collect(reportData()),
        "ERR_UPSTREAM_UNAVAILABLE",
      );
    });

    it("uses a configured chain file, whole or completing the host's leaf", async () => {
      const dir = await tempDir("chain");
      cleanup.push(() =>
        import("node:fs/promises").then((fs) => fs.rm(dir, { recursive: true, force: true })),
      );
      const full = join(dir, "full.pem");
      const caOnly = join(dir, "ca.pem");
      await writeFile(full, platform.leafPem + platform.chainPem);
      await writeFile(caOnly, platform.chainPem);

      const empty = await kernel({ auxblob: () => Buffer.alloc(0) });
      const fromFile = await provider(empty, {
        collateral: { securityContext: false, chainFile: full },
      }).collect(reportData());
      if (fromFile.format !== "raw") throw new Error("unreachable");
      expect(loadCertificates(fromFile.vcekChain).length).toBe(3);

      const leafOnly = await kernel({
        auxblob: () => encodeSnpCertTable([{ guid: SNP_CERT_GUIDS.vcek, data: platform.leaf.raw }]),
      });
      const completed = await provider(leafOnly, {
        collateral: { securityContext: false, chainFile: caOnly },
      }).collect(reportData());
      if (completed.format !== "raw") throw new Error("unreachable");
      expect(loadCertificates(completed.vcekChain).map((c) => c.raw)).toEqual([
        platform.leaf.raw,
        platform.intermediate.raw,
        platform.ark.raw,
      ]);

      await rejectsWithCode(
        provider(empty, { collateral: { securityContext: false, chainFile: caOnly } }).collect(reportData()),
        "ERR_EVIDENCE_MALFORMED",
      );
      await rejectsWithCode(
        provider(empty, {
          collateral: { securityContext: false, chainFile: join(dir, "absent.pem") },
        }).collect(reportData()),
        "ERR_IO",
      );
    });

    it("fails with ERR_EVIDENCE_UNSUPPORTED when no source is configured", async () => {
      const fake = await kernel({ auxblob: () => Buffer.alloc(0) });
      await rejectsWithCode(provider(fake).collect(reportData()), "ERR_EVIDENCE_UNSUPPORTED");
    });
  });

  describe("probe", () => {
    it("is usable on a sev_guest kernel and leaves no entry behind", async () => {
      const fake = await kernel();
      expect(await provider(fake).probe()).toEqual({ usable: true });
      expect(await fake.entries()).toEqual([]);
    });

    it("says why it is not usable", async () => {
      const fake = await kernel();
      const missing = await provider(fake, { root: join(fake.root, "nope") }).probe();
      expect(missing.usable).toBe(false);
      if (!missing.usable) expect(missing.reason).toContain("does not exist");

      const tdx = await provider(await kernel({ provider: "tdx_guest" })).probe();
      expect(tdx.usable).toBe(false);
      if (!tdx.usable) expect(tdx.reason).toContain("tdx_guest");

      const noProvider = await provider(await kernel({ mkdirErrno: "ENXIO" })).probe();
      expect(noProvider.usable).toBe(false);
      if (!noProvider.usable) expect(noProvider.reason).toContain("no TSM provider registered");
    });
  });
});
