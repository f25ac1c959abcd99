/**
 * Where MAA token-signing keys come from. The validator asks a `SigningKeyResolver` for the key
 * named by a token's `kid`; the resolver only ever looks in the configured issuer's `/certs`
 * document (given up front, or fetched from `<issuer>/certs` through an injected port) and
 * never in anything the token itself carries (`jku`, `x5u`, `jwk`, `x5c`).
 */
import type { KeyObject } from "node:crypto";
import { ShieldError, isShieldError } from "../errors.js";
import type { Clock } from "../ports/clock.js";
import { parseCertsDocument, type MaaSigningKey } from "./certs.js";

export interface SigningKeyResolver {
  /**
   * The verification key for `kid`. Rejects with ERR_TOKEN_KID when the issuer has no such key,
   * and with ERR_JWKS_UNAVAILABLE (transient) when the key set cannot be obtained.
   */
  getKey(kid: string): Promise<KeyObject>;
}

/** A resolver over a `/certs` document given up front (e.g. read from a file). */
export function staticSigningKeys(certsDocument: unknown): SigningKeyResolver {
  const keys = parseCertsDocument(certsDocument);
  return {
    getKey(kid: string): Promise<KeyObject> {
      const entry = keys.get(kid);
      return entry === undefined ? Promise.reject(unknownKid()) : Promise.resolve(entry.key);
    },
  };
}

export interface CachedSigningKeysOptions {
  /** The attestation provider's base URL; keys are fetched from `<issuer>/certs` and nowhere else. */
  readonly issuer: string;
  /** Fetches a URL and returns its parsed JSON body; rejects on any network or HTTP failure. */
  readonly fetchJson: (url: string) => Promise<unknown>;
  readonly clock: Clock;
  /** A key set older than this is refreshed before use (default 15 minutes). */
  readonly maxAgeMs?: number;
  /** At most one fetch starts per interval, whatever prompts it (default 30 seconds). */
  readonly minRefreshIntervalMs?: number;
  /**
   * How long past `maxAgeMs` a key set may still be served while refreshes fail (default 24 hours).
   * After that, lookups fail with ERR_JWKS_UNAVAILABLE until a fetch succeeds.
   */
  readonly maxStaleMs?: number;
}

export const DEFAULT_SIGNING_KEYS_MAX_AGE_MS = 15 * 60 * 1000;
export const DEFAULT_SIGNING_KEYS_MIN_REFRESH_INTERVAL_MS = 30 * 1000;
export const DEFAULT_SIGNING_KEYS_MAX_STALE_MS = 24 * 60 * 60 * 1000;

interface KeySet {
  readonly keys: ReadonlyMap<string, MaaSigningKey>;
  readonly fetchedAt: number;
}

/**
 * A resolver that fetches `<issuer>/certs` and keeps it. It refreshes the set when it is older
 * than `maxAgeMs` or lacks the requested `kid` (key rotation), starts at most one fetch per
 * `minRefreshIntervalMs` (tokens with made-up kids must not turn into a request flood), lets
 * concurrent lookups share one in-flight fetch, and keeps serving the last good set for up to
 * `maxStaleMs` past its age while refreshes fail (stale-if-error).
 */
export function createCachedSigningKeys(options: CachedSigningKeysOptions): SigningKeyResolver {
  const certsUrl = certsUrlOf(options.issuer);
  const { fetchJson, clock } = options;
  const maxAgeMs = durationOption("maxAgeMs", options.maxAgeMs, DEFAULT_SIGNING_KEYS_MAX_AGE_MS);
  const minRefreshIntervalMs = durationOption(
    "minRefreshIntervalMs",
    options.minRefreshIntervalMs,
    DEFAULT_SIGNING_KEYS_MIN_REFRESH_INTERVAL_MS,
  );
  const maxStaleMs = durationOption("maxStaleMs", options.maxStaleMs, DEFAULT_SIGNING_KEYS_MAX_STALE_MS);
  if (typeof fetchJson !== "function") throw new TypeError("fetchJson must be a function");
  if (typeof clock?.now !== "function") throw new TypeError("clock must have a now() method");

  let current: KeySet | undefined;
  let inFlight: Promise<void> | undefined;
  let lastAttemptAt: number | undefined;
  // The outcome of the latest fetch, so a missing kid is reported as "unknown" only when the
  // latest look at the issuer's set succeeded; otherwise the answer is "unavailable".
  let lastFailure: { readonly reason: string; readonly cause: unknown } | undefined;

  async function fetchKeySet(startedAt: number): Promise<void> {
    try {
      const keys = parseCertsDocument(await fetchJson(certsUrl));
      current = { keys, fetchedAt: startedAt };
      lastFailure = undefined;
    } catch (cause) {
      lastFailure = { reason: isShieldError(cause) ? cause.code : "fetch failed", cause };
    }
  }

  /** Joins the fetch in flight, or starts one when the rate limit allows; never rejects. */
  function refresh(now: number): Promise<void> | undefined {
    if (inFlight !== undefined) return inFlight;
    if (lastAttemptAt !== undefined && now - lastAttemptAt < minRefreshIntervalMs) return undefined;
    lastAttemptAt = now;
    inFlight = Promise.resolve()
      .then(() => fetchKeySet(now))
      .finally(() => {
        inFlight = undefined;
      });
    return inFlight;
  }

  function unavailable(): ShieldError {
    return lastFailure === undefined
      ? new ShieldError("ERR_JWKS_UNAVAILABLE", "signing keys are not available")
      : new ShieldError("ERR_JWKS_UNAVAILABLE", `signing keys could not be fetched (${lastFailure.reason})`, {
          cause: lastFailure.cause,
        });
  }

  return {
    async getKey(kid: string): Promise<KeyObject> {
      if (typeof kid !== "string") throw new TypeError("kid must be a string");
      const now = clock.now().getTime();
      const fresh = current !== undefined && now - current.fetchedAt < maxAgeMs ? current : undefined;
      const cached = fresh?.keys.get(kid);
      if (cached !== undefined) return cached.key;

      // The set is missing, old, or lacks this kid: look at the issuer again if allowed.
      await refresh(now);
      const set = current;
      if (set === undefined || now - set.fetchedAt >= maxAgeMs + maxStaleMs) {
        throw unavailable();
      }
      const entry = set.keys.get(kid);
      if (entry !== undefined) return entry.key;
      throw lastFailure === undefined ? unknownKid() : unavailable();
    },
  };
}

function unknownKid(): ShieldError {
  return new ShieldError("ERR_TOKEN_KID", "token kid is not among the issuer's signing keys");
}

/**
 * An attestation provider's base URL as used in `iss` and `jku`: an absolute http(s) URL without
 * query or fragment, with one trailing slash dropped. Throws TypeError otherwise.
 */
export function issuerBaseUrl(issuer: string): string {
  if (typeof issuer !== "string") throw new TypeError("issuer must be a string");
  let url: URL;
  try {
    url = new URL(issuer);
  } catch {
    throw new TypeError("issuer must be an absolute URL");
  }
  if (url.protocol !== "https:" && url.protocol !== "http:")
    throw new TypeError("issuer must be an http(s) URL");
  if (url.search !== "" || url.hash !== "") throw new TypeError("issuer must not have a query or fragment");
  return issuer.endsWith("/") ? issuer.slice(0, -1) : issuer;
}

/** `<issuer>/certs`: the only place signing keys are fetched from. */
export function certsUrlOf(issuer: string): string {
  return `${issuerBaseUrl(issuer)}/certs`;
}

function durationOption(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
    throw new TypeError(`${name} must be a non-negative number of milliseconds`);
  }
  return value;
}
