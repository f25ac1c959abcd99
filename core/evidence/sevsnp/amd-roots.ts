/**
 * AMD's SEV root keys (ARKs), pinned by the SHA-256 of their SubjectPublicKeyInfo DER.
 *
 * Each product line has its own self-signed ARK (RSA-4096, RSASSA-PSS/SHA-384) that signs the
 * ASK (VCEK issuer) and the ASVK (VLEK issuer). The values were computed from the ARKs in AMD
 * KDS `cert_chain` bundles as published by three independent projects (google/go-sev-guest
 * `verify/trust/ask_ark_*.pem`, virtee/sev `src/certs/snp/builtin/*`, confidential-containers/
 * trustee `deps/verifier/src/snp/*_ask_ark_asvk.pem`), which agree. Pinning the key rather
 * than the certificate keeps the pin valid if AMD re-issues an ARK with the same key.
 */
import type { SnpTrustedRoots } from "./verify.js";

export const AMD_ARK_FINGERPRINTS: Readonly<Record<"Milan" | "Genoa" | "Turin", string>> = Object.freeze({
  /** CN=ARK-Milan, valid 2020-10-22 to 2045-10-22. */
  Milan: "9f056bee44377e29308cb5ffa895bdfb62d18881fa6bed8d6f075b0204089cb9",
  /** CN=ARK-Genoa, valid 2022-01-26 to 2047-01-26. */
  Genoa: "429a69c9422aa258ee4d8db5fcda9c6470ef15f8cd5a9cebd6cbc7d90b863831",
  /** CN=ARK-Turin, valid 2023-05-15 to 2048-05-15. */
  Turin: "4f125410563a2ab9a50356f9243f6fe0b6f73de98603f53f90339c70e9d7ad08",
});

/** Trust for `createSnpVerifier`: AMD's Milan, Genoa and Turin ARKs, nothing else. */
export function amdRootsTrust(): SnpTrustedRoots {
  return Object.freeze(Object.values(AMD_ARK_FINGERPRINTS));
}
