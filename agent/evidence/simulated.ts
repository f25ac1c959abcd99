/**
 * The simulated TEE as an evidence provider, for development and the embedded local system:
 * SEV-SNP-format reports signed by the trust core's simulated platform (a locally generated
 * AMD-like chain). It is used only when `SHIELD_TEE=simulated` names it — selection never falls
 * back to it — and its evidence is accepted only by a verifier whose configuration names the
 * platform's root (`rootCertificate`) explicitly; Azure mode never does.
 *
 * Collecting evidence, in order:
 * 1. the platform signs a report whose REPORT_DATA is the given 64 bytes, with the configured
 *    report fields (measurement, host data, ...);
 * 2. the report is parsed back and its REPORT_DATA compared with what was asked for, exactly as
 *    for hardware (ERR_EVIDENCE_REPORT_DATA);
 * 3. the chain is the platform's leaf, intermediate and root, as PEM;
 * 4. the evidence must fit the attestation request's limits.
 */
import type { X509Certificate } from "node:crypto";
import { parseSnpReport } from "../../core/evidence/sevsnp/index.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
  type SimulatedSnpPlatformOptions,
  type SimulatedSnpReportFields,
} from "../../core/evidence/simulated/sevsnp.js";
import {
  base64url,
  checkReportDataArgument,
  checkReportDataEchoed,
  finishEvidence,
  type Evidence,
  type ProbeResult,
  type ReportDataProvider,
} from "./provider.js";

export interface SimulatedProviderOptions {
  /** A platform made elsewhere (e.g. shared with the local attestation server's trust roots). */
  readonly platform?: SimulatedSnpPlatform;
  /** Options for a new platform when none is given (default: 2048-bit chain, for start time). */
  readonly platformOptions?: SimulatedSnpPlatformOptions;
  /** Report fields every report gets (e.g. `hostData`, `measurement`). */
  readonly reportFields?: Omit<SimulatedSnpReportFields, "reportData">;
}

export interface SimulatedProvider extends ReportDataProvider {
  readonly name: "simulated";
  /** The root a verifier must name to accept this provider's evidence. */
  readonly rootCertificate: X509Certificate;
}

export function createSimulatedProvider(options: SimulatedProviderOptions = {}): SimulatedProvider {
  const platform =
    options.platform ?? createSimulatedSnpPlatform({ rsaBits: 2048, ...options.platformOptions });
  const fields = options.reportFields ?? {};
  return {
    name: "simulated",
    tee: "sevsnp",
    binding: "report-data",
    rootCertificate: platform.ark,

    probe(): Promise<ProbeResult> {
      return Promise.resolve({ usable: true });
    },

    collect(reportData: Buffer): Promise<Evidence> {
      // Deferred so that misuse rejects the promise, as with every other provider.
      return Promise.resolve().then(() => {
        checkReportDataArgument(reportData);
        const report = parseSnpReport(platform.signReport({ ...fields, reportData }));
        checkReportDataEchoed(report.reportData, reportData, "simulated TEE");
        return finishEvidence(
          {
            tee: "sevsnp",
            format: "raw",
            report: base64url(report.raw),
            vcekChain: platform.leafPem + platform.chainPem,
          },
          "simulated TEE",
        );
      });
    },
  };
}
