/**
 * SGX evidence through Gramine's `/dev/attestation` pseudo-files: `attestation_type` (read:
 * `none`, `epid` or `dcap`), `user_report_data` (write, 64 bytes) and `quote` (read, the quote
 * over an enclave report carrying that data). See Gramine's Documentation/attestation.rst.
 *
 * Collecting evidence, in order:
 * 1. `attestation_type` must read `dcap` (ERR_EVIDENCE_UNSUPPORTED: EPID is retired and `none`
 *    means remote attestation is off in the manifest);
 * 2. write the 64-byte REPORT_DATA to `user_report_data`;
 * 3. read `quote`;
 * 4. the quote must parse as a DCAP v3 quote (ERR_EVIDENCE_MALFORMED and the parser's codes).
 *    Certification data other than an embedded PCK chain is accepted here: MAA fetches the PCK
 *    certificate itself, and verification is the attestation service's job, not the agent's;
 * 5. its REPORT_DATA must be what was written (ERR_EVIDENCE_REPORT_DATA);
 * 6. the evidence must fit the attestation request's limits.
 * Collections run one at a time: `user_report_data` is process-global, so a second collection
 * writing it between another's write and read would give that one a quote over the wrong data.
 * File-system failures map to ERR_EVIDENCE_UNSUPPORTED (not under Gramine), ERR_UPSTREAM_UNAVAILABLE
 * (busy, transient) or ERR_IO.
 */
import { join } from "node:path";
import { ShieldError } from "../../core/errors.js";
import { parseSgxQuote } from "../../core/evidence/sgx/index.js";
import { attributeText, errnoOf, nodeDeviceFiles, onDevice, type DeviceFiles } from "./device-files.js";
import {
  base64url,
  checkReportDataArgument,
  checkReportDataEchoed,
  createSerialiser,
  finishEvidence,
  type Evidence,
  type ProbeResult,
  type ReportDataProvider,
} from "./provider.js";

export const DEFAULT_GRAMINE_ROOT = "/dev/attestation";

export interface GramineOptions {
  /** Default {@link DEFAULT_GRAMINE_ROOT}. */
  readonly root?: string;
  /** File operations (default the real file system); tests pass an emulated Gramine. */
  readonly files?: DeviceFiles;
}

export function createGramineProvider(options: GramineOptions = {}): ReportDataProvider {
  const root = options.root ?? DEFAULT_GRAMINE_ROOT;
  const files = options.files ?? nodeDeviceFiles;
  const path = (name: string): string => join(root, name);
  const exclusive = createSerialiser();

  async function attestationType(): Promise<string> {
    const file = path("attestation_type");
    return attributeText(await onDevice("read", file, () => files.readFile(file)), 64);
  }

  return {
    name: "sgx-gramine",
    tee: "sgx",
    binding: "report-data",

    async probe(): Promise<ProbeResult> {
      try {
        const type = await files.readFile(path("attestation_type")).then((bytes) => attributeText(bytes, 64));
        if (type !== "dcap") {
          return { usable: false, reason: `Gramine attestation type is "${type.slice(0, 16)}", not dcap` };
        }
        return { usable: true };
      } catch (error) {
        const errno = errnoOf(error);
        if (errno === "ENOENT" || errno === "ENOTDIR") {
          return {
            usable: false,
            reason: `${path("attestation_type")} does not exist (not running under Gramine SGX)`,
          };
        }
        return {
          usable: false,
          reason: `cannot read ${path("attestation_type")}: ${errno ?? "unknown error"}`,
        };
      }
    },

    async collect(reportData: Buffer): Promise<Evidence> {
      checkReportDataArgument(reportData);
      return await exclusive(() => collectOnce(reportData));
    },
  };

  async function collectOnce(reportData: Buffer): Promise<Evidence> {
    const type = await attestationType();
    if (type !== "dcap") {
      throw new ShieldError(
        "ERR_EVIDENCE_UNSUPPORTED",
        `Gramine attestation type is "${type.slice(0, 16)}", not dcap`,
      );
    }
    const userReportData = path("user_report_data");
    await onDevice("write", userReportData, () => files.writeFile(userReportData, reportData));
    const quoteFile = path("quote");
    const bytes = await onDevice("read", quoteFile, () => files.readFile(quoteFile));
    const quote = parseSgxQuote(bytes, { externalPckChain: true });
    checkReportDataEchoed(quote.reportBody.reportData, reportData, "Gramine");
    return finishEvidence({ tee: "sgx", format: "dcap-quote", quote: base64url(bytes) }, "Gramine");
  }
}
