/**
 * Microsoft Azure Attestation's REST shapes as they travel on the wire (api-version 2022-08-01):
 * the paths, the `attest` request bodies, the `{token}` answer and the `{error:{code,message}}`
 * refusal. The Azure client writes them and the local MAA-compatible server reads them, so the
 * two cannot drift apart. Only shapes and constants live here; no I/O.
 */
import { isShieldErrorCode, isTransientCode, type ShieldErrorCode } from "../../core/errors.js";
import type { RuntimeDataType } from "../../core/ports/attestation.js";

/** The api-version the client sends by default: the current stable one. */
export const MAA_API_VERSION = "2022-08-01";

/** The OAuth2 scope of the attestation data plane (shared providers also answer anonymously). */
export const MAA_SCOPE = "https://attest.azure.net/.default";

export const MAA_PATHS = Object.freeze({
  attestSevSnpVm: "/attest/SevSnpVm",
  attestSgxEnclave: "/attest/SgxEnclave",
  certs: "/certs",
  openIdConfiguration: "/.well-known/openid-configuration",
});

/** `RuntimeData` / `InitTimeData`: base64url bytes and how MAA should read them. */
export interface MaaAttestedData {
  readonly data: string;
  readonly dataType: RuntimeDataType;
}

/** `AttestSevSnpVmRequest`. */
export interface MaaAttestSevSnpVmBody {
  /** base64url(JSON{SnpReport, VcekCertChain, Endorsements?}). */
  readonly report: string;
  readonly runtimeData: MaaAttestedData;
  readonly initTimeData?: MaaAttestedData;
  readonly nonce?: string;
}

/** `AttestSgxEnclaveRequest`. */
export interface MaaAttestSgxEnclaveBody {
  /** base64url of the quote. */
  readonly quote: string;
  readonly runtimeData: MaaAttestedData;
  readonly nonce?: string;
}

/** `AttestationResponse`. */
export interface MaaAttestationResponse {
  readonly token: string;
}

/** Azure's error envelope, as MAA answers a refused request. */
export interface MaaErrorBody {
  readonly error: { readonly code: string; readonly message: string };
}

export function maaErrorBody(code: string, message: string): MaaErrorBody {
  return { error: { code, message } };
}

/**
 * The message the local server gives a refusal: the failing check's error code first, then a
 * short reason (never evidence bytes). Real MAA messages are free text; `refusalCodeOf` finds
 * no code in them.
 */
export function refusalMessage(code: ShieldErrorCode, reason: string): string {
  return `${code}: ${reason}`;
}

/**
 * The error code a refusal message names, when it names a terminal code about the request
 * itself (evidence, input, attestation policy). A refusal can never make a failure transient
 * or turn it into something else than a refusal.
 */
export function refusalCodeOf(message: unknown): ShieldErrorCode | undefined {
  if (typeof message !== "string") return undefined;
  const match = /^(ERR_[A-Z_]{1,40}):/.exec(message);
  const code = match?.[1];
  if (code === undefined || !isShieldErrorCode(code) || isTransientCode(code)) return undefined;
  const aboutTheRequest =
    code.startsWith("ERR_EVIDENCE_") || code.startsWith("ERR_INPUT_") || code === "ERR_POLICY_DENIED";
  return aboutTheRequest ? code : undefined;
}

/** base64url without padding, as MAA writes it and the Azure SDKs send it. */
export function encodeBase64Url(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("base64url");
}

const BASE64URL_BODY = /^[A-Za-z0-9_-]*$/;

/**
 * Strict base64url: the URL alphabet, with or without `=` padding (the SKR sidecar pads, the
 * Azure SDKs do not). Undefined when the text is not base64url.
 */
export function decodeBase64Url(text: string): Buffer | undefined {
  const body = text.replace(/={1,2}$/, "");
  const padded = body.length !== text.length;
  if (!BASE64URL_BODY.test(body) || body.length % 4 === 1 || (padded && text.length % 4 !== 0)) {
    return undefined;
  }
  return Buffer.from(body, "base64url");
}
