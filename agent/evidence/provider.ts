/**
 * The agent's evidence provider plug-in interface: one provider per way a TEE exposes its
 * evidence (Linux configfs-tsm, Microsoft's attestation sidecar, Gramine's `/dev/attestation`,
 * the simulated TEE). A provider says whether it can work here (`probe`) and turns the agent's
 * binding into evidence in the shape the attestation request carries (`collect`).
 *
 * Binding. Most interfaces take the 64-byte REPORT_DATA and put it into the report as given
 * (`binding: "report-data"`). Microsoft's sidecar instead takes the runtime data bytes and
 * hashes them into REPORT_DATA itself (`binding: "runtime-data"`). A provider declares which
 * it needs, and `collectEvidence` hands it exactly that, so no provider ever guesses how the
 * other side hashed. Either way REPORT_DATA must end up as sha256(runtime data) followed by 32
 * zero bytes (`reportDataFor`), the rule MAA checks; every provider verifies that the report it
 * got back carries it.
 */
import { createHash } from "node:crypto";
import { ShieldError } from "../../core/errors.js";
import { evidence as evidenceSchema } from "../../core/messages/evidence.js";
import type { Evidence } from "../../core/messages/index.js";

export type { Evidence };

/** REPORT_DATA is 64 bytes on SEV-SNP and SGX alike. */
export const REPORT_DATA_SIZE = 64;

/** The names `SHIELD_TEE` accepts for an explicit choice. */
export const PROVIDER_NAMES = ["sevsnp-configfs", "sevsnp-sidecar", "sgx-gramine", "simulated"] as const;
export type ProviderName = (typeof PROVIDER_NAMES)[number];

export type ProbeResult = { readonly usable: true } | { readonly usable: false; readonly reason: string };

export type EvidenceBinding = "report-data" | "runtime-data";

interface ProviderBase {
  readonly name: ProviderName;
  readonly tee: "sevsnp" | "sgx";
  /**
   * Whether this provider can work here. Never throws: anything that goes wrong is a reason.
   * Cheap and side-effect free apart from what the interface needs to answer (configfs-tsm
   * creates and removes an empty report entry; no report is generated).
   */
  probe(): Promise<ProbeResult>;
}

/** A provider whose interface takes the 64-byte REPORT_DATA as is. */
export interface ReportDataProvider extends ProviderBase {
  readonly binding: "report-data";
  collect(reportData: Buffer): Promise<Evidence>;
}

/** A provider whose interface hashes the runtime data into REPORT_DATA itself. */
export interface RuntimeDataProvider extends ProviderBase {
  readonly binding: "runtime-data";
  collect(runtimeData: Buffer): Promise<Evidence>;
}

export type EvidenceProvider = ReportDataProvider | RuntimeDataProvider;

/** What the agent binds evidence to: the exact runtime data bytes and the REPORT_DATA made from them. */
export interface EvidenceBindingInput {
  readonly runtimeData: Uint8Array;
  readonly reportData: Uint8Array;
}

/**
 * Collects evidence from `provider`, giving it what its `binding` asks for. `reportData` must be
 * `reportDataFor(runtimeData)`; a mismatch is caller misuse (TypeError).
 */
export async function collectEvidence(
  provider: EvidenceProvider,
  bound: EvidenceBindingInput,
): Promise<Evidence> {
  if (!(bound.runtimeData instanceof Uint8Array) || !(bound.reportData instanceof Uint8Array)) {
    throw new TypeError("runtimeData and reportData must be byte arrays");
  }
  if (!reportDataFor(bound.runtimeData).equals(Buffer.from(bound.reportData))) {
    throw new TypeError("reportData must be sha256(runtimeData) followed by 32 zero bytes");
  }
  return provider.binding === "report-data"
    ? provider.collect(Buffer.from(bound.reportData))
    : provider.collect(Buffer.from(bound.runtimeData));
}

/** REPORT_DATA for runtime data, as MAA checks it: sha256(runtime data) then 32 zero bytes. */
export function reportDataFor(runtimeData: Uint8Array): Buffer {
  if (!(runtimeData instanceof Uint8Array)) throw new TypeError("runtimeData must be a byte array");
  return Buffer.concat([createHash("sha256").update(runtimeData).digest(), Buffer.alloc(32)]);
}

/** Caller misuse check shared by report-data providers. */
export function checkReportDataArgument(reportData: unknown): asserts reportData is Buffer {
  if (!Buffer.isBuffer(reportData) || reportData.length !== REPORT_DATA_SIZE) {
    throw new TypeError(`reportData must be a Buffer of ${REPORT_DATA_SIZE} bytes`);
  }
}

/**
 * The report's REPORT_DATA must be exactly what was asked for (ERR_EVIDENCE_REPORT_DATA). It is
 * a claim (`x-ms-sevsnpvm-reportdata`), a hash of public runtime data, so it may be shown.
 */
export function checkReportDataEchoed(actual: Uint8Array, expected: Uint8Array, source: string): void {
  if (!Buffer.from(actual).equals(Buffer.from(expected))) {
    throw new ShieldError(
      "ERR_EVIDENCE_REPORT_DATA",
      `${source} returned a report whose REPORT_DATA is not the one requested`,
      {
        violations: [
          {
            field: "reportData",
            expected: Buffer.from(expected).toString("hex"),
            actual: Buffer.from(actual).toString("hex"),
          },
        ],
      },
    );
  }
}

/**
 * Checks the finished evidence against the message schema the request will be parsed with, so
 * a provider can never produce evidence the functions would refuse as malformed.
 */
export function finishEvidence(value: Evidence, source: string): Evidence {
  const result = evidenceSchema.safeParse(value);
  if (!result.success) {
    const fields = result.error.issues.map((issue) => issue.path.join(".") || "evidence").join(", ");
    throw new ShieldError(
      "ERR_EVIDENCE_MALFORMED",
      `${source} produced evidence outside the message limits (${fields})`,
    );
  }
  return result.data;
}

export function base64url(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("base64url");
}

/**
 * Runs the tasks given to it one at a time, in order. A TEE interface whose REPORT_DATA input
 * is shared (Gramine's process-global `user_report_data`) must never have two collections
 * interleave: the quote would carry the other one's REPORT_DATA.
 */
export function createSerialiser(): <T>(task: () => Promise<T>) => Promise<T> {
  let tail: Promise<unknown> = Promise.resolve();
  return <T>(task: () => Promise<T>): Promise<T> => {
    const run = tail.then(task, task);
    tail = run.catch(() => undefined);
    return run;
  };
}
