/**
 * The local attestation engine: what Microsoft Azure Attestation does with SEV-SNP and SGX
 * evidence, done in-process with the trust core, for the embedded default and tests. It
 * verifies the evidence against the trust roots it is given (only those: in the embedded
 * default, the simulated TEE's roots, named explicitly), checks the runtime-data binding the way
 * MAA does, and issues an RS256 token with MAA's claim names and types, an 8-hour lifetime and
 * the request's nonce. It is the `AttestationService` port in-process, and the HTTP server in
 * `server.ts` puts MAA's REST API in front of it.
 *
 * Like MAA under its default attestation policy, it attests debuggable evidence and says so in
 * the token (`x-ms-sevsnpvm-is-debuggable` / `x-ms-sgx-is-debuggable` true): refusing it is
 * the job of appraisal and of the key's release policy, which then explain the denial claim by
 * claim. `allowDebug: false` makes the engine behave like an MAA instance whose custom policy
 * denies debuggable evidence.
 */
import { createHash } from "node:crypto";
import { ShieldError } from "../../../core/errors.js";
import type {
  AttestSevSnpRequest,
  AttestSgxRequest,
  AttestationService,
  RuntimeDataType,
} from "../../../core/ports/attestation.js";
import type { Clock } from "../../../core/ports/clock.js";
import { sevSnpMaaClaims, sgxMaaClaims } from "../../../core/evidence/maa-claims.js";
import {
  createSnpVerifier,
  parseMaaSnpEnvelope,
  type SnpTrustedRoots,
} from "../../../core/evidence/sevsnp/index.js";
import { createSgxVerifier, type SgxTrustedRoots } from "../../../core/evidence/sgx/index.js";
import type { MaaCertsDocument, MaaOpenIdConfiguration, MaaTokenIssuer } from "../../../core/token/index.js";

export interface LocalAttestationEngineOptions {
  /** Signs the tokens; its URL is the tokens' `iss` and its certificate is served at `/certs`. */
  readonly issuer: MaaTokenIssuer;
  /** ARKs (certificates or SPKI SHA-256 fingerprints) SEV-SNP chains may end at; empty refuses all SEV-SNP evidence. */
  readonly snpTrustedRoots: SnpTrustedRoots;
  /** Roots SGX PCK chains may end at; empty refuses all SGX evidence. */
  readonly sgxTrustedRoots: SgxTrustedRoots;
  /** Judges certificate validity and stamps `iat`/`nbf`/`exp`. */
  readonly clock: Clock;
  /** Emitted as `x-ms-compliance-status` in SEV-SNP tokens (e.g. `azure-compliant-uvm`, as on ACI). */
  readonly complianceStatus?: string;
  /** Attest debuggable evidence, as MAA's default policy does (default true). */
  readonly allowDebug?: boolean;
}

/** MAA's `initTimeData` for SEV-SNP: SHA-256 of it must equal HOST_DATA. */
export interface LocalAttestSevSnpRequest extends AttestSevSnpRequest {
  readonly initTimeData?: Uint8Array;
  readonly initTimeDataType?: RuntimeDataType;
}

export interface LocalAttestationEngine extends AttestationService {
  attestSevSnp(request: LocalAttestSevSnpRequest): Promise<string>;
  getSigningCertificates(): Promise<MaaCertsDocument>;
  /** `/.well-known/openid-configuration`, snake_case as MAA serves it. */
  openIdConfiguration(): MaaOpenIdConfiguration;
}

/** The default dataType when a caller gives none: the project's runtime data is always JSON. */
const DEFAULT_DATA_TYPE: RuntimeDataType = "JSON";
const MAX_NONCE_CHARS = 1024;
// `ignoreBOM` keeps a byte-order mark in the text, so JSON.parse refuses it instead of the
// decoder dropping it unseen.
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * Creates the engine. `attestSevSnp` runs, in order:
 *
 *  1. Parse MAA's `report` envelope (ERR_INPUT_TOO_LARGE, ERR_EVIDENCE_MALFORMED).
 *  2. Read the runtime data (and init-time data) by dataType: `JSON` must be a UTF-8 JSON object,
 *     with no byte-order mark and no other top-level type (ERR_INPUT_MALFORMED, which the server
 *     answers with 400); `Binary` is not interpreted.
 *  3. Verify the report with the SEV-SNP verifier: trusted ARK (ERR_EVIDENCE_UNTRUSTED_ROOT),
 *     chain, validity at the clock's time, signature, REPORTED_TCB and CHIP_ID against the VCEK,
 *     and REPORT_DATA = SHA-256(runtime data) followed by 32 zero bytes
 *     (ERR_EVIDENCE_REPORT_DATA).
 *  4. With init-time data: HOST_DATA = SHA-256(init-time data) (ERR_EVIDENCE_BINDING).
 *  5. With `allowDebug: false`: the guest is not debuggable (ERR_POLICY_DENIED).
 *  6. Issue the token: MAA's SEV-SNP claims, `x-ms-runtime` for JSON runtime data, the nonce.
 *
 * `attestSgx` runs: 2; verify the quote with the SGX verifier (trusted root, chain, validity,
 * QE report, attestation-key binding, quote signature, and the first 32 bytes of REPORT_DATA =
 * SHA-256(runtime data)); 5; and issues MAA's SGX claims.
 */
export function createLocalAttestationEngine(options: LocalAttestationEngineOptions): LocalAttestationEngine {
  const { issuer, clock } = options;
  if (typeof issuer?.issue !== "function" || typeof issuer.certsDocument !== "function") {
    throw new TypeError("issuer must be an MaaTokenIssuer");
  }
  if (typeof clock?.now !== "function") throw new TypeError("clock must have a now() method");
  if (options.complianceStatus !== undefined && typeof options.complianceStatus !== "string") {
    throw new TypeError("complianceStatus must be a string");
  }
  const allowDebug = options.allowDebug ?? true;
  // Long-lived verifiers: verified chains are cached, so a report costs one ECDSA check.
  const snpVerifier = verifierFor(options.snpTrustedRoots, (trustedRoots) =>
    createSnpVerifier({ trustedRoots }),
  );
  const sgxVerifier = verifierFor(options.sgxTrustedRoots, (trustedRoots) =>
    createSgxVerifier({ trustedRoots }),
  );

  return {
    issuer: issuer.issuer,

    async attestSevSnp(request: LocalAttestSevSnpRequest): Promise<string> {
      checkCommonRequest(request);
      if (typeof request.report !== "string") throw new TypeError("report must be a string");
      if (request.initTimeData !== undefined && !(request.initTimeData instanceof Uint8Array)) {
        throw new TypeError("initTimeData must be a Uint8Array");
      }
      const envelope = parseMaaSnpEnvelope(request.report); // 1
      const runtime = readAttestedData(request.runtimeData, request.runtimeDataType, "runtimeData"); // 2
      const inittime =
        request.initTimeData === undefined
          ? undefined
          : readAttestedData(request.initTimeData, request.initTimeDataType, "initTimeData");
      const at = clock.now();
      const { claims } = requireVerifier(snpVerifier, "SEV-SNP").verify({
        report: envelope.report,
        vcek: envelope.vcek,
        chain: envelope.chain,
        at,
        expectedReportData: sha256(request.runtimeData),
      }); // 3
      if (request.initTimeData !== undefined) checkInitTimeBinding(claims.hostData, request.initTimeData); // 4
      if (!allowDebug) checkNotDebuggable(claims.debug, "x-ms-sevsnpvm-is-debuggable"); // 5
      const claimSet = sevSnpMaaClaims(claims, {
        runtime,
        inittime,
        complianceStatus: options.complianceStatus,
      });
      return issuer.issue(claimSet, { at, nonce: request.nonce }); // 6
    },

    async attestSgx(request: AttestSgxRequest): Promise<string> {
      checkCommonRequest(request);
      if (!(request.quote instanceof Uint8Array)) throw new TypeError("quote must be a Uint8Array");
      const runtime = readAttestedData(request.runtimeData, request.runtimeDataType, "runtimeData");
      const at = clock.now();
      const { claims } = requireVerifier(sgxVerifier, "SGX").verify({
        quote: request.quote,
        at,
        // MAA compares the first 32 bytes of the 64-byte REPORT_DATA.
        expectedReportData: sha256(request.runtimeData),
      });
      if (!allowDebug) checkNotDebuggable(claims.debug, "x-ms-sgx-is-debuggable");
      const claimSet = sgxMaaClaims(claims, { runtimeData: request.runtimeData, runtime });
      return issuer.issue(claimSet, { at, nonce: request.nonce });
    },

    getSigningCertificates: () => Promise.resolve(issuer.certsDocument()),
    openIdConfiguration: () => issuer.openIdConfiguration(),
  };
}

function verifierFor<Roots extends readonly unknown[], Verifier>(
  roots: Roots,
  create: (roots: Roots) => Verifier,
): Verifier | undefined {
  if (!Array.isArray(roots)) throw new TypeError("trusted roots must be an array");
  return roots.length === 0 ? undefined : create(roots);
}

function requireVerifier<Verifier>(verifier: Verifier | undefined, tee: string): Verifier {
  if (verifier === undefined) {
    throw new ShieldError(
      "ERR_EVIDENCE_UNTRUSTED_ROOT",
      `no ${tee} root is trusted by this attestation service`,
    );
  }
  return verifier;
}

function checkCommonRequest(request: AttestSevSnpRequest | AttestSgxRequest): void {
  if (typeof request !== "object" || request === null) throw new TypeError("request must be an object");
  if (!(request.runtimeData instanceof Uint8Array)) throw new TypeError("runtimeData must be a Uint8Array");
  const type: unknown = request.runtimeDataType;
  if (type !== undefined && type !== "JSON" && type !== "Binary") {
    throw new TypeError('runtimeDataType must be "JSON" or "Binary"');
  }
  const nonce: unknown = request.nonce;
  if (nonce !== undefined && (typeof nonce !== "string" || nonce.length > MAX_NONCE_CHARS)) {
    throw new TypeError(`nonce must be a string of at most ${MAX_NONCE_CHARS} characters`);
  }
}

/** Step 2: JSON data becomes a claim object; binary data is not interpreted. */
function readAttestedData(data: Uint8Array, dataType: RuntimeDataType | undefined, what: string): unknown {
  if ((dataType ?? DEFAULT_DATA_TYPE) === "Binary") return undefined;
  if (data[0] === 0xef && data[1] === 0xbb && data[2] === 0xbf) {
    throw new ShieldError("ERR_INPUT_MALFORMED", `${what} of dataType JSON starts with a byte-order mark`);
  }
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(data));
  } catch {
    throw new ShieldError("ERR_INPUT_MALFORMED", `${what} of dataType JSON is not UTF-8 JSON`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ShieldError("ERR_INPUT_MALFORMED", `${what} of dataType JSON is not a JSON object`);
  }
  return value;
}

/** Step 4. */
function checkInitTimeBinding(hostData: string, initTimeData: Uint8Array): void {
  const expected = sha256(initTimeData).toString("hex");
  if (hostData !== expected) {
    throw new ShieldError("ERR_EVIDENCE_BINDING", "HOST_DATA is not the SHA-256 of initTimeData", {
      violations: [{ field: "hostData", expected, actual: hostData }],
    });
  }
}

/** Step 5. */
function checkNotDebuggable(debug: boolean, claim: string): void {
  if (debug) {
    throw new ShieldError("ERR_POLICY_DENIED", "the attestation policy refuses debuggable evidence", {
      violations: [{ field: claim, expected: "false", actual: "true" }],
    });
  }
}

function sha256(data: Uint8Array): Buffer {
  return createHash("sha256").update(data).digest();
}
