/**
 * Reads an MAA `/certs` document: the JSON Web Key Set in which Microsoft Azure Attestation
 * publishes its token-signing keys. MAA's entries carry only `kid`, `kty` and `x5c` (no `n`/`e`),
 * so the verification key of each entry is the public key of its first certificate, `x5c[0]`
 * (RFC 7517 §4.7). The document arrives from the network or a file and is parsed from `unknown`
 * with size limits before anything is built from it.
 */
import { X509Certificate, type KeyObject } from "node:crypto";
import { z } from "zod";
import { ShieldError } from "../errors.js";
import { derToPem, readablePublicKey } from "../x509/certificate.js";

/** One usable signing key from a `/certs` document. */
export interface MaaSigningKey {
  /** The public key of `x5c[0]`, imported once and reused for every verification. */
  readonly key: KeyObject;
  readonly certificate: X509Certificate;
}

export interface ParseCertsDocumentOptions {
  /** Upper bound for a document given as text or bytes (default 256 KiB). */
  readonly maxBytes?: number;
}

/** Real MAA documents hold two or three keys of about 10 KB each. */
export const DEFAULT_CERTS_DOCUMENT_MAX_BYTES = 256 * 1024;

// Limits on an already-parsed document, so a huge object cannot pass by skipping the byte check.
const MAX_KEYS = 64;
const MAX_CHAIN_LENGTH = 10;
const MAX_CERT_BASE64_CHARS = 64 * 1024;
const MAX_KID_CHARS = 256;
// x5c entries are standard base64 of DER (RFC 7517 §4.7), not base64url.
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

const CertsDocumentSchema = z.looseObject({
  keys: z
    .array(
      z.looseObject({
        kid: z.string().min(1).max(MAX_KID_CHARS),
        kty: z.string().min(1).max(16),
        x5c: z.array(z.string().min(1).max(MAX_CERT_BASE64_CHARS).regex(BASE64)).min(1).max(MAX_CHAIN_LENGTH),
      }),
    )
    .max(MAX_KEYS),
});

/**
 * Parses a `/certs` document (already-parsed JSON, or its text/bytes) into a map from `kid` to
 * the key of that entry. Entries whose `kty` is not `RSA` are skipped: only RSA keys can verify
 * RS256, the one algorithm MAA tokens are accepted with. Throws ERR_JWKS_MALFORMED when the
 * document is oversized, not JSON, not of the expected shape, repeats a `kid`, or has an RSA
 * entry whose `x5c[0]` is not an RSA certificate.
 */
export function parseCertsDocument(
  document: unknown,
  options: ParseCertsDocumentOptions = {},
): ReadonlyMap<string, MaaSigningKey> {
  const maxBytes = options.maxBytes ?? DEFAULT_CERTS_DOCUMENT_MAX_BYTES;
  if (!Number.isSafeInteger(maxBytes) || maxBytes <= 0)
    throw new TypeError("maxBytes must be a positive integer");
  const parsed = CertsDocumentSchema.safeParse(decodeDocument(document, maxBytes));
  if (!parsed.success) {
    const fields = [...new Set(parsed.error.issues.map((issue) => issue.path.join(".") || "(document)"))];
    throw new ShieldError(
      "ERR_JWKS_MALFORMED",
      `certs document does not match the expected shape: ${fields.join(", ")}`,
    );
  }
  const keys = new Map<string, MaaSigningKey>();
  for (const entry of parsed.data.keys) {
    if (keys.has(entry.kid)) throw new ShieldError("ERR_JWKS_MALFORMED", "certs document repeats a kid");
    if (entry.kty !== "RSA") continue;
    keys.set(entry.kid, signingKeyOf(entry.x5c[0]!));
  }
  return keys;
}

function decodeDocument(document: unknown, maxBytes: number): unknown {
  if (typeof document !== "string" && !(document instanceof Uint8Array)) return document;
  const size = typeof document === "string" ? Buffer.byteLength(document, "utf8") : document.byteLength;
  if (size > maxBytes) {
    throw new ShieldError(
      "ERR_JWKS_MALFORMED",
      `certs document is too large (${size} bytes, limit ${maxBytes})`,
    );
  }
  const text = typeof document === "string" ? document : Buffer.from(document).toString("utf8");
  try {
    return JSON.parse(text) as unknown;
  } catch (cause) {
    throw new ShieldError("ERR_JWKS_MALFORMED", "certs document is not JSON", { cause });
  }
}

function signingKeyOf(certificateBase64: string): MaaSigningKey {
  const der = Buffer.from(certificateBase64, "base64");
  let certificate: X509Certificate;
  try {
    // Node reads its input as PEM first and only then as DER. MAA's signing certificates embed
    // an SGX quote whose collateral holds PEM certificates, so raw DER would be read as the first
    // embedded Intel certificate. Handing Node our own PEM block makes it read this one.
    certificate = new X509Certificate(derToPem(der));
  } catch (cause) {
    throw new ShieldError(
      "ERR_JWKS_MALFORMED",
      "certs document holds an x5c entry that is not a certificate",
      {
        cause,
      },
    );
  }
  if (!certificate.raw.equals(der)) {
    throw new ShieldError(
      "ERR_JWKS_MALFORMED",
      "certs document holds an x5c entry that is not exactly one certificate",
    );
  }
  const key = readablePublicKey(certificate);
  if (key === undefined) {
    throw new ShieldError(
      "ERR_JWKS_MALFORMED",
      "certs document holds a certificate whose key does not decode",
    );
  }
  if (key.asymmetricKeyType !== "rsa") {
    throw new ShieldError(
      "ERR_JWKS_MALFORMED",
      "certs document has an RSA entry whose certificate key is not RSA",
    );
  }
  return { key, certificate };
}
