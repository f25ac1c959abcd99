/**
 * Field schemas shared by the version-1 messages: identifiers, key names, base64url blobs,
 * timestamps and measurements. Every schema carries one `expected` description as its error
 * text, so a schema failure can say what shape a field should have without repeating the value
 * it got (which may be evidence or a token). Identifiers use one safe charset because they end
 * up as Service Bus session ids (at most 128 characters) and Table Storage keys (which forbid
 * `/`, `\`, `#`, `?` and control characters).
 */
import { z } from "zod";

/** Agent ids, request ids, workload names, deployment ids, event ids. */
export const IDENTIFIER_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
/** Key Vault and Managed HSM object names. */
export const KEY_NAME_PATTERN = /^[0-9a-zA-Z-]{1,127}$/;
/** Key Vault key versions (32 hex characters in Azure; kept to a safe alphanumeric range). */
export const KEY_VERSION_PATTERN = /^[0-9a-zA-Z]{1,64}$/;
/** Unpadded base64url (RFC 4648 §5), the encoding JOSE and MAA use. */
const BASE64URL = /^[A-Za-z0-9_-]*$/;
/** base64url that may carry `=` padding, as Go's `base64.URLEncoding` writes it. */
const BASE64URL_PADDED = /^[A-Za-z0-9_-]+={0,2}$/;
/** A PEM bundle: armour lines and base64 only. */
const PEM = /^[A-Za-z0-9+/=\s-]+$/;
const HEX_256 = /^[0-9a-f]{64}$/;
const ERROR_CODE = /^ERR_[A-Z0-9_]{1,64}$/;
/** Human-readable text: no control characters. */
// eslint-disable-next-line no-control-regex -- excluding control characters is the point
const PLAIN_TEXT = /^[^\u0000-\u001f\u007f]*$/;

export const MAX_KEYS_PER_REQUEST = 32;
export const MAX_MEASUREMENTS_PER_UPDATE = 16;
export const MAX_DENIAL_VIOLATIONS = 64;
/** One year: a longer grace period is a mistake, not a rollout. */
export const MAX_GRACE_SECONDS = 365 * 24 * 3600;

export const identifier = (what: string) =>
  z
    .string({ error: `${what}: 1..128 characters of A-Z a-z 0-9 . _ : - starting with a letter or digit` })
    .max(128)
    .regex(IDENTIFIER_PATTERN);

export const agentId = identifier("agent id");
export const requestId = identifier("request id");

export const keyName = z
  .string({ error: "Key Vault key name: 1..127 characters of A-Z a-z 0-9 -" })
  .max(127)
  .regex(KEY_NAME_PATTERN);

export const keyVersion = z
  .string({ error: "Key Vault key version: 1..64 characters of A-Z a-z 0-9" })
  .max(64)
  .regex(KEY_VERSION_PATTERN);

/** A list of distinct key names, 1..32 of them: asking twice for one key would release it twice. */
export const keyNames = z
  .array(keyName, { error: `array of 1..${MAX_KEYS_PER_REQUEST} Key Vault key names` })
  .min(1)
  .max(MAX_KEYS_PER_REQUEST)
  .superRefine((names, ctx) => {
    const seen = new Set<string>();
    names.forEach((name, index) => {
      if (seen.has(name))
        ctx.addIssue({ code: "custom", path: [index], message: "a key name not listed before" });
      seen.add(name);
    });
  });

/** Unpadded base64url with a length bound; a remainder of one character can never decode. */
export const base64url = (what: string, maxChars: number, minChars = 1) =>
  z
    .string({ error: `${what}: unpadded base64url, ${minChars}..${maxChars} characters` })
    .min(minChars)
    .max(maxChars)
    .regex(BASE64URL)
    .refine((value) => value.length % 4 !== 1);

export const paddedBase64url = (what: string, maxChars: number) =>
  z
    .string({ error: `${what}: base64url (padding allowed), 1..${maxChars} characters` })
    .max(maxChars)
    .regex(BASE64URL_PADDED)
    .refine((value) => value.replace(/=+$/, "").length % 4 !== 1);

export const pemCertificates = (what: string, maxChars: number) =>
  z
    .string({ error: `${what}: PEM certificates, at most ${maxChars} characters` })
    .max(maxChars)
    .regex(PEM)
    .refine((value) => value.includes("-----BEGIN CERTIFICATE-----"));

/** A challenge nonce as the functions issue it: 12..96 random bytes, base64url. */
export const nonce = z
  .string({ error: "nonce: 16..128 characters of unpadded base64url" })
  .min(16)
  .max(128)
  .regex(BASE64URL);

const ISO_DATE_TIME =
  /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d{1,9})?(?:Z|[+-](\d{2}):(\d{2}))$/;

/**
 * True for an RFC 3339 / ISO 8601 date-time with seconds and an explicit zone whose fields
 * name a real instant (no February 30, no hour 24). `Date.parse` alone accepts both.
 */
export function isIsoDateTime(value: string): boolean {
  const m = ISO_DATE_TIME.exec(value);
  if (m === null) return false;
  const field = (index: number): number => Number(m[index] ?? "0");
  const [year, month, day, hour, minute, second] = [
    field(1),
    field(2),
    field(3),
    field(4),
    field(5),
    field(6),
  ];
  if (field(7) > 23 || field(8) > 59) return false;
  const at = new Date(Date.UTC(year, month - 1, day, hour, minute, second));
  return (
    at.getUTCFullYear() === year &&
    at.getUTCMonth() === month - 1 &&
    at.getUTCDate() === day &&
    at.getUTCHours() === hour &&
    at.getUTCMinutes() === minute &&
    at.getUTCSeconds() === second
  );
}

/** An ISO 8601 date-time with seconds and an explicit zone (`Z` or an offset). */
export const timestamp = (what: string) =>
  z
    .string({ error: `${what}: ISO 8601 date-time with seconds and zone, e.g. 2026-01-01T00:00:00Z` })
    .max(40)
    .refine(isIsoDateTime);

export const hex256 = (what: string) =>
  z
    .string({ error: `${what}: 64 lowercase hex characters` })
    .length(64)
    .regex(HEX_256);

export const teeKind = z.enum(["sevsnp", "sgx"], { error: "tee: one of sevsnp, sgx" });
export type TeeKind = z.infer<typeof teeKind>;

/**
 * What a release policy pins for a workload: for SEV-SNP confidential containers the
 * `hostData` (sha256 of the container policy); for SGX the enclave and/or its signer.
 */
export const measurement = z.discriminatedUnion(
  "tee",
  [
    z.strictObject({ tee: z.literal("sevsnp"), hostData: hex256("hostData") }, { error: "object" }),
    z
      .strictObject(
        {
          tee: z.literal("sgx"),
          mrenclave: hex256("mrenclave").optional(),
          mrsigner: hex256("mrsigner").optional(),
        },
        { error: "object" },
      )
      .refine((value) => value.mrenclave !== undefined || value.mrsigner !== undefined, {
        message: "at least one of mrenclave, mrsigner",
      }),
  ],
  { error: "measurement object with tee sevsnp (hostData) or sgx (mrenclave and/or mrsigner)" },
);
export type Measurement = z.infer<typeof measurement>;

/** Structural equality of two measurements (field by field, absent fields equal only absent). */
export function sameMeasurement(a: Measurement, b: Measurement): boolean {
  if (a.tee === "sevsnp") return b.tee === "sevsnp" && a.hostData === b.hostData;
  return b.tee === "sgx" && a.mrenclave === b.mrenclave && a.mrsigner === b.mrsigner;
}

export const errorCode = z
  .string({ error: "error code: ERR_ followed by 1..64 of A-Z 0-9 _" })
  .max(68)
  .regex(ERROR_CODE);

export const plainText = (what: string, maxChars: number, minChars = 0) =>
  z
    .string({ error: `${what}: ${minChars}..${maxChars} characters without control characters` })
    .min(minChars)
    .max(maxChars)
    .regex(PLAIN_TEXT);

export const violation = z.strictObject(
  {
    field: plainText("violation field", 256, 1),
    expected: plainText("violation expected", 1024),
    actual: plainText("violation actual", 1024),
  },
  { error: "object with field, expected, actual" },
);
