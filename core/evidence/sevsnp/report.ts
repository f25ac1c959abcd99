/**
 * The AMD SEV-SNP ATTESTATION_REPORT: a 1184-byte structure the AMD Secure Processor signs with
 * the chip's VCEK (or a cloud provider's VLEK). This module turns the bytes into named fields and
 * back (the writer serves the simulated TEE and tests). It decides nothing: a parsed report is
 * unverified until `verify.ts` has checked its signature and certificate chain.
 *
 * Layout: SEV Secure Nested Paging Firmware ABI Specification (AMD publication 56860),
 * "ATTESTATION_REPORT Structure". Version 2 is the original layout; version 3 (ABI 1.56) adds
 * CPUID family, model and stepping at 0x188; version 4 reports are emitted by shipped firmware
 * (e.g. Milan 1.55.31) with the version 3 layout (AMD has not published a different one);
 * version 5 (ABI 1.58) adds LAUNCH_MIT_VECTOR (0x1F8) and CURRENT_MIT_VECTOR (0x200). Reserved
 * ranges must be zero, so a report carrying fields this parser does not know is rejected rather
 * than misread.
 */
import { ShieldError } from "../../errors.js";

export const SNP_REPORT_SIZE = 0x4a0;
/** Bytes 0x000–0x29F are signed. */
export const SNP_SIGNED_LENGTH = 0x2a0;
export const SNP_SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1;
/** Report versions whose layout is known (see the module comment). */
export const SNP_REPORT_VERSIONS: readonly number[] = Object.freeze([2, 3, 4, 5]);

/** AMD EPYC product line; `unknown` when the report does not say (version 2) or names another. */
export type SnpProduct = "Milan" | "Genoa" | "Turin" | "unknown";

/**
 * TCB_VERSION byte layout. Milan and Genoa: boot loader, TEE, 4 reserved, SNP, microcode.
 * Turin: FMC, boot loader, TEE, SNP, 3 reserved, microcode.
 */
export type SnpTcbLayout = "milan-genoa" | "turin";

export interface SnpTcbInput {
  readonly bootloader: number;
  readonly tee: number;
  readonly snp: number;
  readonly microcode: number;
  /** Turin layout only. */
  readonly fmc?: number;
}

export interface SnpTcbVersion extends SnpTcbInput {
  /** The little-endian 64-bit field as a number. */
  readonly value: bigint;
  /** `value` in hex, 16 digits, as AMD KDS and Azure THIM (`tcbm`) write it. */
  readonly raw: string;
}

export interface SnpGuestPolicy {
  readonly value: bigint;
  readonly abiMinor: number;
  readonly abiMajor: number;
  readonly smt: boolean;
  readonly migrateMa: boolean;
  readonly debug: boolean;
  readonly singleSocket: boolean;
  readonly cxlAllowed: boolean;
  readonly memAes256Xts: boolean;
  readonly raplDisabled: boolean;
  readonly ciphertextHiding: boolean;
  readonly pageSwapDisabled: boolean;
}

export interface SnpPlatformInfo {
  readonly value: bigint;
  readonly smtEnabled: boolean;
  readonly tsmeEnabled: boolean;
  readonly eccEnabled: boolean;
  readonly raplDisabled: boolean;
  readonly ciphertextHidingEnabled: boolean;
  readonly aliasCheckComplete: boolean;
}

export interface SnpFirmwareVersion {
  readonly major: number;
  readonly minor: number;
  readonly build: number;
}

export interface SnpCpuid {
  /** Combined (base + extended) family, e.g. 0x19 for Milan and Genoa, 0x1A for Turin. */
  readonly family: number;
  /** Combined (extended << 4 | base) model. */
  readonly model: number;
  readonly stepping: number;
}

/** A parsed report. Byte fields are views into `raw`, a private copy of the input. */
export interface SnpReport {
  /** All 1184 bytes. */
  readonly raw: Buffer;
  /** Bytes 0x000–0x29F, the part the signature covers. */
  readonly signedBytes: Buffer;
  readonly version: number;
  readonly guestSvn: number;
  readonly policy: SnpGuestPolicy;
  readonly familyId: Buffer;
  readonly imageId: Buffer;
  readonly vmpl: number;
  readonly signatureAlgo: number;
  readonly currentTcb: SnpTcbVersion;
  readonly platformInfo: SnpPlatformInfo;
  /** The 32-bit word at 0x48 (AUTHOR_KEY_EN, MASK_CHIP_KEY, SIGNING_KEY). */
  readonly flags: number;
  readonly authorKeyEn: boolean;
  readonly maskChipKey: boolean;
  readonly signingKey: "vcek" | "vlek";
  readonly reportData: Buffer;
  readonly measurement: Buffer;
  readonly hostData: Buffer;
  readonly idKeyDigest: Buffer;
  readonly authorKeyDigest: Buffer;
  readonly reportId: Buffer;
  readonly reportIdMa: Buffer;
  readonly reportedTcb: SnpTcbVersion;
  /** Version 3 and later. */
  readonly cpuid?: SnpCpuid;
  readonly chipId: Buffer;
  readonly committedTcb: SnpTcbVersion;
  readonly currentVersion: SnpFirmwareVersion;
  readonly committedVersion: SnpFirmwareVersion;
  readonly launchTcb: SnpTcbVersion;
  /** Version 5 and later. */
  readonly launchMitVector?: bigint;
  /** Version 5 and later. */
  readonly currentMitVector?: bigint;
  /** Product line named by `cpuid`; `unknown` for version 2. */
  readonly product: SnpProduct;
  /** Layout the TCB fields were decoded with (Turin layout only when `cpuid` says Turin). */
  readonly tcbLayout: SnpTcbLayout;
  /**
   * ECDSA signature components, converted from the report's 72-byte little-endian fields to
   * 72-byte big-endian integers. A valid P-384 signature has 24 leading zero bytes in each.
   */
  readonly signature: { readonly r: Buffer; readonly s: Buffer };
}

const OFFSET = {
  version: 0x000,
  guestSvn: 0x004,
  policy: 0x008,
  familyId: 0x010,
  imageId: 0x020,
  vmpl: 0x030,
  signatureAlgo: 0x034,
  currentTcb: 0x038,
  platformInfo: 0x040,
  flags: 0x048,
  reportData: 0x050,
  measurement: 0x090,
  hostData: 0x0c0,
  idKeyDigest: 0x0e0,
  authorKeyDigest: 0x110,
  reportId: 0x140,
  reportIdMa: 0x160,
  reportedTcb: 0x180,
  cpuid: 0x188,
  chipId: 0x1a0,
  committedTcb: 0x1e0,
  currentVersion: 0x1e8,
  committedVersion: 0x1ec,
  launchTcb: 0x1f0,
  launchMitVector: 0x1f8,
  currentMitVector: 0x200,
  signatureR: 0x2a0,
  signatureS: 0x2e8,
} as const;

const SIZE = {
  familyId: 16,
  imageId: 16,
  reportData: 64,
  measurement: 48,
  hostData: 32,
  idKeyDigest: 48,
  authorKeyDigest: 48,
  reportId: 32,
  reportIdMa: 32,
  chipId: 64,
} as const;

/** Each of R and S takes 72 bytes in the report; P-384 values need 48. */
const SIGNATURE_COMPONENT_SIZE = 72;
const SIGNATURE_END = OFFSET.signatureS + SIGNATURE_COMPONENT_SIZE;

const parsedReports = new WeakSet<SnpReport>();
/** Compared against reserved ranges; never written. */
const ZEROS = Buffer.alloc(SNP_REPORT_SIZE);

/**
 * Parses a raw report. Throws ERR_EVIDENCE_MALFORMED (wrong size, non-zero reserved bytes),
 * ERR_EVIDENCE_VERSION (a version whose layout is not known) or ERR_EVIDENCE_UNSUPPORTED (a
 * signature algorithm other than ECDSA P-384/SHA-384, a signing key other than VCEK or VLEK).
 */
export function parseSnpReport(bytes: Uint8Array): SnpReport {
  if (!(bytes instanceof Uint8Array)) throw new TypeError("report must be a Uint8Array");
  if (bytes.length !== SNP_REPORT_SIZE) {
    throw new ShieldError(
      "ERR_EVIDENCE_MALFORMED",
      `SEV-SNP report must be ${SNP_REPORT_SIZE} bytes, got ${bytes.length}`,
    );
  }
  const raw = Buffer.from(bytes);
  const version = raw.readUInt32LE(OFFSET.version);
  if (!SNP_REPORT_VERSIONS.includes(version)) {
    throw new ShieldError("ERR_EVIDENCE_VERSION", `SEV-SNP report version ${version} is not supported`);
  }
  const signatureAlgo = raw.readUInt32LE(OFFSET.signatureAlgo);
  if (signatureAlgo !== SNP_SIGNATURE_ALGO_ECDSA_P384_SHA384) {
    throw new ShieldError(
      "ERR_EVIDENCE_UNSUPPORTED",
      `SEV-SNP signature algorithm ${signatureAlgo} is not supported`,
    );
  }
  const flags = raw.readUInt32LE(OFFSET.flags);
  const signingKey = signingKeyOf(flags);
  checkReserved(raw, version);

  const cpuid: SnpCpuid | undefined =
    version >= 3
      ? Object.freeze({
          family: raw[OFFSET.cpuid]!,
          model: raw[OFFSET.cpuid + 1]!,
          stepping: raw[OFFSET.cpuid + 2]!,
        })
      : undefined;
  const product = cpuid === undefined ? "unknown" : snpProductFromCpuid(cpuid.family, cpuid.model);
  const tcbLayout: SnpTcbLayout = product === "Turin" ? "turin" : "milan-genoa";

  const report: SnpReport = {
    raw,
    signedBytes: raw.subarray(0, SNP_SIGNED_LENGTH),
    version,
    guestSvn: raw.readUInt32LE(OFFSET.guestSvn),
    policy: decodeSnpPolicy(raw.readBigUInt64LE(OFFSET.policy)),
    familyId: raw.subarray(OFFSET.familyId, OFFSET.familyId + SIZE.familyId),
    imageId: raw.subarray(OFFSET.imageId, OFFSET.imageId + SIZE.imageId),
    vmpl: raw.readUInt32LE(OFFSET.vmpl),
    signatureAlgo,
    currentTcb: tcbAt(raw, OFFSET.currentTcb, tcbLayout),
    platformInfo: decodePlatformInfo(raw.readBigUInt64LE(OFFSET.platformInfo)),
    flags,
    authorKeyEn: (flags & 0b1) !== 0,
    maskChipKey: (flags & 0b10) !== 0,
    signingKey,
    reportData: raw.subarray(OFFSET.reportData, OFFSET.reportData + SIZE.reportData),
    measurement: raw.subarray(OFFSET.measurement, OFFSET.measurement + SIZE.measurement),
    hostData: raw.subarray(OFFSET.hostData, OFFSET.hostData + SIZE.hostData),
    idKeyDigest: raw.subarray(OFFSET.idKeyDigest, OFFSET.idKeyDigest + SIZE.idKeyDigest),
    authorKeyDigest: raw.subarray(OFFSET.authorKeyDigest, OFFSET.authorKeyDigest + SIZE.authorKeyDigest),
    reportId: raw.subarray(OFFSET.reportId, OFFSET.reportId + SIZE.reportId),
    reportIdMa: raw.subarray(OFFSET.reportIdMa, OFFSET.reportIdMa + SIZE.reportIdMa),
    reportedTcb: tcbAt(raw, OFFSET.reportedTcb, tcbLayout),
    cpuid,
    chipId: raw.subarray(OFFSET.chipId, OFFSET.chipId + SIZE.chipId),
    committedTcb: tcbAt(raw, OFFSET.committedTcb, tcbLayout),
    currentVersion: firmwareVersionAt(raw, OFFSET.currentVersion),
    committedVersion: firmwareVersionAt(raw, OFFSET.committedVersion),
    launchTcb: tcbAt(raw, OFFSET.launchTcb, tcbLayout),
    // Optional fields are always present (undefined when absent) so every report has one shape.
    launchMitVector: version >= 5 ? raw.readBigUInt64LE(OFFSET.launchMitVector) : undefined,
    currentMitVector: version >= 5 ? raw.readBigUInt64LE(OFFSET.currentMitVector) : undefined,
    product,
    tcbLayout,
    signature: Object.freeze({
      r: littleToBigEndian(raw.subarray(OFFSET.signatureR, OFFSET.signatureR + SIGNATURE_COMPONENT_SIZE)),
      s: littleToBigEndian(raw.subarray(OFFSET.signatureS, OFFSET.signatureS + SIGNATURE_COMPONENT_SIZE)),
    }),
  };
  Object.freeze(report);
  parsedReports.add(report);
  return report;
}

/** True for objects returned by `parseSnpReport` (not look-alikes built elsewhere). */
export function isSnpReport(value: unknown): value is SnpReport {
  return typeof value === "object" && value !== null && parsedReports.has(value as SnpReport);
}

/** Product line from the report's CPUID family and model (AMD family 19h/1Ah model ranges). */
export function snpProductFromCpuid(family: number, model: number): SnpProduct {
  if (family === 0x19) {
    if (model <= 0x0f) return "Milan";
    if ((model >= 0x10 && model <= 0x1f) || (model >= 0xa0 && model <= 0xaf)) return "Genoa";
  }
  if (family === 0x1a && model <= 0x11) return "Turin";
  return "unknown";
}

export function decodeSnpTcb(value: bigint, layout: SnpTcbLayout): SnpTcbVersion {
  const bytes = Buffer.alloc(8);
  bytes.writeBigUInt64LE(value);
  return tcbAt(bytes, 0, layout);
}

/** Decodes the TCB_VERSION at `offset` by reading bytes (cheaper than 64-bit arithmetic). */
function tcbAt(raw: Buffer, offset: number, layout: SnpTcbLayout): SnpTcbVersion {
  const value = raw.readBigUInt64LE(offset);
  const hex = value.toString(16).padStart(16, "0");
  const turin = layout === "turin";
  return Object.freeze({
    bootloader: raw[offset + (turin ? 1 : 0)]!,
    tee: raw[offset + (turin ? 2 : 1)]!,
    snp: raw[offset + (turin ? 3 : 6)]!,
    microcode: raw[offset + 7]!,
    fmc: turin ? raw[offset]! : undefined,
    value,
    raw: hex,
  });
}

export function encodeSnpTcb(tcb: SnpTcbInput, layout: SnpTcbLayout): bigint {
  const parts = [tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode, tcb.fmc ?? 0];
  if (!parts.every((p) => Number.isInteger(p) && p >= 0 && p <= 0xff)) {
    throw new TypeError("TCB components must be integers 0–255");
  }
  const at = (v: number, i: number): bigint => BigInt(v) << BigInt(8 * i);
  return layout === "turin"
    ? at(tcb.fmc ?? 0, 0) | at(tcb.bootloader, 1) | at(tcb.tee, 2) | at(tcb.snp, 3) | at(tcb.microcode, 7)
    : at(tcb.bootloader, 0) | at(tcb.tee, 1) | at(tcb.snp, 6) | at(tcb.microcode, 7);
}

/** Guest policy bits (ABI 56860 "Guest Policy Structure"). */
export function decodeSnpPolicy(value: bigint): SnpGuestPolicy {
  // Every defined bit is below 32, so 32-bit arithmetic on the low word suffices.
  const low = Number(value & 0xffffffffn);
  return Object.freeze({
    value,
    abiMinor: low & 0xff,
    abiMajor: (low >>> 8) & 0xff,
    smt: bitOf(low, 16),
    // bit 17 is reserved and must be one; appraisal, not parsing, decides what to make of it
    migrateMa: bitOf(low, 18),
    debug: bitOf(low, 19),
    singleSocket: bitOf(low, 20),
    cxlAllowed: bitOf(low, 21),
    memAes256Xts: bitOf(low, 22),
    raplDisabled: bitOf(low, 23),
    ciphertextHiding: bitOf(low, 24),
    pageSwapDisabled: bitOf(low, 25),
  });
}

function decodePlatformInfo(value: bigint): SnpPlatformInfo {
  const low = Number(value & 0xffffffffn);
  return Object.freeze({
    value,
    smtEnabled: bitOf(low, 0),
    tsmeEnabled: bitOf(low, 1),
    eccEnabled: bitOf(low, 2),
    raplDisabled: bitOf(low, 3),
    ciphertextHidingEnabled: bitOf(low, 4),
    aliasCheckComplete: bitOf(low, 5),
  });
}

function bitOf(word: number, n: number): boolean {
  return ((word >>> n) & 1) === 1;
}

function signingKeyOf(flags: number): "vcek" | "vlek" {
  const key = (flags >>> 2) & 0b111;
  if (key === 0) return "vcek";
  if (key === 1) return "vlek";
  // 7 means the report is not signed at all; 2–6 are reserved
  throw new ShieldError("ERR_EVIDENCE_UNSUPPORTED", `SEV-SNP signing key ${key} is not supported`);
}

function firmwareVersionAt(raw: Buffer, offset: number): SnpFirmwareVersion {
  return Object.freeze({ build: raw[offset]!, minor: raw[offset + 1]!, major: raw[offset + 2]! });
}

/** Reserved ranges for a given version; all must be zero. */
function reservedRanges(version: number): readonly (readonly [number, number, string])[] {
  return [
    [0x04c, 0x050, "reserved (0x04C)"],
    [version >= 3 ? 0x18b : 0x188, 0x1a0, "reserved (0x18B)"],
    [0x1eb, 0x1ec, "reserved (0x1EB)"],
    [0x1ef, 0x1f0, "reserved (0x1EF)"],
    [version >= 5 ? 0x208 : 0x1f8, SNP_SIGNED_LENGTH, "reserved (0x1F8)"],
    [SIGNATURE_END, SNP_REPORT_SIZE, "signature padding"],
  ];
}

function checkReserved(raw: Buffer, version: number): void {
  if (raw.readUInt32LE(OFFSET.flags) >>> 5 !== 0) {
    throw new ShieldError("ERR_EVIDENCE_MALFORMED", "SEV-SNP report has reserved flag bits set");
  }
  for (const [from, to, name] of reservedRanges(version)) {
    if (raw.compare(ZEROS, 0, to - from, from, to) !== 0) {
      throw new ShieldError(
        "ERR_EVIDENCE_MALFORMED",
        `SEV-SNP report version ${version} has non-zero ${name} bytes`,
      );
    }
  }
}

function littleToBigEndian(le: Buffer): Buffer {
  return Buffer.from(le).reverse();
}

// ---------------------------------------------------------------------------------------------
// Writer (simulated TEE, tests)

/** Every field of a report, for `encodeSnpReport`. Byte fields must have their exact size. */
export interface SnpReportFields {
  readonly version: number;
  readonly guestSvn: number;
  readonly policy: bigint;
  readonly familyId: Uint8Array;
  readonly imageId: Uint8Array;
  readonly vmpl: number;
  readonly signatureAlgo: number;
  readonly currentTcb: SnpTcbInput;
  readonly platformInfo: bigint;
  readonly authorKeyEn: boolean;
  readonly maskChipKey: boolean;
  readonly signingKey: "vcek" | "vlek";
  readonly reportData: Uint8Array;
  readonly measurement: Uint8Array;
  readonly hostData: Uint8Array;
  readonly idKeyDigest: Uint8Array;
  readonly authorKeyDigest: Uint8Array;
  readonly reportId: Uint8Array;
  readonly reportIdMa: Uint8Array;
  readonly reportedTcb: SnpTcbInput;
  /** Written for version 3 and later; also selects the TCB layout (family 0x1A: Turin). */
  readonly cpuid?: SnpCpuid;
  readonly chipId: Uint8Array;
  readonly committedTcb: SnpTcbInput;
  readonly currentVersion: SnpFirmwareVersion;
  readonly committedVersion: SnpFirmwareVersion;
  readonly launchTcb: SnpTcbInput;
  /** Written for version 5 and later. */
  readonly launchMitVector?: bigint;
  readonly currentMitVector?: bigint;
}

/** Serializes a report with an all-zero signature; `writeSnpSignature` fills it in. */
export function encodeSnpReport(fields: SnpReportFields): Buffer {
  const out = Buffer.alloc(SNP_REPORT_SIZE);
  const layout: SnpTcbLayout =
    fields.version >= 3 &&
    fields.cpuid !== undefined &&
    snpProductFromCpuid(fields.cpuid.family, fields.cpuid.model) === "Turin"
      ? "turin"
      : "milan-genoa";
  const bytes = (name: keyof typeof SIZE, value: Uint8Array): void => {
    if (!(value instanceof Uint8Array) || value.length !== SIZE[name]) {
      throw new TypeError(`${name} must be ${SIZE[name]} bytes`);
    }
    out.set(value, OFFSET[name]);
  };
  out.writeUInt32LE(fields.version, OFFSET.version);
  out.writeUInt32LE(fields.guestSvn, OFFSET.guestSvn);
  out.writeBigUInt64LE(fields.policy, OFFSET.policy);
  bytes("familyId", fields.familyId);
  bytes("imageId", fields.imageId);
  out.writeUInt32LE(fields.vmpl, OFFSET.vmpl);
  out.writeUInt32LE(fields.signatureAlgo, OFFSET.signatureAlgo);
  out.writeBigUInt64LE(encodeSnpTcb(fields.currentTcb, layout), OFFSET.currentTcb);
  out.writeBigUInt64LE(fields.platformInfo, OFFSET.platformInfo);
  const flags =
    (fields.authorKeyEn ? 0b1 : 0) |
    (fields.maskChipKey ? 0b10 : 0) |
    ((fields.signingKey === "vlek" ? 1 : 0) << 2);
  out.writeUInt32LE(flags, OFFSET.flags);
  bytes("reportData", fields.reportData);
  bytes("measurement", fields.measurement);
  bytes("hostData", fields.hostData);
  bytes("idKeyDigest", fields.idKeyDigest);
  bytes("authorKeyDigest", fields.authorKeyDigest);
  bytes("reportId", fields.reportId);
  bytes("reportIdMa", fields.reportIdMa);
  out.writeBigUInt64LE(encodeSnpTcb(fields.reportedTcb, layout), OFFSET.reportedTcb);
  if (fields.version >= 3 && fields.cpuid !== undefined) {
    out.writeUInt8(fields.cpuid.family, OFFSET.cpuid);
    out.writeUInt8(fields.cpuid.model, OFFSET.cpuid + 1);
    out.writeUInt8(fields.cpuid.stepping, OFFSET.cpuid + 2);
  }
  bytes("chipId", fields.chipId);
  out.writeBigUInt64LE(encodeSnpTcb(fields.committedTcb, layout), OFFSET.committedTcb);
  writeFirmwareVersion(out, OFFSET.currentVersion, fields.currentVersion);
  writeFirmwareVersion(out, OFFSET.committedVersion, fields.committedVersion);
  out.writeBigUInt64LE(encodeSnpTcb(fields.launchTcb, layout), OFFSET.launchTcb);
  if (fields.version >= 5) {
    out.writeBigUInt64LE(fields.launchMitVector ?? 0n, OFFSET.launchMitVector);
    out.writeBigUInt64LE(fields.currentMitVector ?? 0n, OFFSET.currentMitVector);
  }
  return out;
}

/**
 * Writes an ECDSA P-384 signature given as IEEE P1363 `r ‖ s` (48 bytes each, big-endian) into
 * the report's 72-byte little-endian R and S fields.
 */
export function writeSnpSignature(report: Buffer, p1363: Uint8Array): void {
  if (report.length !== SNP_REPORT_SIZE || p1363.length !== 96) {
    throw new TypeError("expected a 1184-byte report and a 96-byte P-384 signature");
  }
  report.fill(0, OFFSET.signatureR, SNP_REPORT_SIZE);
  report.set(Buffer.from(p1363.subarray(0, 48)).reverse(), OFFSET.signatureR);
  report.set(Buffer.from(p1363.subarray(48, 96)).reverse(), OFFSET.signatureS);
}

function writeFirmwareVersion(out: Buffer, offset: number, v: SnpFirmwareVersion): void {
  out.writeUInt8(v.build, offset);
  out.writeUInt8(v.minor, offset + 1);
  out.writeUInt8(v.major, offset + 2);
}
