/**
 * SEV-SNP evidence through Microsoft's attestation sidecar (microsoft/confidential-sidecar-
 * containers, `cmd/skr`), which ACI and AKS confidential deployments run next to the workload on
 * localhost. The sidecar owns `/dev/sev-guest`; it takes the runtime data bytes (standard
 * base64 in `runtime_data`) and puts sha256(runtime data) followed by 32 zero bytes into
 * REPORT_DATA itself, so this provider's binding is `runtime-data`.
 *
 * Collecting evidence, in order:
 * 1. `POST /attest/combined` `{"runtime_data": <std base64>}` → `{evidence, endorsements,
 *    uvm_endorsements, endorsed_tcb}` (standard base64 report; standard base64 of VCEK PEM +
 *    chain PEM; the UVM reference info as the security context holds it; THIM's `tcbm`). Older
 *    sidecars wrap that object as a JSON string in `combined_report`; both are read;
 * 2. a sidecar without that route (HTTP 404) is asked `POST /attest/raw` instead → `{report:
 *    <hex>}`;
 * 3. other failures: 5xx → ERR_UPSTREAM_UNAVAILABLE, no answer in time → ERR_TIMEOUT,
 *    unreachable → ERR_NETWORK, other statuses → ERR_EVIDENCE_UNSUPPORTED, a body that is not
 *    the documented JSON → ERR_EVIDENCE_MALFORMED;
 * 4. the report must be 1184 bytes and parse (ERR_EVIDENCE_MALFORMED and the parser's codes);
 * 5. its REPORT_DATA must be sha256(runtime data) followed by 32 zero bytes
 *    (ERR_EVIDENCE_REPORT_DATA): the agent does not take the sidecar's hashing on trust;
 * 6. `endorsed_tcb`, when given, must be the report's REPORTED_TCB; when it is not (the sidecar's
 *    certificates predate a host TCB update), the configured THIM or chain file supplies fresh
 *    ones, and without such a source the answer is refused (ERR_EVIDENCE_TCB_MISMATCH);
 * 7. the chain is the sidecar's `endorsements` when they hold VCEK, ASK and ARK; otherwise it
 *    comes from the configured sources (chain file, UVM security context, THIM; see
 *    snp-collateral.ts), and so does a missing UVM endorsement;
 * 8. the report must be signed by the chain's leaf (ERR_EVIDENCE_SIGNATURE): a sidecar on a
 *    node without a SEV device makes reports up;
 * 9. the evidence must fit the attestation request's limits.
 */
import { verify } from "node:crypto";
import { loadCertificate, pemToDerList } from "../../core/x509/certificate.js";
import type { X509Certificate } from "node:crypto";
import { z } from "zod";
import { ShieldError } from "../../core/errors.js";
import { SNP_REPORT_SIZE, parseSnpReport, type SnpReport } from "../../core/evidence/sevsnp/index.js";
import { silentLogger, type Logger } from "../../core/ports/logger.js";
import { loadCertificates } from "../../core/x509/certificate.js";
import { httpCall, jsonBody, statusError, type HttpAnswer } from "./http.js";
import {
  checkReportDataEchoed,
  reportDataFor,
  type Evidence,
  type ProbeResult,
  type RuntimeDataProvider,
} from "./provider.js";
import {
  resolveSnpCollateral,
  rawSnpEvidence,
  type SnpCollateralSources,
  type SuppliedCollateral,
} from "./snp-collateral.js";
import { standardBase64 } from "./thim.js";

/** The sidecar listens on localhost:8080 by default (`cmd/skr/main.go`). */
export const DEFAULT_SIDECAR_URL = "http://127.0.0.1:8080";

const SERVICE = "attestation sidecar";
/** Report, chain and UVM endorsement together are about 30 KiB. */
const MAX_RESPONSE_BYTES = 256 * 1024;
/** The sidecar hashes runtime data; MAA bounds it anyway, this keeps requests sane. */
const MAX_RUNTIME_DATA_BYTES = 12 * 1024;

export interface AzureSidecarOptions {
  /** Base URL (default {@link DEFAULT_SIDECAR_URL}). */
  readonly url?: string;
  /** Deadline for an attest call (default 10 000 ms). */
  readonly timeoutMs?: number;
  /** Deadline for the `/status` probe (default 1 000 ms). */
  readonly probeTimeoutMs?: number;
  readonly collateral?: SnpCollateralSources;
  readonly logger?: Logger;
}

const combinedSchema = z.object({
  evidence: z.string().min(1),
  endorsements: z.string().optional(),
  uvm_endorsements: z.string().optional(),
  endorsed_tcb: z.string().optional(),
});
const wrappedCombinedSchema = z.object({ combined_report: z.string() });
const rawSchema = z.object({ report: z.string().regex(/^[0-9A-Fa-f]*$/) });
const statusSchema = z.object({ message: z.string() });

interface SidecarAnswer {
  readonly report: Buffer;
  readonly endorsements?: Buffer;
  readonly uvmEndorsements?: Buffer;
  readonly endorsedTcb?: string;
}

export function createAzureSidecarProvider(options: AzureSidecarOptions = {}): RuntimeDataProvider {
  const base = (options.url ?? DEFAULT_SIDECAR_URL).replace(/\/+$/, "");
  const timeoutMs = options.timeoutMs ?? 10_000;
  const probeTimeoutMs = options.probeTimeoutMs ?? 1_000;
  const logger = options.logger ?? silentLogger;

  async function post(route: string, runtimeData: Buffer): Promise<HttpAnswer> {
    return httpCall({
      url: `${base}${route}`,
      method: "POST",
      json: { runtime_data: runtimeData.toString("base64") },
      timeoutMs,
      maxBytes: MAX_RESPONSE_BYTES,
      service: SERVICE,
    });
  }

  /** Steps 1–3. */
  async function fetchAnswer(runtimeData: Buffer): Promise<SidecarAnswer> {
    const combined = await post("/attest/combined", runtimeData);
    if (combined.status === 200) return parseCombined(jsonBody(combined, SERVICE));
    if (combined.status !== 404) throw statusError(SERVICE, combined.status, "/attest/combined");
    logger("info", "attestation sidecar has no /attest/combined; using /attest/raw");
    const raw = await post("/attest/raw", runtimeData);
    if (raw.status !== 200) throw statusError(SERVICE, raw.status, "/attest/raw");
    return parseRaw(jsonBody(raw, SERVICE));
  }

  return {
    name: "sevsnp-sidecar",
    tee: "sevsnp",
    binding: "runtime-data",

    async probe(): Promise<ProbeResult> {
      try {
        const answer = await httpCall({
          url: `${base}/status`,
          method: "GET",
          timeoutMs: probeTimeoutMs,
          maxBytes: 4096,
          service: SERVICE,
        });
        if (answer.status !== 200)
          return { usable: false, reason: `${base} answered HTTP ${answer.status} to /status` };
        const status = statusSchema.safeParse(jsonBody(answer, SERVICE));
        if (!status.success)
          return { usable: false, reason: `${base}/status is not the sidecar's status document` };
        if (status.data.message !== "Status OK") {
          return {
            usable: false,
            reason: `attestation sidecar at ${base} is not ready ("${status.data.message.slice(0, 40)}")`,
          };
        }
        return { usable: true };
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error);
        return { usable: false, reason: `no attestation sidecar answering at ${base}: ${message}` };
      }
    },

    async collect(runtimeData: Buffer): Promise<Evidence> {
      if (
        !Buffer.isBuffer(runtimeData) ||
        runtimeData.length === 0 ||
        runtimeData.length > MAX_RUNTIME_DATA_BYTES
      ) {
        throw new TypeError(`runtimeData must be a Buffer of 1..${MAX_RUNTIME_DATA_BYTES} bytes`);
      }
      const answer = await fetchAnswer(runtimeData);
      const report = reportFrom(answer.report, runtimeData);
      let endorsements = supplied(answer);
      if (answer.endorsedTcb !== undefined) {
        try {
          checkEndorsedTcb(answer.endorsedTcb, report);
        } catch (error) {
          // The sidecar fetches its certificates once, at start; after a host TCB update they
          // are stale. Fresh ones from THIM or a chain file replace them; without such a
          // source the mismatch stands.
          const sources = options.collateral ?? {};
          if (sources.thim === undefined && sources.chainFile === undefined) throw error;
          logger(
            "warn",
            "attestation sidecar certificates are for another TCB; using the configured sources",
            {
              reportedTcb: report.reportedTcb.raw,
            },
          );
          endorsements = withoutCertificates(endorsements);
        }
      }
      const collateral = await resolveSnpCollateral(report, endorsements, options.collateral ?? {});
      checkSignedByLeaf(report, collateral.vcekChain);
      logger("debug", "attestation sidecar evidence collected", {
        chainSource: collateral.chainSource,
        uvmEndorsements: collateral.uvmEndorsements !== undefined,
      });
      return rawSnpEvidence(report, collateral, SERVICE);
    },
  };
}

function parseCombined(body: unknown): SidecarAnswer {
  const wrapped = wrappedCombinedSchema.safeParse(body);
  let document: unknown = body;
  if (wrapped.success) {
    try {
      document = JSON.parse(wrapped.data.combined_report);
    } catch (cause) {
      throw new ShieldError("ERR_EVIDENCE_MALFORMED", `${SERVICE} combined_report is not JSON`, { cause });
    }
  }
  const parsed = combinedSchema.safeParse(document);
  if (!parsed.success) {
    throw new ShieldError(
      "ERR_EVIDENCE_MALFORMED",
      `${SERVICE} /attest/combined answer is not {evidence, endorsements, ...}`,
    );
  }
  const { evidence, endorsements, uvm_endorsements: uvm, endorsed_tcb: tcb } = parsed.data;
  return {
    report: standardBase64(evidence, "sidecar evidence"),
    ...(endorsements ? { endorsements: standardBase64(endorsements, "sidecar endorsements") } : {}),
    ...(uvm ? { uvmEndorsements: standardBase64(uvm, "sidecar uvm_endorsements") } : {}),
    ...(tcb ? { endorsedTcb: tcb } : {}),
  };
}

function parseRaw(body: unknown): SidecarAnswer {
  const parsed = rawSchema.safeParse(body);
  if (!parsed.success || parsed.data.report.length % 2 !== 0) {
    throw new ShieldError("ERR_EVIDENCE_MALFORMED", `${SERVICE} /attest/raw answer is not {report: <hex>}`);
  }
  return { report: Buffer.from(parsed.data.report, "hex") };
}

/** Steps 4–5. */
function reportFrom(bytes: Buffer, runtimeData: Buffer): SnpReport {
  if (bytes.length !== SNP_REPORT_SIZE) {
    throw new ShieldError(
      "ERR_EVIDENCE_MALFORMED",
      `${SERVICE} report is ${bytes.length} bytes, a SEV-SNP report is ${SNP_REPORT_SIZE}`,
    );
  }
  const report = parseSnpReport(bytes);
  checkReportDataEchoed(report.reportData, reportDataFor(runtimeData), SERVICE);
  return report;
}

/**
 * Step 8. Without a SEV device the sidecar answers with an unsigned, made-up report and still
 * reports "Status OK"; refusing it here keeps a node without a TEE from posing as one. Only the
 * signature by the chain's leaf (VCEK/VLEK) is checked: the chain itself is MAA's to judge.
 */
function checkSignedByLeaf(report: SnpReport, vcekChain: string): void {
  const [leafDer] = pemToDerList(vcekChain);
  if (leafDer === undefined)
    throw new ShieldError("ERR_EVIDENCE_MALFORMED", `${SERVICE}: no VCEK in the chain`);
  const leaf = loadCertificate(leafDer, "ERR_EVIDENCE_MALFORMED");
  const signature = Buffer.concat([report.signature.r.subarray(-48), report.signature.s.subarray(-48)]);
  let valid = false;
  try {
    valid = verify(
      "sha384",
      report.signedBytes,
      { key: leaf.publicKey, dsaEncoding: "ieee-p1363" },
      signature,
    );
  } catch {
    valid = false;
  }
  if (!valid) {
    throw new ShieldError(
      "ERR_EVIDENCE_SIGNATURE",
      `${SERVICE} report is not signed by the VCEK it came with (a sidecar without a SEV device makes up reports)`,
    );
  }
}

/** Step 6. */
function checkEndorsedTcb(endorsedTcb: string, report: SnpReport): void {
  if (!/^[0-9A-Fa-f]{16}$/.test(endorsedTcb)) {
    throw new ShieldError("ERR_EVIDENCE_MALFORMED", `${SERVICE} endorsed_tcb is not 16 hex digits`);
  }
  if (BigInt(`0x${endorsedTcb}`) !== report.reportedTcb.value) {
    throw new ShieldError(
      "ERR_EVIDENCE_TCB_MISMATCH",
      `${SERVICE} endorsements are for TCB ${endorsedTcb.toLowerCase()}, the report's REPORTED_TCB is ${report.reportedTcb.raw}`,
      {
        violations: [
          { field: "endorsed_tcb", expected: report.reportedTcb.raw, actual: endorsedTcb.toLowerCase() },
        ],
      },
    );
  }
}

/** Step 7 (what the sidecar supplied): VCEK PEM then chain PEM, i.e. VCEK, ASK, ARK. */
function withoutCertificates(collateral: SuppliedCollateral): SuppliedCollateral {
  return collateral.uvmEndorsements === undefined ? {} : { uvmEndorsements: collateral.uvmEndorsements };
}

function supplied(answer: SidecarAnswer): SuppliedCollateral {
  let certificates: X509Certificate[] = [];
  if (answer.endorsements !== undefined && answer.endorsements.length > 0) {
    try {
      certificates = loadCertificates(answer.endorsements.toString("latin1"));
    } catch (cause) {
      throw new ShieldError("ERR_EVIDENCE_MALFORMED", `${SERVICE} endorsements are not PEM certificates`, {
        cause,
      });
    }
    if (certificates.length === 0) {
      throw new ShieldError("ERR_EVIDENCE_MALFORMED", `${SERVICE} endorsements hold no certificate`);
    }
  }
  const [leaf, ask, ark] = certificates;
  return {
    ...(leaf === undefined ? {} : { leaf }),
    ...(ask === undefined ? {} : { ask }),
    ...(ark === undefined ? {} : { ark }),
    ...(answer.uvmEndorsements === undefined ? {} : { uvmEndorsements: answer.uvmEndorsements }),
  };
}
