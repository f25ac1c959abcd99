/**
 * Claim types shared by every TEE verifier, the appraisal code and the command-line tool.
 *
 * Claims are what a verified piece of hardware evidence says about a workload, in the form
 * policies compare: small integers as numbers, byte strings as lowercase hex, flags as
 * booleans. They are only meaningful once the evidence they come from has been verified.
 */

/** The hardware trusted execution environments Shield understands. */
export type TeeKind = "sevsnp" | "sgx";

/** One AMD TCB_VERSION, decoded with the layout of the processor that produced it. */
export interface SnpTcbClaims {
  /** Boot loader security patch level. */
  readonly bootloader: number;
  /** PSP operating system (TEE) security patch level. */
  readonly tee: number;
  /** SNP firmware security patch level. */
  readonly snp: number;
  /** Lowest microcode patch level of all cores. */
  readonly microcode: number;
  /** FMC security patch level; Turin and later only. */
  readonly fmc?: number;
  /** The 64-bit value in hex, as AMD KDS and Azure THIM (`tcbm`) write it. */
  readonly raw: string;
}

/** The guest policy the VM was launched with (SEV-SNP ABI, guest policy structure). */
export interface SnpPolicyClaims {
  /** The 64-bit policy in hex (16 digits). */
  readonly raw: string;
  readonly abiMajor: number;
  readonly abiMinor: number;
  /** Host SMT is allowed. */
  readonly smt: boolean;
  /** A migration agent may be associated with the guest. */
  readonly migrateMa: boolean;
  /** The host may debug (decrypt) the guest. */
  readonly debug: boolean;
  /** The guest may run on one socket only. */
  readonly singleSocket: boolean;
  /** CXL devices or memory may be attached. */
  readonly cxlAllowed: boolean;
  /** AES-256-XTS memory encryption is required. */
  readonly memAes256Xts: boolean;
  /** Running Average Power Limit must be disabled. */
  readonly raplDisabled: boolean;
  /** Ciphertext hiding for DRAM must be enabled. */
  readonly ciphertextHiding: boolean;
  /** Page swap commands are disabled for the guest. */
  readonly pageSwapDisabled: boolean;
}

/** PLATFORM_INFO: how the platform that produced the report was configured. */
export interface SnpPlatformInfoClaims {
  /** The 64-bit value in hex (16 digits). */
  readonly raw: string;
  readonly smtEnabled: boolean;
  readonly tsmeEnabled: boolean;
  readonly eccEnabled: boolean;
  readonly raplDisabled: boolean;
  readonly ciphertextHidingEnabled: boolean;
  /** DRAM alias check completed with no aliasing found (AMD-SB-3015 mitigation). */
  readonly aliasCheckComplete: boolean;
}

export interface SnpFirmwareVersionClaims {
  readonly major: number;
  readonly minor: number;
  readonly build: number;
}

/** AMD SEV-SNP attestation report claims (hex lowercase). */
export interface SevSnpClaims {
  /** ATTESTATION_REPORT format version (2–5). */
  readonly version: number;
  readonly guestSvn: number;
  readonly policy: SnpPolicyClaims;
  /** Copy of `policy.debug`, the flag every release policy checks. */
  readonly debug: boolean;
  readonly familyId: string;
  readonly imageId: string;
  readonly vmpl: number;
  /** Launch digest (48 bytes). */
  readonly measurement: string;
  /** Data the host supplied at launch (32 bytes); for confidential containers, sha256 of the policy. */
  readonly hostData: string;
  /** Data the guest supplied with the request (64 bytes). */
  readonly reportData: string;
  readonly idKeyDigest: string;
  readonly authorKeyDigest: string;
  readonly authorKeyEn: boolean;
  readonly reportId: string;
  readonly reportIdMa: string;
  /** The TCB the signing key (VCEK) was derived for. */
  readonly reportedTcb: SnpTcbClaims;
  readonly currentTcb: SnpTcbClaims;
  readonly committedTcb: SnpTcbClaims;
  readonly launchTcb: SnpTcbClaims;
  /** 64 bytes; all zero when the chip key is masked or the report is VLEK-signed. */
  readonly chipId: string;
  readonly maskChipKey: boolean;
  readonly signingKey: "vcek" | "vlek";
  readonly platformInfo: SnpPlatformInfoClaims;
  readonly currentVersion: SnpFirmwareVersionClaims;
  readonly committedVersion: SnpFirmwareVersionClaims;
  /** CPUID family, model and stepping of the processor; report version 3 and later. */
  readonly cpuid?: { readonly family: number; readonly model: number; readonly stepping: number };
  /** Verified mitigation vector at launch (hex, 16 digits); report version 5 and later. */
  readonly launchMitVector?: string;
  /** Current verified mitigation vector (hex, 16 digits); report version 5 and later. */
  readonly currentMitVector?: string;
}

/** Intel SGX enclave claims (hex lowercase). */
export interface SgxClaims {
  /** Quote format version (3). */
  quoteVersion: number;
  mrEnclave: string;
  mrSigner: string;
  isvProdId: number;
  isvSvn: number;
  /** REPORT_DATA (64 bytes). */
  reportData: string;
  /** ATTRIBUTES.FLAGS bit 1: the enclave can be debugged. */
  debug: boolean;
  /** ATTRIBUTES (16 bytes). */
  attributes: string;
  /** CPUSVN (16 bytes). */
  cpuSvn: string;
  miscSelect: number;
  qeSvn: number;
  pceSvn: number;
}

/** Verified claims tagged with the TEE that made them. */
export type TeeClaims =
  | { readonly tee: "sevsnp"; readonly claims: SevSnpClaims }
  | { readonly tee: "sgx"; readonly claims: SgxClaims };
