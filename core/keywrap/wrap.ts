/**
 * Key Vault's export wrapping for Secure Key Release: the released key is wrapped with a fresh
 * AES-256 key using AES Key Wrap with Padding (RFC 5649), and that AES key is encrypted to the
 * workload's runtime RSA key with RSA-OAEP; the two are concatenated, RSA part first (PKCS #11
 * CKM_RSA_AES_KEY_WRAP). `enc` selects the OAEP hash: CKM_RSA_AES_KEY_WRAP → SHA-1,
 * RSA_AES_KEY_WRAP_256 → SHA-256, RSA_AES_KEY_WRAP_384 → SHA-384, with MGF1 over the same hash
 * and an empty label. The wrapped plaintext is the raw key for `oct` keys and a PKCS #8 DER
 * private key for RSA and EC keys (Key Vault BYOK specification). Both ciphers are Node's
 * (OpenSSL); nothing here implements AES or the key-wrap rounds.
 */
import {
  KeyObject,
  constants,
  createDecipheriv,
  createCipheriv,
  createPrivateKey,
  createPublicKey,
  privateDecrypt,
  publicEncrypt,
  randomBytes,
  type JsonWebKey,
} from "node:crypto";
import { ShieldError } from "../errors.js";

export type ReleaseEncryption = "CKM_RSA_AES_KEY_WRAP" | "RSA_AES_KEY_WRAP_256" | "RSA_AES_KEY_WRAP_384";

export const RELEASE_ENCRYPTIONS: readonly ReleaseEncryption[] = [
  "CKM_RSA_AES_KEY_WRAP",
  "RSA_AES_KEY_WRAP_256",
  "RSA_AES_KEY_WRAP_384",
];

/** OAEP hash (and MGF1 hash) per `enc`; the AES part does not depend on `enc`. */
const OAEP_HASH: Readonly<Record<ReleaseEncryption, "sha1" | "sha256" | "sha384">> = {
  CKM_RSA_AES_KEY_WRAP: "sha1",
  RSA_AES_KEY_WRAP_256: "sha256",
  RSA_AES_KEY_WRAP_384: "sha384",
};

/** RFC 5649 §3 alternative initial value; the 4-byte IV OpenSSL's `*-wrap-pad` ciphers take. */
const RFC5649_AIV = Buffer.from([0xa6, 0x59, 0x59, 0xa6]);

/** Key Vault and Managed HSM use a 256-bit transient key. */
const TRANSIENT_KEY_BYTES = 32;

/** Unwrapping also accepts the other PKCS #11 ulAESKeyBits values (128, 192). */
const KWP_CIPHER_BY_KEY_BYTES: Readonly<Record<number, string>> = {
  16: "id-aes128-wrap-pad",
  24: "id-aes192-wrap-pad",
  32: "id-aes256-wrap-pad",
};

/** Runtime keys below this size are refused as wrapping targets. */
const MIN_TARGET_MODULUS_BITS = 2048;

const BASE64URL = /^[A-Za-z0-9_-]+$/;

/** The smallest AES part: one 64-bit AIV block plus one padded plaintext block. */
const MIN_KWP_BYTES = 16;

export function isReleaseEncryption(value: unknown): value is ReleaseEncryption {
  return typeof value === "string" && (RELEASE_ENCRYPTIONS as readonly string[]).includes(value);
}

/** The public part of a runtime key as it appears in `x-ms-runtime.keys`. */
export interface RsaPublicJwk {
  readonly kty: "RSA";
  readonly n: string;
  readonly e: string;
  readonly kid?: string;
  readonly key_ops?: readonly string[];
}

export interface WrapForTargetOptions {
  /** The workload's runtime RSA key (public, or a private key whose public half is used). */
  readonly targetKey: KeyObject | RsaPublicJwk;
  readonly plaintext: Uint8Array;
  readonly enc: ReleaseEncryption;
  /** Source of the transient AES key; defaults to the system CSPRNG. */
  readonly random?: (length: number) => Buffer;
}

export interface UnwrapFromTargetOptions {
  readonly privateKey: KeyObject;
  readonly ciphertext: Uint8Array;
  /** Untrusted until the caller has checked it; unknown values are refused. */
  readonly enc: string;
}

/** Wraps `plaintext` to `targetKey`: RSA-OAEP(transient AES key) ‖ AES-KWP(plaintext). */
export function wrapForTarget(options: WrapForTargetOptions): Buffer {
  const { plaintext, enc } = options;
  if (!(plaintext instanceof Uint8Array)) throw new TypeError("plaintext must be a Uint8Array");
  if (plaintext.length === 0) throw new TypeError("plaintext must not be empty");
  const oaepHash = checkAlgorithm(enc);
  const target = targetPublicKey(options.targetKey);
  const transientKey = transientKeyFrom(options.random);
  try {
    let encryptedKey: Buffer;
    try {
      encryptedKey = publicEncrypt(
        { key: target, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash },
        transientKey,
      );
    } catch {
      // Node imports JWKs OpenSSL then refuses to encrypt with (an even modulus, say).
      throw new ShieldError("ERR_INPUT_MALFORMED", "target key cannot be used for RSA-OAEP encryption");
    }
    const cipher = createCipheriv("id-aes256-wrap-pad", transientKey, RFC5649_AIV);
    const wrappedKey = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    return Buffer.concat([encryptedKey, wrappedKey]);
  } finally {
    transientKey.fill(0);
  }
}

/**
 * Reverses {@link wrapForTarget}. Checks, in order:
 * 1. `enc` is a known algorithm (ERR_WRAP_ALGORITHM);
 * 2. the ciphertext holds a full RSA block for this key and a well-formed AES part
 *    (ERR_RELEASE_RESPONSE_MALFORMED);
 * 3. RSA-OAEP decryption of the transient key succeeds and yields an AES key size
 *    (ERR_WRAP_INTEGRITY);
 * 4. RFC 5649 unwrapping passes its integrity check (ERR_WRAP_INTEGRITY).
 */
export function unwrapFromTarget(options: UnwrapFromTargetOptions): Buffer {
  const { privateKey, ciphertext, enc } = options;
  const modulusBytes = rsaPrivateModulusBytes(privateKey);
  if (!(ciphertext instanceof Uint8Array)) throw new TypeError("ciphertext must be a Uint8Array");
  const oaepHash = checkAlgorithm(enc);
  const { encryptedKey, wrappedKey } = splitCiphertext(ciphertext, modulusBytes);
  const transientKey = decryptTransientKey(privateKey, encryptedKey, oaepHash);
  try {
    return unwrapKeyData(transientKey, wrappedKey);
  } finally {
    transientKey.fill(0);
  }
}

/** `enc` arrives in release requests and responses, so an unknown value is a domain error. */
function checkAlgorithm(enc: string): "sha1" | "sha256" | "sha384" {
  if (!isReleaseEncryption(enc)) {
    throw new ShieldError("ERR_WRAP_ALGORITHM", "unsupported key wrapping algorithm");
  }
  return OAEP_HASH[enc];
}

function splitCiphertext(
  ciphertext: Uint8Array,
  modulusBytes: number,
): { encryptedKey: Buffer; wrappedKey: Buffer } {
  const bytes = Buffer.from(ciphertext.buffer, ciphertext.byteOffset, ciphertext.byteLength);
  const aesPart = bytes.length - modulusBytes;
  if (aesPart < MIN_KWP_BYTES) {
    throw new ShieldError(
      "ERR_RELEASE_RESPONSE_MALFORMED",
      `wrapped key is too short: ${bytes.length} bytes for a ${modulusBytes * 8}-bit unwrapping key`,
    );
  }
  if (aesPart % 8 !== 0) {
    throw new ShieldError(
      "ERR_RELEASE_RESPONSE_MALFORMED",
      `AES key wrap part is ${aesPart} bytes, not a multiple of 8`,
    );
  }
  return { encryptedKey: bytes.subarray(0, modulusBytes), wrappedKey: bytes.subarray(modulusBytes) };
}

function decryptTransientKey(
  privateKey: KeyObject,
  encryptedKey: Buffer,
  oaepHash: "sha1" | "sha256" | "sha384",
): Buffer {
  let transientKey: Buffer;
  try {
    transientKey = privateDecrypt(
      { key: privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash },
      encryptedKey,
    );
  } catch {
    // OpenSSL's reason is deliberately dropped: OAEP failures must all look alike.
    throw new ShieldError("ERR_WRAP_INTEGRITY", "RSA-OAEP decryption of the transient key failed");
  }
  if (KWP_CIPHER_BY_KEY_BYTES[transientKey.length] === undefined) {
    const length = transientKey.length;
    transientKey.fill(0);
    throw new ShieldError("ERR_WRAP_INTEGRITY", `transient key is ${length} bytes, not an AES key size`);
  }
  return transientKey;
}

function unwrapKeyData(transientKey: Buffer, wrappedKey: Buffer): Buffer {
  const cipher = KWP_CIPHER_BY_KEY_BYTES[transientKey.length]!;
  // Each part holds plaintext key bytes: zeroed once concatenated, or when the check fails.
  const parts: Buffer[] = [];
  try {
    const decipher = createDecipheriv(cipher, transientKey, RFC5649_AIV);
    parts.push(decipher.update(wrappedKey));
    parts.push(decipher.final());
    return concatOwned(parts);
  } catch {
    throw new ShieldError("ERR_WRAP_INTEGRITY", "AES key unwrap integrity check failed");
  } finally {
    for (const part of parts) part.fill(0);
  }
}

/** Concatenates into a fresh allocation (never Node's shared pool), so zeroing it touches nothing else. */
function concatOwned(parts: readonly Buffer[]): Buffer {
  const out = Buffer.alloc(parts.reduce((length, part) => length + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    part.copy(out, offset);
    offset += part.length;
  }
  return out;
}

/** A private copy of the transient key, so zeroing it never touches the caller's buffer. */
function transientKeyFrom(random: ((length: number) => Buffer) | undefined): Buffer {
  if (random === undefined) return randomBytes(TRANSIENT_KEY_BYTES);
  const supplied: unknown = random(TRANSIENT_KEY_BYTES);
  if (!(supplied instanceof Uint8Array) || supplied.length !== TRANSIENT_KEY_BYTES) {
    throw new TypeError(`random must return exactly ${TRANSIENT_KEY_BYTES} bytes`);
  }
  return Buffer.from(supplied);
}

function rsaPrivateModulusBytes(privateKey: KeyObject): number {
  if (!(privateKey instanceof KeyObject) || privateKey.type !== "private") {
    throw new TypeError("privateKey must be a private KeyObject");
  }
  const bits = privateKey.asymmetricKeyDetails?.modulusLength;
  if (privateKey.asymmetricKeyType !== "rsa" || bits === undefined) {
    throw new TypeError("privateKey must be an RSA key");
  }
  return Math.ceil(bits / 8);
}

/** Resolves the wrapping target. A JWK comes from a token, so a bad one is a domain error. */
function targetPublicKey(targetKey: KeyObject | RsaPublicJwk): KeyObject {
  let key: KeyObject;
  if (targetKey instanceof KeyObject) {
    if (targetKey.type === "secret") throw new TypeError("targetKey must be an RSA key");
    key = targetKey.type === "public" ? targetKey : createPublicKey(targetKey);
  } else {
    if (typeof targetKey !== "object" || targetKey === null) {
      throw new TypeError("targetKey must be a KeyObject or an RSA public JWK");
    }
    if (targetKey.kty !== "RSA" || typeof targetKey.n !== "string" || typeof targetKey.e !== "string") {
      throw new ShieldError("ERR_WRAP_ALGORITHM", "target key is not an RSA public JWK");
    }
    if (!BASE64URL.test(targetKey.n) || !BASE64URL.test(targetKey.e)) {
      throw new ShieldError("ERR_INPUT_MALFORMED", "target key JWK n or e is not base64url");
    }
    const jwk: JsonWebKey = { kty: "RSA", n: targetKey.n, e: targetKey.e };
    try {
      key = createPublicKey({ key: jwk, format: "jwk" });
    } catch {
      throw new ShieldError("ERR_INPUT_MALFORMED", "target key JWK could not be imported");
    }
  }
  const bits = key.asymmetricKeyDetails?.modulusLength;
  if (key.asymmetricKeyType !== "rsa" || bits === undefined) {
    throw new ShieldError("ERR_WRAP_ALGORITHM", "target key is not an RSA key");
  }
  // e = 1 would leave the OAEP block readable by anyone; e = 0 or even e is not an RSA key.
  const exponent = key.asymmetricKeyDetails?.publicExponent;
  if (exponent === undefined || exponent < 3n || exponent % 2n === 0n) {
    throw new ShieldError("ERR_INPUT_MALFORMED", "target key public exponent is not usable");
  }
  if (bits < MIN_TARGET_MODULUS_BITS) {
    throw new ShieldError(
      "ERR_WRAP_ALGORITHM",
      `target key is ${bits} bits; at least ${MIN_TARGET_MODULUS_BITS} required`,
    );
  }
  return key;
}

// ---------------------------------------------------------------------------------------------
// Key material as Key Vault exports it

export type OctKeyType = "oct" | "oct-HSM";
export type AsymmetricKeyType = "RSA" | "RSA-HSM" | "EC" | "EC-HSM";
export type ReleasedKeyType = OctKeyType | AsymmetricKeyType;

export const RELEASED_KEY_TYPES: readonly ReleasedKeyType[] = [
  "oct",
  "oct-HSM",
  "RSA",
  "RSA-HSM",
  "EC",
  "EC-HSM",
];

export type ReleasedKey =
  | { readonly kty: OctKeyType; readonly bytes: Buffer }
  | { readonly kty: AsymmetricKeyType; readonly privateKey: KeyObject };

export type ReleasableKey =
  | { readonly kty: OctKeyType; readonly bytes: Uint8Array }
  | { readonly kty: AsymmetricKeyType; readonly privateKey: KeyObject };

export function isReleasedKeyType(value: unknown): value is ReleasedKeyType {
  return typeof value === "string" && (RELEASED_KEY_TYPES as readonly string[]).includes(value);
}

function isOctKeyType(kty: ReleasedKeyType): kty is OctKeyType {
  return kty === "oct" || kty === "oct-HSM";
}

/** Node's name for the key algorithm a Key Vault `kty` holds. */
function nodeKeyTypeFor(kty: AsymmetricKeyType): "rsa" | "ec" {
  return kty === "RSA" || kty === "RSA-HSM" ? "rsa" : "ec";
}

/** The bytes Key Vault wraps for a key: raw bytes for `oct`, PKCS #8 DER for RSA and EC. */
export function exportForRelease(key: ReleasableKey): Buffer {
  if (typeof key !== "object" || key === null || !isReleasedKeyType(key.kty)) {
    throw new TypeError("key.kty must be a Key Vault key type");
  }
  if (isOctKeyType(key.kty)) {
    const { bytes } = key as { bytes: unknown };
    if (!(bytes instanceof Uint8Array) || bytes.length === 0) {
      throw new TypeError("oct key bytes must be a non-empty Uint8Array");
    }
    return Buffer.from(bytes);
  }
  const { privateKey } = key as { privateKey: unknown };
  if (!(privateKey instanceof KeyObject) || privateKey.type !== "private") {
    throw new TypeError("privateKey must be a private KeyObject");
  }
  if (privateKey.asymmetricKeyType !== nodeKeyTypeFor(key.kty)) {
    throw new TypeError(`privateKey does not match kty ${key.kty}`);
  }
  return privateKey.export({ type: "pkcs8", format: "der" });
}

/**
 * Turns unwrapped plaintext back into a key. The plaintext passed an integrity check, but the
 * `kty` it is read as comes from the response, so a mismatch is a malformed response.
 */
export function importReleased(kty: ReleasedKeyType, plaintext: Uint8Array): ReleasedKey {
  if (!isReleasedKeyType(kty)) throw new TypeError("kty must be a Key Vault key type");
  if (!(plaintext instanceof Uint8Array)) throw new TypeError("plaintext must be a Uint8Array");
  if (isOctKeyType(kty)) {
    if (plaintext.length === 0)
      throw new ShieldError("ERR_RELEASE_RESPONSE_MALFORMED", "released key is empty");
    return { kty, bytes: Buffer.from(plaintext) };
  }
  let privateKey: KeyObject;
  // A copy OpenSSL reads from; zeroed at once (the KeyObject holds its own, which cannot be).
  const der = Buffer.alloc(plaintext.length);
  der.set(plaintext);
  try {
    privateKey = createPrivateKey({ key: der, format: "der", type: "pkcs8" });
  } catch {
    throw new ShieldError(
      "ERR_RELEASE_RESPONSE_MALFORMED",
      `released ${kty} key is not a PKCS #8 private key`,
    );
  } finally {
    der.fill(0);
  }
  if (privateKey.asymmetricKeyType !== nodeKeyTypeFor(kty)) {
    throw new ShieldError(
      "ERR_RELEASE_RESPONSE_MALFORMED",
      `released key is ${privateKey.asymmetricKeyType ?? "unknown"}, response says ${kty}`,
    );
  }
  return { kty, privateKey };
}
