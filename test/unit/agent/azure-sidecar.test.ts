import { randomBytes } from "node:crypto";
import { rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { parseSnpReport } from "../../../core/evidence/sevsnp/index.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../../core/evidence/simulated/sevsnp.js";
import { loadCertificates } from "../../../core/x509/certificate.js";
import {
  createAzureSidecarProvider,
  type AzureSidecarOptions,
} from "../../../agent/evidence/azure-sidecar.js";
import { collectEvidence, reportDataFor } from "../../../agent/evidence/provider.js";
import { createThimClient } from "../../../agent/evidence/thim.js";
import {
  rejectsWithCode,
  reportDataOf,
  startFakeHttpServer,
  tempDir,
  thimDocument,
  thimRoute,
  type FakeHttpServer,
  type FakeRoute,
} from "./fakes.js";

let platform: SimulatedSnpPlatform;
let reportedTcb: string;
const UVM_ENDORSEMENT = Buffer.from("d28459...a COSE_Sign1 stand-in");
const cleanup: (() => Promise<void>)[] = [];

beforeAll(() => {
  platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  reportedTcb = parseSnpReport(platform.signReport()).reportedTcb.raw;
});

afterEach(async () => {
  for (const close of cleanup.splice(0)) await close();
});

const runtimeData = (): Buffer =>
  Buffer.from(JSON.stringify({ keys: [{ kid: randomBytes(8).toString("hex") }] }));

function runtimeOf(body: unknown): Buffer {
  const encoded = (body as { runtime_data: string }).runtime_data;
  return Buffer.from(encoded, "base64");
}

/** `/attest/combined` as the sidecar answers it: standard base64 everywhere. */
function combinedAnswer(runtime: Buffer, overrides: Record<string, string> = {}): Record<string, string> {
  return {
    endorsed_tcb: reportedTcb.toUpperCase(),
    endorsements: Buffer.from(platform.leafPem + platform.chainPem).toString("base64"),
    evidence: platform.signReport({ reportData: reportDataOf(runtime) }).toString("base64"),
    uvm_endorsements: UVM_ENDORSEMENT.toString("base64"),
    ...overrides,
  };
}

interface SidecarBehaviour {
  readonly status?: () => ReturnType<FakeRoute>;
  readonly combined?: (runtime: Buffer) => ReturnType<FakeRoute>;
  readonly raw?: (runtime: Buffer) => ReturnType<FakeRoute>;
}

async function sidecar(behaviour: SidecarBehaviour = {}): Promise<FakeHttpServer> {
  const fake = await startFakeHttpServer((request) => {
    if (request.method === "GET" && request.path === "/status") {
      return behaviour.status?.() ?? { status: 200, body: { message: "Status OK" } };
    }
    if (request.method === "POST" && request.path === "/attest/combined") {
      return (
        behaviour.combined?.(runtimeOf(request.body)) ?? {
          status: 200,
          body: combinedAnswer(runtimeOf(request.body)),
        }
      );
    }
    if (request.method === "POST" && request.path === "/attest/raw") {
      const runtime = runtimeOf(request.body);
      return (
        behaviour.raw?.(runtime) ?? {
          status: 200,
          body: { report: platform.signReport({ reportData: reportDataOf(runtime) }).toString("hex") },
        }
      );
    }
    return { status: 404, text: "404 page not found" };
  });
  cleanup.push(() => fake.close());
  return fake;
}

async function thimServer(document: () => unknown): Promise<FakeHttpServer> {
  const fake = await startFakeHttpServer(thimRoute(document));
  cleanup.push(() => fake.close());
  return fake;
}

function provider(url: string, options: Partial<AzureSidecarOptions> = {}) {
  return createAzureSidecarProvider({ url, collateral: { securityContext: false }, ...options });
}

describe("Azure attestation sidecar provider", () => {
  it("declares a runtime-data binding and receives the runtime data itself", async () => {
    const fake = await sidecar();
    const tsm = provider(fake.url);
    expect(tsm.binding).toBe("runtime-data");
    const runtime = runtimeData();
    const evidence = await collectEvidence(tsm, { runtimeData: runtime, reportData: reportDataFor(runtime) });
    expect(fake.requests[0]).toMatchObject({ method: "POST", path: "/attest/combined" });
    expect(fake.requests[0]?.body).toEqual({ runtime_data: runtime.toString("base64") });
    if (evidence.format !== "raw") throw new Error("unreachable");
    const report = parseSnpReport(Buffer.from(evidence.report, "base64url"));
    expect(report.reportData).toEqual(reportDataFor(runtime));
    expect(loadCertificates(evidence.vcekChain).map((c) => c.raw)).toEqual([
      platform.leaf.raw,
      platform.intermediate.raw,
      platform.ark.raw,
    ]);
    expect(Buffer.from(evidence.uvmEndorsements ?? "", "base64url")).toEqual(UVM_ENDORSEMENT);
  });

  it("refuses a made-up report (what the sidecar answers on a node without a SEV device)", async () => {
    const fake = await sidecar({
      combined: (runtime) => {
        const unsigned = platform.signReport({ reportData: reportDataOf(runtime) });
        unsigned.fill(0, 0x2a0); // the signature area, as in the sidecar's fake reports
        return { status: 200, body: combinedAnswer(runtime, { evidence: unsigned.toString("base64") }) };
      },
    });
    await expect(provider(fake.url).collect(runtimeData())).rejects.toMatchObject({
      code: "ERR_EVIDENCE_SIGNATURE",
    });
  });

  it("refuses a report signed by another chip than the VCEK it came with", async () => {
    const other = createSimulatedSnpPlatform({ rsaBits: 2048 });
    const fake = await sidecar({
      combined: (runtime) => ({
        status: 200,
        body: combinedAnswer(runtime, {
          evidence: other.signReport({ reportData: reportDataOf(runtime) }).toString("base64"),
        }),
      }),
    });
    await expect(provider(fake.url).collect(runtimeData())).rejects.toMatchObject({
      code: "ERR_EVIDENCE_SIGNATURE",
    });
  });

  it("reads the older answer that wraps the document in combined_report", async () => {
    const fake = await sidecar({
      combined: (runtime) => ({
        status: 200,
        body: { combined_report: JSON.stringify(combinedAnswer(runtime)) },
      }),
    });
    const evidence = await provider(fake.url).collect(runtimeData());
    expect(evidence.format).toBe("raw");
  });

  it("falls back to /attest/raw with THIM certificates and the security context's UVM endorsement", async () => {
    const fake = await sidecar({ combined: () => ({ status: 404, text: "404 page not found" }) });
    const thim = await thimServer(() => thimDocument(platform));
    const dir = await tempDir("secctx");
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    await writeFile(join(dir, "reference-info-base64"), UVM_ENDORSEMENT.toString("base64"));
    const evidence = await provider(fake.url, {
      collateral: { securityContext: { dir }, thim: createThimClient({ url: thim.url }) },
    }).collect(runtimeData());
    expect(fake.requests.map((r) => r.path)).toEqual(["/attest/combined", "/attest/raw"]);
    if (evidence.format !== "raw") throw new Error("unreachable");
    expect(loadCertificates(evidence.vcekChain).length).toBe(3);
    expect(Buffer.from(evidence.uvmEndorsements ?? "", "base64url")).toEqual(UVM_ENDORSEMENT);
  });

  it("gets the chain from THIM when the sidecar's endorsements are empty", async () => {
    const fake = await sidecar({
      combined: (runtime) => ({
        status: 200,
        body: combinedAnswer(runtime, { endorsements: "", endorsed_tcb: "" }),
      }),
    });
    const thim = await thimServer(() => thimDocument(platform));
    const evidence = await provider(fake.url, {
      collateral: { securityContext: false, thim: createThimClient({ url: thim.url }) },
    }).collect(runtimeData());
    expect(evidence.format).toBe("raw");
    expect(thim.requests.length).toBe(1);
  });

  it("maps a sidecar 500 to ERR_UPSTREAM_UNAVAILABLE (transient)", async () => {
    const fake = await sidecar({
      combined: () => ({ status: 500, body: { error: "failure to fetch attestation report" } }),
    });
    const error = await rejectsWithCode(
      provider(fake.url).collect(runtimeData()),
      "ERR_UPSTREAM_UNAVAILABLE",
    );
    expect(error.transient).toBe(true);
  });

  it("maps a refusal (403) to ERR_EVIDENCE_UNSUPPORTED", async () => {
    const fake = await sidecar({ combined: () => ({ status: 403, body: { error: "no" } }) });
    await rejectsWithCode(provider(fake.url).collect(runtimeData()), "ERR_EVIDENCE_UNSUPPORTED");
  });

  it("times out with ERR_TIMEOUT", async () => {
    const fake = await sidecar({ combined: () => "hang" });
    await rejectsWithCode(provider(fake.url, { timeoutMs: 50 }).collect(runtimeData()), "ERR_TIMEOUT");
  });

  it("reports an unreachable sidecar as ERR_NETWORK", async () => {
    const fake = await startFakeHttpServer(() => ({ status: 200 }));
    await fake.close();
    await rejectsWithCode(provider(fake.url).collect(runtimeData()), "ERR_NETWORK");
  });

  it("refuses a report whose REPORT_DATA is not sha256(runtime data) and zeros", async () => {
    const fake = await sidecar({
      combined: (runtime) => ({
        status: 200,
        body: combinedAnswer(runtime, {
          evidence: platform.signReport({ reportData: Buffer.alloc(64, 1) }).toString("base64"),
        }),
      }),
    });
    await rejectsWithCode(provider(fake.url).collect(runtimeData()), "ERR_EVIDENCE_REPORT_DATA");
  });

  it("refuses endorsements for another TCB", async () => {
    const fake = await sidecar({
      combined: (runtime) => ({
        status: 200,
        body: combinedAnswer(runtime, { endorsed_tcb: "DB18000000000004" }),
      }),
    });
    const error = await rejectsWithCode(
      provider(fake.url).collect(runtimeData()),
      "ERR_EVIDENCE_TCB_MISMATCH",
    );
    expect(error.violations[0]).toMatchObject({ field: "endorsed_tcb", expected: reportedTcb });
  });

  it("takes fresh certificates from THIM when the sidecar's are for another TCB", async () => {
    const fake = await sidecar({
      combined: (runtime) => ({
        status: 200,
        body: combinedAnswer(runtime, { endorsed_tcb: "DB18000000000004" }),
      }),
    });
    const thim = await thimServer(() => thimDocument(platform));
    const evidence = await provider(fake.url, {
      collateral: { securityContext: false, thim: createThimClient({ url: thim.url }) },
    }).collect(runtimeData());
    expect(thim.requests).toHaveLength(1);
    if (evidence.format !== "raw") throw new Error("unreachable");
    expect(loadCertificates(evidence.vcekChain)[0]?.raw).toEqual(platform.leaf.raw);
  });

  it.each<[string, (runtime: Buffer) => ReturnType<FakeRoute>]>([
    ["a body that is not JSON", () => ({ status: 200, text: "<html>" })],
    ["a document without evidence", () => ({ status: 200, body: { endorsements: "" } })],
    [
      "evidence that is not base64",
      (runtime) => ({ status: 200, body: combinedAnswer(runtime, { evidence: "***" }) }),
    ],
    [
      "a truncated report",
      (runtime) => ({
        status: 200,
        body: combinedAnswer(runtime, {
          evidence: platform
            .signReport({ reportData: reportDataOf(runtime) })
            .subarray(0, 1000)
            .toString("base64"),
        }),
      }),
    ],
    [
      "endorsements that are not certificates",
      (runtime) => ({
        status: 200,
        body: combinedAnswer(runtime, { endorsements: Buffer.from("hello").toString("base64") }),
      }),
    ],
    ["a wrapped document that is not JSON", () => ({ status: 200, body: { combined_report: "{" } })],
  ])("refuses %s with ERR_EVIDENCE_MALFORMED", async (_label, combined) => {
    const fake = await sidecar({ combined });
    await rejectsWithCode(provider(fake.url).collect(runtimeData()), "ERR_EVIDENCE_MALFORMED");
  });

  it("refuses a malformed /attest/raw answer", async () => {
    const fake = await sidecar({
      combined: () => ({ status: 404, text: "404 page not found" }),
      raw: () => ({ status: 200, body: { report: "abc" } }),
    });
    await rejectsWithCode(provider(fake.url).collect(runtimeData()), "ERR_EVIDENCE_MALFORMED");
  });

  it("refuses an oversized answer", async () => {
    const fake = await sidecar({ combined: () => ({ status: 200, text: "x".repeat(300 * 1024) }) });
    await rejectsWithCode(provider(fake.url).collect(runtimeData()), "ERR_EVIDENCE_MALFORMED");
  });

  it("rejects misuse: runtime data must be a non-empty Buffer", async () => {
    const fake = await sidecar();
    await expect(provider(fake.url).collect(Buffer.alloc(0))).rejects.toThrow(TypeError);
  });

  it("collectEvidence rejects REPORT_DATA that does not belong to the runtime data", async () => {
    const fake = await sidecar();
    await expect(
      collectEvidence(provider(fake.url), { runtimeData: runtimeData(), reportData: Buffer.alloc(64) }),
    ).rejects.toThrow(TypeError);
  });

  describe("probe", () => {
    it("is usable when /status says Status OK", async () => {
      const fake = await sidecar();
      expect(await provider(fake.url).probe()).toEqual({ usable: true });
    });

    it("says why it is not usable", async () => {
      const notReady = await sidecar({ status: () => ({ status: 200, body: { message: "Status NOT OK" } }) });
      const a = await provider(notReady.url).probe();
      expect(a.usable).toBe(false);
      if (!a.usable) expect(a.reason).toContain("not ready");

      const other = await sidecar({ status: () => ({ status: 404, text: "404 page not found" }) });
      const b = await provider(other.url).probe();
      if (!b.usable) expect(b.reason).toContain("404");
      expect(b.usable).toBe(false);

      const gone = await startFakeHttpServer(() => ({ status: 200 }));
      await gone.close();
      const c = await provider(gone.url).probe();
      expect(c.usable).toBe(false);
      if (!c.usable) expect(c.reason).toContain("ECONNREFUSED");

      const slow = await sidecar({ status: () => "hang" });
      const d = await provider(slow.url, { probeTimeoutMs: 50 }).probe();
      expect(d.usable).toBe(false);
      if (!d.usable) expect(d.reason).toContain("did not answer");
    });
  });
});
