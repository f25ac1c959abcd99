/**
 * `shield evidence verify`: checks raw hardware evidence the way the attestation path does —
 * SEV-SNP reports against AMD's (or an explicitly trusted) root, SGX DCAP quotes against
 * Intel's — and prints the claims, so an operator can see what a workload really presented.
 */
import type { X509Certificate } from "node:crypto";
import { ShieldError } from "../../core/errors.js";
import {
  amdRootsTrust,
  createSnpVerifier,
  parseMaaSnpEnvelope,
  SNP_REPORT_SIZE,
} from "../../core/evidence/sevsnp/index.js";
import { createSgxVerifier, intelRootsTrust } from "../../core/evidence/sgx/index.js";
import { loadCertificates, type CertificateErrorCode } from "../../core/x509/certificate.js";
import {
  UsageError,
  optionalString,
  parseAt,
  parseHex,
  requireString,
  type Command,
  type OptionValues,
} from "../command.js";
import { readInput } from "../io.js";

const MAX_EVIDENCE_FILE_BYTES = 1024 * 1024;
const AMD_KDS = "https://kdsintf.amd.com";

function isHexText(bytes: Buffer): boolean {
  return /^[0-9a-fA-F\s]+$/.test(bytes.toString("latin1"));
}

/** Reads a report file: raw 1184 bytes, hex text of them, or MAA's base64url `report` envelope. */
function decodeReportFile(bytes: Buffer): {
  report: Buffer;
  vcek?: X509Certificate;
  chain?: readonly X509Certificate[];
} {
  if (bytes.length === SNP_REPORT_SIZE) return { report: bytes };
  const text = bytes.toString("latin1").trim();
  if (isHexText(bytes) && text.replace(/\s+/g, "").length === SNP_REPORT_SIZE * 2) {
    return { report: Buffer.from(text.replace(/\s+/g, ""), "hex") };
  }
  if (/^[A-Za-z0-9_\-+/=]+$/.test(text) && text.length > SNP_REPORT_SIZE) {
    const envelope = parseMaaSnpEnvelope(text);
    return { report: envelope.report, vcek: envelope.vcek, chain: envelope.chain };
  }
  // Anything else goes to the parser, which names the size problem precisely.
  return { report: bytes };
}

/**
 * The certificates of a file. A certificate that does not parse, or whose key does not decode, is
 * ERR_EVIDENCE_CHAIN for evidence (`--vcek`, `--chain`) and ERR_INPUT_MALFORMED for `--root`.
 */
async function readCertificates(
  path: string,
  what: string,
  code: CertificateErrorCode = "ERR_EVIDENCE_CHAIN",
): Promise<X509Certificate[]> {
  const certs = loadCertificates(await readInput(path, what, 256 * 1024), code);
  if (certs.length === 0) throw new ShieldError("ERR_INPUT_MALFORMED", `${what}: no certificate found`);
  return certs;
}

async function fetchKdsChain(product: string): Promise<X509Certificate[]> {
  const url = `${AMD_KDS}/vcek/v1/${product}/cert_chain`;
  let response: Response;
  try {
    response = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  } catch (cause) {
    throw new ShieldError("ERR_NETWORK", `GET ${url} failed (give --chain to verify offline)`, { cause });
  }
  if (!response.ok) throw new ShieldError("ERR_NETWORK", `GET ${url}: HTTP ${response.status}`);
  return loadCertificates(await response.text(), "ERR_EVIDENCE_CHAIN");
}

function productOf(vcek: X509Certificate): string {
  const cn = /CN=SEV-(?:VLEK-)?([A-Za-z]+)/.exec(vcek.issuer)?.[1];
  if (cn === undefined)
    throw new UsageError("cannot tell the AMD product from the VCEK issuer: give --chain");
  return cn;
}

async function verifySevSnp(values: OptionValues) {
  const at = parseAt(values);
  const decoded = decodeReportFile(
    await readInput(requireString(values, "report"), "--report", MAX_EVIDENCE_FILE_BYTES),
  );
  const vcekPath = optionalString(values, "vcek");
  let vcek = decoded.vcek;
  let chain: readonly X509Certificate[] | undefined = decoded.chain;
  if (vcekPath !== undefined) {
    // A PEM bundle may carry the chain after the VCEK (THIM and the sidecar ship it so).
    const [leaf, ...rest] = await readCertificates(vcekPath, "--vcek");
    vcek = leaf;
    if (rest.length > 0) chain = rest;
  }
  if (vcek === undefined) throw new UsageError("--vcek is required (unless --report is an MAA envelope)");
  const chainPath = optionalString(values, "chain");
  if (chainPath !== undefined) chain = await readCertificates(chainPath, "--chain");
  if (chain === undefined || chain.length === 0) chain = await fetchKdsChain(productOf(vcek));
  const rootPath = optionalString(values, "root");
  const trustedRoots =
    rootPath === undefined
      ? amdRootsTrust()
      : await readCertificates(rootPath, "--root", "ERR_INPUT_MALFORMED");
  const reportDataHex = optionalString(values, "report-data");
  const verification = createSnpVerifier({ trustedRoots, chainCacheSize: 0 }).verify({
    report: decoded.report,
    vcek,
    chain,
    at,
    expectedReportData:
      reportDataHex === undefined ? undefined : parseHex(reportDataHex, "report-data", [32, 64]),
  });
  const { claims } = verification;
  return {
    ok: true,
    data: {
      verified: true,
      tee: "sevsnp",
      signer: verification.signer,
      product: verification.product,
      trust: rootPath === undefined ? "amd-roots" : "given-root",
      claims,
    },
    lines: [
      `SEV-SNP report verified: ${verification.signer.toUpperCase()} signature, chain to ${
        rootPath === undefined ? "AMD ARK-" + verification.product : "the given root"
      }, TCB and chip bound to the certificate${reportDataHex === undefined ? "" : ", report data matches"}`,
      `  measurement  ${claims.measurement}`,
      `  hostData     ${claims.hostData}`,
      `  reportData   ${claims.reportData}`,
      `  debug        ${claims.debug}   vmpl ${claims.vmpl}   guestSvn ${claims.guestSvn}   version ${claims.version}`,
      `  reportedTcb  bl ${claims.reportedTcb.bootloader} tee ${claims.reportedTcb.tee} snp ${claims.reportedTcb.snp} ucode ${claims.reportedTcb.microcode}`,
      `  chipId       ${claims.chipId}`,
      `  claims       ${JSON.stringify(claims)}`,
    ],
  };
}

async function verifySgx(values: OptionValues) {
  const at = parseAt(values);
  let quote = await readInput(requireString(values, "quote"), "--quote", MAX_EVIDENCE_FILE_BYTES);
  if (isHexText(quote) && quote.length > 1000)
    quote = Buffer.from(quote.toString("latin1").replace(/\s+/g, ""), "hex");
  const rootPath = optionalString(values, "root");
  const trustedRoots =
    rootPath === undefined
      ? intelRootsTrust()
      : await readCertificates(rootPath, "--root", "ERR_INPUT_MALFORMED");
  const reportDataHex = optionalString(values, "report-data");
  const { claims } = createSgxVerifier({ trustedRoots, chainCacheSize: 0 }).verify({
    quote,
    at,
    expectedReportData:
      reportDataHex === undefined ? undefined : parseHex(reportDataHex, "report-data", [32, 64]),
  });
  return {
    ok: true,
    data: { verified: true, tee: "sgx", trust: rootPath === undefined ? "intel-root" : "given-root", claims },
    lines: [
      `SGX DCAP quote verified: quote signature, QE report by the PCK certificate, attestation-key binding, PCK chain to ${
        rootPath === undefined ? "the Intel SGX Root CA" : "the given root"
      }`,
      `  mrEnclave  ${claims.mrEnclave}`,
      `  mrSigner   ${claims.mrSigner}`,
      `  isvProdId  ${claims.isvProdId}   isvSvn ${claims.isvSvn}   debug ${claims.debug}`,
      `  reportData ${claims.reportData}`,
      `  claims     ${JSON.stringify(claims)}`,
    ],
  };
}

export const evidenceVerify: Command = {
  words: ["evidence", "verify"],
  summary: "verify a raw SEV-SNP report or SGX DCAP quote and print its claims",
  usage: [
    "Usage: shield evidence verify --tee sevsnp --report F [--vcek F] [--chain F] [--root F] [--report-data HEX] [--at T] [--json]",
    "       shield evidence verify --tee sgx --quote F [--root F] [--report-data HEX] [--at T] [--json]",
    "",
    "SEV-SNP:",
    "  --report F        the 1184-byte ATTESTATION_REPORT (raw, hex text, or MAA's base64url report envelope)",
    "  --vcek F          the VCEK or VLEK certificate (PEM or DER; a PEM bundle may continue with the chain)",
    "  --chain F         PEM: ASK (or ASVK) then ARK; without it the chain is fetched from AMD's KDS",
    "  --root F          trust this ARK (PEM) instead of AMD's roots — e.g. a simulated TEE's",
    "SGX:",
    "  --quote F         the DCAP v3 quote (raw; an Open Enclave report header is recognised)",
    "  --root F          trust this root CA (PEM) instead of the Intel SGX Root CA",
    "Both:",
    "  --report-data HEX expected REPORT_DATA: 32 bytes (then zeros for SEV-SNP; prefix for SGX) or 64",
    "  --at T            judge certificate validity as of this ISO 8601 time (default: now)",
  ].join("\n"),
  options: {
    tee: { type: "string" },
    report: { type: "string" },
    vcek: { type: "string" },
    chain: { type: "string" },
    quote: { type: "string" },
    root: { type: "string" },
    "report-data": { type: "string" },
    at: { type: "string" },
  },
  async run(values) {
    const tee = requireString(values, "tee");
    if (tee === "sevsnp") return verifySevSnp(values);
    if (tee === "sgx") return verifySgx(values);
    throw new UsageError(`--tee must be sevsnp or sgx, got ${JSON.stringify(tee)}`);
  },
};
