/**
 * Verifier for AMD SEV-SNP attestation reports: proves that a report was signed by a VCEK (or a
 * cloud provider's VLEK) whose certificate chains to a trusted AMD root, that the certificate
 * was issued for the TCB and chip the report names, and returns the guest's claims. TCB
 * currency (is this firmware recent enough?) is appraisal's job, not this module's.
 *
 * A verifier is long-lived: verified certificate chains are cached (successes only, bounded),
 * so verifying many reports against the same VCEK costs about one ECDSA P-384 verification.
 */
import { X509Certificate, createHash, verify as verifySignature, type KeyObject } from "node:crypto";
import { ShieldError, isShieldError, type Violation } from "../../errors.js";
import { readExtensions, readablePublicKey } from "../../x509/certificate.js";
import {
  Tag,
  decodeOid,
  decodeUnsignedInteger,
  expectTag,
  readChildren,
  readElement,
} from "../../x509/der.js";
import type { SevSnpClaims } from "../types.js";
import { snpClaims } from "./claims.js";
import { isSnpReport, parseSnpReport, type SnpProduct, type SnpReport } from "./report.js";

/**
 * Roots a chain may end at: ARK certificates, or SHA-256 fingerprints (hex, colons allowed) of
 * an ARK's SubjectPublicKeyInfo DER (see `AMD_ARK_FINGERPRINTS`). Nothing else is trusted.
 */
export type SnpTrustedRoots = readonly (X509Certificate | string)[];

export interface SnpVerifierOptions {
  readonly trustedRoots: SnpTrustedRoots;
  /** How many verified chains to remember (default 256; 0 turns the cache off). */
  readonly chainCacheSize?: number;
}

export interface SnpVerifyInput {
  /** The raw 1184-byte report, or a report from `parseSnpReport`. */
  readonly report: Uint8Array | SnpReport;
  /** The VCEK, or the VLEK for a VLEK-signed report. */
  readonly vcek: X509Certificate;
  /**
   * ASK or ASVK and the ARK, in any order; extra certificates are ignored (AMD KDS serves ASK
   * then ARK; some bundles hold ASK, ARK and ASVK). Without an ARK, trusted root certificates
   * given to the verifier are used.
   */
  readonly chain: readonly X509Certificate[];
  /** The moment certificate validity is judged at. */
  readonly at: Date;
  /** 64 bytes: must equal REPORT_DATA; 32 bytes: must equal it followed by 32 zero bytes. */
  readonly expectedReportData?: Uint8Array;
}

export interface SnpVerification {
  readonly report: SnpReport;
  readonly claims: SevSnpClaims;
  readonly signer: "vcek" | "vlek";
  /** From the report's CPUID (version 3+), else from the verified chain's names. */
  readonly product: SnpProduct;
}

export interface SnpVerifier {
  verify(input: SnpVerifyInput): SnpVerification;
}

const DEFAULT_CHAIN_CACHE_SIZE = 256;
const P1363 = "ieee-p1363" as const;
const MIN_RSA_BITS = 2048;
const OID_RSASSA_PSS = "1.2.840.113549.1.1.10";
const OID_SHA384 = "2.16.840.1.101.3.4.2.2";

/** VCEK/VLEK extensions (AMD "Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface Specification", 57230). */
const OID_TCB = {
  bootloader: "1.3.6.1.4.1.3704.1.3.1",
  tee: "1.3.6.1.4.1.3704.1.3.2",
  snp: "1.3.6.1.4.1.3704.1.3.3",
  microcode: "1.3.6.1.4.1.3704.1.3.8",
  fmc: "1.3.6.1.4.1.3704.1.3.9",
} as const;
const OID_HWID = "1.3.6.1.4.1.3704.1.4";

type TcbComponent = keyof typeof OID_TCB;
type Signer = "vcek" | "vlek";

/** What a verified chain leaves behind for the per-report checks. */
interface VerifiedChain {
  readonly signer: Signer;
  readonly leafKey: KeyObject;
  readonly validity: readonly CertificateValidity[];
  /** The latest notBefore and earliest notAfter of the chain, in ms. */
  readonly notBefore: number;
  readonly notAfter: number;
  readonly tcb: Readonly<Partial<Record<TcbComponent, number>>>;
  readonly hardwareId: Buffer | undefined;
  readonly product: SnpProduct;
}

interface CertificateValidity {
  readonly role: string;
  readonly notBefore: number;
  readonly notAfter: number;
}

interface TrustAnchors {
  readonly fingerprints: ReadonlySet<string>;
  readonly certificates: readonly X509Certificate[];
}

/**
 * Creates an SEV-SNP report verifier. `verify` runs these checks, in order, and throws a
 * `ShieldError` at the first that fails:
 *
 *  1. Parse the report: 1184 bytes, known version (2–5), ECDSA P-384/SHA-384, VCEK or VLEK
 *     signing key, reserved bytes zero (ERR_EVIDENCE_MALFORMED / _VERSION / _UNSUPPORTED).
 *  2. Every certificate's public key decodes (ERR_EVIDENCE_CHAIN); the chain's ARK is one of the
 *     trusted roots and is self-signed (ERR_EVIDENCE_UNTRUSTED_ROOT).
 *  3. The ASK (VCEK report) or ASVK (VLEK report), chosen by the report's SIGNING_KEY and the
 *     certificates' names, is a CA issued and signed by the ARK; the VCEK/VLEK is a P-384 key
 *     issued and signed by it; both signatures are RSASSA-PSS with SHA-384
 *     (ERR_EVIDENCE_CHAIN). Checks 2–3 are cached per (certificates, signing key); anything a
 *     malformed certificate makes Node's X.509 code throw in them is ERR_EVIDENCE_CHAIN too.
 *  4. Every certificate of the chain is valid at `at` (ERR_EVIDENCE_CERT_EXPIRED).
 *  5. The report signature (ECDSA P-384, SHA-384, over bytes 0x000–0x29F) verifies with the
 *     VCEK/VLEK key (ERR_EVIDENCE_SIGNATURE).
 *  6. The VCEK/VLEK TCB extensions (boot loader, TEE, SNP, microcode; FMC on Turin) equal the
 *     report's REPORTED_TCB (ERR_EVIDENCE_TCB_MISMATCH).
 *  7. The VCEK hardware ID extension equals CHIP_ID, unless MASK_CHIP_KEY is set or the report
 *     is VLEK-signed (ERR_EVIDENCE_CHIP_MISMATCH).
 *  8. When `expectedReportData` is given, it equals REPORT_DATA (ERR_EVIDENCE_REPORT_DATA).
 */
export function createSnpVerifier(options: SnpVerifierOptions): SnpVerifier {
  const anchors = trustAnchors(options.trustedRoots);
  const verifiedChains = new ChainCache(options.chainCacheSize ?? DEFAULT_CHAIN_CACHE_SIZE);
  return {
    verify(input: SnpVerifyInput): SnpVerification {
      checkArguments(input);
      const report = parseReport(input.report); // 1
      const signer = report.signingKey;
      const cacheKey = chainCacheKey(input.vcek, input.chain, signer);
      let chain = verifiedChains.get(cacheKey);
      if (chain === undefined) {
        chain = verifyChainOnce(input.vcek, input.chain, anchors, signer); // 2, 3
        verifiedChains.set(cacheKey, chain);
      }
      checkValidity(chain, input.at); // 4
      verifyReportSignature(report, chain.leafKey); // 5
      checkReportedTcb(report, chain); // 6
      checkChipId(report, chain); // 7
      checkReportData(report, input.expectedReportData); // 8
      return Object.freeze({
        report,
        claims: snpClaims(report),
        signer,
        product: report.product === "unknown" ? chain.product : report.product,
      });
    },
  };
}

/** SHA-256 of a certificate's SubjectPublicKeyInfo DER, lowercase hex. */
export function spkiSha256(certificate: X509Certificate): string {
  return createHash("sha256")
    .update(certificate.publicKey.export({ type: "spki", format: "der" }))
    .digest("hex");
}

// ---------------------------------------------------------------------------------------------
// Arguments

/** Checks 2 and 3, with every failure typed: the certificates are the workload's input. */
function verifyChainOnce(
  leaf: X509Certificate,
  chain: readonly X509Certificate[],
  anchors: TrustAnchors,
  signer: Signer,
): VerifiedChain {
  try {
    checkKeysDecode(leaf, chain, signer);
    const roots = checkTrustedRoot(chain, anchors);
    return verifyCertificateChain(leaf, chain, roots, signer);
  } catch (error) {
    if (isShieldError(error)) throw error;
    throw new ShieldError("ERR_EVIDENCE_CHAIN", "SEV-SNP certificates cannot be processed", { cause: error });
  }
}

/** Node decodes a certificate's key only when asked; a key that does not decode is refused first. */
function checkKeysDecode(leaf: X509Certificate, chain: readonly X509Certificate[], signer: Signer): void {
  if (readablePublicKey(leaf) === undefined) {
    throw chainError(`${signer === "vlek" ? "VLEK" : "VCEK"} public key does not decode`);
  }
  chain.forEach((cert, index) => {
    if (readablePublicKey(cert) === undefined) {
      throw chainError(`chain certificate ${index} public key does not decode`);
    }
  });
}

function trustAnchors(roots: SnpTrustedRoots): TrustAnchors {
  if (!Array.isArray(roots) || roots.length === 0) {
    throw new TypeError("trustedRoots must name at least one root");
  }
  const fingerprints = new Set<string>();
  const certificates: X509Certificate[] = [];
  for (const root of roots as readonly unknown[]) {
    if (root instanceof X509Certificate) {
      if (readablePublicKey(root) === undefined) {
        throw new TypeError("a trusted root certificate has an unreadable key");
      }
      fingerprints.add(spkiSha256(root));
      certificates.push(root);
    } else if (typeof root === "string") {
      const hex = root.replaceAll(":", "").toLowerCase();
      if (!/^[0-9a-f]{64}$/.test(hex)) throw new TypeError("a trusted root fingerprint must be SHA-256 hex");
      fingerprints.add(hex);
    } else {
      throw new TypeError("trustedRoots entries must be X509Certificate or fingerprint strings");
    }
  }
  return { fingerprints, certificates };
}

function checkArguments(input: SnpVerifyInput): void {
  if (!(input.vcek instanceof X509Certificate)) throw new TypeError("vcek must be an X509Certificate");
  if (!Array.isArray(input.chain) || !input.chain.every((c) => c instanceof X509Certificate)) {
    throw new TypeError("chain must be an array of X509Certificate");
  }
  if (!(input.at instanceof Date) || Number.isNaN(input.at.getTime())) {
    throw new TypeError("at must be a valid Date");
  }
  const expected = input.expectedReportData;
  if (
    expected !== undefined &&
    (!(expected instanceof Uint8Array) || (expected.length !== 32 && expected.length !== 64))
  ) {
    throw new TypeError("expectedReportData must be 32 or 64 bytes");
  }
}

// ---------------------------------------------------------------------------------------------
// 1. Parse

function parseReport(report: Uint8Array | SnpReport): SnpReport {
  if (report instanceof Uint8Array) return parseSnpReport(report);
  if (!isSnpReport(report)) throw new TypeError("report must be bytes or a report from parseSnpReport");
  return report;
}

// ---------------------------------------------------------------------------------------------
// 2. Trusted root

function checkTrustedRoot(
  chain: readonly X509Certificate[],
  anchors: TrustAnchors,
): readonly X509Certificate[] {
  const selfSigned = chain.filter(isSelfSigned);
  const trusted = selfSigned.filter((c) => anchors.fingerprints.has(spkiSha256(c)));
  if (trusted.length > 0) return trusted;
  if (selfSigned.length > 0) {
    const names = selfSigned.map((c) => commonName(c) ?? "(no CN)").join(", ");
    throw new ShieldError("ERR_EVIDENCE_UNTRUSTED_ROOT", `SEV-SNP chain root ${names} is not a trusted root`);
  }
  if (anchors.certificates.length > 0) return anchors.certificates;
  throw new ShieldError("ERR_EVIDENCE_UNTRUSTED_ROOT", "SEV-SNP chain has no self-signed root (ARK)");
}

function isSelfSigned(cert: X509Certificate): boolean {
  return cert.subject === cert.issuer && cert.verify(cert.publicKey);
}

// ---------------------------------------------------------------------------------------------
// 3. Certificate chain

function verifyCertificateChain(
  leaf: X509Certificate,
  chain: readonly X509Certificate[],
  roots: readonly X509Certificate[],
  signer: Signer,
): VerifiedChain {
  const leafRole = signer === "vlek" ? "VLEK" : "VCEK";
  const issuerRole = signer === "vlek" ? "ASVK" : "ASK";
  if (commonName(leaf) !== `SEV-${leafRole}`) {
    throw chainError(`report is ${leafRole}-signed but the leaf certificate is not a ${leafRole}`);
  }
  const leafKey = leaf.publicKey;
  if (leafKey.asymmetricKeyType !== "ec" || leafKey.asymmetricKeyDetails?.namedCurve !== "secp384r1") {
    throw chainError(`${leafRole} key is not ECDSA P-384`);
  }
  if (!signedWithPssSha384(leaf)) throw chainError(`${leafRole} is not signed with RSASSA-PSS/SHA-384`);

  const candidates = chain.filter((c) => c.subject === leaf.issuer && intermediateSigner(c) === signer);
  if (candidates.length === 0) throw chainError(`no ${issuerRole} in the chain issued the ${leafRole}`);
  let reason = `${issuerRole} is not issued by a trusted ARK`;
  for (const root of roots) {
    if (!isRsaCa(root)) {
      reason = "ARK is not an RSA certificate authority";
      continue;
    }
    for (const intermediate of candidates) {
      if (intermediate.issuer !== root.subject) continue;
      if (!isRsaCa(intermediate)) {
        reason = `${issuerRole} is not an RSA certificate authority`;
      } else if (!signedWithPssSha384(intermediate)) {
        reason = `${issuerRole} is not signed with RSASSA-PSS/SHA-384`;
      } else if (!intermediate.verify(root.publicKey)) {
        reason = `${issuerRole} signature does not verify under the ARK`;
      } else if (!leaf.verify(intermediate.publicKey)) {
        reason = `${leafRole} signature does not verify under the ${issuerRole}`;
      } else {
        return describeChain(leaf, leafKey, intermediate, root, signer);
      }
    }
  }
  throw chainError(reason);
}

function describeChain(
  leaf: X509Certificate,
  leafKey: KeyObject,
  intermediate: X509Certificate,
  root: X509Certificate,
  signer: Signer,
): VerifiedChain {
  const validity = [
    validityOf(signer === "vlek" ? "VLEK" : "VCEK", leaf),
    validityOf(signer === "vlek" ? "ASVK" : "ASK", intermediate),
    validityOf("ARK", root),
  ];
  const { tcb, hardwareId } = leafExtensions(leaf);
  return Object.freeze({
    signer,
    leafKey,
    validity,
    notBefore: Math.max(...validity.map((v) => v.notBefore)),
    notAfter: Math.min(...validity.map((v) => v.notAfter)),
    tcb,
    hardwareId,
    product: productFromName(commonName(intermediate)),
  });
}

function leafExtensions(leaf: X509Certificate): Pick<VerifiedChain, "tcb" | "hardwareId"> {
  let extensions;
  try {
    extensions = readExtensions(leaf);
  } catch (cause) {
    throw new ShieldError("ERR_EVIDENCE_CHAIN", "VCEK extensions cannot be read", { cause });
  }
  const tcb: Partial<Record<TcbComponent, number>> = {};
  for (const [component, id] of Object.entries(OID_TCB) as [TcbComponent, string][]) {
    const ext = extensions.get(id);
    if (ext === undefined) continue;
    tcb[component] = splInteger(ext.value, component);
  }
  const hwid = extensions.get(OID_HWID)?.value;
  return { tcb: Object.freeze(tcb), hardwareId: hwid === undefined ? undefined : Buffer.from(hwid) };
}

/** An SPL extension holds a DER INTEGER 0–255. */
function splInteger(value: Buffer, component: string): number {
  try {
    const el = expectTag(readElement(value), Tag.INTEGER, "INTEGER");
    if (el.raw.length !== value.length || (el.value[0]! & 0x80) !== 0)
      throw new Error("not a non-negative INTEGER");
    const n = decodeUnsignedInteger(el.value);
    if (n > 0xffn) throw new Error("out of range");
    return Number(n);
  } catch (cause) {
    throw new ShieldError("ERR_EVIDENCE_CHAIN", `VCEK ${component} SPL extension is not an INTEGER 0–255`, {
      cause,
    });
  }
}

function intermediateSigner(cert: X509Certificate): Signer | undefined {
  const cn = commonName(cert);
  if (cn === undefined || !cn.startsWith("SEV-")) return undefined;
  return cn.startsWith("SEV-VLEK-") ? "vlek" : "vcek";
}

function productFromName(cn: string | undefined): SnpProduct {
  const name = cn?.replace(/^SEV-(VLEK-)?/, "");
  return name === "Milan" || name === "Genoa" || name === "Turin" ? name : "unknown";
}

function isRsaCa(cert: X509Certificate): boolean {
  const key = cert.publicKey;
  const rsa = key.asymmetricKeyType === "rsa" || key.asymmetricKeyType === "rsa-pss";
  return cert.ca && rsa && (key.asymmetricKeyDetails?.modulusLength ?? 0) >= MIN_RSA_BITS;
}

/** True when the certificate's signatureAlgorithm is RSASSA-PSS with SHA-384 as its hash. */
function signedWithPssSha384(cert: X509Certificate): boolean {
  try {
    const certificate = expectTag(readElement(cert.raw), Tag.SEQUENCE, "Certificate");
    const algorithm = readChildren(
      expectTag(readChildren(certificate.value)[1], Tag.SEQUENCE, "algorithm").value,
    );
    if (decodeOid(expectTag(algorithm[0], Tag.OID, "OID").value) !== OID_RSASSA_PSS) return false;
    const params = readChildren(expectTag(algorithm[1], Tag.SEQUENCE, "RSASSA-PSS-params").value);
    // hashAlgorithm is [0]; when absent it defaults to SHA-1, which is not acceptable here
    const hash = params.find((p) => p.tag === 0xa0);
    if (hash === undefined) return false;
    const hashAlgorithm = readChildren(expectTag(readChildren(hash.value)[0], Tag.SEQUENCE, "hash").value);
    return decodeOid(expectTag(hashAlgorithm[0], Tag.OID, "OID").value) === OID_SHA384;
  } catch {
    return false;
  }
}

function commonName(cert: X509Certificate): string | undefined {
  const line = cert.subject.split("\n").findLast((l) => l.startsWith("CN="));
  return line?.slice(3);
}

function chainError(message: string): ShieldError {
  return new ShieldError("ERR_EVIDENCE_CHAIN", message);
}

// ---------------------------------------------------------------------------------------------
// 4. Validity

function validityOf(role: string, cert: X509Certificate): CertificateValidity {
  const notBefore = Date.parse(cert.validFrom);
  const notAfter = Date.parse(cert.validTo);
  if (Number.isNaN(notBefore) || Number.isNaN(notAfter)) throw chainError(`${role} validity cannot be read`);
  return { role, notBefore, notAfter };
}

function checkValidity(chain: VerifiedChain, at: Date): void {
  const t = at.getTime();
  if (t >= chain.notBefore && t <= chain.notAfter) return;
  const expired = chain.validity.filter((v) => !(t >= v.notBefore && t <= v.notAfter));
  const iso = at.toISOString();
  throw new ShieldError(
    "ERR_EVIDENCE_CERT_EXPIRED",
    `${expired.map((v) => v.role).join(", ")} not valid at ${iso}`,
    {
      violations: expired.map((v) => ({
        field: `${v.role}.validity`,
        expected: `${new Date(v.notBefore).toISOString()}..${new Date(v.notAfter).toISOString()}`,
        actual: iso,
      })),
    },
  );
}

// ---------------------------------------------------------------------------------------------
// 5. Report signature

function verifyReportSignature(report: SnpReport, key: KeyObject): void {
  const { r, s } = report.signature;
  // R and S occupy 72 bytes; a P-384 value fits in the low 48 (the big-endian tail).
  const fits = isZero(r, 0, 24) && isZero(s, 0, 24);
  let ok = false;
  if (fits) {
    const p1363 = Buffer.concat([r.subarray(24), s.subarray(24)]);
    try {
      ok = verifySignature("sha384", report.signedBytes, { key, dsaEncoding: P1363 }, p1363);
    } catch {
      ok = false;
    }
  }
  if (!ok) throw new ShieldError("ERR_EVIDENCE_SIGNATURE", "SEV-SNP report signature does not verify");
}

function isZero(buf: Buffer, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (buf[i] !== 0) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// 6. Reported TCB

function checkReportedTcb(report: SnpReport, chain: VerifiedChain): void {
  const leafRole = chain.signer === "vlek" ? "VLEK" : "VCEK";
  const reported = report.reportedTcb;
  const violations: Violation[] = [];
  const components: TcbComponent[] = ["bootloader", "tee", "snp", "microcode"];
  if (chain.tcb.fmc !== undefined || reported.fmc !== undefined) components.push("fmc");
  for (const component of components) {
    const endorsed = chain.tcb[component];
    const actual = reported[component];
    if (endorsed === undefined || endorsed !== actual) {
      violations.push({
        field: `reportedTcb.${component}`,
        expected: endorsed === undefined ? `(no ${leafRole} extension)` : String(endorsed),
        actual: actual === undefined ? "(absent)" : String(actual),
      });
    }
  }
  if (violations.length > 0) {
    throw new ShieldError(
      "ERR_EVIDENCE_TCB_MISMATCH",
      `REPORTED_TCB ${reported.raw} is not the TCB the ${leafRole} was issued for`,
      { violations },
    );
  }
}

// ---------------------------------------------------------------------------------------------
// 7. Chip ID

function checkChipId(report: SnpReport, chain: VerifiedChain): void {
  // A VLEK is not tied to a chip, and MASK_CHIP_KEY zeroes CHIP_ID on purpose.
  if (report.maskChipKey || chain.signer === "vlek") return;
  const hwid = chain.hardwareId;
  // Milan and Genoa hardware IDs are 64 bytes; Turin's are 8, with CHIP_ID zero-padded.
  const matches =
    hwid !== undefined &&
    hwid.length > 0 &&
    hwid.length <= report.chipId.length &&
    report.chipId.subarray(0, hwid.length).equals(hwid) &&
    isZero(report.chipId, hwid.length, report.chipId.length);
  if (!matches) {
    throw new ShieldError("ERR_EVIDENCE_CHIP_MISMATCH", "CHIP_ID is not the chip the VCEK was issued for", {
      violations: [
        {
          field: "chipId",
          expected: hwid === undefined ? "(no VCEK hardware ID extension)" : hwid.toString("hex"),
          actual: report.chipId.toString("hex"),
        },
      ],
    });
  }
}

// ---------------------------------------------------------------------------------------------
// 8. Report data

function checkReportData(report: SnpReport, expected: Uint8Array | undefined): void {
  if (expected === undefined) return;
  const actual = report.reportData;
  const matches =
    expected.length === 64
      ? actual.equals(expected)
      : actual.compare(expected, 0, 32, 0, 32) === 0 && isZero(actual, 32, 64);
  if (!matches) {
    const want = expected.length === 64 ? Buffer.from(expected) : Buffer.concat([expected, Buffer.alloc(32)]);
    throw new ShieldError("ERR_EVIDENCE_REPORT_DATA", "REPORT_DATA does not match the expected value", {
      violations: [
        { field: "reportData", expected: want.toString("hex"), actual: report.reportData.toString("hex") },
      ],
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Chain cache

const derHashes = new WeakMap<X509Certificate, string>();

function derHash(cert: X509Certificate): string {
  let hash = derHashes.get(cert);
  if (hash === undefined) {
    hash = createHash("sha256").update(cert.raw).digest("hex");
    derHashes.set(cert, hash);
  }
  return hash;
}

/**
 * The chain checks depend on the leaf, the set of chain certificates (their order does not
 * change the outcome) and the report's signing key; the trusted roots are fixed per verifier.
 */
function chainCacheKey(leaf: X509Certificate, chain: readonly X509Certificate[], signer: Signer): string {
  const parts = chain.map(derHash);
  if (parts.length > 1) parts.sort();
  return `${signer}:${derHash(leaf)}:${parts.join(",")}`;
}

/** Least-recently-used map of verified chains; only successes are ever stored. */
class ChainCache {
  private readonly entries = new Map<string, VerifiedChain>();

  constructor(private readonly limit: number) {
    if (!Number.isInteger(limit) || limit < 0)
      throw new TypeError("chainCacheSize must be a non-negative integer");
  }

  get(key: string): VerifiedChain | undefined {
    const hit = this.entries.get(key);
    if (hit !== undefined && this.entries.size > 1) {
      this.entries.delete(key);
      this.entries.set(key, hit);
    }
    return hit;
  }

  set(key: string, value: VerifiedChain): void {
    if (this.limit === 0) return;
    this.entries.delete(key);
    this.entries.set(key, value);
    while (this.entries.size > this.limit) {
      const oldest = this.entries.keys().next();
      if (oldest.done === true) break;
      this.entries.delete(oldest.value);
    }
  }
}
