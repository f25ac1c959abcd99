/**
 * A simulated AMD SEV-SNP platform for development and tests: a locally generated AMD-like
 * chain (ARK → ASK or ASVK → VCEK or VLEK, with AMD's certificate profile and VCEK extensions)
 * and a `signReport` that produces real SEV-SNP-format reports signed by the leaf key.
 *
 * The chain is not trusted by anything by default: its ARK (CN "ARK-Simulated") must be named
 * explicitly in a verifier's `trustedRoots`. Azure mode never does that. The leaf private key
 * never leaves the closure; callers can only ask for signatures over whole reports.
 */
import {
  createHash,
  createPrivateKey,
  generateKeyPairSync,
  sign,
  type KeyObject,
  type X509Certificate,
} from "node:crypto";
import {
  buildCertificate,
  derToPem,
  loadCertificate,
  type DistinguishedName,
  type ExtensionSpec,
} from "../../x509/certificate.js";
import { ia5String, integer } from "../../x509/der.js";
import {
  SNP_SIGNATURE_ALGO_ECDSA_P384_SHA384,
  SNP_SIGNED_LENGTH,
  encodeSnpReport,
  writeSnpSignature,
  type SnpCpuid,
  type SnpReportFields,
  type SnpTcbInput,
} from "../sevsnp/report.js";

export interface SimulatedSnpPlatformOptions {
  /** ARK and ASK/ASVK modulus size (AMD uses 4096; tests use 2048 for speed). */
  readonly rsaBits?: 2048 | 3072 | 4096;
  /** Product label used in the ASK/ASVK and VCEK names (default "Milan"). "Turin" switches to Turin TCB layout and CPUID. */
  readonly product?: string;
  readonly signingKey?: "vcek" | "vlek";
  /** 64-byte chip ID for the VCEK hardware ID (default: SHA-512 of the VCEK public key). */
  readonly chipId?: Uint8Array;
  /** The TCB the leaf certificate is issued for and reports claim by default. */
  readonly reportedTcb?: SnpTcbInput;
  readonly notBefore?: Date;
  readonly notAfter?: Date;
}

/** Report fields a caller may choose; everything else gets a consistent default. */
export type SimulatedSnpReportFields = Partial<Omit<SnpReportFields, "reportData">> & {
  /** 64 bytes, or 32 bytes followed by 32 zero bytes (the MAA convention). */
  readonly reportData?: Uint8Array;
  /** Sets or clears guest policy bit 19 on top of `policy`. */
  readonly debug?: boolean;
};

export interface SimulatedSnpPlatform {
  readonly product: string;
  readonly signingKey: "vcek" | "vlek";
  readonly ark: X509Certificate;
  /** The ASK (VCEK platforms) or ASVK (VLEK platforms). */
  readonly intermediate: X509Certificate;
  /** The VCEK or VLEK. */
  readonly leaf: X509Certificate;
  readonly chipId: Buffer;
  readonly reportedTcb: SnpTcbInput;
  /** Intermediate then ARK, as AMD KDS serves `cert_chain`. */
  readonly chainPem: string;
  readonly leafPem: string;
  /** A signed 1184-byte report with the given fields (version 3 by default). */
  signReport(fields?: SimulatedSnpReportFields): Buffer;
}

const ORGANIZATION = "Shield-ACC simulated TEE";
const DEFAULT_NOT_BEFORE = new Date("2020-01-01T00:00:00Z");
const DEFAULT_NOT_AFTER = new Date("2049-12-31T23:59:59Z");
const DEFAULT_TCB: SnpTcbInput = { bootloader: 3, tee: 0, snp: 8, microcode: 115 };
/** Guest policy 0x30000: SMT allowed, reserved bit 17 set, debug off. */
const DEFAULT_POLICY = 0x30000n;
const POLICY_DEBUG = 1n << 19n;

const CPUID: Record<string, SnpCpuid> = {
  Milan: { family: 0x19, model: 0x01, stepping: 0x01 },
  Genoa: { family: 0x19, model: 0x11, stepping: 0x01 },
  Turin: { family: 0x1a, model: 0x02, stepping: 0x00 },
};

const OID = {
  structVersion: "1.3.6.1.4.1.3704.1.1",
  productName: "1.3.6.1.4.1.3704.1.2",
  bootloader: "1.3.6.1.4.1.3704.1.3.1",
  tee: "1.3.6.1.4.1.3704.1.3.2",
  snp: "1.3.6.1.4.1.3704.1.3.3",
  microcode: "1.3.6.1.4.1.3704.1.3.8",
  fmc: "1.3.6.1.4.1.3704.1.3.9",
  hwid: "1.3.6.1.4.1.3704.1.4",
} as const;
/** SPL slots 4–7 are reserved and carry 0 in AMD's VCEKs. */
const RESERVED_SPL_OIDS = [
  "1.3.6.1.4.1.3704.1.3.4",
  "1.3.6.1.4.1.3704.1.3.5",
  "1.3.6.1.4.1.3704.1.3.6",
  "1.3.6.1.4.1.3704.1.3.7",
];

export function createSimulatedSnpPlatform(options: SimulatedSnpPlatformOptions = {}): SimulatedSnpPlatform {
  const rsaBits = options.rsaBits ?? 4096;
  const product = options.product ?? "Milan";
  const signingKey = options.signingKey ?? "vcek";
  const notBefore = options.notBefore ?? DEFAULT_NOT_BEFORE;
  const notAfter = options.notAfter ?? DEFAULT_NOT_AFTER;
  const turin = product === "Turin";
  const reportedTcb: SnpTcbInput = options.reportedTcb ?? (turin ? { ...DEFAULT_TCB, fmc: 0 } : DEFAULT_TCB);
  if (
    options.chipId !== undefined &&
    (!(options.chipId instanceof Uint8Array) || options.chipId.length !== 64)
  ) {
    throw new TypeError("chipId must be 64 bytes");
  }

  const arkKeys = generateKeyPairSync("rsa", { modulusLength: rsaBits });
  const intermediateKeys = generateKeyPairSync("rsa", { modulusLength: rsaBits });
  const leafKeys = generateKeyPairSync("ec", { namedCurve: "P-384" });

  const chipId = chipIdFor(options.chipId, leafKeys.publicKey, turin);
  const arkName = amdName("ARK-Simulated");
  const intermediateName = amdName(signingKey === "vlek" ? `SEV-VLEK-${product}` : `SEV-${product}`);
  const leafName = amdName(signingKey === "vlek" ? "SEV-VLEK" : "SEV-VCEK");

  const ark = buildCertificate({
    subject: arkName,
    issuer: arkName,
    serialNumber: 1n,
    notBefore,
    notAfter,
    publicKey: arkKeys.publicKey,
    signingKey: arkKeys.privateKey,
    signatureAlgorithm: "rsa-pss-sha384",
    isCa: true,
  });
  const intermediate = buildCertificate({
    subject: intermediateName,
    issuer: arkName,
    serialNumber: 2n,
    notBefore,
    notAfter,
    publicKey: intermediateKeys.publicKey,
    signingKey: arkKeys.privateKey,
    signatureAlgorithm: "rsa-pss-sha384",
    isCa: true,
  });
  const leaf = buildCertificate({
    subject: leafName,
    issuer: intermediateName,
    serialNumber: 3n,
    notBefore,
    notAfter,
    publicKey: leafKeys.publicKey,
    signingKey: intermediateKeys.privateKey,
    signatureAlgorithm: "rsa-pss-sha384",
    extensions: leafExtensions(
      product,
      reportedTcb,
      signingKey === "vcek" ? chipId.subarray(0, turin ? 8 : 64) : undefined,
    ),
  });

  return assemblePlatform(
    { product, signingKey, ark, intermediate, leaf, chipId, reportedTcb },
    leafKeys.privateKey,
  );
}

/**
 * A simulated platform in portable form, so that an agent in another process can play the same
 * TEE that a local attestation server trusts (`SHIELD_SIMULATED_PLATFORM`). It holds the leaf's
 * private key: it is test material, as trustworthy as a file anyone can write.
 */
export interface SimulatedSnpPlatformState {
  readonly kind: "shield-simulated-sevsnp-platform";
  readonly product: string;
  readonly signingKey: "vcek" | "vlek";
  readonly arkPem: string;
  readonly intermediatePem: string;
  readonly leafPem: string;
  /** PKCS#8 PEM of the VCEK/VLEK private key. */
  readonly leafKeyPem: string;
  readonly chipId: string;
  readonly reportedTcb: SnpTcbInput;
}

interface PlatformParts {
  readonly product: string;
  readonly signingKey: "vcek" | "vlek";
  readonly ark: X509Certificate;
  readonly intermediate: X509Certificate;
  readonly leaf: X509Certificate;
  readonly chipId: Buffer;
  readonly reportedTcb: SnpTcbInput;
}

const platformKeys = new WeakMap<SimulatedSnpPlatform, KeyObject>();

function assemblePlatform(parts: PlatformParts, leafPrivateKey: KeyObject): SimulatedSnpPlatform {
  const { product, signingKey, ark, intermediate, leaf, chipId, reportedTcb } = parts;
  const cpuid = CPUID[product];
  const platform: SimulatedSnpPlatform = Object.freeze({
    product,
    signingKey,
    ark,
    intermediate,
    leaf,
    chipId,
    reportedTcb,
    chainPem: derToPem(intermediate.raw) + derToPem(ark.raw),
    leafPem: derToPem(leaf.raw),
    signReport(fields: SimulatedSnpReportFields = {}): Buffer {
      const body = encodeSnpReport(reportFields(fields, { signingKey, reportedTcb, chipId, cpuid }));
      const signature = sign("sha384", body.subarray(0, SNP_SIGNED_LENGTH), {
        key: leafPrivateKey,
        dsaEncoding: "ieee-p1363",
      });
      writeSnpSignature(body, signature);
      return body;
    },
  });
  platformKeys.set(platform, leafPrivateKey);
  return platform;
}

export function exportSimulatedSnpPlatform(platform: SimulatedSnpPlatform): SimulatedSnpPlatformState {
  const key = platformKeys.get(platform);
  if (key === undefined) throw new TypeError("not a platform made by createSimulatedSnpPlatform");
  return {
    kind: "shield-simulated-sevsnp-platform",
    product: platform.product,
    signingKey: platform.signingKey,
    arkPem: derToPem(platform.ark.raw),
    intermediatePem: derToPem(platform.intermediate.raw),
    leafPem: platform.leafPem,
    leafKeyPem: key.export({ type: "pkcs8", format: "pem" }).toString(),
    chipId: platform.chipId.toString("hex"),
    reportedTcb: platform.reportedTcb,
  };
}

export function restoreSimulatedSnpPlatform(state: SimulatedSnpPlatformState): SimulatedSnpPlatform {
  if (state.kind !== "shield-simulated-sevsnp-platform")
    throw new TypeError("not a simulated platform state");
  return assemblePlatform(
    {
      product: state.product,
      signingKey: state.signingKey,
      ark: loadCertificate(state.arkPem),
      intermediate: loadCertificate(state.intermediatePem),
      leaf: loadCertificate(state.leafPem),
      chipId: Buffer.from(state.chipId, "hex"),
      reportedTcb: state.reportedTcb,
    },
    createPrivateKey(state.leafKeyPem),
  );
}

function amdName(commonName: string): DistinguishedName {
  return [
    ["O", ORGANIZATION],
    ["CN", commonName],
  ];
}

/** The VCEK/VLEK extensions, encoded as AMD encodes them (SPLs as INTEGER, hwID as raw bytes). */
function leafExtensions(product: string, tcb: SnpTcbInput, hardwareId: Buffer | undefined): ExtensionSpec[] {
  const out: ExtensionSpec[] = [
    { oid: OID.structVersion, value: integer(0) },
    { oid: OID.productName, value: ia5String(product) },
  ];
  if (tcb.fmc !== undefined) out.push({ oid: OID.fmc, value: integer(tcb.fmc) });
  out.push({ oid: OID.bootloader, value: integer(tcb.bootloader) });
  out.push({ oid: OID.tee, value: integer(tcb.tee) });
  for (const reserved of RESERVED_SPL_OIDS) out.push({ oid: reserved, value: integer(0) });
  out.push({ oid: OID.snp, value: integer(tcb.snp) });
  out.push({ oid: OID.microcode, value: integer(tcb.microcode) });
  // The hardware ID is the extension value itself (no inner DER), as in AMD's VCEKs.
  if (hardwareId !== undefined) out.push({ oid: OID.hwid, value: hardwareId });
  return out;
}

function chipIdFor(chosen: Uint8Array | undefined, leafKey: KeyObject, turin: boolean): Buffer {
  const id = Buffer.from(
    chosen ??
      createHash("sha512")
        .update(leafKey.export({ type: "spki", format: "der" }))
        .digest(),
  );
  // Turin chip IDs are 8 bytes, zero-padded to 64 in reports.
  if (turin) id.fill(0, 8);
  return id;
}

function reportFields(
  fields: SimulatedSnpReportFields,
  platform: {
    signingKey: "vcek" | "vlek";
    reportedTcb: SnpTcbInput;
    chipId: Buffer;
    cpuid: SnpCpuid | undefined;
  },
): SnpReportFields {
  const tcb = fields.reportedTcb ?? platform.reportedTcb;
  const signingKey = fields.signingKey ?? platform.signingKey;
  const maskChipKey = fields.maskChipKey ?? false;
  let policy = fields.policy ?? DEFAULT_POLICY;
  if (fields.debug !== undefined) policy = fields.debug ? policy | POLICY_DEBUG : policy & ~POLICY_DEBUG;
  const zeros = (n: number): Buffer => Buffer.alloc(n);
  return {
    version: fields.version ?? 3,
    guestSvn: fields.guestSvn ?? 1,
    policy,
    familyId: fields.familyId ?? zeros(16),
    imageId: fields.imageId ?? zeros(16),
    vmpl: fields.vmpl ?? 0,
    signatureAlgo: fields.signatureAlgo ?? SNP_SIGNATURE_ALGO_ECDSA_P384_SHA384,
    currentTcb: fields.currentTcb ?? tcb,
    platformInfo: fields.platformInfo ?? 0x1n,
    authorKeyEn: fields.authorKeyEn ?? false,
    maskChipKey,
    signingKey,
    reportData: reportData(fields.reportData),
    measurement: fields.measurement ?? zeros(48),
    hostData: fields.hostData ?? zeros(32),
    idKeyDigest: fields.idKeyDigest ?? zeros(48),
    authorKeyDigest: fields.authorKeyDigest ?? zeros(48),
    reportId: fields.reportId ?? zeros(32),
    reportIdMa: fields.reportIdMa ?? Buffer.alloc(32, 0xff),
    reportedTcb: tcb,
    ...(fields.cpuid !== undefined || platform.cpuid !== undefined
      ? { cpuid: fields.cpuid ?? platform.cpuid }
      : {}),
    // Real firmware zeroes CHIP_ID when the chip key is masked or a VLEK signs.
    chipId: fields.chipId ?? (maskChipKey || signingKey === "vlek" ? zeros(64) : platform.chipId),
    committedTcb: fields.committedTcb ?? tcb,
    currentVersion: fields.currentVersion ?? { major: 1, minor: 55, build: 0 },
    committedVersion: fields.committedVersion ?? { major: 1, minor: 55, build: 0 },
    launchTcb: fields.launchTcb ?? tcb,
    ...(fields.launchMitVector === undefined ? {} : { launchMitVector: fields.launchMitVector }),
    ...(fields.currentMitVector === undefined ? {} : { currentMitVector: fields.currentMitVector }),
  };
}

function reportData(data: Uint8Array | undefined): Buffer {
  if (data === undefined) return Buffer.alloc(64);
  if (!(data instanceof Uint8Array) || (data.length !== 32 && data.length !== 64)) {
    throw new TypeError("reportData must be 32 or 64 bytes");
  }
  return data.length === 64 ? Buffer.from(data) : Buffer.concat([data, Buffer.alloc(32)]);
}
