/**
 * The production Intel SGX Root CA, pinned by the SHA-256 of its SubjectPublicKeyInfo.
 *
 * Every genuine PCK certificate chain ends at this root (CN=Intel SGX Root CA, O=Intel
 * Corporation, valid 2018-05-21 to 2049-12-31). Pinning the key rather than the certificate
 * keeps the pin valid if Intel re-issues the root with the same key. Intel's TEST PKI root is
 * deliberately absent.
 */
import type { SgxTrustedRoots } from "./verify.js";

export const INTEL_SGX_ROOT_FINGERPRINTS: readonly string[] = Object.freeze([
  "a0af031289f5d5d4132f9186068a7fc13628633ba235777472e29b6b6c67a49e",
]);

/** Trust for `createSgxVerifier`: the production Intel SGX Root CA only. */
export function intelRootsTrust(): SgxTrustedRoots {
  return INTEL_SGX_ROOT_FINGERPRINTS;
}
