/**
 * The control-plane signing port: the key that signs everything the functions send to agents.
 * In Azure it is a non-exportable HSM key in Key Vault or Managed HSM, used only through the
 * `sign` operation, so the private key never exists outside the HSM; in the embedded default it
 * is such a key in the local Key Vault server. The signer is handed a SHA-256 digest and returns
 * the signature in JWS form (RFC 7518 §3: raw `r || s` for ES256, the RSASSA bytes for RS256 and
 * PS256), exactly as Key Vault's `sign` returns it.
 */

/** The JWS algorithms a control-plane key may sign with (the agent's allowlist too). */
export const CONTROL_ALGORITHMS = ["ES256", "RS256", "PS256"] as const;
export type ControlAlgorithm = (typeof CONTROL_ALGORITHMS)[number];

export interface ControlSigner {
  /**
   * The versioned key id (`https://<vault>/keys/<name>/<version>`): the JWS `kid`, which agents
   * look up among the keys they pin.
   */
  readonly keyId: string;
  readonly algorithm: ControlAlgorithm;
  /** Signs a 32-byte SHA-256 digest; transient failures are typed as such (ERR_THROTTLED, …). */
  sign(digest: Buffer): Promise<Buffer>;
}
