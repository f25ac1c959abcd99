/**
 * Encryption as a service for the application next to the agent: the cryptography behind the
 * key API's `/v1/encrypt`, `/v1/decrypt`, `/v1/rewrap` and `/v1/hmac` routes. The application
 * sends data and gets data back; the key stays in the agent's store, so a legacy application
 * never holds key material, never does its own cryptography, and has nothing to leak in a log
 * or a core dump but the values it handles.
 *
 * Ciphertext is `shield:v1:<version>:<base64url(nonce ‖ ciphertext ‖ tag)>`: AES-256-GCM under
 * the named key's version `<version>`, a random 96-bit nonce per encryption (NIST SP 800-38D
 * §8.2.2: at most 2^32 encryptions per key version; rotate long before), a 128-bit tag. The
 * GCM associated data is `shield:v1:<key name>:<version>`, a zero byte, then the caller's
 * associated data: a ciphertext moved to another key, relabelled to another version or given
 * other associated data fails its tag, with the one code {@link ERR_CIPHERTEXT_INTEGRITY}.
 *
 * Blind indexes (`shield-hmac:v1:<version>:<base64url>`) are HMAC-SHA-256 under a sub-key
 * derived from the data key with HKDF-SHA-256 (RFC 5869; info names this purpose, the key and
 * the caller's context), never under the data key itself: an index value reveals equality of
 * the inputs and nothing else, and the data key is never used for two algorithms. Sub-keys are
 * derived per call and zeroed, so nothing derived outlives a wipe of the store.
 *
 * Which versions decrypt: held ones (the current and the one before, see held-keys.ts), not
 * revoked, and not below the key's minimum decryption version. Key Vault versions carry no
 * order, so "below" means installed in this process before the minimum; while the minimum has
 * not been installed (configured ahead of the rotation, or installed before a restart) only the
 * current version is accepted. Encryption always uses the current version.
 */
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes } from "node:crypto";
import { ShieldError } from "../core/errors.js";
import { KEY_VERSION_PATTERN } from "../core/messages/fields.js";
import type { HeldKeyVersion, HeldKeysView } from "./held-keys.js";
import { isOctKey } from "./key-format.js";

export const CIPHERTEXT_PREFIX = "shield:v1:";
export const BLIND_INDEX_PREFIX = "shield-hmac:v1:";

const NONCE_BYTES = 12;
const TAG_BYTES = 16;
const AES_KEY_BYTES = 32;
const HKDF_INFO_LABEL = "shield blind index v1";

/** `shield:v1:<version>:<base64url>`, and nothing around it. */
const CIPHERTEXT_PATTERN = /^shield:v1:([0-9a-zA-Z]{1,64}):([A-Za-z0-9_-]+)$/;

/** What a blind-index context may be: a column or purpose name (`customer.email`). */
export const HMAC_CONTEXT_PATTERN = /^[A-Za-z0-9._-]{0,64}$/;

/** Per key name, the oldest version that may still decrypt. */
export type MinimumVersions = ReadonlyMap<string, string>;

export interface Sealed {
  readonly ciphertext: string;
  readonly version: string;
}

export interface Opened {
  /** The caller's to zero when done. */
  readonly plaintext: Buffer;
  readonly version: string;
}

export interface BlindIndex {
  /** Under the current version: what to store. */
  readonly hmac: string;
  readonly version: string;
  /** Under every version that decrypts, current first: what to look a stored value up by. */
  readonly candidates: readonly { readonly version: string; readonly hmac: string }[];
}

/** The version a ciphertext names, without decrypting it; undefined when it is not one. */
export function ciphertextVersion(ciphertext: string): string | undefined {
  return CIPHERTEXT_PATTERN.exec(ciphertext)?.[1];
}

/**
 * The operations over one agent's store. Every call reads the store afresh, so a rotation or a
 * revocation takes effect on the next call; nothing is cached.
 */
export class KeyOperations {
  readonly #keys: HeldKeysView;
  readonly #minimum: MinimumVersions;

  constructor(keys: HeldKeysView, minimumVersions: MinimumVersions = new Map()) {
    for (const [name, version] of minimumVersions) {
      if (!KEY_VERSION_PATTERN.test(version)) {
        throw new TypeError(`minimum decryption version of ${name} is not a Key Vault version`);
      }
    }
    this.#keys = keys;
    this.#minimum = minimumVersions;
  }

  /** Encrypts under the current version of `name`. */
  encrypt(name: string, plaintext: Uint8Array, associatedData?: Uint8Array): Sealed {
    const key = this.#current(name);
    const nonce = randomBytes(NONCE_BYTES);
    const cipher = createCipheriv("aes-256-gcm", key.material, nonce);
    cipher.setAAD(boundAssociatedData(name, key.version, associatedData));
    const body = Buffer.concat([nonce, cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
    return {
      ciphertext: `${CIPHERTEXT_PREFIX}${key.version}:${body.toString("base64url")}`,
      version: key.version,
    };
  }

  /** Decrypts a ciphertext of `name`, if its version may still decrypt. */
  decrypt(name: string, ciphertext: string, associatedData?: Uint8Array): Opened {
    const { version, body } = parseCiphertext(ciphertext);
    const key = this.#decryptingVersion(name, version);
    const nonce = body.subarray(0, NONCE_BYTES);
    const tag = body.subarray(body.length - TAG_BYTES);
    const decipher = createDecipheriv("aes-256-gcm", key.material, nonce, { authTagLength: TAG_BYTES });
    decipher.setAAD(boundAssociatedData(name, version, associatedData));
    decipher.setAuthTag(tag);
    const opened = decipher.update(body.subarray(NONCE_BYTES, body.length - TAG_BYTES));
    try {
      decipher.final();
    } catch {
      opened.fill(0);
      throw new ShieldError(
        "ERR_CIPHERTEXT_INTEGRITY",
        "the ciphertext does not verify under this key and associated data",
      );
    }
    return { plaintext: opened, version };
  }

  /**
   * Decrypts and encrypts again under the current version, without the plaintext leaving this
   * call; with `hmacContext`, also the blind index of the plaintext under the current version
   * (so an index column follows its value column through a rotation).
   */
  rewrap(
    name: string,
    ciphertext: string,
    associatedData?: Uint8Array,
    hmacContext?: string,
  ): Sealed & { readonly hmac?: string } {
    const opened = this.decrypt(name, ciphertext, associatedData);
    try {
      const sealed = this.encrypt(name, opened.plaintext, associatedData);
      if (hmacContext === undefined) return sealed;
      return { ...sealed, hmac: this.#blindIndex(this.#current(name), hmacContext, opened.plaintext) };
    } finally {
      opened.plaintext.fill(0);
    }
  }

  /** The blind index of `data` under the current version, and under every version that decrypts. */
  hmac(name: string, data: Uint8Array, context = ""): BlindIndex {
    const current = this.#current(name);
    const candidates = this.decryptingVersions(name).map((version) => ({
      version,
      hmac: this.#blindIndex(this.#usable(name, version), context, data),
    }));
    return { hmac: candidates[0]!.hmac, version: current.version, candidates };
  }

  /** The versions of `name` that decrypt now, current first. */
  decryptingVersions(name: string): string[] {
    const current = this.#keys.currentVersion(name);
    if (current === undefined) return [];
    const order = this.#keys.installOrder(name);
    const held = order.filter((version) => this.#keys.get(name, version) !== undefined);
    if (!held.includes(current)) held.push(current);
    return held.filter((version) => this.#retired(name, version) === false).reverse();
  }

  #current(name: string): HeldKeyVersion {
    const version = this.#keys.currentVersion(name);
    if (version === undefined)
      throw new ShieldError("ERR_KEY_VERSION_UNKNOWN", "no version of the key is held");
    return this.#usable(name, version);
  }

  #decryptingVersion(name: string, version: string): HeldKeyVersion {
    if (this.#keys.wasRevoked(name, version)) {
      throw new ShieldError("ERR_KEY_VERSION_REVOKED", "the ciphertext's key version was revoked");
    }
    if (this.#keys.get(name, version) === undefined) {
      throw new ShieldError("ERR_KEY_VERSION_UNKNOWN", "the ciphertext's key version is not held");
    }
    if (this.#retired(name, version)) {
      throw new ShieldError(
        "ERR_KEY_VERSION_RETIRED",
        "the ciphertext's key version is below the minimum decryption version",
      );
    }
    return this.#usable(name, version);
  }

  #usable(name: string, version: string): HeldKeyVersion {
    const key = this.#keys.get(name, version);
    if (key === undefined) throw new ShieldError("ERR_KEY_VERSION_UNKNOWN", "the key version is not held");
    if (!isOctKey(key) || key.material.length !== AES_KEY_BYTES) {
      throw new ShieldError("ERR_KEY_UNSUPPORTED", "the key is not a 256-bit symmetric key");
    }
    return key;
  }

  /** Below the minimum: installed before it, or (minimum never installed) not current. */
  #retired(name: string, version: string): boolean {
    const minimum = this.#minimum.get(name);
    if (minimum === undefined || minimum === version) return false;
    const order = this.#keys.installOrder(name);
    const floor = order.indexOf(minimum);
    if (floor === -1) return version !== this.#keys.currentVersion(name);
    const position = order.indexOf(version);
    return position === -1 || position < floor;
  }

  #blindIndex(key: HeldKeyVersion, context: string, data: Uint8Array): string {
    if (!HMAC_CONTEXT_PATTERN.test(context))
      throw new TypeError("hmac context must match HMAC_CONTEXT_PATTERN");
    const info = Buffer.from(`${HKDF_INFO_LABEL}\0${key.name}\0${context}`, "utf8");
    const subKey = Buffer.from(hkdfSync("sha256", key.material, Buffer.alloc(0), info, 32));
    try {
      const mac = createHmac("sha256", subKey).update(data).digest("base64url");
      return `${BLIND_INDEX_PREFIX}${key.version}:${mac}`;
    } finally {
      subKey.fill(0);
    }
  }
}

function parseCiphertext(ciphertext: string): { version: string; body: Buffer } {
  const match = CIPHERTEXT_PATTERN.exec(ciphertext);
  if (match === null) {
    throw new ShieldError("ERR_CIPHERTEXT_MALFORMED", "not a shield:v1 ciphertext");
  }
  const body = Buffer.from(match[2]!, "base64url");
  // base64url decoding skips what it cannot read: a body that does not re-encode is not one.
  if (body.toString("base64url") !== match[2] || body.length < NONCE_BYTES + TAG_BYTES) {
    throw new ShieldError("ERR_CIPHERTEXT_MALFORMED", "the ciphertext body is truncated or not base64url");
  }
  return { version: match[1]!, body };
}

function boundAssociatedData(name: string, version: string, associatedData: Uint8Array | undefined): Buffer {
  return Buffer.concat([
    Buffer.from(`${CIPHERTEXT_PREFIX}${name}:${version}\0`, "utf8"),
    associatedData ?? Buffer.alloc(0),
  ]);
}
