/**
 * Validation of Microsoft Azure Attestation tokens: the step that turns an MAA JWT into claims
 * the rest of the system may trust. Keys come only from the configured resolver (never from the
 * token's own `jku`/`x5u`/`jwk`/`x5c`), `RS256` is the only algorithm, the signature is checked
 * before the payload is read, and the token is then tied to the moment (`exp`/`nbf`), to the
 * challenge (`nonce`) and to the enclave's runtime data (report data and `x-ms-runtime` keys).
 * This sits on the release path for every key, so the per-call work beyond the signature check
 * is kept to a few string comparisons and, with runtime data, one hash and one small JSON parse.
 */
import { isUtf8 } from "node:buffer";
import { hash } from "node:crypto";
import type { KeyObject } from "node:crypto";
import { compactVerify, errors as joseErrors } from "jose";
import { ShieldError, type Violation } from "../errors.js";
import type { SigningKeyResolver } from "./keys.js";

/** The attestation types a caller can require; MAA's `x-ms-attestation-type` values. */
export type MaaAttestationType = "sevsnpvm" | "sgx";

export interface MaaTokenValidationOptions {
  readonly keys: SigningKeyResolver;
  /** The pinned issuer: `iss` must equal it (one trailing slash ignored on either side). */
  readonly issuer?: string;
  /** The moment the token is judged at. */
  readonly at: Date;
  /** Tolerance for `exp`/`nbf`, 0..300 seconds (default 60). */
  readonly clockSkewSeconds?: number;
  /** The challenge nonce the token must echo (MAA may echo it as a string or a number). */
  readonly expectedNonce?: string;
  /** The exact runtime-data bytes whose SHA-256 the enclave put in its report data. */
  readonly runtimeData?: Uint8Array;
  /** Upper bound on the token's length (default 64 KiB). */
  readonly maxTokenBytes?: number;
  readonly requireAttestationType?: MaaAttestationType;
}

export interface MaaTokenHeader {
  readonly alg: "RS256";
  readonly kid: string;
  readonly typ?: string;
  /** Informational only: never used to find a key. */
  readonly jku?: string;
  readonly [parameter: string]: unknown;
}

export interface MaaTokenClaims {
  readonly iss: string;
  readonly exp: number;
  readonly iat?: number;
  readonly nbf?: number;
  readonly nonce?: string | number;
  readonly [claim: string]: unknown;
}

export interface ValidatedMaaToken {
  readonly header: MaaTokenHeader;
  /** The whole verified payload. */
  readonly claims: MaaTokenClaims;
  /**
   * The TEE's attestation type: `x-ms-isolation-tee.x-ms-attestation-type` for CVM guest tokens
   * (whose top-level type is `azurevm`), otherwise `x-ms-attestation-type`.
   */
  readonly attestationType: string;
  /**
   * SHA-256 (hex) of the token string: what logs carry instead of the token. Computed when first
   * read (an accessor: read it by name; object spread does not copy it, `JSON.stringify` does).
   */
  readonly tokenHash: string;
}

export const DEFAULT_MAX_TOKEN_BYTES = 64 * 1024;
export const DEFAULT_CLOCK_SKEW_SECONDS = 60;
const MAX_CLOCK_SKEW_SECONDS = 300;
const MAX_KID_CHARS = 256;

type JsonObject = Record<string, unknown>;

/** SHA-256 (hex) of a token string, for logging a token, valid or not, without logging it. */
export function maaTokenHash(token: string): string {
  return hash("sha256", token, "hex");
}

/**
 * Validates an MAA token and returns its verified header and claims. Checks, in this order:
 *
 * 1. size, compact-JWS shape (three parts; header and signature base64url), header a JSON object
 *    (ERR_TOKEN_MALFORMED);
 * 2. header: `alg` is exactly `RS256` (ERR_TOKEN_ALG); `typ`, if present, is `JWT`, and no `crit`
 *    or `b64` (ERR_TOKEN_MALFORMED); `kid` is a string (ERR_TOKEN_KID). `jku`, `x5u`, `jwk` and
 *    `x5c` are ignored;
 * 3. the key for `kid` comes from the configured resolver (ERR_TOKEN_KID, ERR_JWKS_UNAVAILABLE);
 * 4. RS256 signature with that key (ERR_TOKEN_SIGNATURE); only then is the payload read, and it
 *    must be a JSON object (ERR_TOKEN_MALFORMED);
 * 5. `iss` is a string and equals the pinned issuer when one is given (ERR_TOKEN_ISSUER);
 * 6. `exp` (required) and `nbf` are numbers (ERR_TOKEN_CLAIMS) and `at` lies within them, give or
 *    take the clock skew (ERR_TOKEN_EXPIRED, ERR_TOKEN_NOT_YET_VALID);
 * 7. `nonce` equals the expected nonce, compared as strings, when one is expected (ERR_TOKEN_NONCE);
 * 8. when runtime data is given: the report-data claim is SHA-256 of it (`x-ms-sevsnpvm-reportdata`
 *    = hash then 32 zero bytes; `x-ms-sgx-report-data` starts with the hash), and when the token
 *    has `x-ms-runtime` (MAA read the runtime data as JSON), the runtime data is a UTF-8 JSON
 *    object (no byte-order mark, no other top-level type) whose `keys` equal the token's
 *    (ERR_TOKEN_RUNTIME_DATA). Binary runtime data yields no `x-ms-runtime`, so no key to compare;
 * 9. the attestation type claim is present and equals `requireAttestationType` when given
 *    (ERR_TOKEN_CLAIMS).
 */
export async function validateMaaToken(
  token: string,
  options: MaaTokenValidationOptions,
): Promise<ValidatedMaaToken> {
  if (typeof token !== "string") throw new TypeError("token must be a string");
  const settings = readOptions(options);
  const header = checkedHeaderOf(token, settings.maxTokenBytes); // 1, 2
  const key = await options.keys.getKey(header.kid); // 3
  const claims = await verifySignature(token, key); // 4
  checkIssuer(claims, options.issuer); // 5
  checkLifetime(claims, options.at, settings.clockSkewSeconds); // 6
  if (options.expectedNonce !== undefined) checkNonce(claims, options.expectedNonce); // 7
  const teeClaims = teeClaimsOf(claims);
  if (options.runtimeData !== undefined) checkRuntimeData(teeClaims, options.runtimeData); // 8
  const attestationType = checkAttestationType(teeClaims, options.requireAttestationType); // 9
  // Checks 5 and 6 established the types of `iss` and `exp`.
  return new ValidatedToken(header, claims as MaaTokenClaims, attestationType, token);
}

/**
 * The result. `tokenHash` is computed on first read: hashing the token costs about as much as
 * all the claim checks together, and not every caller logs it. The token itself is kept in a
 * private field, which neither `JSON.stringify` nor `util.inspect` shows.
 */
class ValidatedToken implements ValidatedMaaToken {
  readonly #token: string;
  #tokenHash: string | undefined;

  constructor(
    readonly header: MaaTokenHeader,
    readonly claims: MaaTokenClaims,
    readonly attestationType: string,
    token: string,
  ) {
    this.#token = token;
  }

  get tokenHash(): string {
    return (this.#tokenHash ??= maaTokenHash(this.#token));
  }

  toJSON(): ValidatedMaaToken {
    return {
      header: this.header,
      claims: this.claims,
      attestationType: this.attestationType,
      tokenHash: this.tokenHash,
    };
  }
}

interface Settings {
  readonly maxTokenBytes: number;
  readonly clockSkewSeconds: number;
}

function readOptions(options: MaaTokenValidationOptions): Settings {
  if (typeof options !== "object" || options === null) throw new TypeError("options must be an object");
  if (typeof options.keys?.getKey !== "function")
    throw new TypeError("options.keys must be a SigningKeyResolver");
  if (!(options.at instanceof Date) || Number.isNaN(options.at.getTime())) {
    throw new TypeError("options.at must be a valid Date");
  }
  if (options.issuer !== undefined && typeof options.issuer !== "string") {
    throw new TypeError("options.issuer must be a string");
  }
  if (options.expectedNonce !== undefined && typeof options.expectedNonce !== "string") {
    throw new TypeError("options.expectedNonce must be a string");
  }
  if (options.runtimeData !== undefined && !(options.runtimeData instanceof Uint8Array)) {
    throw new TypeError("options.runtimeData must be a Uint8Array");
  }
  const clockSkewSeconds = options.clockSkewSeconds ?? DEFAULT_CLOCK_SKEW_SECONDS;
  if (
    typeof clockSkewSeconds !== "number" ||
    !Number.isFinite(clockSkewSeconds) ||
    clockSkewSeconds < 0 ||
    clockSkewSeconds > MAX_CLOCK_SKEW_SECONDS
  ) {
    throw new TypeError(`options.clockSkewSeconds must be between 0 and ${MAX_CLOCK_SKEW_SECONDS}`);
  }
  const maxTokenBytes = options.maxTokenBytes ?? DEFAULT_MAX_TOKEN_BYTES;
  if (!Number.isSafeInteger(maxTokenBytes) || maxTokenBytes <= 0) {
    throw new TypeError("options.maxTokenBytes must be a positive integer");
  }
  return { maxTokenBytes, clockSkewSeconds };
}

const BASE64URL = /^[A-Za-z0-9_-]+$/;

/**
 * Check 1. The header and signature parts are checked for base64url here; the payload part only
 * for presence, since the signature covers its exact characters and the JWS verifier rejects
 * non-ASCII or undecodable payloads (ERR_TOKEN_MALFORMED) before anything reads it.
 */
function checkTokenShape(token: string, maxTokenBytes: number): string {
  if (token.length > maxTokenBytes) {
    throw new ShieldError(
      "ERR_TOKEN_MALFORMED",
      `token is too large (${token.length} characters, limit ${maxTokenBytes})`,
    );
  }
  const first = token.indexOf(".");
  const second = first < 0 ? -1 : token.indexOf(".", first + 1);
  // The signature part may be empty (as in `alg: none`): check 2 or 4 rejects such a token.
  if (first <= 0 || second <= first + 1 || token.indexOf(".", second + 1) >= 0) {
    throw new ShieldError("ERR_TOKEN_MALFORMED", "token is not a compact JWS of three parts");
  }
  const encodedHeader = token.slice(0, first);
  const signature = token.slice(second + 1);
  // A base64url text of length 4n+1 encodes no whole number of bytes.
  if (
    !BASE64URL.test(encodedHeader) ||
    (signature.length > 0 && !BASE64URL.test(signature)) ||
    first % 4 === 1 ||
    signature.length % 4 === 1 ||
    (second - first - 1) % 4 === 1
  ) {
    throw new ShieldError("ERR_TOKEN_MALFORMED", "token part is not valid base64url");
  }
  return encodedHeader;
}

function decodeTokenHeader(encodedHeader: string): JsonObject {
  let header: unknown;
  try {
    header = JSON.parse(utf8.decode(Buffer.from(encodedHeader, "base64url")));
  } catch (cause) {
    throw new ShieldError("ERR_TOKEN_MALFORMED", "token header is not UTF-8 JSON", { cause });
  }
  if (!isObject(header)) throw new ShieldError("ERR_TOKEN_MALFORMED", "token header is not a JSON object");
  return header;
}

/**
 * Checks 1 and 2. An issuer signs every token with one of a few keys, so the encoded header
 * repeats from token to token: a header that passed check 2 is remembered by its exact text
 * (a bounded cache of frozen results) instead of being decoded again for each token.
 */
const checkedHeaders = new Map<string, MaaTokenHeader>();
const CHECKED_HEADERS_LIMIT = 32;

function checkedHeaderOf(token: string, maxTokenBytes: number): MaaTokenHeader {
  const encodedHeader = checkTokenShape(token, maxTokenBytes);
  const known = checkedHeaders.get(encodedHeader);
  if (known !== undefined) return known;
  const header = Object.freeze(checkHeader(decodeTokenHeader(encodedHeader)));
  if (encodedHeader.length <= 1024) {
    if (checkedHeaders.size >= CHECKED_HEADERS_LIMIT) checkedHeaders.clear();
    checkedHeaders.set(encodedHeader, header);
  }
  return header;
}

/** Check 2. */
function checkHeader(header: JsonObject): MaaTokenHeader {
  const { alg, typ, kid } = header;
  if (alg !== "RS256") {
    throw new ShieldError("ERR_TOKEN_ALG", "token alg is not allowed", {
      violations: [{ field: "alg", expected: "RS256", actual: describeHeaderValue(alg) }],
    });
  }
  if (typ !== undefined && typ !== "JWT") {
    throw new ShieldError("ERR_TOKEN_MALFORMED", "token typ is not JWT", {
      violations: [{ field: "typ", expected: "JWT", actual: describeHeaderValue(typ) }],
    });
  }
  // MAA never sends them; `b64: false` would change what the signature covers.
  if (header.crit !== undefined || header.b64 !== undefined) {
    throw new ShieldError("ERR_TOKEN_MALFORMED", "token header has crit or b64 parameters");
  }
  if (typeof kid !== "string" || kid.length === 0 || kid.length > MAX_KID_CHARS) {
    throw new ShieldError("ERR_TOKEN_KID", "token kid is missing or not a short string");
  }
  return header as MaaTokenHeader;
}

const VERIFY_OPTIONS = { algorithms: ["RS256"] };

/** Check 4: the signature, then the payload as a JSON object. */
function verifySignature(token: string, key: KeyObject): Promise<JsonObject> {
  // A plain promise chain rather than another async layer: this runs once per key release.
  return compactVerify(token, key, VERIFY_OPTIONS).then(
    ({ payload }) => parsePayload(payload),
    (cause: unknown) => {
      throw signatureError(cause);
    },
  );
}

function parsePayload(payload: Uint8Array): JsonObject {
  let claims: unknown;
  try {
    claims = JSON.parse(utf8.decode(payload));
  } catch (cause) {
    throw new ShieldError("ERR_TOKEN_MALFORMED", "token payload is not UTF-8 JSON", { cause });
  }
  if (!isObject(claims)) throw new ShieldError("ERR_TOKEN_MALFORMED", "token payload is not a JSON object");
  return claims;
}

// Not `fatal`: the fatal decoder takes a slow path in Node 20, and these bytes are either signed
// by the issuer or only looked at for their JSON shape.
const utf8 = new TextDecoder("utf-8");

function signatureError(cause: unknown): ShieldError {
  if (cause instanceof joseErrors.JOSEError) {
    switch (cause.code) {
      case joseErrors.JWSSignatureVerificationFailed.code:
        return new ShieldError("ERR_TOKEN_SIGNATURE", "token signature does not verify", { cause });
      case joseErrors.JOSEAlgNotAllowed.code:
        return new ShieldError("ERR_TOKEN_ALG", "token alg is not allowed", { cause });
      case joseErrors.JWSInvalid.code:
      case joseErrors.JOSENotSupported.code:
        return new ShieldError("ERR_TOKEN_MALFORMED", "token is not a valid JWS", { cause });
    }
  }
  // jose raises TypeError when the key cannot do RS256 (not RSA, or under 2048 bits).
  return new ShieldError(
    "ERR_TOKEN_SIGNATURE",
    "token signature could not be verified with the issuer's key",
    {
      cause,
    },
  );
}

/** Check 5. */
function checkIssuer(
  claims: JsonObject,
  pinned: string | undefined,
): asserts claims is JsonObject & { iss: string } {
  const { iss } = claims;
  if (typeof iss !== "string") {
    throw new ShieldError("ERR_TOKEN_ISSUER", "token iss is missing", {
      violations: [{ field: "iss", expected: pinned ?? "a string", actual: describe(iss) }],
    });
  }
  if (pinned !== undefined && withoutTrailingSlash(iss) !== withoutTrailingSlash(pinned)) {
    throw new ShieldError("ERR_TOKEN_ISSUER", "token iss is not the pinned issuer", {
      violations: [{ field: "iss", expected: pinned, actual: iss }],
    });
  }
}

function withoutTrailingSlash(url: string): string {
  return url.endsWith("/") ? url.slice(0, -1) : url;
}

/** Check 6. */
function checkLifetime(claims: JsonObject, at: Date, skewSeconds: number): void {
  const { exp, nbf, iat } = claims;
  const malformed: Violation[] = [];
  if (!isNumericDate(exp)) malformed.push({ field: "exp", expected: "a NumericDate", actual: describe(exp) });
  if (nbf !== undefined && !isNumericDate(nbf)) {
    malformed.push({ field: "nbf", expected: "a NumericDate", actual: describe(nbf) });
  }
  if (iat !== undefined && !isNumericDate(iat)) {
    malformed.push({ field: "iat", expected: "a NumericDate", actual: describe(iat) });
  }
  if (malformed.length > 0) {
    throw new ShieldError("ERR_TOKEN_CLAIMS", "token time claims are missing or not numbers", {
      violations: malformed,
    });
  }
  const now = at.getTime() / 1000;
  // RFC 7519 §4.1.4: valid only before exp; §4.1.5: not before nbf. Skew widens both.
  if (now >= (exp as number) + skewSeconds) {
    throw new ShieldError("ERR_TOKEN_EXPIRED", "token has expired", {
      violations: [
        { field: "exp", expected: `after ${at.toISOString()}`, actual: secondsToIso(exp as number) },
      ],
    });
  }
  if (nbf !== undefined && now < (nbf as number) - skewSeconds) {
    throw new ShieldError("ERR_TOKEN_NOT_YET_VALID", "token is not yet valid", {
      violations: [
        { field: "nbf", expected: `not after ${at.toISOString()}`, actual: secondsToIso(nbf as number) },
      ],
    });
  }
}

function isNumericDate(value: unknown): value is number {
  return typeof value === "number" && Number.isFinite(value) && value >= 0;
}

function secondsToIso(seconds: number): string {
  const date = new Date(seconds * 1000);
  return Number.isNaN(date.getTime()) ? String(seconds) : date.toISOString();
}

/** Check 7. MAA echoes the request's nonce as given; the SKR sidecar sends a JSON number. */
function checkNonce(claims: JsonObject, expected: string): void {
  const { nonce } = claims;
  const actual =
    typeof nonce === "string"
      ? nonce
      : typeof nonce === "number" && Number.isSafeInteger(nonce)
        ? String(nonce)
        : undefined;
  if (actual !== expected) {
    throw new ShieldError("ERR_TOKEN_NONCE", "token nonce does not answer the challenge", {
      violations: [{ field: "nonce", expected, actual: describe(nonce) }],
    });
  }
}

/**
 * The object holding the TEE claims: CVM guest tokens nest them under `x-ms-isolation-tee`;
 * container tokens from `/attest/SevSnpVm` and SGX tokens have them at the top level.
 */
function teeClaimsOf(claims: JsonObject): JsonObject {
  const nested = claims["x-ms-isolation-tee"];
  return isObject(nested) ? nested : claims;
}

const SEVSNP_REPORT_DATA = "x-ms-sevsnpvm-reportdata";
const SGX_REPORT_DATA = "x-ms-sgx-report-data";
const HEX_64_BYTES = /^[0-9a-fA-F]{128}$/;
const ZERO_32_BYTES_HEX = "0".repeat(64);

/** Check 8. */
function checkRuntimeData(teeClaims: JsonObject, runtimeData: Uint8Array): void {
  const digest = hash("sha256", runtimeData, "hex");
  const violations: Violation[] = [];
  const snp = teeClaims[SEVSNP_REPORT_DATA];
  const sgx = teeClaims[SGX_REPORT_DATA];
  if (snp === undefined && sgx === undefined) {
    violations.push({
      field: "reportData",
      expected: `${SEVSNP_REPORT_DATA} or ${SGX_REPORT_DATA}`,
      actual: "absent",
    });
  }
  // SEV-SNP REPORT_DATA is 64 bytes: the runtime-data hash, then 32 zero bytes.
  if (snp !== undefined && !(startsWithDigest(snp, digest) && snp.endsWith(ZERO_32_BYTES_HEX))) {
    violations.push({
      field: SEVSNP_REPORT_DATA,
      expected: digest + ZERO_32_BYTES_HEX,
      actual: describe(snp),
    });
  }
  // SGX: MAA checks only the first 32 bytes of the 64-byte report data.
  if (sgx !== undefined && !(startsWithDigest(sgx, digest) && HEX_64_BYTES.test(sgx))) {
    violations.push({ field: SGX_REPORT_DATA, expected: `${digest} then 32 bytes`, actual: describe(sgx) });
  }
  const tokenRuntime = teeClaims["x-ms-runtime"];
  if (tokenRuntime !== undefined) {
    // The token binds a key: it is always compared. Runtime data that does not read as a JSON
    // object here is refused, never taken as binary, or the comparison would be skipped.
    const runtime = parseRuntimeJson(runtimeData);
    if ("problem" in runtime) {
      violations.push({ field: "runtimeData", expected: "a UTF-8 JSON object", actual: runtime.problem });
    } else {
      const tokenKeys = isObject(tokenRuntime) ? tokenRuntime.keys : undefined;
      if (!jsonEqual(tokenKeys, runtime.json.keys)) {
        violations.push({
          field: "x-ms-runtime.keys",
          expected: describeKeys(runtime.json.keys),
          actual: describeKeys(tokenKeys),
        });
      }
    }
  }
  if (violations.length > 0) {
    throw new ShieldError("ERR_TOKEN_RUNTIME_DATA", "token is not bound to the runtime data", { violations });
  }
}

/** A 64-byte hex report-data claim whose first 32 bytes are `digest` (lower-case hex), in any case. */
function startsWithDigest(reportData: unknown, digest: string): reportData is string {
  return (
    typeof reportData === "string" &&
    reportData.length === 128 &&
    (reportData.startsWith(digest) || reportData.slice(0, 64).toLowerCase() === digest)
  );
}

/**
 * The runtime data as a JSON object, or why it is not one. A byte-order mark is refused rather
 * than skipped (RFC 8259 §8.1), and so is invalid UTF-8, which a lenient decoder would silently
 * replace.
 */
function parseRuntimeJson(runtimeData: Uint8Array): { json: JsonObject } | { problem: string } {
  if (runtimeData[0] === 0xef && runtimeData[1] === 0xbb && runtimeData[2] === 0xbf) {
    return { problem: "starts with a UTF-8 byte-order mark" };
  }
  if (!isUtf8(runtimeData)) return { problem: "not valid UTF-8" };
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(runtimeData));
  } catch {
    return { problem: "not JSON" };
  }
  if (isObject(value)) return { json: value };
  return { problem: `JSON ${value === null ? "null" : Array.isArray(value) ? "array" : typeof value}` };
}

/** Structural JSON equality; member order does not matter (MAA re-serialises `x-ms-runtime`). */
function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!jsonEqual(a[i], b[i])) return false;
    return true;
  }
  if (Array.isArray(b)) return false;
  const left = a as JsonObject;
  const right = b as JsonObject;
  let count = 0;
  for (const name in left) {
    if (!Object.hasOwn(left, name)) continue;
    if (!Object.hasOwn(right, name) || !jsonEqual(left[name], right[name])) return false;
    count += 1;
  }
  return count === Object.keys(right).length;
}

/** Names runtime keys by `kid` only: public keys are not secret, but they are long. */
function describeKeys(keys: unknown): string {
  if (!Array.isArray(keys)) return keys === undefined ? "absent" : `a ${typeof keys}`;
  const kids = keys.map((key) => (isObject(key) && typeof key.kid === "string" ? key.kid : "?"));
  return `${keys.length} key(s) [${kids.join(", ")}]`;
}

/** Check 9. */
function checkAttestationType(teeClaims: JsonObject, required: MaaAttestationType | undefined): string {
  const type = teeClaims["x-ms-attestation-type"];
  if (typeof type !== "string" || type.length === 0) {
    throw new ShieldError("ERR_TOKEN_CLAIMS", "token has no attestation type", {
      violations: [
        { field: "x-ms-attestation-type", expected: required ?? "a string", actual: describe(type) },
      ],
    });
  }
  if (required !== undefined && type !== required) {
    throw new ShieldError("ERR_TOKEN_CLAIMS", "token attestation type is not the required one", {
      violations: [{ field: "x-ms-attestation-type", expected: required, actual: type }],
    });
  }
  return type;
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** A short description of an untrusted value for a violation: short strings and numbers as-is. */
function describe(value: unknown): string {
  if (value === undefined) return "absent";
  if (typeof value === "string")
    return value.length <= 160 ? value : `a string of ${value.length} characters`;
  if (typeof value === "number" || typeof value === "boolean" || value === null) return String(value);
  return Array.isArray(value) ? "an array" : "an object";
}

/** Header values are unverified: only short, plain names are echoed back. */
function describeHeaderValue(value: unknown): string {
  if (typeof value !== "string") return describe(value);
  return /^[A-Za-z0-9._/+-]{1,32}$/.test(value) ? value : `a string of ${value.length} characters`;
}
