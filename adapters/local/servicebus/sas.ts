/**
 * Shared Access Signature tokens as Service Bus checks them, for the local endpoint's CBS node.
 *
 * A token is `SharedAccessSignature sr=<url-encoded resource URI>&sig=<url-encoded base64
 * HMAC-SHA256>&se=<expiry, seconds since the epoch>&skn=<key name>`; the signature is taken with
 * the rule's key (its text, as the SDKs use it) over `<url-encoded resource>\n<expiry>`
 * (`service-bus-sas` documentation, "Generate a Shared Access Signature token"). The checks run
 * in a fixed order — parse, key lookup, signature, then expiry and scope — and a refusal says
 * which check failed in Service Bus's words, never what the token or the key holds.
 *
 * A rule belongs to the namespace or to one entity; an entity rule covers only resources under
 * that entity, as a queue-level policy does in Service Bus. The token's `sr` covers every
 * resource it is a prefix of.
 */
import { createHmac, timingSafeEqual } from "node:crypto";

export type AccessRight = "Send" | "Listen" | "Manage";

/** A shared access authorization rule: a key name, its key and what it allows. */
export interface SharedAccessRule {
  readonly keyName: string;
  /** The key as the connection string carries it (base64 text, used as-is for the HMAC). */
  readonly key: string;
  readonly rights: readonly AccessRight[];
  /** The entity (queue) the rule is defined on; namespace-wide when absent. */
  readonly entity?: string;
}

/** What a verified token grants: rights on every entity path under `resourcePath`. */
export interface SasGrant {
  /** The token's resource as an entity path without the leading slash ("" for the namespace). */
  readonly resourcePath: string;
  readonly rights: readonly AccessRight[];
  readonly expiresAt: Date;
  readonly keyName: string;
}

/** A refused token, with Service Bus's status description (no token material). */
export class SasRefusal extends Error {
  constructor(description: string) {
    super(description);
    this.name = "SasRefusal";
  }
}

interface ParsedToken {
  /** `sr` exactly as it appears in the token (URL-encoded): the signed text uses this form. */
  readonly encodedResource: string;
  readonly resource: string;
  readonly signature: string;
  readonly expiry: string;
  readonly keyName: string;
}

const PREFIX = "SharedAccessSignature ";
const MAX_TOKEN_CHARS = 4096;

/** Splits a token into its four fields; refuses anything else. */
export function parseSasToken(token: unknown): ParsedToken {
  if (typeof token !== "string" || token.length > MAX_TOKEN_CHARS || !token.startsWith(PREFIX)) {
    throw new SasRefusal("InvalidToken: The token is not a shared access signature.");
  }
  const fields = new Map<string, string>();
  for (const pair of token.slice(PREFIX.length).split("&")) {
    const at = pair.indexOf("=");
    if (at <= 0) throw new SasRefusal("InvalidToken: The shared access signature is malformed.");
    const name = pair.slice(0, at);
    if (fields.has(name)) throw new SasRefusal("InvalidToken: The shared access signature is malformed.");
    fields.set(name, pair.slice(at + 1));
  }
  const encodedResource = fields.get("sr");
  const signature = fields.get("sig");
  const expiry = fields.get("se");
  const keyName = fields.get("skn");
  if (
    encodedResource === undefined ||
    signature === undefined ||
    expiry === undefined ||
    keyName === undefined
  ) {
    throw new SasRefusal("InvalidToken: The shared access signature lacks sr, sig, se or skn.");
  }
  try {
    return {
      encodedResource,
      resource: decodeURIComponent(encodedResource),
      signature: decodeURIComponent(signature),
      expiry,
      keyName: decodeURIComponent(keyName),
    };
  } catch {
    throw new SasRefusal("InvalidToken: The shared access signature is malformed.");
  }
}

/** The entity path a resource URI names: `sb://host/queue/$management` → `queue/$management`. */
export function resourcePath(resource: string): string {
  let url: URL;
  try {
    url = new URL(resource);
  } catch {
    throw new SasRefusal("InvalidToken: The token's resource is not a URI.");
  }
  return decodeURIComponent(url.pathname).replace(/^\/+/, "").replace(/\/+$/, "");
}

/** True when `path` lies at or under `prefix` (path segments, case-insensitive as entity names are). */
export function covers(prefix: string, path: string): boolean {
  const p = prefix.toLowerCase();
  const q = path.toLowerCase();
  return p === "" || q === p || q.startsWith(`${p}/`);
}

/**
 * Verifies a token against the configured rules, as of `now`:
 * 1. it parses; 2. its key name is a configured rule; 3. its signature is that key's HMAC of
 * `sr` and `se`; 4. it has not expired; 5. an entity rule's token stays within that entity.
 */
export function verifySasToken(token: unknown, rules: readonly SharedAccessRule[], now: Date): SasGrant {
  const parsed = parseSasToken(token);
  const rule = rules.find((candidate) => candidate.keyName === parsed.keyName);
  // An unknown key name reads as a bad signature, so a caller learns nothing about key names.
  if (rule === undefined || !signatureMatches(parsed, rule.key)) {
    throw new SasRefusal("InvalidSignature: The token has an invalid signature.");
  }
  if (!/^\d{1,12}$/.test(parsed.expiry)) {
    throw new SasRefusal("InvalidToken: The token's expiry is not a number of seconds.");
  }
  const expiresAt = new Date(Number(parsed.expiry) * 1000);
  if (expiresAt.getTime() <= now.getTime()) {
    throw new SasRefusal(`ExpiredToken: The token is expired. Expiration time: '${formatExpiry(expiresAt)}'`);
  }
  const path = resourcePath(parsed.resource);
  if (rule.entity !== undefined && !covers(rule.entity, path)) {
    throw new SasRefusal("InvalidAudience: The token's resource is outside the entity its rule belongs to.");
  }
  return { resourcePath: path, rights: rule.rights, expiresAt, keyName: rule.keyName };
}

function signatureMatches(parsed: ParsedToken, key: string): boolean {
  const expected = createHmac("sha256", key).update(`${parsed.encodedResource}\n${parsed.expiry}`).digest();
  const given = Buffer.from(parsed.signature, "base64");
  return given.length === expected.length && timingSafeEqual(given, expected);
}

/** Service Bus's form of the expiry in the refusal: `2019-04-11 21:12:56Z`. */
function formatExpiry(at: Date): string {
  return `${at.toISOString().slice(0, 19).replace("T", " ")}Z`;
}

/**
 * Makes a token the way the SDKs do (`createSasTokenProvider`), for tests and for callers that
 * hold a key: `sr` is the URL-encoded resource, the signature URL-encoded base64.
 */
export function createSasToken(resource: string, keyName: string, key: string, expiresAt: Date): string {
  const encodedResource = encodeURIComponent(resource);
  const expiry = String(Math.floor(expiresAt.getTime() / 1000));
  const signature = createHmac("sha256", key).update(`${encodedResource}\n${expiry}`).digest("base64");
  return `${PREFIX}sr=${encodedResource}&sig=${encodeURIComponent(signature)}&se=${expiry}&skn=${encodeURIComponent(keyName)}`;
}
