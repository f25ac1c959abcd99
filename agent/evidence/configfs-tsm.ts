/**
 * SEV-SNP evidence through Linux configfs-tsm (kernel 6.7 and later), the interface current
 * kernels expose for attestation reports: `/sys/kernel/config/tsm/report/<entry>/` with
 * `inblob` (write, 64 bytes of REPORT_DATA), `outblob` (read, the report), `auxblob` (read, the
 * host's certificate table), `provider` (read, `sev_guest` for SEV-SNP), `generation` (read,
 * counts writes) and `privlevel` (write, the VMPL). See Linux
 * Documentation/ABI/testing/configfs-tsm and drivers/virt/coco/sev-guest.
 *
 * Collecting evidence, in order:
 * 1. create a report entry with a name no one else uses (mkdir);
 * 2. `provider` must read `sev_guest` (ERR_EVIDENCE_UNSUPPORTED);
 * 3. read `generation`;
 * 4. write `privlevel` when configured, then `inblob` (the 64-byte REPORT_DATA);
 * 5. read `outblob`, then `auxblob`;
 * 6. read `generation` again: it must have advanced by exactly our writes, else another writer
 *    changed the entry between our write and our read — retry once with a new entry, then
 *    ERR_CONFLICT;
 * 7. remove the entry (always, also on failure);
 * 8. `outblob` must be a 1184-byte report that parses (ERR_EVIDENCE_MALFORMED and the parser's
 *    codes) and whose REPORT_DATA is what was written (ERR_EVIDENCE_REPORT_DATA);
 * 9. `auxblob` must be a well-formed certificate table (ERR_EVIDENCE_MALFORMED); its leaf (VCEK,
 *    or VLEK when the report says so), ASK and ARK become the chain, completed or replaced from
 *    the configured sources when the host gave none (see snp-collateral.ts);
 * 10. the evidence must fit the attestation request's limits.
 * File-system failures map to ERR_EVIDENCE_UNSUPPORTED (interface gone), ERR_UPSTREAM_UNAVAILABLE
 * (busy, transient) or ERR_IO.
 */
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import { ShieldError } from "../../core/errors.js";
import { SNP_REPORT_SIZE, parseSnpReport, type SnpReport } from "../../core/evidence/sevsnp/index.js";
import { silentLogger, type Logger } from "../../core/ports/logger.js";
import { parseSnpCertTable, type SnpCertTable } from "./cert-table.js";
import {
  attributeText,
  deviceError,
  errnoOf,
  nodeDeviceFiles,
  onDevice,
  type DeviceFiles,
} from "./device-files.js";
import {
  checkReportDataArgument,
  checkReportDataEchoed,
  createSerialiser,
  type Evidence,
  type ProbeResult,
  type ReportDataProvider,
} from "./provider.js";
import { rawSnpEvidence, resolveSnpCollateral, type SnpCollateralSources } from "./snp-collateral.js";

export const DEFAULT_TSM_ROOT = "/sys/kernel/config/tsm/report";
/** The `provider` value of the SEV guest driver (its KBUILD_MODNAME). */
export const SEV_GUEST_PROVIDER = "sev_guest";

export interface ConfigfsTsmOptions {
  /** The `report` directory (default {@link DEFAULT_TSM_ROOT}). */
  readonly root?: string;
  /** File operations (default the real file system); tests pass an emulated kernel. */
  readonly files?: DeviceFiles;
  /** VMPL to request, 0..3; unset leaves the kernel's default. */
  readonly privlevel?: number;
  /** Where the chain comes from when `auxblob` has none. */
  readonly collateral?: SnpCollateralSources;
  /** Report entry names; default `shield-<uuid>`. */
  readonly entryName?: () => string;
  readonly logger?: Logger;
}

interface Blobs {
  readonly outblob: Buffer;
  readonly auxblob: Buffer;
}

export function createConfigfsTsmProvider(options: ConfigfsTsmOptions = {}): ReportDataProvider {
  const root = options.root ?? DEFAULT_TSM_ROOT;
  const files = options.files ?? nodeDeviceFiles;
  const entryName = options.entryName ?? (() => `shield-${randomUUID()}`);
  const logger = options.logger ?? silentLogger;
  const exclusive = createSerialiser();
  const privlevel = options.privlevel;
  if (privlevel !== undefined && (!Number.isInteger(privlevel) || privlevel < 0 || privlevel > 3)) {
    throw new TypeError("privlevel must be an integer 0..3");
  }

  async function withEntry<T>(use: (entry: string) => Promise<T>): Promise<T> {
    const entry = join(root, entryName());
    await onDevice("mkdir", entry, () => files.mkdir(entry));
    try {
      return await use(entry);
    } finally {
      // A leftover entry costs a little kernel memory; it must not turn good evidence into a failure.
      await files.rmdir(entry).catch((error: unknown) => {
        logger("warn", "configfs-tsm report entry not removed", { entry, errno: errnoOf(error) });
      });
    }
  }

  async function readProvider(entry: string): Promise<string> {
    const path = join(entry, "provider");
    return attributeText(await onDevice("read", path, () => files.readFile(path)));
  }

  async function readGeneration(entry: string): Promise<number> {
    const path = join(entry, "generation");
    const text = attributeText(await onDevice("read", path, () => files.readFile(path)));
    if (!/^\d{1,15}$/.test(text)) throw new ShieldError("ERR_EVIDENCE_MALFORMED", `${path} is not a number`);
    return Number(text);
  }

  async function write(entry: string, attribute: string, data: Uint8Array): Promise<void> {
    const path = join(entry, attribute);
    await onDevice("write", path, () => files.writeFile(path, data));
  }

  async function read(entry: string, attribute: string, optional = false): Promise<Buffer> {
    const path = join(entry, attribute);
    try {
      return await files.readFile(path);
    } catch (error) {
      // Kernels that do not show `auxblob` for a provider have no certificates to give.
      if (optional && errnoOf(error) === "ENOENT") return Buffer.alloc(0);
      throw deviceError(error, "read", path);
    }
  }

  /** Steps 1–7: one attempt in a fresh entry; undefined when the generation check failed. */
  async function attempt(reportData: Buffer): Promise<Blobs | undefined> {
    return withEntry(async (entry) => {
      const provider = await readProvider(entry);
      if (provider !== SEV_GUEST_PROVIDER) {
        throw new ShieldError(
          "ERR_EVIDENCE_UNSUPPORTED",
          `configfs-tsm provider is "${provider.slice(0, 32)}", not ${SEV_GUEST_PROVIDER}`,
        );
      }
      const before = await readGeneration(entry);
      let writes = 0;
      if (privlevel !== undefined) {
        await write(entry, "privlevel", Buffer.from(String(privlevel)));
        writes += 1;
      }
      await write(entry, "inblob", reportData);
      writes += 1;
      const outblob = await read(entry, "outblob");
      const auxblob = await read(entry, "auxblob", true);
      const after = await readGeneration(entry);
      if (after !== before + writes) {
        logger("warn", "configfs-tsm generation changed under us", {
          expected: before + writes,
          actual: after,
        });
        return undefined;
      }
      return { outblob, auxblob };
    });
  }

  return {
    name: "sevsnp-configfs",
    tee: "sevsnp",
    binding: "report-data",

    async probe(): Promise<ProbeResult> {
      try {
        if (!(await files.isDirectory(root))) {
          return {
            usable: false,
            reason: `${root} does not exist (kernel without configfs-tsm, configfs not mounted, or not a confidential VM)`,
          };
        }
        const entry = join(root, entryName());
        try {
          await files.mkdir(entry);
        } catch (error) {
          const errno = errnoOf(error) ?? "unknown error";
          const why = errno === "ENXIO" ? " (no TSM provider registered)" : "";
          return { usable: false, reason: `cannot create a report entry under ${root}: ${errno}${why}` };
        }
        try {
          const provider = await readProvider(entry);
          if (provider !== SEV_GUEST_PROVIDER) {
            return {
              usable: false,
              reason: `configfs-tsm provider is "${provider.slice(0, 32)}", not ${SEV_GUEST_PROVIDER}`,
            };
          }
        } finally {
          await files.rmdir(entry).catch(() => undefined);
        }
        return { usable: true };
      } catch (error) {
        return { usable: false, reason: describe(error) };
      }
    },

    async collect(reportData: Buffer): Promise<Evidence> {
      checkReportDataArgument(reportData);
      // One at a time, like Gramine's: entries are private, but a second writer would only
      // make the generation check fail and the collection retry.
      return await exclusive(() => collectOnce(reportData));
    },
  };

  async function collectOnce(reportData: Buffer): Promise<Evidence> {
    const blobs = (await attempt(reportData)) ?? (await attempt(reportData));
    if (blobs === undefined) {
      throw new ShieldError("ERR_CONFLICT", "configfs-tsm report entry was changed by another writer twice");
    }
    const report = reportFrom(blobs.outblob, reportData);
    const table = certTableFrom(blobs.auxblob);
    const leaf = report.signingKey === "vlek" ? table.certificates.vlek : table.certificates.vcek;
    const collateral = await resolveSnpCollateral(
      report,
      {
        ...(leaf === undefined ? {} : { leaf }),
        ...(table.certificates.ask === undefined ? {} : { ask: table.certificates.ask }),
        ...(table.certificates.ark === undefined ? {} : { ark: table.certificates.ark }),
      },
      options.collateral ?? {},
    );
    logger("debug", "configfs-tsm evidence collected", {
      chainSource: collateral.chainSource,
      uvmEndorsements: collateral.uvmEndorsements !== undefined,
    });
    return rawSnpEvidence(report, collateral, "configfs-tsm");
  }
}

/** Step 8. */
function reportFrom(outblob: Buffer, reportData: Buffer): SnpReport {
  if (outblob.length !== SNP_REPORT_SIZE) {
    throw new ShieldError(
      "ERR_EVIDENCE_MALFORMED",
      `configfs-tsm outblob is ${outblob.length} bytes, a SEV-SNP report is ${SNP_REPORT_SIZE}`,
    );
  }
  const report = parseSnpReport(outblob);
  checkReportDataEchoed(report.reportData, reportData, "configfs-tsm");
  return report;
}

/** Step 9 (the table part). */
function certTableFrom(auxblob: Buffer): SnpCertTable {
  return parseSnpCertTable(auxblob);
}

function describe(error: unknown): string {
  if (error instanceof ShieldError) return error.message;
  return error instanceof Error ? error.message : String(error);
}
