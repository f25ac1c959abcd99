/**
 * Azure's VCEK certificates for the chip the guest runs on, from the two places Azure puts them:
 *
 * - THIM, the host's metadata endpoint (`GET http://169.254.169.254/metadata/THIM/amd/
 *   certification` with header `Metadata: true`), answering `{vcekCert, tcbm,
 *   certificateChain, cacheControl}`: the VCEK as PEM, the TCB it was issued for as 16 hex
 *   digits of the little-endian REPORTED_TCB read as a u64, and the ASK and ARK as PEM
 *   (microsoft/confidential-sidecar-containers `pkg/attest/platform_cert_fetcher.go`, `THIMCerts`);
 * - the UVM security context of a confidential container group (ACI): a directory named by
 *   `UVM_SECURITY_CONTEXT_DIR`, or `/security-context-*`, holding `host-amd-cert-base64`
 *   (standard base64 of the same THIM JSON) and `reference-info-base64` (standard base64 of the
 *   UVM endorsement, a COSE_Sign1 document) — hcsshim's file names, which the sidecar reuses.
 *
 * A VCEK is only useful for the TCB it was issued for, so every use checks `tcbm` against the
 * report's REPORTED_TCB (ERR_EVIDENCE_TCB_MISMATCH), as the sidecar does.
 */
import type { X509Certificate } from "node:crypto";
import { readFile, readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { ShieldError } from "../../core/errors.js";
import type { SnpReport } from "../../core/evidence/sevsnp/index.js";
import { derToPem, loadCertificates } from "../../core/x509/certificate.js";
import { errnoOf } from "./device-files.js";
import { httpCall, jsonBody, statusError } from "./http.js";

export const DEFAULT_THIM_URL = "http://169.254.169.254/metadata/THIM/amd/certification";

/** A THIM answer is about 7 KiB; a security-context file about 15 KiB. */
const MAX_THIM_BYTES = 64 * 1024;
const MAX_SECURITY_CONTEXT_FILE_BYTES = 256 * 1024;

export const SECURITY_CONTEXT_FILES = Object.freeze({
  hostAmdCert: "host-amd-cert-base64",
  referenceInfo: "reference-info-base64",
});

export interface ThimCertification {
  readonly vcek: X509Certificate;
  /** ASK then ARK, as THIM serves them. */
  readonly chain: readonly X509Certificate[];
  /** The TCB the VCEK was issued for. */
  readonly tcbm: bigint;
  /** `tcbm` as 16 lower-case hex digits (`SnpTcbVersion.raw` form). */
  readonly tcbmHex: string;
  /** VCEK, ASK, ARK as PEM: the evidence's `vcekChain`. */
  readonly vcekChainPem: string;
}

const PEM_TEXT = z.string().min(1).max(MAX_THIM_BYTES);
const thimSchema = z.object({
  vcekCert: PEM_TEXT,
  tcbm: z.string().regex(/^[0-9A-Fa-f]{16}$/),
  certificateChain: PEM_TEXT,
});

/**
 * Parses a THIM certification document from `unknown`. Throws ERR_EVIDENCE_MALFORMED unless
 * `vcekCert` holds exactly one certificate, `certificateChain` one to three, and `tcbm` is 16
 * hex digits.
 */
export function parseThimCertification(value: unknown, source = "THIM"): ThimCertification {
  const parsed = thimSchema.safeParse(value);
  if (!parsed.success) {
    const fields = parsed.error.issues.map((issue) => issue.path.join(".") || "document").join(", ");
    throw new ShieldError("ERR_EVIDENCE_MALFORMED", `${source} certification is malformed (${fields})`);
  }
  const vcek = certificates(parsed.data.vcekCert, source, "vcekCert");
  const chain = certificates(parsed.data.certificateChain, source, "certificateChain");
  if (vcek.length !== 1)
    throw new ShieldError("ERR_EVIDENCE_MALFORMED", `${source} vcekCert must hold one certificate`);
  if (chain.length < 1 || chain.length > 3) {
    throw new ShieldError("ERR_EVIDENCE_MALFORMED", `${source} certificateChain must hold the ASK and ARK`);
  }
  const tcbm = BigInt(`0x${parsed.data.tcbm}`);
  return Object.freeze({
    vcek: vcek[0]!,
    chain: Object.freeze(chain),
    tcbm,
    tcbmHex: parsed.data.tcbm.toLowerCase(),
    vcekChainPem: [...vcek, ...chain].map((cert) => derToPem(cert.raw)).join(""),
  });
}

/** The VCEK must be the one for the report's REPORTED_TCB (ERR_EVIDENCE_TCB_MISMATCH). */
export function checkThimTcb(certification: ThimCertification, report: SnpReport, source = "THIM"): void {
  if (certification.tcbm !== report.reportedTcb.value) {
    throw new ShieldError(
      "ERR_EVIDENCE_TCB_MISMATCH",
      `${source} VCEK is for TCB ${certification.tcbmHex}, the report's REPORTED_TCB is ${report.reportedTcb.raw}`,
      { violations: [{ field: "tcbm", expected: report.reportedTcb.raw, actual: certification.tcbmHex }] },
    );
  }
}

export interface ThimClientOptions {
  /** Default {@link DEFAULT_THIM_URL}. */
  readonly url?: string;
  /** Default 10 000 ms. */
  readonly timeoutMs?: number;
}

export interface ThimClient {
  readonly url: string;
  /**
   * Fetches the certification. ERR_TIMEOUT past the deadline, ERR_NETWORK when unreachable,
   * ERR_UPSTREAM_UNAVAILABLE on 5xx, ERR_EVIDENCE_UNSUPPORTED on other non-200 answers,
   * ERR_EVIDENCE_MALFORMED for a malformed document.
   */
  fetchCertification(): Promise<ThimCertification>;
}

export function createThimClient(options: ThimClientOptions = {}): ThimClient {
  const url = options.url ?? DEFAULT_THIM_URL;
  const timeoutMs = options.timeoutMs ?? 10_000;
  return {
    url,
    async fetchCertification() {
      const answer = await httpCall({
        url,
        method: "GET",
        headers: { Metadata: "true" },
        timeoutMs,
        maxBytes: MAX_THIM_BYTES,
        service: "THIM",
      });
      if (answer.status !== 200) throw statusError("THIM", answer.status, "the certification request");
      return parseThimCertification(jsonBody(answer, "THIM"));
    },
  };
}

export interface UvmSecurityContext {
  readonly dir: string;
  /** From `host-amd-cert-base64`, when present. */
  readonly certification?: ThimCertification;
  /** The COSE_Sign1 UVM endorsement from `reference-info-base64`, when present. */
  readonly uvmEndorsements?: Buffer;
}

export interface UvmSecurityContextOptions {
  /** The directory itself (ACI sets `UVM_SECURITY_CONTEXT_DIR`). */
  readonly dir?: string;
  /** Where to look for `security-context-*` when `dir` is not given (default "/"). */
  readonly searchRoot?: string;
}

/**
 * Reads the UVM security context, or undefined when there is none. Throws ERR_EVIDENCE_MALFORMED
 * for a file that is not base64 (or, for the certificate file, not a THIM document) and ERR_IO
 * for a directory or file that exists but cannot be read.
 */
export async function readUvmSecurityContext(
  options: UvmSecurityContextOptions = {},
): Promise<UvmSecurityContext | undefined> {
  const dir = options.dir ?? (await findSecurityContextDir(options.searchRoot ?? "/"));
  if (dir === undefined) return undefined;
  const certText = await readOptional(join(dir, SECURITY_CONTEXT_FILES.hostAmdCert));
  const referenceText = await readOptional(join(dir, SECURITY_CONTEXT_FILES.referenceInfo));
  if (certText === undefined && referenceText === undefined) return undefined;

  let certification: ThimCertification | undefined;
  if (certText !== undefined) {
    const json = standardBase64(certText, SECURITY_CONTEXT_FILES.hostAmdCert).toString("utf8");
    let document: unknown;
    try {
      document = JSON.parse(json);
    } catch (cause) {
      throw new ShieldError("ERR_EVIDENCE_MALFORMED", `${SECURITY_CONTEXT_FILES.hostAmdCert} is not JSON`, {
        cause,
      });
    }
    certification = parseThimCertification(document, SECURITY_CONTEXT_FILES.hostAmdCert);
  }
  const uvmEndorsements =
    referenceText === undefined
      ? undefined
      : standardBase64(referenceText, SECURITY_CONTEXT_FILES.referenceInfo);
  return {
    dir,
    ...(certification === undefined ? {} : { certification }),
    ...(uvmEndorsements === undefined || uvmEndorsements.length === 0 ? {} : { uvmEndorsements }),
  };
}

async function findSecurityContextDir(searchRoot: string): Promise<string | undefined> {
  let names: string[];
  try {
    names = await readdir(searchRoot);
  } catch (error) {
    if (errnoOf(error) === "ENOENT" || errnoOf(error) === "EACCES") return undefined;
    throw new ShieldError("ERR_IO", `reading ${searchRoot}: ${errnoOf(error) ?? "unknown error"}`, {
      cause: error,
    });
  }
  for (const name of names.filter((n) => n.startsWith("security-context-")).sort()) {
    const path = join(searchRoot, name);
    if ((await stat(path).catch(() => undefined))?.isDirectory()) return path;
  }
  return undefined;
}

async function readOptional(path: string): Promise<string | undefined> {
  try {
    const info = await stat(path);
    if (info.size > MAX_SECURITY_CONTEXT_FILE_BYTES) {
      throw new ShieldError(
        "ERR_EVIDENCE_MALFORMED",
        `${path} exceeds ${MAX_SECURITY_CONTEXT_FILE_BYTES} bytes`,
      );
    }
    return (await readFile(path)).toString("ascii");
  } catch (error) {
    if (error instanceof ShieldError) throw error;
    if (errnoOf(error) === "ENOENT") return undefined;
    throw new ShieldError("ERR_IO", `reading ${path}: ${errnoOf(error) ?? "unknown error"}`, {
      cause: error,
    });
  }
}

/** Go's `base64.StdEncoding` alphabet, padded; line breaks around it are tolerated. */
export function standardBase64(text: string, what: string): Buffer {
  const compact = text.replace(/\s+/g, "");
  if (!/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(compact)) {
    throw new ShieldError("ERR_EVIDENCE_MALFORMED", `${what} is not standard base64`);
  }
  return Buffer.from(compact, "base64");
}

function certificates(pem: string, source: string, field: string): X509Certificate[] {
  try {
    return loadCertificates(pem);
  } catch (cause) {
    throw new ShieldError("ERR_EVIDENCE_MALFORMED", `${source} ${field} is not PEM certificates`, { cause });
  }
}
