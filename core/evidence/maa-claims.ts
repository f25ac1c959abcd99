/**
 * The claims Microsoft Azure Attestation puts in a token for verified SEV-SNP and SGX evidence,
 * with MAA's names and JSON types: SVNs and VMPL as numbers, flags as booleans, byte strings as
 * lowercase hex, runtime data as the parsed `x-ms-runtime` object. The local attestation server
 * issues exactly these, so everything that reads real MAA tokens (token validation, appraisal,
 * Key Vault release policies) is exercised unchanged. Names and types follow MAA's published
 * claim sets and real tokens (container tokens from `/attest/SevSnpVm`; SGX tokens issued under
 * the default policy, which repeats the older claim names). Only call these with claims from
 * evidence the trust core has verified.
 */
import type { SevSnpClaims, SgxClaims } from "./types.js";

/**
 * `x-ms-policy-hash` as MAA reports it for its default attestation policies (permit everything
 * verified; for SGX also issue the older claim names). Taken from real tokens of the shared
 * providers (sevsnpvm: sharedweu.weu.test and sharedeus container tokens; sgx: sharedeus).
 */
export const MAA_DEFAULT_POLICY_HASHES = Object.freeze({
  sevsnpvm: "9NY0VnTQ-IiBriBplVUpFbczcDaEBUwsiFYAzHu_gco",
  sgx: "OwEvpSVEWA5eisCEncBt8NSZFLYDRKoLaoONPrZgoeY",
});

/** The claim set of a `/attest/SevSnpVm` token, minus what the issuer adds (`iss`, `exp`, `nonce`, ...). */
export type MaaSevSnpClaimSet = {
  readonly "x-ms-attestation-type": "sevsnpvm";
  readonly "x-ms-compliance-status"?: string;
  readonly "x-ms-inittime"?: unknown;
  readonly "x-ms-policy-hash": string;
  readonly "x-ms-runtime"?: unknown;
  readonly "x-ms-sevsnpvm-authorkeydigest": string;
  readonly "x-ms-sevsnpvm-bootloader-svn": number;
  readonly "x-ms-sevsnpvm-familyId": string;
  readonly "x-ms-sevsnpvm-guestsvn": number;
  readonly "x-ms-sevsnpvm-hostdata": string;
  readonly "x-ms-sevsnpvm-idkeydigest": string;
  readonly "x-ms-sevsnpvm-imageId": string;
  readonly "x-ms-sevsnpvm-is-debuggable": boolean;
  readonly "x-ms-sevsnpvm-launchmeasurement": string;
  readonly "x-ms-sevsnpvm-microcode-svn": number;
  readonly "x-ms-sevsnpvm-migration-allowed": boolean;
  readonly "x-ms-sevsnpvm-reportdata": string;
  readonly "x-ms-sevsnpvm-reportid": string;
  readonly "x-ms-sevsnpvm-smt-allowed": boolean;
  readonly "x-ms-sevsnpvm-snpfw-svn": number;
  readonly "x-ms-sevsnpvm-tee-svn": number;
  readonly "x-ms-sevsnpvm-vmpl": number;
  readonly "x-ms-ver": "1.0";
};

/** What MAA's default SGX policy issues, repeated under `x-ms-policy` and at the top level. */
export type MaaSgxPolicyClaims = {
  readonly "is-debuggable": boolean;
  readonly "product-id": number;
  readonly "sgx-mrenclave": string;
  readonly "sgx-mrsigner": string;
  readonly svn: number;
  readonly tee: "sgx";
};

/** The claim set of a `/attest/SgxEnclave` token, minus what the issuer adds. */
export type MaaSgxClaimSet = MaaSgxPolicyClaims & {
  /** Older names of `x-ms-sgx-ehd`, still emitted. */
  readonly "aas-ehd"?: string;
  readonly "maa-ehd"?: string;
  readonly "x-ms-attestation-type": "sgx";
  readonly "x-ms-policy": MaaSgxPolicyClaims;
  readonly "x-ms-policy-hash": string;
  readonly "x-ms-runtime"?: unknown;
  /** The runtime data, base64url without padding. */
  readonly "x-ms-sgx-ehd"?: string;
  readonly "x-ms-sgx-is-debuggable": boolean;
  readonly "x-ms-sgx-mrenclave": string;
  readonly "x-ms-sgx-mrsigner": string;
  readonly "x-ms-sgx-product-id": number;
  /** All 64 bytes of REPORT_DATA, hex. */
  readonly "x-ms-sgx-report-data": string;
  readonly "x-ms-sgx-svn": number;
  readonly "x-ms-ver": "1.0";
};

export interface SevSnpMaaClaimsExtra {
  /** The runtime data parsed as JSON, when it was sent with `dataType: "JSON"`. */
  readonly runtime?: unknown;
  /** e.g. `azure-compliant-uvm` (ACI) or `azure-signed-katacc-uvm` (AKS); left out when not given. */
  readonly complianceStatus?: string;
  /** The init-time data parsed as JSON, when it was sent with `dataType: "JSON"`. */
  readonly inittime?: unknown;
  /** Default: the hash MAA reports for its default SEV-SNP policy. */
  readonly policyHash?: string;
}

export interface SgxMaaClaimsExtra {
  /** The exact runtime-data bytes; their base64url becomes `x-ms-sgx-ehd`. */
  readonly runtimeData?: Uint8Array;
  /** The runtime data parsed as JSON, when it was sent with `dataType: "JSON"`. */
  readonly runtime?: unknown;
  /** Default: the hash MAA reports for its default SGX policy. */
  readonly policyHash?: string;
}

/** MAA's claims for a verified SEV-SNP report; the TCB SVNs are those of REPORTED_TCB. */
export function sevSnpMaaClaims(claims: SevSnpClaims, extra: SevSnpMaaClaimsExtra = {}): MaaSevSnpClaimSet {
  if (typeof claims !== "object" || claims === null) throw new TypeError("claims must be SEV-SNP claims");
  checkOptionalString(extra.complianceStatus, "complianceStatus");
  checkOptionalString(extra.policyHash, "policyHash");
  const tcb = claims.reportedTcb;
  return {
    "x-ms-attestation-type": "sevsnpvm",
    ...(extra.complianceStatus === undefined ? {} : { "x-ms-compliance-status": extra.complianceStatus }),
    ...(extra.inittime === undefined ? {} : { "x-ms-inittime": extra.inittime }),
    "x-ms-policy-hash": extra.policyHash ?? MAA_DEFAULT_POLICY_HASHES.sevsnpvm,
    ...(extra.runtime === undefined ? {} : { "x-ms-runtime": extra.runtime }),
    "x-ms-sevsnpvm-authorkeydigest": claims.authorKeyDigest,
    "x-ms-sevsnpvm-bootloader-svn": tcb.bootloader,
    "x-ms-sevsnpvm-familyId": claims.familyId,
    "x-ms-sevsnpvm-guestsvn": claims.guestSvn,
    "x-ms-sevsnpvm-hostdata": claims.hostData,
    "x-ms-sevsnpvm-idkeydigest": claims.idKeyDigest,
    "x-ms-sevsnpvm-imageId": claims.imageId,
    "x-ms-sevsnpvm-is-debuggable": claims.policy.debug,
    "x-ms-sevsnpvm-launchmeasurement": claims.measurement,
    "x-ms-sevsnpvm-microcode-svn": tcb.microcode,
    "x-ms-sevsnpvm-migration-allowed": claims.policy.migrateMa,
    "x-ms-sevsnpvm-reportdata": claims.reportData,
    "x-ms-sevsnpvm-reportid": claims.reportId,
    "x-ms-sevsnpvm-smt-allowed": claims.policy.smt,
    "x-ms-sevsnpvm-snpfw-svn": tcb.snp,
    "x-ms-sevsnpvm-tee-svn": tcb.tee,
    "x-ms-sevsnpvm-vmpl": claims.vmpl,
    "x-ms-ver": "1.0",
  };
}

/** MAA's claims for a verified SGX quote, with the older names MAA's default policy still issues. */
export function sgxMaaClaims(claims: SgxClaims, extra: SgxMaaClaimsExtra = {}): MaaSgxClaimSet {
  if (typeof claims !== "object" || claims === null) throw new TypeError("claims must be SGX claims");
  checkOptionalString(extra.policyHash, "policyHash");
  if (extra.runtimeData !== undefined && !(extra.runtimeData instanceof Uint8Array)) {
    throw new TypeError("runtimeData must be a Uint8Array");
  }
  const policy: MaaSgxPolicyClaims = {
    "is-debuggable": claims.debug,
    "product-id": claims.isvProdId,
    "sgx-mrenclave": claims.mrEnclave,
    "sgx-mrsigner": claims.mrSigner,
    svn: claims.isvSvn,
    tee: "sgx",
  };
  // MAA writes enclave-held data as base64url without padding (e.g. "VGhpcyBpcyBzb21lIHJ1bnRpbWUgZGF0YQ").
  const ehd =
    extra.runtimeData === undefined ? undefined : Buffer.from(extra.runtimeData).toString("base64url");
  return {
    ...(ehd === undefined ? {} : { "aas-ehd": ehd }),
    ...policy,
    ...(ehd === undefined ? {} : { "maa-ehd": ehd }),
    "x-ms-attestation-type": "sgx",
    "x-ms-policy": policy,
    "x-ms-policy-hash": extra.policyHash ?? MAA_DEFAULT_POLICY_HASHES.sgx,
    ...(extra.runtime === undefined ? {} : { "x-ms-runtime": extra.runtime }),
    ...(ehd === undefined ? {} : { "x-ms-sgx-ehd": ehd }),
    "x-ms-sgx-is-debuggable": claims.debug,
    "x-ms-sgx-mrenclave": claims.mrEnclave,
    "x-ms-sgx-mrsigner": claims.mrSigner,
    "x-ms-sgx-product-id": claims.isvProdId,
    "x-ms-sgx-report-data": claims.reportData,
    "x-ms-sgx-svn": claims.isvSvn,
    "x-ms-ver": "1.0",
  };
}

function checkOptionalString(value: unknown, name: string): void {
  if (value !== undefined && (typeof value !== "string" || value.length === 0 || value.length > 256)) {
    throw new TypeError(`${name} must be a non-empty string of at most 256 characters`);
  }
}
