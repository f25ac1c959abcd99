/**
 * Where a SEV-SNP provider gets the VCEK chain (and, for confidential containers, the UVM
 * endorsement) when the TEE interface itself did not hand over a complete one. Sources are
 * tried in a fixed order, explicit configuration first and the network last:
 *
 * 1. the chain the interface supplied (configfs-tsm `auxblob`, the sidecar's `endorsements`),
 *    when it holds the leaf, the ASK and the ARK;
 * 2. the configured chain file (`SHIELD_SNP_CHAIN_FILE`): VCEK, ASK, ARK — or ASK, ARK to
 *    complete a leaf the interface supplied;
 * 3. the UVM security context's `host-amd-cert-base64` (TCB checked);
 * 4. THIM (TCB checked).
 *
 * With none of them, collection fails with ERR_EVIDENCE_UNSUPPORTED naming what was missing.
 * The UVM endorsement comes from the interface when it gave one, else from the security context.
 */
import type { X509Certificate } from "node:crypto";
import { readFile } from "node:fs/promises";
import { ShieldError } from "../../core/errors.js";
import type { SnpReport } from "../../core/evidence/sevsnp/index.js";
import { derToPem, loadCertificates } from "../../core/x509/certificate.js";
import { errnoOf } from "./device-files.js";
import { base64url, finishEvidence, type Evidence } from "./provider.js";
import {
  checkThimTcb,
  readUvmSecurityContext,
  type ThimClient,
  type UvmSecurityContext,
  type UvmSecurityContextOptions,
} from "./thim.js";

export interface SnpCollateralSources {
  /** PEM file: VCEK, ASK, ARK — or ASK, ARK. */
  readonly chainFile?: string;
  /** Where to look for the UVM security context; `false` to never look. */
  readonly securityContext?: UvmSecurityContextOptions | false;
  /** Absent when THIM is disabled. */
  readonly thim?: ThimClient;
}

/** What the interface itself supplied. */
export interface SuppliedCollateral {
  readonly leaf?: X509Certificate;
  readonly ask?: X509Certificate;
  readonly ark?: X509Certificate;
  readonly uvmEndorsements?: Buffer;
}

export type CollateralSource = "interface" | "chain-file" | "security-context" | "thim";

export interface SnpCollateral {
  /** Leaf, ASK, ARK as PEM. */
  readonly vcekChain: string;
  readonly uvmEndorsements?: Buffer;
  readonly chainSource: CollateralSource;
}

const MAX_CHAIN_FILE_BYTES = 64 * 1024;

export async function resolveSnpCollateral(
  report: SnpReport,
  supplied: SuppliedCollateral,
  sources: SnpCollateralSources,
): Promise<SnpCollateral> {
  // The security context is read once: it may hold both the chain and the UVM endorsement.
  const context: UvmSecurityContext | undefined =
    sources.securityContext === false
      ? undefined
      : await readUvmSecurityContext(sources.securityContext ?? {});
  const uvmEndorsements = supplied.uvmEndorsements ?? context?.uvmEndorsements;
  const withUvm = (vcekChain: string, chainSource: CollateralSource): SnpCollateral => ({
    vcekChain,
    chainSource,
    ...(uvmEndorsements === undefined ? {} : { uvmEndorsements }),
  });

  if (supplied.leaf !== undefined && supplied.ask !== undefined && supplied.ark !== undefined) {
    return withUvm(pemChain([supplied.leaf, supplied.ask, supplied.ark]), "interface");
  }
  if (sources.chainFile !== undefined) {
    const fromFile = await readChainFile(sources.chainFile);
    if (fromFile.length >= 3) return withUvm(pemChain(fromFile), "chain-file");
    if (fromFile.length === 2 && supplied.leaf !== undefined) {
      return withUvm(pemChain([supplied.leaf, ...fromFile]), "chain-file");
    }
    throw new ShieldError(
      "ERR_EVIDENCE_MALFORMED",
      `${sources.chainFile} must hold VCEK, ASK and ARK (or ASK and ARK when the host supplies the VCEK)`,
    );
  }
  if (context?.certification !== undefined) {
    checkThimTcb(context.certification, report, "security context");
    return withUvm(context.certification.vcekChainPem, "security-context");
  }
  if (sources.thim !== undefined) {
    const certification = await sources.thim.fetchCertification();
    checkThimTcb(certification, report);
    return withUvm(certification.vcekChainPem, "thim");
  }
  throw new ShieldError(
    "ERR_EVIDENCE_UNSUPPORTED",
    "no VCEK certificate chain: the host supplied none, no chain file is configured, " +
      "no UVM security context holds one, and THIM is disabled",
  );
}

async function readChainFile(path: string): Promise<X509Certificate[]> {
  let text: string;
  try {
    const bytes = await readFile(path);
    if (bytes.length > MAX_CHAIN_FILE_BYTES) {
      throw new ShieldError("ERR_EVIDENCE_MALFORMED", `${path} exceeds ${MAX_CHAIN_FILE_BYTES} bytes`);
    }
    text = bytes.toString("latin1");
  } catch (error) {
    if (error instanceof ShieldError) throw error;
    throw new ShieldError("ERR_IO", `reading ${path}: ${errnoOf(error) ?? "unknown error"}`, {
      cause: error,
    });
  }
  try {
    return loadCertificates(text);
  } catch (cause) {
    throw new ShieldError("ERR_EVIDENCE_MALFORMED", `${path} is not PEM certificates`, { cause });
  }
}

function pemChain(certificates: readonly X509Certificate[]): string {
  return certificates.map((cert) => derToPem(cert.raw)).join("");
}

/** The `sevsnp/raw` evidence for a report and the collateral resolved for it. */
export function rawSnpEvidence(report: SnpReport, collateral: SnpCollateral, source: string): Evidence {
  return finishEvidence(
    {
      tee: "sevsnp",
      format: "raw",
      report: base64url(report.raw),
      vcekChain: collateral.vcekChain,
      ...(collateral.uvmEndorsements === undefined
        ? {}
        : { uvmEndorsements: base64url(collateral.uvmEndorsements) }),
    },
    source,
  );
}
