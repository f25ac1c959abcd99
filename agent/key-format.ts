/**
 * How a held key is handed to the application, over the key API and in key files: `oct` keys
 * as their raw bytes, RSA and EC private keys as PKCS #8 — PEM by default, a private JWK when
 * JSON is asked for. One place decides the formats, so the API and the files always agree.
 */
import { createPrivateKey, type JsonWebKey } from "node:crypto";
import type { HeldKeyVersion } from "./held-keys.js";

export function isOctKey(key: HeldKeyVersion): boolean {
  return key.kty === "oct" || key.kty === "oct-HSM";
}

/** PKCS #8 DER in PEM armour ("PRIVATE KEY"), 64 characters a line (RFC 7468). */
export function pkcs8Pem(der: Buffer): string {
  const lines = der.toString("base64").match(/.{1,64}/g) ?? [];
  return `-----BEGIN PRIVATE KEY-----\n${lines.join("\n")}\n-----END PRIVATE KEY-----\n`;
}

/**
 * The bytes an application reads: raw for `oct`, PKCS #8 PEM for RSA and EC. Always a copy of
 * its own (never the store's Buffer, which a revocation may zero during a slow write): the
 * caller zeroes it when done. The PEM text it is made from is a string and cannot be wiped.
 */
export function keyFileBytes(key: HeldKeyVersion): Buffer {
  if (!isOctKey(key)) return Buffer.from(pkcs8Pem(key.material), "ascii");
  const copy = Buffer.alloc(key.material.length);
  copy.set(key.material);
  return copy;
}

export function keyContentType(key: HeldKeyVersion): string {
  return isOctKey(key) ? "application/octet-stream" : "application/x-pem-file";
}

/**
 * The JSON form: `key` (base64url) for `oct`, `jwk` (private JWK) for RSA and EC. Strings, which
 * cannot be wiped: they stay in the heap until the garbage collector reuses the memory.
 */
export function keyJson(key: HeldKeyVersion): Record<string, unknown> {
  const head = { name: key.name, version: key.version, kty: key.kty };
  if (isOctKey(key)) return { ...head, key: key.material.toString("base64url") };
  const jwk: JsonWebKey = createPrivateKey({ key: key.material, format: "der", type: "pkcs8" }).export({
    format: "jwk",
  });
  return { ...head, jwk };
}
