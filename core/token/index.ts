/**
 * Microsoft Azure Attestation tokens: reading the issuer's `/certs` keys, resolving a token's
 * signing key, validating a token, and issuing MAA-compatible tokens for tests and local runs.
 */
export {
  DEFAULT_CERTS_DOCUMENT_MAX_BYTES,
  parseCertsDocument,
  type MaaSigningKey,
  type ParseCertsDocumentOptions,
} from "./certs.js";
export {
  DEFAULT_SIGNING_KEYS_MAX_AGE_MS,
  DEFAULT_SIGNING_KEYS_MAX_STALE_MS,
  DEFAULT_SIGNING_KEYS_MIN_REFRESH_INTERVAL_MS,
  certsUrlOf,
  createCachedSigningKeys,
  issuerBaseUrl,
  staticSigningKeys,
  type CachedSigningKeysOptions,
  type SigningKeyResolver,
} from "./keys.js";
export {
  DEFAULT_CLOCK_SKEW_SECONDS,
  DEFAULT_MAX_TOKEN_BYTES,
  maaTokenHash,
  validateMaaToken,
  type MaaAttestationType,
  type MaaTokenClaims,
  type MaaTokenHeader,
  type MaaTokenValidationOptions,
  type ValidatedMaaToken,
} from "./validate.js";
export {
  MAA_TOKEN_LIFETIME_SECONDS,
  createMaaTokenIssuer,
  type IssueOptions,
  type MaaCertsDocument,
  type MaaOpenIdConfiguration,
  type MaaTokenIssuer,
  type MaaTokenIssuerOptions,
} from "./issuer.js";
