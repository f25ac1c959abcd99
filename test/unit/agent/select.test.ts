import { randomBytes } from "node:crypto";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { ShieldError } from "../../../core/errors.js";
import { createSnpVerifier, parseSnpReport } from "../../../core/evidence/sevsnp/index.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../../core/evidence/simulated/sevsnp.js";
import { loadCertificates } from "../../../core/x509/certificate.js";
import { loadAgentConfig, type AgentConfig, type Environment } from "../../../agent/config.js";
import { createConfigfsTsmProvider } from "../../../agent/evidence/configfs-tsm.js";
import { AUTO_PROBE_ORDER, selectProvider } from "../../../agent/evidence/select.js";
import { createSimulatedProvider } from "../../../agent/evidence/simulated.js";
import { createFakeTsmKernel, rejectsWithCode, startFakeHttpServer, tempDir } from "./fakes.js";

let platform: SimulatedSnpPlatform;
let nowhere: string;
let closedUrl: string;
const cleanup: (() => Promise<void>)[] = [];

beforeAll(async () => {
  platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  nowhere = await tempDir("select");
  const server = await startFakeHttpServer(() => ({ status: 200 }));
  closedUrl = server.url;
  await server.close();
  return () => rm(nowhere, { recursive: true, force: true });
});

afterEach(async () => {
  for (const close of cleanup.splice(0)) await close();
});

/** A configuration in which no TEE interface exists. */
function config(env: Environment = {}): AgentConfig {
  const loaded = loadAgentConfig({
    SHIELD_TSM_ROOT: join(nowhere, "tsm", "report"),
    SHIELD_SIDECAR_URL: closedUrl,
    SHIELD_GRAMINE_ROOT: join(nowhere, "dev", "attestation"),
    SHIELD_PROBE_TIMEOUT_MS: "200",
    ...env,
  });
  if (!loaded.ok) throw new Error(loaded.problems.join("; "));
  return loaded.config;
}

describe("evidence provider selection", () => {
  it("auto with nothing present names every provider tried and why, and never tries simulated", async () => {
    const error = await rejectsWithCode(selectProvider(config()), "ERR_EVIDENCE_UNSUPPORTED");
    expect(error.violations.map((v) => v.field)).toEqual([
      "sevsnp-configfs",
      "sevsnp-sidecar",
      "sgx-gramine",
    ]);
    expect(error.violations.every((v) => v.expected === "usable" && v.actual.length > 0)).toBe(true);
    expect(error.violations[0]?.actual).toContain("does not exist");
    expect(error.violations[1]?.actual).toContain("ECONNREFUSED");
    expect(error.violations[2]?.actual).toContain("not running under Gramine");
    for (const name of AUTO_PROBE_ORDER) expect(error.message).toContain(name);
    expect(error.message).toContain("never chosen automatically");
  });

  it("auto never picks simulated, even when it would be usable", async () => {
    let built = false;
    const error = await rejectsWithCode(
      selectProvider(config(), {
        factories: {
          simulated: () => {
            built = true;
            return createSimulatedProvider({ platform });
          },
        },
      }),
      "ERR_EVIDENCE_UNSUPPORTED",
    );
    expect(built).toBe(false);
    expect(error.violations.map((v) => v.field)).not.toContain("simulated");
  });

  it("auto picks the first usable provider in order", async () => {
    const kernel = await createFakeTsmKernel({ platform });
    cleanup.push(() => kernel.close());
    const sidecar = await startFakeHttpServer(() => ({ status: 200, body: { message: "Status OK" } }));
    cleanup.push(() => sidecar.close());

    const withKernel = await selectProvider(config({ SHIELD_SIDECAR_URL: sidecar.url }), {
      factories: {
        "sevsnp-configfs": () => createConfigfsTsmProvider({ root: kernel.root, files: kernel.files }),
      },
    });
    expect(withKernel.name).toBe("sevsnp-configfs");

    const withoutKernel = await selectProvider(config({ SHIELD_SIDECAR_URL: sidecar.url }));
    expect(withoutKernel.name).toBe("sevsnp-sidecar");
    expect(withoutKernel.binding).toBe("runtime-data");
  });

  it("an explicit choice probes only that provider", async () => {
    const error = await rejectsWithCode(
      selectProvider(config({ SHIELD_TEE: "sgx-gramine" })),
      "ERR_EVIDENCE_UNSUPPORTED",
    );
    expect(error.violations.map((v) => v.field)).toEqual(["sgx-gramine"]);
    expect(error.message).toContain("SHIELD_TEE=sgx-gramine");
  });

  it("explicit simulated works and its evidence verifies only against its own root", async () => {
    const provider = await selectProvider(config({ SHIELD_TEE: "simulated" }), { simulated: { platform } });
    expect(provider.name).toBe("simulated");
    const data = randomBytes(64);
    const evidence = await provider.collect(data);
    if (evidence.format !== "raw" || provider.binding !== "report-data") throw new Error("unreachable");
    const chain = loadCertificates(evidence.vcekChain);
    const input = {
      report: Buffer.from(evidence.report, "base64url"),
      vcek: chain[0]!,
      chain: chain.slice(1),
      at: new Date("2030-01-01T00:00:00Z"),
    };
    expect(createSnpVerifier({ trustedRoots: [platform.ark] }).verify(input).report.reportData).toEqual(data);
    const stranger = createSimulatedSnpPlatform({ rsaBits: 2048 });
    expect(() => createSnpVerifier({ trustedRoots: [stranger.ark] }).verify(input)).toThrow(ShieldError);
  });
});

describe("simulated provider", () => {
  it("puts the configured report fields and the REPORT_DATA into every report", async () => {
    const hostData = randomBytes(32);
    const provider = createSimulatedProvider({ platform, reportFields: { hostData } });
    expect(provider.rootCertificate.raw).toEqual(platform.ark.raw);
    expect(await provider.probe()).toEqual({ usable: true });
    const data = randomBytes(64);
    const evidence = await provider.collect(data);
    if (evidence.format !== "raw") throw new Error("unreachable");
    const report = parseSnpReport(Buffer.from(evidence.report, "base64url"));
    expect(report.hostData).toEqual(hostData);
    expect(report.reportData).toEqual(data);
    await expect(provider.collect(Buffer.alloc(10))).rejects.toThrow(TypeError);
  });
});
