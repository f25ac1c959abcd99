import { mkdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import type { ShieldError } from "../../../core/errors.js";
import { parseSnpReport, type SnpReport } from "../../../core/evidence/sevsnp/index.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../../core/evidence/simulated/sevsnp.js";
import { resolveSnpCollateral } from "../../../agent/evidence/snp-collateral.js";
import {
  checkThimTcb,
  createThimClient,
  parseThimCertification,
  readUvmSecurityContext,
} from "../../../agent/evidence/thim.js";
import {
  rejectsWithCode,
  startFakeHttpServer,
  tempDir,
  thimDocument,
  thimRoute,
  type FakeHttpServer,
  type FakeRoute,
} from "./fakes.js";

let platform: SimulatedSnpPlatform;
let otherPlatform: SimulatedSnpPlatform;
let report: SnpReport;
const cleanup: (() => Promise<void>)[] = [];

beforeAll(() => {
  platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  otherPlatform = createSimulatedSnpPlatform({
    rsaBits: 2048,
    reportedTcb: { bootloader: 4, tee: 0, snp: 24, microcode: 219 },
  });
  report = parseSnpReport(platform.signReport());
});

afterEach(async () => {
  for (const close of cleanup.splice(0)) await close();
});

async function server(route: FakeRoute): Promise<FakeHttpServer> {
  const fake = await startFakeHttpServer(route);
  cleanup.push(() => fake.close());
  return fake;
}

async function dir(): Promise<string> {
  const path = await tempDir("thim");
  cleanup.push(() => rm(path, { recursive: true, force: true }));
  return path;
}

function malformed(value: unknown): void {
  try {
    parseThimCertification(value);
  } catch (error) {
    expect((error as ShieldError).code).toBe("ERR_EVIDENCE_MALFORMED");
    return;
  }
  throw new Error("expected ERR_EVIDENCE_MALFORMED");
}

describe("THIM certification document", () => {
  it("parses vcekCert, tcbm and certificateChain", () => {
    const certification = parseThimCertification(thimDocument(platform));
    expect(certification.vcek.raw).toEqual(platform.leaf.raw);
    expect(certification.chain.map((c) => c.raw)).toEqual([platform.intermediate.raw, platform.ark.raw]);
    expect(certification.tcbm).toBe(report.reportedTcb.value);
    expect(certification.tcbmHex).toBe(report.reportedTcb.raw);
    expect(certification.vcekChainPem).toBe(platform.leafPem + platform.chainPem);
  });

  it("reads tcbm as the hex of REPORTED_TCB (e.g. 7308000000000003 = bl 3, tee 0, snp 8, ucode 115)", () => {
    expect(report.reportedTcb.raw).toBe("7308000000000003");
    expect(() =>
      checkThimTcb(parseThimCertification(thimDocument(platform, "7308000000000003")), report),
    ).not.toThrow();
  });

  it("refuses a VCEK for another TCB with ERR_EVIDENCE_TCB_MISMATCH", () => {
    const certification = parseThimCertification(thimDocument(otherPlatform));
    try {
      checkThimTcb(certification, report);
      throw new Error("expected a mismatch");
    } catch (error) {
      expect((error as ShieldError).code).toBe("ERR_EVIDENCE_TCB_MISMATCH");
      expect((error as ShieldError).violations).toEqual([
        { field: "tcbm", expected: "7308000000000003", actual: "db18000000000004" },
      ]);
    }
  });

  it("refuses malformed documents", () => {
    const good = thimDocument(platform);
    malformed(undefined);
    malformed({ ...good, tcbm: "73080000" });
    malformed({ ...good, tcbm: "zz08000000000003" });
    malformed({ vcekCert: good["vcekCert"], tcbm: good["tcbm"] });
    malformed({ ...good, vcekCert: platform.leafPem + platform.leafPem });
    malformed({ ...good, vcekCert: "not pem" });
    malformed({
      ...good,
      certificateChain: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    });
  });
});

describe("THIM client", () => {
  it("sends Metadata: true and parses the answer", async () => {
    const thim = await server(thimRoute(() => thimDocument(platform)));
    const certification = await createThimClient({ url: thim.url }).fetchCertification();
    expect(certification.vcek.raw).toEqual(platform.leaf.raw);
    expect(thim.requests[0]).toMatchObject({ method: "GET" });
    expect(thim.requests[0]?.headers["metadata"]).toBe("true");
  });

  it("maps failures to typed errors", async () => {
    const failing = await server(() => ({ status: 503, body: {} }));
    await rejectsWithCode(
      createThimClient({ url: failing.url }).fetchCertification(),
      "ERR_UPSTREAM_UNAVAILABLE",
    );
    const absent = await server(() => ({ status: 404, body: {} }));
    await rejectsWithCode(
      createThimClient({ url: absent.url }).fetchCertification(),
      "ERR_EVIDENCE_UNSUPPORTED",
    );
    const throttled = await server(() => ({ status: 429, body: {} }));
    await rejectsWithCode(createThimClient({ url: throttled.url }).fetchCertification(), "ERR_THROTTLED");
    const garbage = await server(() => ({ status: 200, text: "nope" }));
    await rejectsWithCode(
      createThimClient({ url: garbage.url }).fetchCertification(),
      "ERR_EVIDENCE_MALFORMED",
    );
    const hanging = await server(() => "hang");
    const started = Date.now();
    await rejectsWithCode(
      createThimClient({ url: hanging.url, timeoutMs: 50 }).fetchCertification(),
      "ERR_TIMEOUT",
    );
    expect(Date.now() - started).toBeLessThan(5_000);
  });
});

describe("UVM security context", () => {
  it("reads host-amd-cert-base64 and reference-info-base64 from the named directory", async () => {
    const path = await dir();
    await writeFile(
      join(path, "host-amd-cert-base64"),
      Buffer.from(JSON.stringify(thimDocument(platform))).toString("base64") + "\n",
    );
    await writeFile(join(path, "reference-info-base64"), Buffer.from("cose").toString("base64"));
    const context = await readUvmSecurityContext({ dir: path });
    expect(context?.dir).toBe(path);
    expect(context?.certification?.vcek.raw).toEqual(platform.leaf.raw);
    expect(context?.uvmEndorsements).toEqual(Buffer.from("cose"));
  });

  it("finds /security-context-* under the search root, and is undefined without one", async () => {
    const root = await dir();
    expect(await readUvmSecurityContext({ searchRoot: root })).toBeUndefined();
    await mkdir(join(root, "security-context-3802821067"));
    await writeFile(join(root, "security-context-3802821067", "reference-info-base64"), "Y29zZQ==");
    const context = await readUvmSecurityContext({ searchRoot: root });
    expect(context?.uvmEndorsements).toEqual(Buffer.from("cose"));
    expect(context?.certification).toBeUndefined();
  });

  it("refuses files that are not base64 or not a THIM document", async () => {
    const path = await dir();
    await writeFile(join(path, "reference-info-base64"), "not*base64");
    await rejectsWithCode(readUvmSecurityContext({ dir: path }), "ERR_EVIDENCE_MALFORMED");
    await writeFile(join(path, "reference-info-base64"), "Y29zZQ==");
    await writeFile(join(path, "host-amd-cert-base64"), Buffer.from("{not json").toString("base64"));
    await rejectsWithCode(readUvmSecurityContext({ dir: path }), "ERR_EVIDENCE_MALFORMED");
  });
});

describe("collateral order", () => {
  it("prefers the security context over THIM and checks its TCB", async () => {
    const path = await dir();
    await writeFile(
      join(path, "host-amd-cert-base64"),
      Buffer.from(JSON.stringify(thimDocument(platform))).toString("base64"),
    );
    const thim = await server(thimRoute(() => thimDocument(platform)));
    const collateral = await resolveSnpCollateral(
      report,
      {},
      {
        securityContext: { dir: path },
        thim: createThimClient({ url: thim.url }),
      },
    );
    expect(collateral.chainSource).toBe("security-context");
    expect(thim.requests.length).toBe(0);

    await writeFile(
      join(path, "host-amd-cert-base64"),
      Buffer.from(JSON.stringify(thimDocument(otherPlatform))).toString("base64"),
    );
    await rejectsWithCode(
      resolveSnpCollateral(report, {}, { securityContext: { dir: path } }),
      "ERR_EVIDENCE_TCB_MISMATCH",
    );
  });

  it("prefers a configured chain file over the security context", async () => {
    const path = await dir();
    const chainFile = join(path, "chain.pem");
    await writeFile(chainFile, platform.leafPem + platform.chainPem);
    await writeFile(
      join(path, "host-amd-cert-base64"),
      Buffer.from(JSON.stringify(thimDocument(otherPlatform))).toString("base64"),
    );
    const collateral = await resolveSnpCollateral(report, {}, { chainFile, securityContext: { dir: path } });
    expect(collateral.chainSource).toBe("chain-file");
  });

  it("uses a complete chain from the interface without asking anyone", async () => {
    const collateral = await resolveSnpCollateral(
      report,
      {
        leaf: platform.leaf,
        ask: platform.intermediate,
        ark: platform.ark,
        uvmEndorsements: Buffer.from("u"),
      },
      { securityContext: false },
    );
    expect(collateral).toEqual({
      vcekChain: platform.leafPem + platform.chainPem,
      chainSource: "interface",
      uvmEndorsements: Buffer.from("u"),
    });
  });
});
