/**
 * The signed object Key Vault and Managed HSM return from `POST /keys/{name}/{version}/release`:
 * `{"value": "<compact JWS>"}`. The JWS is RS256, signed by the vault's certificate carried in
 * the protected header's `x5c`; its payload echoes the request (`api-version`, `enc`, `kid`,
 * `nonce`) and holds the key bundle, whose `key.key_hsm` is base64url(JSON `{schema_version,
 * header: {kid, alg: "dir", enc}, ciphertext}`) with the wrapped key in `ciphertext`
 * (microsoft/confidential-sidecar-containers `pkg/common/akv.go`; decoded real response in
 * Azure/azure-quickstart-templates `confidential-vm-linux-keyvault-secure-key-release`).
 * Building is for the local Key Vault-compatible server; parsing and unwrapping are for the agent.
 */
import { KeyObject, X509Certificate, createHash, createPublicKey, verify } from "node:crypto";
import { CompactSign, calculateJwkThumbprint, type JWK } from "jose";
import { z } from "zod";
import { ShieldError } from "../errors.js";
import {
  importReleased,
  isReleaseEncryption,
  isReleasedKeyType,
  unwrapFromTarget,
  wrapForTarget,
  type ReleaseEncryption,
  type ReleasedKey,
  type ReleasedKeyType,
  type RsaPublicJwk,
} from "./wrap.js";

/** Real responses (RSA-4096 key, three-certificate chain) are about 20 KiB. */
export const MAX_RELEASE_RESPONSE_BYTES = 64 * 1024;

/** Longest `x5c` accepted. */
export const MAX_SIGNER_CHAIN_LENGTH = 8;

/** RS256 keys below this size are refused, as jose does. */
const MIN_SIGNER_MODULUS_BITS = 2048;

/** `key_hsm.schema_version` values seen: "1.0" (release), "1.0.0" (BYOK transfer blobs). */
const KEY_HSM_SCHEMA_VERSIONS = ["1.0", "1.0.0"];

/** Key Vault's `KeyReleasePolicy` as it appears in the key bundle; `data` is base64url JSON. */
export interface ReleasePolicyEnvelope {
  readonly contentType?: string;
  readonly data: string;
  readonly immutable?: boolean;
}

export interface ReleaseResponseSigner {
  readonly privateKey: KeyObject;
  /** Leaf first; the leaf must hold the public half of `privateKey`. */
  readonly certificateChain: readonly X509Certificate[];
}

export interface BuildReleaseResponseOptions {
  /** Versioned key identifier, `https://{vault}/keys/{name}/{version}`. */
  readonly keyId: string;
  /** The key identifier as the request named it (may be versionless); defaults to `keyId`. */
  readonly requestKeyId?: string;
  readonly kty: ReleasedKeyType;
  readonly keyOps: readonly string[];
  readonly attributes: Readonly<Record<string, unknown>>;
  readonly tags?: Readonly<Record<string, string>>;
  readonly releasePolicy?: ReleasePolicyEnvelope;
  readonly enc: ReleaseEncryption;
  /** The runtime key taken from the attestation token's `x-ms-runtime.keys`. */
  readonly targetKey: KeyObject | RsaPublicJwk;
  /** `key_hsm.header.kid`; defaults to the JWK's `kid`, else its RFC 7638 thumbprint. */
  readonly targetKeyId?: string;
  /** The key material as {@link exportForRelease} produces it. */
  readonly plaintext: Uint8Array;
  readonly signer: ReleaseResponseSigner;
  readonly requestApiVersion: string;
  readonly nonce?: string;
  /** Signing time: the signer's certificate must be valid then. */
  readonly at: Date;
  /** Source of the transient AES key (tests); defaults to the system CSPRNG. */
  readonly random?: (length: number) => Buffer;
}

export type SignerTrust = readonly X509Certificate[] | ((chain: readonly X509Certificate[]) => boolean);

export interface ParseReleaseResponseOptions {
  /**
   * Trust anchors (a certificate in `x5c`, or the issuer of one) or a predicate over the
   * verified `x5c` chain. Without it the signature is still checked against `x5c[0]`, but the
   * result says `signerTrusted: false`.
   */
  readonly trustedSigners?: SignerTrust;
  /** When given, every certificate relied on must be valid at this time. */
  readonly at?: Date;
  /** Size limit for the compact JWS; defaults to {@link MAX_RELEASE_RESPONSE_BYTES}. */
  readonly maxBytes?: number;
}

export interface ReleasedKeyEnvelope {
  readonly enc: ReleaseEncryption;
  /** Versioned identifier of the released key. */
  readonly kid: string;
  readonly kty: ReleasedKeyType;
  readonly keyOps: readonly string[];
  readonly keyHsmCiphertext: Buffer;
  readonly releasePolicy?: ReleasePolicyEnvelope;
  /** The request nonce Key Vault echoed, if any. */
  readonly nonce?: string;
  readonly signerTrusted: boolean;
}

export type UnwrappedReleasedKey = ReleasedKey & {
  readonly kid: string;
  readonly keyOps: readonly string[];
  readonly enc: ReleaseEncryption;
  readonly releasePolicy?: ReleasePolicyEnvelope;
  readonly nonce?: string;
  readonly signerTrusted: boolean;
};

// ---------------------------------------------------------------------------------------------
// Building (local Key Vault-compatible server)

/** Builds the compact JWS Key Vault returns as `value`. */
export async function buildReleaseResponse(options: BuildReleaseResponseOptions): Promise<string> {
  const { signer, enc, kty, at } = options;
  checkVersionedKeyId(options.keyId);
  if (!(at instanceof Date) || Number.isNaN(at.getTime())) throw new TypeError("at must be a valid Date");
  const leaf = checkSigner(signer, at);
  const publicParts = publicJwkParts(kty, options.plaintext);
  const ciphertext = wrapForTarget({
    targetKey: options.targetKey,
    plaintext: options.plaintext,
    enc,
    ...(options.random === undefined ? {} : { random: options.random }),
  });
  const keyHsm = {
    schema_version: "1.0",
    header: { kid: options.targetKeyId ?? (await targetKeyIdOf(options.targetKey)), alg: "dir", enc },
    ciphertext: ciphertext.toString("base64url"),
  };
  const payload = {
    request: {
      "api-version": options.requestApiVersion,
      enc,
      kid: options.requestKeyId ?? options.keyId,
      ...(options.nonce === undefined ? {} : { nonce: options.nonce }),
    },
    response: {
      key: {
        key: {
          kid: options.keyId,
          kty,
          key_ops: [...options.keyOps],
          ...publicParts,
          key_hsm: Buffer.from(JSON.stringify(keyHsm), "utf8").toString("base64url"),
        },
        attributes: { ...options.attributes },
        ...(options.tags === undefined ? {} : { tags: { ...options.tags } }),
        ...(options.releasePolicy === undefined ? {} : { release_policy: { ...options.releasePolicy } }),
      },
    },
  };
  const sha1 = createHash("sha1").update(leaf.raw).digest();
  return new CompactSign(Buffer.from(JSON.stringify(payload), "utf8"))
    .setProtectedHeader({
      alg: "RS256",
      // Key Vault's header names the signing certificate by its SHA-1 thumbprint, in hex.
      kid: sha1.toString("hex").toUpperCase(),
      x5t: sha1.toString("base64url"),
      typ: "JWT",
      "x5t#S256": createHash("sha256").update(leaf.raw).digest("base64url"),
      x5c: signer.certificateChain.map((cert) => cert.raw.toString("base64")),
    })
    .sign(signer.privateKey);
}

function checkVersionedKeyId(keyId: string): void {
  let url: URL;
  try {
    url = new URL(keyId);
  } catch {
    throw new TypeError("keyId must be a key identifier URL");
  }
  const segments = url.pathname.split("/").filter((s) => s.length > 0);
  if (segments.length !== 3 || segments[0] !== "keys") {
    throw new TypeError("keyId must be a versioned key identifier (/keys/{name}/{version})");
  }
}

function checkSigner(signer: ReleaseResponseSigner, at: Date): X509Certificate {
  const leaf = signer.certificateChain[0];
  if (!(leaf instanceof X509Certificate)) throw new TypeError("signer.certificateChain must not be empty");
  if (signer.certificateChain.length > MAX_SIGNER_CHAIN_LENGTH) {
    throw new TypeError(`signer.certificateChain is longer than ${MAX_SIGNER_CHAIN_LENGTH}`);
  }
  if (signer.privateKey.type !== "private" || signer.privateKey.asymmetricKeyType !== "rsa") {
    throw new TypeError("signer.privateKey must be an RSA private key");
  }
  const expected = createPublicKey(signer.privateKey).export({ type: "spki", format: "der" });
  if (!leaf.publicKey.export({ type: "spki", format: "der" }).equals(expected)) {
    throw new TypeError("signer certificate does not hold the signer's public key");
  }
  if (!validAt(leaf, at)) {
    throw new ShieldError(
      "ERR_CONFIG",
      "release response signing certificate is not valid at the signing time",
    );
  }
  return leaf;
}

/** Public members of the released key, as Key Vault includes them next to `key_hsm`. */
function publicJwkParts(kty: ReleasedKeyType, plaintext: Uint8Array): Record<string, string> {
  let released: ReleasedKey;
  try {
    released = importReleased(kty, plaintext);
  } catch (cause) {
    if (cause instanceof ShieldError)
      throw new TypeError(`plaintext is not a ${kty} key as exported for release`);
    throw cause;
  }
  if (!("privateKey" in released)) return {};
  const jwk = createPublicKey(released.privateKey).export({ format: "jwk" });
  if (jwk.kty === "RSA") return { n: jwk.n ?? "", e: jwk.e ?? "" };
  // Node names secp256k1 by its SEC name; Key Vault calls it P-256K.
  const crv = jwk.crv === "secp256k1" ? "P-256K" : (jwk.crv ?? "");
  return { crv, x: jwk.x ?? "", y: jwk.y ?? "" };
}

async function targetKeyIdOf(targetKey: KeyObject | RsaPublicJwk): Promise<string> {
  if (!(targetKey instanceof KeyObject) && typeof targetKey.kid === "string") return targetKey.kid;
  const jwk: JWK =
    targetKey instanceof KeyObject
      ? (targetKey.type === "public" ? targetKey : createPublicKey(targetKey)).export({
          format: "jwk",
        })
      : { kty: "RSA", n: targetKey.n, e: targetKey.e };
  return calculateJwkThumbprint(jwk, "sha256");
}

// ---------------------------------------------------------------------------------------------
// Parsing and verifying (agent, functions)

const BASE64URL = /^[A-Za-z0-9_-]+$/;
const BASE64URL_PADDED = /^[A-Za-z0-9_-]+={0,2}$/;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

const headerSchema = z
  .object({
    alg: z.string(),
    kid: z.string().optional(),
    x5c: z.array(z.string().max(16 * 1024)).min(1),
    "x5t#S256": z.string().optional(),
    crit: z.unknown().optional(),
  })
  .loose();

const releasePolicySchema = z
  .object({ contentType: z.string().optional(), data: z.string(), immutable: z.boolean().optional() })
  .loose();

const payloadSchema = z.object({
  request: z
    .object({
      "api-version": z.string().optional(),
      enc: z.string(),
      kid: z.string(),
      nonce: z.string().optional(),
    })
    .loose(),
  response: z.object({
    key: z
      .object({
        key: z
          .object({
            kid: z.string(),
            kty: z.string(),
            key_ops: z.array(z.string()).max(32),
            key_hsm: z.string(),
          })
          .loose(),
        attributes: z.record(z.string(), z.unknown()).optional(),
        release_policy: releasePolicySchema.optional(),
      })
      .loose(),
  }),
});

const keyHsmSchema = z
  .object({
    schema_version: z.string(),
    header: z
      .object({ kid: z.string().optional(), alg: z.string().optional(), enc: z.string().optional() })
      .loose(),
    ciphertext: z.string(),
  })
  .loose();

interface CompactParts {
  readonly headerSegment: string;
  readonly payloadSegment: string;
  readonly signature: Buffer;
}

type ProtectedHeader = z.infer<typeof headerSchema>;

/**
 * Decodes and verifies a release response. Checks, in order:
 * 1. size and shape: a string within the size limit with three base64url segments
 *    (ERR_RELEASE_RESPONSE_MALFORMED);
 * 2. protected header: JSON with `alg`, a non-empty `x5c` of at most eight certificates, and
 *    no `crit` (ERR_RELEASE_RESPONSE_MALFORMED);
 * 3. algorithm allowlist: `alg` is RS256 (ERR_RELEASE_RESPONSE_SIGNATURE);
 * 4. signer certificates: every `x5c` entry is standard-base64 DER of a certificate
 *    (ERR_RELEASE_RESPONSE_MALFORMED), and `x5c[0]` holds an RSA key of at least 2048 bits
 *    (ERR_RELEASE_RESPONSE_SIGNATURE);
 * 5. signature: RSASSA-PKCS1-v1_5 SHA-256 over the signing input with `x5c[0]`'s key
 *    (ERR_RELEASE_RESPONSE_SIGNATURE);
 * 6. `x5t#S256`, when present, is the SHA-256 thumbprint of `x5c[0]`
 *    (ERR_RELEASE_RESPONSE_SIGNATURE);
 * 7. signer trust, only when `trustedSigners` is given: `x5c` is a chain (each certificate
 *    issued and signed by the next, issuers are CAs), valid at `at` when given, and reaches a
 *    trust anchor or satisfies the predicate (ERR_RELEASE_RESPONSE_SIGNATURE);
 * 8. payload: JSON with `request.enc`, `request.kid` and `response.key.key` {kid, kty, key_ops,
 *    key_hsm} (ERR_RELEASE_RESPONSE_MALFORMED); `enc` is known (ERR_WRAP_ALGORITHM); `kty` is a
 *    Key Vault key type (ERR_RELEASE_RESPONSE_MALFORMED);
 * 9. `key_hsm`: base64url JSON with a known `schema_version`, `header.alg` "dir" and
 *    `header.enc` equal to `request.enc` when present, and a non-empty base64url `ciphertext`
 *    (ERR_RELEASE_RESPONSE_MALFORMED).
 */
export function parseReleaseResponse(
  value: string,
  options: ParseReleaseResponseOptions = {},
): ReleasedKeyEnvelope {
  if (typeof value !== "string") throw new TypeError("release response value must be a string");
  checkParseOptions(options);
  const parts = splitCompact(value, options.maxBytes ?? MAX_RELEASE_RESPONSE_BYTES);
  const header = decodeProtectedHeader(parts.headerSegment);
  checkAlgorithm(header);
  const chain = loadSignerChain(header.x5c);
  const leaf = chain[0]!;
  checkSignerKey(leaf);
  verifySignature(parts, leaf);
  checkThumbprint(header, leaf);
  const signerTrusted = options.trustedSigners === undefined ? false : checkSignerTrust(chain, options);
  const payload = decodePayload(parts.payloadSegment);
  const enc = payload.request.enc;
  if (!isReleaseEncryption(enc))
    throw new ShieldError("ERR_WRAP_ALGORITHM", "unsupported key wrapping algorithm");
  const key = payload.response.key.key;
  if (!isReleasedKeyType(key.kty)) throw malformed("response.key.key.kty is not a Key Vault key type");
  const keyHsmCiphertext = decodeKeyHsm(key.key_hsm, enc);
  const releasePolicy = payload.response.key.release_policy;
  return {
    enc,
    kid: key.kid,
    kty: key.kty,
    keyOps: [...key.key_ops],
    keyHsmCiphertext,
    ...(releasePolicy === undefined ? {} : { releasePolicy: policyEnvelope(releasePolicy) }),
    ...(payload.request.nonce === undefined ? {} : { nonce: payload.request.nonce }),
    signerTrusted,
  };
}

/** Parse, verify, unwrap with the runtime private key, and import: the agent's one call. */
export function unwrapReleasedKey(
  value: string,
  privateKey: KeyObject,
  options: ParseReleaseResponseOptions = {},
): UnwrappedReleasedKey {
  const envelope = parseReleaseResponse(value, options);
  const plaintext = unwrapFromTarget({
    privateKey,
    ciphertext: envelope.keyHsmCiphertext,
    enc: envelope.enc,
  });
  try {
    const key = importReleased(envelope.kty, plaintext);
    return {
      ...key,
      kid: envelope.kid,
      keyOps: envelope.keyOps,
      enc: envelope.enc,
      ...(envelope.releasePolicy === undefined ? {} : { releasePolicy: envelope.releasePolicy }),
      ...(envelope.nonce === undefined ? {} : { nonce: envelope.nonce }),
      signerTrusted: envelope.signerTrusted,
    };
  } finally {
    plaintext.fill(0);
  }
}

function malformed(message: string): ShieldError {
  return new ShieldError("ERR_RELEASE_RESPONSE_MALFORMED", message);
}

function badSignature(message: string): ShieldError {
  return new ShieldError("ERR_RELEASE_RESPONSE_SIGNATURE", message);
}

function checkParseOptions(options: ParseReleaseResponseOptions): void {
  const { trustedSigners, at, maxBytes } = options;
  if (trustedSigners !== undefined && typeof trustedSigners !== "function") {
    if (!Array.isArray(trustedSigners) || !trustedSigners.every((c) => c instanceof X509Certificate)) {
      throw new TypeError("trustedSigners must be X509Certificate[] or a function");
    }
  }
  if (at !== undefined && (!(at instanceof Date) || Number.isNaN(at.getTime()))) {
    throw new TypeError("at must be a valid Date");
  }
  if (maxBytes !== undefined && (!Number.isInteger(maxBytes) || maxBytes <= 0)) {
    throw new TypeError("maxBytes must be a positive integer");
  }
}

function splitCompact(value: string, maxBytes: number): CompactParts {
  if (value.length > maxBytes) throw malformed(`release response exceeds ${maxBytes} bytes`);
  const segments = value.split(".");
  if (segments.length !== 3) throw malformed("release response is not a compact JWS");
  const [headerSegment, payloadSegment, signatureSegment] = segments as [string, string, string];
  if (![headerSegment, payloadSegment, signatureSegment].every((s) => BASE64URL.test(s))) {
    throw malformed("release response segments are not base64url");
  }
  return { headerSegment, payloadSegment, signature: Buffer.from(signatureSegment, "base64url") };
}

function parseJsonSegment(segment: string, what: string): unknown {
  try {
    return JSON.parse(Buffer.from(segment, "base64url").toString("utf8")) as unknown;
  } catch {
    throw malformed(`${what} is not JSON`);
  }
}

function decodeProtectedHeader(segment: string): ProtectedHeader {
  const parsed = headerSchema.safeParse(parseJsonSegment(segment, "release response header"));
  if (!parsed.success) throw malformed("release response header lacks alg or x5c");
  if (parsed.data.x5c.length > MAX_SIGNER_CHAIN_LENGTH) {
    throw malformed(`release response x5c has more than ${MAX_SIGNER_CHAIN_LENGTH} certificates`);
  }
  // No extension is understood, so none may be marked critical (RFC 7515 §4.1.11).
  if (parsed.data.crit !== undefined) throw malformed("release response header has crit");
  return parsed.data;
}

function checkAlgorithm(header: ProtectedHeader): void {
  if (header.alg !== "RS256") throw badSignature("release response alg is not RS256");
}

function loadSignerChain(x5c: readonly string[]): X509Certificate[] {
  return x5c.map((entry, index) => {
    if (!BASE64.test(entry)) throw malformed(`x5c[${index}] is not base64`);
    try {
      return new X509Certificate(Buffer.from(entry, "base64"));
    } catch {
      throw malformed(`x5c[${index}] is not an X.509 certificate`);
    }
  });
}

function checkSignerKey(leaf: X509Certificate): void {
  const key = leaf.publicKey;
  const bits = key.asymmetricKeyDetails?.modulusLength;
  if (key.asymmetricKeyType !== "rsa" || bits === undefined)
    throw badSignature("x5c[0] does not hold an RSA key");
  if (bits < MIN_SIGNER_MODULUS_BITS) throw badSignature(`x5c[0] RSA key is ${bits} bits`);
}

function verifySignature(parts: CompactParts, leaf: X509Certificate): void {
  const signingInput = Buffer.from(`${parts.headerSegment}.${parts.payloadSegment}`, "ascii");
  let valid = false;
  try {
    valid = verify("sha256", signingInput, leaf.publicKey, parts.signature);
  } catch {
    valid = false;
  }
  if (!valid) throw badSignature("release response signature does not verify with x5c[0]");
}

function checkThumbprint(header: ProtectedHeader, leaf: X509Certificate): void {
  const thumbprint = header["x5t#S256"];
  if (thumbprint === undefined) return;
  if (thumbprint !== createHash("sha256").update(leaf.raw).digest("base64url")) {
    throw badSignature("x5t#S256 does not match x5c[0]");
  }
}

function checkSignerTrust(chain: readonly X509Certificate[], options: ParseReleaseResponseOptions): true {
  const trustedSigners = options.trustedSigners!;
  checkChainLinks(chain);
  if (typeof trustedSigners === "function") {
    checkValidity(chain, options.at);
    let accepted: unknown;
    try {
      accepted = trustedSigners([...chain]);
    } catch (cause) {
      if (cause instanceof ShieldError) throw cause;
      throw new ShieldError("ERR_RELEASE_RESPONSE_SIGNATURE", "release response signer check failed", {
        cause,
      });
    }
    if (accepted !== true) throw badSignature("release response signer is not trusted");
    return true;
  }
  const reach = anchorReach(chain, trustedSigners);
  if (reach === undefined) throw badSignature("release response signer is not trusted");
  checkValidity(chain.slice(0, reach + 1), options.at);
  return true;
}

/** Each certificate is issued and signed by the next one, which must be a CA. */
function checkChainLinks(chain: readonly X509Certificate[]): void {
  for (let i = 0; i + 1 < chain.length; i++) {
    const cert = chain[i]!;
    const issuer = chain[i + 1]!;
    if (!issuer.ca || !cert.checkIssued(issuer) || !cert.verify(issuer.publicKey)) {
      throw badSignature(`x5c[${i}] is not issued by x5c[${i + 1}]`);
    }
  }
}

/** Index of the first chain certificate that is an anchor or is issued by one. */
function anchorReach(
  chain: readonly X509Certificate[],
  anchors: readonly X509Certificate[],
): number | undefined {
  for (let i = 0; i < chain.length; i++) {
    const cert = chain[i]!;
    for (const anchor of anchors) {
      if (cert.raw.equals(anchor.raw)) return i;
      if (anchor.ca && cert.checkIssued(anchor) && cert.verify(anchor.publicKey)) return i;
    }
  }
  return undefined;
}

function checkValidity(certs: readonly X509Certificate[], at: Date | undefined): void {
  if (at === undefined) return;
  certs.forEach((cert, index) => {
    if (!validAt(cert, at)) throw badSignature(`x5c[${index}] is not valid at the given time`);
  });
}

function validAt(cert: X509Certificate, at: Date): boolean {
  const t = at.getTime();
  return new Date(cert.validFrom).getTime() <= t && t <= new Date(cert.validTo).getTime();
}

function decodePayload(segment: string): z.infer<typeof payloadSchema> {
  const parsed = payloadSchema.safeParse(parseJsonSegment(segment, "release response payload"));
  if (!parsed.success) {
    const path = parsed.error.issues[0]?.path.join(".") ?? "";
    throw malformed(`release response payload is malformed at ${path || "top level"}`);
  }
  return parsed.data;
}

function decodeKeyHsm(keyHsm: string, enc: ReleaseEncryption): Buffer {
  if (!BASE64URL_PADDED.test(keyHsm)) throw malformed("key_hsm is not base64url");
  const parsed = keyHsmSchema.safeParse(parseJsonSegment(keyHsm.replace(/=+$/, ""), "key_hsm"));
  if (!parsed.success) throw malformed("key_hsm lacks schema_version, header or ciphertext");
  const { schema_version, header, ciphertext } = parsed.data;
  if (!KEY_HSM_SCHEMA_VERSIONS.includes(schema_version))
    throw malformed("key_hsm schema_version is not supported");
  if (header.alg !== undefined && header.alg !== "dir") throw malformed('key_hsm header alg is not "dir"');
  if (header.enc !== undefined && header.enc !== enc)
    throw malformed("key_hsm header enc differs from request enc");
  if (!BASE64URL_PADDED.test(ciphertext)) throw malformed("key_hsm ciphertext is not base64url");
  return Buffer.from(ciphertext.replace(/=+$/, ""), "base64url");
}

function policyEnvelope(policy: z.infer<typeof releasePolicySchema>): ReleasePolicyEnvelope {
  return {
    ...(policy.contentType === undefined ? {} : { contentType: policy.contentType }),
    data: policy.data,
    ...(policy.immutable === undefined ? {} : { immutable: policy.immutable }),
  };
}
