/**
 * Secure Key Release key transport: Key Vault's RSA-AES export wrapping, the key material
 * formats it wraps, and the signed release response that carries the wrapped key.
 */
export {
  RELEASE_ENCRYPTIONS,
  RELEASED_KEY_TYPES,
  exportForRelease,
  importReleased,
  isReleaseEncryption,
  isReleasedKeyType,
  unwrapFromTarget,
  wrapForTarget,
  type AsymmetricKeyType,
  type OctKeyType,
  type ReleasableKey,
  type ReleaseEncryption,
  type ReleasedKey,
  type ReleasedKeyType,
  type RsaPublicJwk,
  type UnwrapFromTargetOptions,
  type WrapForTargetOptions,
} from "./wrap.js";
export {
  MAX_RELEASE_RESPONSE_BYTES,
  MAX_SIGNER_CHAIN_LENGTH,
  buildReleaseResponse,
  parseReleaseResponse,
  unwrapReleasedKey,
  type BuildReleaseResponseOptions,
  type ParseReleaseResponseOptions,
  type ReleasePolicyEnvelope,
  type ReleaseResponseSigner,
  type ReleasedKeyEnvelope,
  type SignerTrust,
  type UnwrappedReleasedKey,
} from "./release-response.js";
