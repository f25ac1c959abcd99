/**
 * Keys, a vault signing chain and JWS helpers for the key wrapping tests. Everything is
 * generated here; nothing is read from disk.
 */
import { createHash, generateKeyPairSync, sign, type KeyObject, type X509Certificate } from "node:crypto";
import { buildCertificate } from "../../../core/x509/certificate.js";
import type { BuildReleaseResponseOptions } from "../../../core/keywrap/index.js";
import { exportForRelease } from "../../../core/keywrap/index.js";

export const AT = new Date("2026-03-01T12:00:00Z");
const NOT_BEFORE = new Date("2026-01-01T00:00:00Z");
const NOT_AFTER = new Date("2027-01-01T00:00:00Z");

export function rsaKeyPair(bits: number): { publicKey: KeyObject; privateKey: KeyObject } {
  return generateKeyPairSync("rsa", { modulusLength: bits });
}

export interface VaultSigner {
  readonly root: X509Certificate;
  readonly intermediate: X509Certificate;
  readonly leaf: X509Certificate;
  readonly leafKey: KeyObject;
  readonly chain: X509Certificate[];
}

/** A root → intermediate → leaf chain like the one a vault signs release responses with. */
export function vaultSigner(name: string, leafBits = 2048): VaultSigner {
  const rootKeys = rsaKeyPair(2048);
  const intermediateKeys = rsaKeyPair(2048);
  const leafKeys = rsaKeyPair(leafBits);
  const root = buildCertificate({
    subject: [["CN", `${name} Root`]],
    issuer: [["CN", `${name} Root`]],
    serialNumber: 1n,
    notBefore: NOT_BEFORE,
    notAfter: NOT_AFTER,
    publicKey: rootKeys.publicKey,
    signingKey: rootKeys.privateKey,
    signatureAlgorithm: "rsa-sha256",
    isCa: true,
  });
  const intermediate = buildCertificate({
    subject: [["CN", `${name} Issuing CA`]],
    issuer: [["CN", `${name} Root`]],
    serialNumber: 2n,
    notBefore: NOT_BEFORE,
    notAfter: NOT_AFTER,
    publicKey: intermediateKeys.publicKey,
    signingKey: rootKeys.privateKey,
    signatureAlgorithm: "rsa-sha256",
    isCa: true,
  });
  const leaf = buildCertificate({
    subject: [["CN", `${name.toLowerCase()}.vault.azure.net`]],
    issuer: [["CN", `${name} Issuing CA`]],
    serialNumber: 3n,
    notBefore: NOT_BEFORE,
    notAfter: NOT_AFTER,
    publicKey: leafKeys.publicKey,
    signingKey: intermediateKeys.privateKey,
    signatureAlgorithm: "rsa-sha256",
  });
  return { root, intermediate, leaf, leafKey: leafKeys.privateKey, chain: [leaf, intermediate, root] };
}

export const KEY_ID = "https://shield-test.vault.azure.net/keys/orders/0f1e2d3c4b5a69788796a5b4c3d2e1f0";

/** Release options for a 32-byte oct-HSM key; override any field. */
export function releaseOptions(
  signer: VaultSigner,
  target: KeyObject,
  overrides: Partial<BuildReleaseResponseOptions> = {},
): BuildReleaseResponseOptions {
  return {
    keyId: KEY_ID,
    requestKeyId: "https://shield-test.vault.azure.net/keys/orders",
    kty: "oct-HSM",
    keyOps: ["encrypt", "decrypt"],
    attributes: {
      enabled: true,
      exportable: true,
      created: 1767225600,
      recoveryLevel: "Recoverable+Purgeable",
    },
    releasePolicy: {
      contentType: "application/json; charset=utf-8",
      data: Buffer.from('{"version":"1.0.0","anyOf":[]}').toString("base64url"),
    },
    enc: "RSA_AES_KEY_WRAP_256",
    targetKey: target,
    plaintext: exportForRelease({ kty: "oct-HSM", bytes: Buffer.alloc(32, 0x5a) }),
    signer: { privateKey: signer.leafKey, certificateChain: signer.chain },
    requestApiVersion: "7.4",
    at: AT,
    ...overrides,
  };
}

export interface DecodedJws {
  header: Record<string, unknown>;
  payload: Record<string, unknown>;
}

export function decodeJws(jws: string): DecodedJws {
  const [h, p] = jws.split(".") as [string, string, string];
  return {
    header: JSON.parse(Buffer.from(h, "base64url").toString("utf8")) as Record<string, unknown>,
    payload: JSON.parse(Buffer.from(p, "base64url").toString("utf8")) as Record<string, unknown>,
  };
}

/** Signs arbitrary header and payload JSON with RS256, so one field at a time can be changed. */
export function signRs256(header: unknown, payload: unknown, key: KeyObject): string {
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  return `${input}.${sign("sha256", Buffer.from(input), key).toString("base64url")}`;
}

export function b64url(text: string): string {
  return Buffer.from(text, "utf8").toString("base64url");
}

export function x5tS256(cert: X509Certificate): string {
  return createHash("sha256").update(cert.raw).digest("base64url");
}

/** Runs `fn` and returns what it threw. */
export function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return error;
  }
  throw new Error("expected an error");
}
