/**
 * The claims an SEV-SNP report makes about its guest, in the form appraisal and release policies
 * compare: numbers as numbers, byte strings as lowercase hex. Only meaningful for a report that
 * `verify.ts` has verified; reading them from an unverified report decides nothing.
 */
import type { SevSnpClaims, SnpTcbClaims } from "../types.js";
import type { SnpReport, SnpTcbVersion } from "./report.js";

export function snpClaims(report: SnpReport): SevSnpClaims {
  const p = report.policy;
  const info = report.platformInfo;
  return {
    version: report.version,
    guestSvn: report.guestSvn,
    policy: {
      raw: hex64(p.value),
      abiMajor: p.abiMajor,
      abiMinor: p.abiMinor,
      smt: p.smt,
      migrateMa: p.migrateMa,
      debug: p.debug,
      singleSocket: p.singleSocket,
      cxlAllowed: p.cxlAllowed,
      memAes256Xts: p.memAes256Xts,
      raplDisabled: p.raplDisabled,
      ciphertextHiding: p.ciphertextHiding,
      pageSwapDisabled: p.pageSwapDisabled,
    },
    debug: p.debug,
    familyId: report.familyId.toString("hex"),
    imageId: report.imageId.toString("hex"),
    vmpl: report.vmpl,
    measurement: report.measurement.toString("hex"),
    hostData: report.hostData.toString("hex"),
    reportData: report.reportData.toString("hex"),
    idKeyDigest: report.idKeyDigest.toString("hex"),
    authorKeyDigest: report.authorKeyDigest.toString("hex"),
    authorKeyEn: report.authorKeyEn,
    reportId: report.reportId.toString("hex"),
    reportIdMa: report.reportIdMa.toString("hex"),
    reportedTcb: tcbClaims(report.reportedTcb),
    currentTcb: tcbClaims(report.currentTcb),
    committedTcb: tcbClaims(report.committedTcb),
    launchTcb: tcbClaims(report.launchTcb),
    chipId: report.chipId.toString("hex"),
    maskChipKey: report.maskChipKey,
    signingKey: report.signingKey,
    platformInfo: {
      raw: hex64(info.value),
      smtEnabled: info.smtEnabled,
      tsmeEnabled: info.tsmeEnabled,
      eccEnabled: info.eccEnabled,
      raplDisabled: info.raplDisabled,
      ciphertextHidingEnabled: info.ciphertextHidingEnabled,
      aliasCheckComplete: info.aliasCheckComplete,
    },
    currentVersion: { ...report.currentVersion },
    committedVersion: { ...report.committedVersion },
    // Version-dependent claims are undefined (and dropped by JSON) when the report lacks them.
    cpuid: report.cpuid === undefined ? undefined : { ...report.cpuid },
    launchMitVector: report.launchMitVector === undefined ? undefined : hex64(report.launchMitVector),
    currentMitVector: report.currentMitVector === undefined ? undefined : hex64(report.currentMitVector),
  };
}

function tcbClaims(tcb: SnpTcbVersion): SnpTcbClaims {
  return {
    bootloader: tcb.bootloader,
    tee: tcb.tee,
    snp: tcb.snp,
    microcode: tcb.microcode,
    fmc: tcb.fmc,
    raw: tcb.raw,
  };
}

function hex64(value: bigint): string {
  return value.toString(16).padStart(16, "0");
}
