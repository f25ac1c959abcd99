/**
 * The attestation service port: Microsoft Azure Attestation in Azure, a local MAA-compatible
 * server in the embedded default. It turns evidence plus the exact runtime-data bytes into a
 * signed MAA token; it does not judge the token — the trust core validates every token itself.
 *
 * Failures are typed: ERR_THROTTLED / ERR_UPSTREAM_UNAVAILABLE / ERR_TIMEOUT / ERR_NETWORK are
 * transient (retry, then redelivery); a 400-class refusal of the evidence is terminal
 * (ERR_EVIDENCE_* when the service says why, otherwise ERR_EVIDENCE_MALFORMED).
 */

/** How MAA should treat the runtime data: JSON becomes the `x-ms-runtime` claim. */
export type RuntimeDataType = "JSON" | "Binary";

export interface AttestSevSnpRequest {
  /** MAA's `report` field: base64url(JSON{SnpReport, VcekCertChain, Endorsements?}). */
  readonly report: string;
  /** The exact bytes whose SHA-256 is in REPORT_DATA. */
  readonly runtimeData: Uint8Array;
  readonly runtimeDataType?: RuntimeDataType;
  readonly nonce?: string;
}

export interface AttestSgxRequest {
  /** The DCAP quote bytes (an Open Enclave header, if any, removed). */
  readonly quote: Uint8Array;
  readonly runtimeData: Uint8Array;
  readonly runtimeDataType?: RuntimeDataType;
  readonly nonce?: string;
}

export interface AttestationService {
  /** The issuer tokens from this service carry (`iss`); keys come from `<issuer>/certs`. */
  readonly issuer: string;
  /** `POST /attest/SevSnpVm`; resolves to the MAA token (compact JWT). */
  attestSevSnp(request: AttestSevSnpRequest): Promise<string>;
  /** `POST /attest/SgxEnclave`; resolves to the MAA token (compact JWT). */
  attestSgx(request: AttestSgxRequest): Promise<string>;
  /** `GET /certs`: MAA's x5c-only JWK set, as `unknown` for the trust core to parse. */
  getSigningCertificates(): Promise<unknown>;
}
