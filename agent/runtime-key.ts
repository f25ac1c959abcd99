/**
 * The agent's runtime key: an ephemeral RSA key pair made in memory at start, whose public half
 * travels in the runtime data bound into the hardware evidence and whose private half unwraps
 * the keys Key Vault releases to it. The private key never leaves this module — not as PEM,
 * not as a JWK, not as a KeyObject: `unwrapReleased` runs core/keywrap's unwrap here.
 *
 * Runtime data is `{"keys":[{"kty":"RSA","n","e","kid","key_ops":["encrypt"]}]}` (plus `"nonce"`
 * when it answers a challenge, and `"request"`, the binding of the request's fields), the shape Key Vault's release requires of `x-ms-runtime`
 * (an RSA JWK with `kid` and `key_ops` containing `encrypt`). It is serialised once; REPORT_DATA
 * is sha256 of exactly those bytes followed by 32 zero bytes, and the same bytes are what the
 * attestation request carries, so nothing ever re-serialises what the hardware signed. `kid` is
 * the key's RFC 7638 thumbprint, as Microsoft's SKR sidecar makes it.
 */
import { createHash, generateKeyPair, type KeyObject } from "node:crypto";
import { inspect, promisify } from "node:util";
import {
  unwrapReleasedKey,
  type ParseReleaseResponseOptions,
  type UnwrappedReleasedKey,
} from "../core/keywrap/index.js";
import { nonce as nonceSchema } from "../core/messages/fields.js";
import { reportDataFor } from "./evidence/provider.js";

export const RUNTIME_KEY_BITS = [2048, 3072] as const;
export type RuntimeKeyBits = (typeof RUNTIME_KEY_BITS)[number];

/** The public runtime key as it appears in `x-ms-runtime.keys`. */
export interface RuntimePublicJwk {
  readonly kty: "RSA";
  readonly n: string;
  readonly e: string;
  readonly kid: string;
  readonly key_ops: readonly ["encrypt"];
}

/** One serialisation of runtime data and the REPORT_DATA made from it. Reads return copies. */
export interface RuntimeData {
  /** The exact bytes hashed into REPORT_DATA. */
  readonly bytes: Buffer;
  /** `bytes` as unpadded base64url: the attestation request's `runtimeData`. */
  readonly base64url: string;
  /** sha256(`bytes`) followed by 32 zero bytes. */
  readonly reportData: Buffer;
  /** The challenge nonce these bytes carry, if any. */
  readonly nonce?: string;
}

export interface RuntimeKey {
  readonly bits: RuntimeKeyBits;
  readonly kid: string;
  readonly publicJwk: RuntimePublicJwk;
  /** The runtime data made at start (no nonce). */
  readonly runtimeData: RuntimeData;
  /**
   * Fresh runtime data answering a challenge: new bytes and REPORT_DATA, the same key; with
   * `request`, the request binding (core/messages `requestBinding`) as its `"request"` member.
   */
  bindToNonce(nonce: string, request?: string): RuntimeData;
  /**
   * Parses, verifies and unwraps a Key Vault release response wrapped to this key (see
   * core/keywrap `unwrapReleasedKey` for the checks and error codes).
   */
  unwrapReleased(releaseResponse: string, options?: ParseReleaseResponseOptions): UnwrappedReleasedKey;
}

export interface RuntimeKeyOptions {
  /** Modulus size (default 2048). */
  readonly bits?: RuntimeKeyBits;
}

const generateRsaKeyPair = promisify(generateKeyPair);

/** Makes the key pair (off the event loop) and the start-time runtime data. */
export async function createRuntimeKey(options: RuntimeKeyOptions = {}): Promise<RuntimeKey> {
  const bits = options.bits ?? 2048;
  if (!RUNTIME_KEY_BITS.includes(bits)) throw new TypeError("bits must be 2048 or 3072");
  const { publicKey, privateKey } = await generateRsaKeyPair("rsa", {
    modulusLength: bits,
    publicExponent: 0x10001,
  });
  return runtimeKeyFrom(bits, publicKey, privateKey);
}

/** RFC 7638 JWK thumbprint of an RSA public key: sha256 over `{"e","kty","n"}`, base64url. */
export function rsaJwkThumbprint(jwk: { readonly e: string; readonly n: string }): string {
  const canonical = `{"e":${JSON.stringify(jwk.e)},"kty":"RSA","n":${JSON.stringify(jwk.n)}}`;
  return createHash("sha256").update(canonical, "utf8").digest("base64url");
}

function runtimeKeyFrom(bits: RuntimeKeyBits, publicKey: KeyObject, privateKey: KeyObject): RuntimeKey {
  const exported = publicKey.export({ format: "jwk" });
  if (typeof exported.n !== "string" || typeof exported.e !== "string") {
    throw new TypeError("RSA public key did not export as a JWK");
  }
  const kid = rsaJwkThumbprint({ e: exported.e, n: exported.n });
  const publicJwk: RuntimePublicJwk = Object.freeze({
    kty: "RSA",
    n: exported.n,
    e: exported.e,
    kid,
    key_ops: Object.freeze(["encrypt"] as const),
  });

  const runtimeKey: RuntimeKey = {
    bits,
    kid,
    publicJwk,
    runtimeData: runtimeDataFor(publicJwk, undefined),
    bindToNonce(nonce: string, request?: string): RuntimeData {
      if (!nonceSchema.safeParse(nonce).success) {
        throw new TypeError("nonce must be a challenge nonce (16..128 characters of base64url)");
      }
      if (request !== undefined && !/^[A-Za-z0-9_-]{43}$/.test(request)) {
        throw new TypeError("request must be a request binding (43 characters of base64url)");
      }
      return runtimeDataFor(publicJwk, nonce, request);
    },
    unwrapReleased(releaseResponse: string, options?: ParseReleaseResponseOptions): UnwrappedReleasedKey {
      return unwrapReleasedKey(releaseResponse, privateKey, options);
    },
  };
  // What logging or serialising the object shows: the public identity only.
  Object.defineProperty(runtimeKey, "toJSON", { value: () => ({ kid, bits, publicJwk }) });
  Object.defineProperty(runtimeKey, inspect.custom, {
    value: () => `RuntimeKey { kid: '${kid}', bits: ${bits} }`,
  });
  return Object.freeze(runtimeKey);
}

function runtimeDataFor(
  publicJwk: RuntimePublicJwk,
  nonce: string | undefined,
  request?: string,
): RuntimeData {
  const document =
    nonce === undefined
      ? { keys: [publicJwk] }
      : request === undefined
        ? { keys: [publicJwk], nonce }
        : { keys: [publicJwk], nonce, request };
  // Serialised once: every consumer gets copies of these bytes, never a re-serialisation.
  const bytes = Buffer.from(JSON.stringify(document), "utf8");
  const reportData = reportDataFor(bytes);
  const encoded = bytes.toString("base64url");
  return Object.freeze({
    get bytes() {
      return Buffer.from(bytes);
    },
    base64url: encoded,
    get reportData() {
      return Buffer.from(reportData);
    },
    ...(nonce === undefined ? {} : { nonce }),
  });
}
