/**
 * A simulated Intel SGX platform that produces DCAP v3 quotes byte-compatible with real ones,
 * for development, the embedded local system and tests. It has its own P-256 chain
 * (simulated Root CA → simulated PCK Platform CA → simulated PCK leaf), its own Quoting
 * Enclave attestation key and QE report, and signs quotes exactly as Intel's QE does. Its root
 * is trusted only where configuration names it; it never chains to Intel's root.
 */
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  sign,
  type KeyObject,
  type X509Certificate,
} from "node:crypto";
import { buildCertificate, derToPem, type DistinguishedName } from "../../x509/certificate.js";

/** Names of the simulated chain; every one says it is not Intel's. */
export const SIMULATED_SGX_NAMES = Object.freeze({
  root: [
    ["CN", "Simulated SGX Root CA (not Intel)"],
    ["O", "Shield-ACC simulated TEE"],
  ],
  platformCa: [
    ["CN", "Simulated SGX PCK Platform CA (not Intel)"],
    ["O", "Shield-ACC simulated TEE"],
  ],
  pck: [
    ["CN", "Simulated SGX PCK Certificate (not Intel)"],
    ["O", "Shield-ACC simulated TEE"],
  ],
} as const satisfies Record<string, DistinguishedName>);

export interface SimulatedSgxPlatformOptions {
  /** Start of every certificate's validity (default 2020-01-01T00:00:00Z). */
  readonly notBefore?: Date;
  /** End of the root and Platform CA validity (default 2049-12-31T23:59:59Z). */
  readonly notAfter?: Date;
  /** End of the PCK leaf's validity (default: `notAfter`). */
  readonly pckNotAfter?: Date;
  /** QE and PCE security versions written into every quote header (defaults 8 and 13). */
  readonly qeSvn?: number;
  readonly pceSvn?: number;
}

/** Enclave fields of a quote; byte fields as hex or bytes of the exact size. */
export interface SimulatedSgxQuoteFields {
  readonly mrEnclave?: string | Uint8Array;
  readonly mrSigner?: string | Uint8Array;
  readonly isvProdId?: number;
  readonly isvSvn?: number;
  /** 32 bytes (then 32 zero bytes, as MAA expects) or all 64. */
  readonly reportData?: string | Uint8Array;
  readonly debug?: boolean;
  readonly cpuSvn?: string | Uint8Array;
  readonly miscSelect?: number;
}

export interface SimulatedSgxQuoteOptions {
  /** Put Open Enclave's 16-byte remote-report header in front of the quote. */
  readonly openEnclaveHeader?: boolean;
  /** Certificates to embed instead of the platform's chain (to build bad chains in tests). */
  readonly pckChain?: readonly X509Certificate[];
  /** Raw certification data instead of a type 5 PEM chain. */
  readonly certificationData?: { readonly type: number; readonly data: Uint8Array };
  /**
   * 64 bytes (x ‖ y) to carry as the attestation key instead of the platform's, with a QE report
   * that certifies them; the quote is still signed with the platform's key. For tests of
   * malformed keys (a point off the curve) that pass every earlier check.
   */
  readonly attestationKey?: Uint8Array;
}

export interface SimulatedSgxPlatform {
  /** The simulated root; trust it explicitly to accept this platform's quotes. */
  readonly rootCertificate: X509Certificate;
  /** PCK leaf, PCK Platform CA, root — as embedded in quotes. */
  readonly pckChain: readonly X509Certificate[];
  generateQuote(fields?: SimulatedSgxQuoteFields, options?: SimulatedSgxQuoteOptions): Buffer;
}

const DEFAULT_NOT_BEFORE = new Date("2020-01-01T00:00:00Z");
const DEFAULT_NOT_AFTER = new Date("2049-12-31T23:59:59Z");
/** Intel's QE vendor ID (`sgx_quote_3.h` consumers check it); kept so the bytes look real. */
const QE_VENDOR_ID = Buffer.from("939a7233f79c4ca9940a0db3957f0607", "hex");
/** SGX ATTRIBUTES.FLAGS: INITTED | MODE64BIT, plus DEBUG on request. */
const FLAGS_INITTED_MODE64 = 0x05n;
const FLAGS_DEBUG = 0x02n;
/** XFRM x87 | SSE | AVX, as on the real Azure quotes. */
const XFRM_DEFAULT = 0x07n;
const QE_FLAGS = 0x15n; // INITTED | MODE64BIT | PROVISION_KEY
const QE_AUTH_DATA = Buffer.from(Array.from({ length: 32 }, (_, i) => i));

interface SgxPlatformKeys {
  readonly root: KeyPair;
  readonly platformCa: KeyPair;
  readonly pck: KeyPair;
  readonly attestation: KeyPair;
}

type KeyPair = { readonly publicKey: KeyObject; readonly privateKey: KeyObject };

/**
 * A simulated SGX platform in portable form (its options and PKCS#8 PEM private keys), so that a
 * restarted local system plays the same platform: the same root, PCK and attestation keys. It
 * holds private keys: test material, as trustworthy as a file anyone can write.
 */
export interface SimulatedSgxPlatformState {
  readonly kind: "shield-simulated-sgx-platform";
  readonly notBefore: string;
  readonly notAfter: string;
  readonly pckNotAfter?: string;
  readonly qeSvn: number;
  readonly pceSvn: number;
  readonly keys: {
    readonly root: string;
    readonly platformCa: string;
    readonly pck: string;
    readonly attestation: string;
  };
}

const sgxStates = new WeakMap<SimulatedSgxPlatform, SimulatedSgxPlatformState>();

export function exportSimulatedSgxPlatform(platform: SimulatedSgxPlatform): SimulatedSgxPlatformState {
  const state = sgxStates.get(platform);
  if (state === undefined) throw new TypeError("not a platform made by createSimulatedSgxPlatform");
  return state;
}

export function restoreSimulatedSgxPlatform(state: SimulatedSgxPlatformState): SimulatedSgxPlatform {
  if (state?.kind !== "shield-simulated-sgx-platform")
    throw new TypeError("not a simulated SGX platform state");
  const pair = (pem: string): KeyPair => {
    const privateKey = createPrivateKey(pem);
    return { privateKey, publicKey: createPublicKey(privateKey) };
  };
  return buildSgxPlatform(
    {
      notBefore: new Date(state.notBefore),
      notAfter: new Date(state.notAfter),
      ...(state.pckNotAfter === undefined ? {} : { pckNotAfter: new Date(state.pckNotAfter) }),
      qeSvn: state.qeSvn,
      pceSvn: state.pceSvn,
    },
    {
      root: pair(state.keys.root),
      platformCa: pair(state.keys.platformCa),
      pck: pair(state.keys.pck),
      attestation: pair(state.keys.attestation),
    },
  );
}

export function createSimulatedSgxPlatform(options: SimulatedSgxPlatformOptions = {}): SimulatedSgxPlatform {
  return buildSgxPlatform(options, { root: p256(), platformCa: p256(), pck: p256(), attestation: p256() });
}

function buildSgxPlatform(options: SimulatedSgxPlatformOptions, keys: SgxPlatformKeys): SimulatedSgxPlatform {
  const notBefore = options.notBefore ?? DEFAULT_NOT_BEFORE;
  const notAfter = options.notAfter ?? DEFAULT_NOT_AFTER;
  const qeSvn = u16Option(options.qeSvn ?? 8, "qeSvn");
  const pceSvn = u16Option(options.pceSvn ?? 13, "pceSvn");

  const rootKey = keys.root;
  const platformCaKey = keys.platformCa;
  const pckKey = keys.pck;
  const attestationKey = keys.attestation;

  const rootCertificate = buildCertificate({
    subject: SIMULATED_SGX_NAMES.root,
    issuer: SIMULATED_SGX_NAMES.root,
    serialNumber: 1n,
    notBefore,
    notAfter,
    publicKey: rootKey.publicKey,
    signingKey: rootKey.privateKey,
    signatureAlgorithm: "ecdsa-sha256",
    isCa: true,
  });
  const platformCaCertificate = buildCertificate({
    subject: SIMULATED_SGX_NAMES.platformCa,
    issuer: SIMULATED_SGX_NAMES.root,
    serialNumber: 2n,
    notBefore,
    notAfter,
    publicKey: platformCaKey.publicKey,
    signingKey: rootKey.privateKey,
    signatureAlgorithm: "ecdsa-sha256",
    isCa: true,
  });
  const pckCertificate = buildCertificate({
    subject: SIMULATED_SGX_NAMES.pck,
    issuer: SIMULATED_SGX_NAMES.platformCa,
    serialNumber: 3n,
    notBefore,
    notAfter: options.pckNotAfter ?? notAfter,
    publicKey: pckKey.publicKey,
    signingKey: platformCaKey.privateKey,
    signatureAlgorithm: "ecdsa-sha256",
  });
  const pckChain = Object.freeze([pckCertificate, platformCaCertificate, rootCertificate]);

  // The QE certifies its attestation key once, as the real QE does when it creates the key:
  // its report binds SHA-256(key ‖ auth data) and the PCK key signs that report.
  const certifyAttestationKey = (key: Buffer): { qeReport: Buffer; qeReportSignature: Buffer } => {
    const qeReport = reportBody({
      cpuSvn: Buffer.alloc(16, 0x01),
      miscSelect: 0,
      attributes: attributes(QE_FLAGS, XFRM_DEFAULT),
      mrEnclave: label("simulated SGX quoting enclave"),
      mrSigner: label("simulated SGX quoting enclave signer"),
      isvProdId: 1,
      isvSvn: qeSvn,
      reportData: Buffer.concat([
        createHash("sha256").update(key).update(QE_AUTH_DATA).digest(),
        Buffer.alloc(32),
      ]),
    });
    return { qeReport, qeReportSignature: ecdsaP256(qeReport, pckKey.privateKey) };
  };
  const attestationPublicKey = rawP256PublicKey(attestationKey.publicKey);
  const certified = certifyAttestationKey(attestationPublicKey);
  // Stable per platform, as Intel's platform instance ID is.
  const platformInstanceId = createHash("sha256").update(attestationPublicKey).digest().subarray(0, 16);

  const platform: SimulatedSgxPlatform = {
    rootCertificate,
    pckChain,
    generateQuote(fields: SimulatedSgxQuoteFields = {}, quoteOptions: SimulatedSgxQuoteOptions = {}): Buffer {
      const header = Buffer.alloc(48);
      header.writeUInt16LE(3, 0); // version
      header.writeUInt16LE(2, 2); // ECDSA P-256 attestation key
      header.writeUInt16LE(qeSvn, 8);
      header.writeUInt16LE(pceSvn, 10);
      QE_VENDOR_ID.copy(header, 12);
      platformInstanceId.copy(header, 28);
      const body = reportBody({
        cpuSvn: bytesField(fields.cpuSvn, 16, "cpuSvn") ?? Buffer.alloc(16, 0x02),
        miscSelect: u32Option(fields.miscSelect ?? 0, "miscSelect"),
        attributes: attributes(
          FLAGS_INITTED_MODE64 | (fields.debug === true ? FLAGS_DEBUG : 0n),
          XFRM_DEFAULT,
        ),
        mrEnclave: bytesField(fields.mrEnclave, 32, "mrEnclave") ?? label("simulated enclave"),
        mrSigner: bytesField(fields.mrSigner, 32, "mrSigner") ?? label("simulated enclave signer"),
        isvProdId: u16Option(fields.isvProdId ?? 1, "isvProdId"),
        isvSvn: u16Option(fields.isvSvn ?? 1, "isvSvn"),
        reportData: reportDataField(fields.reportData),
      });
      const signed = Buffer.concat([header, body]);
      const certification = quoteOptions.certificationData ?? {
        type: 5,
        data: Buffer.from(
          (quoteOptions.pckChain ?? pckChain).map((c) => derToPem(c.raw)).join("") + "\0",
          "latin1",
        ),
      };
      const carried = bytesField(quoteOptions.attestationKey, 64, "attestationKey");
      const { qeReport, qeReportSignature } =
        carried === undefined ? certified : certifyAttestationKey(carried);
      const signatureData = Buffer.concat([
        ecdsaP256(signed, attestationKey.privateKey),
        carried ?? attestationPublicKey,
        qeReport,
        qeReportSignature,
        u16(QE_AUTH_DATA.length),
        QE_AUTH_DATA,
        u16(certification.type),
        u32(certification.data.length),
        certification.data,
      ]);
      const quote = Buffer.concat([signed, u32(signatureData.length), signatureData]);
      if (quoteOptions.openEnclaveHeader !== true) return quote;
      const oeHeader = Buffer.alloc(16);
      oeHeader.writeUInt32LE(1, 0); // OE report header version
      oeHeader.writeUInt32LE(2, 4); // OE_REPORT_TYPE_SGX_REMOTE
      oeHeader.writeBigUInt64LE(BigInt(quote.length), 8);
      return Buffer.concat([oeHeader, quote]);
    },
  };
  const pem = (key: KeyPair) => key.privateKey.export({ type: "pkcs8", format: "pem" }).toString();
  sgxStates.set(platform, {
    kind: "shield-simulated-sgx-platform",
    notBefore: notBefore.toISOString(),
    notAfter: notAfter.toISOString(),
    ...(options.pckNotAfter === undefined ? {} : { pckNotAfter: options.pckNotAfter.toISOString() }),
    qeSvn,
    pceSvn,
    keys: {
      root: pem(rootKey),
      platformCa: pem(platformCaKey),
      pck: pem(pckKey),
      attestation: pem(attestationKey),
    },
  });
  return platform;
}

interface ReportBodyFields {
  readonly cpuSvn: Buffer;
  readonly miscSelect: number;
  readonly attributes: Buffer;
  readonly mrEnclave: Buffer;
  readonly mrSigner: Buffer;
  readonly isvProdId: number;
  readonly isvSvn: number;
  readonly reportData: Buffer;
}

/** `sgx_report_body_t`, 384 bytes; reserved and unused fields stay zero. */
function reportBody(f: ReportBodyFields): Buffer {
  const out = Buffer.alloc(384);
  f.cpuSvn.copy(out, 0);
  out.writeUInt32LE(f.miscSelect, 16);
  f.attributes.copy(out, 48);
  f.mrEnclave.copy(out, 64);
  f.mrSigner.copy(out, 128);
  out.writeUInt16LE(f.isvProdId, 256);
  out.writeUInt16LE(f.isvSvn, 258);
  f.reportData.copy(out, 320);
  return out;
}

function attributes(flags: bigint, xfrm: bigint): Buffer {
  const out = Buffer.alloc(16);
  out.writeBigUInt64LE(flags, 0);
  out.writeBigUInt64LE(xfrm, 8);
  return out;
}

function p256(): KeyPair {
  return generateKeyPairSync("ec", { namedCurve: "P-256" });
}

function rawP256PublicKey(key: KeyObject): Buffer {
  const jwk = key.export({ format: "jwk" });
  return Buffer.concat([Buffer.from(jwk.x ?? "", "base64url"), Buffer.from(jwk.y ?? "", "base64url")]);
}

function ecdsaP256(data: Buffer, key: KeyObject): Buffer {
  return sign("sha256", data, { key, dsaEncoding: "ieee-p1363" });
}

function label(text: string): Buffer {
  return createHash("sha256").update(`Shield-ACC ${text}`).digest();
}

function bytesField(value: string | Uint8Array | undefined, size: number, name: string): Buffer | undefined {
  if (value === undefined) return undefined;
  const bytes = typeof value === "string" ? hexBytes(value, name) : Buffer.from(value);
  if (bytes.length !== size) throw new TypeError(`${name} must be ${size} bytes`);
  return bytes;
}

function reportDataField(value: string | Uint8Array | undefined): Buffer {
  if (value === undefined) return Buffer.alloc(64);
  const bytes = typeof value === "string" ? hexBytes(value, "reportData") : Buffer.from(value);
  if (bytes.length !== 32 && bytes.length !== 64) throw new TypeError("reportData must be 32 or 64 bytes");
  return Buffer.concat([bytes, Buffer.alloc(64 - bytes.length)]);
}

function hexBytes(value: string, name: string): Buffer {
  if (!/^(?:[0-9a-fA-F]{2})*$/.test(value)) throw new TypeError(`${name} must be hex`);
  return Buffer.from(value, "hex");
}

function u16Option(value: number, name: string): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff) throw new TypeError(`${name} must be a u16`);
  return value;
}

function u32Option(value: number, name: string): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff)
    throw new TypeError(`${name} must be a u32`);
  return value;
}

function u16(value: number): Buffer {
  const out = Buffer.alloc(2);
  out.writeUInt16LE(value);
  return out;
}

function u32(value: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32LE(value);
  return out;
}
