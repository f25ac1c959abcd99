import { beforeAll, describe, expect, it } from "vitest";
import { ShieldError, type ShieldErrorCode } from "../../../core/errors.js";
import { fixedClock } from "../../../core/ports/clock.js";
import {
  certsUrlOf,
  createCachedSigningKeys,
  staticSigningKeys,
  validateMaaToken,
  type CachedSigningKeysOptions,
} from "../../../core/token/index.js";
import { createTestSigner, type TestSigner } from "./helpers.js";

const ISSUER = "https://shared.attest.example";
const START = new Date("2026-03-01T00:00:00Z");

let first: TestSigner;
let second: TestSigner;
let third: TestSigner;

beforeAll(() => {
  first = createTestSigner(ISSUER);
  second = createTestSigner(ISSUER);
  third = createTestSigner(ISSUER);
});

const documentOf = (...signers: TestSigner[]) => ({ keys: signers.flatMap((s) => s.certsDocument().keys) });

/** A scripted `/certs` endpoint: each fetch takes the next response (a document or an error). */
function fakeIssuer(...responses: unknown[]) {
  const urls: string[] = [];
  let pending: ((value: unknown) => void) | undefined;
  return {
    urls,
    fetchJson: async (url: string): Promise<unknown> => {
      urls.push(url);
      const next = responses.length > 1 ? responses.shift() : responses[0];
      if (next === "hold") return new Promise((resolve) => (pending = resolve));
      if (next instanceof Error) throw next;
      return next;
    },
    release: (value: unknown) => pending?.(value),
  };
}

function resolverFor(
  endpoint: ReturnType<typeof fakeIssuer>,
  extra: Partial<CachedSigningKeysOptions> = {},
): { clock: ReturnType<typeof fixedClock>; keys: ReturnType<typeof createCachedSigningKeys> } {
  const clock = fixedClock(START);
  const keys = createCachedSigningKeys({
    issuer: ISSUER,
    fetchJson: endpoint.fetchJson,
    clock,
    maxAgeMs: 60_000,
    minRefreshIntervalMs: 10_000,
    maxStaleMs: 120_000,
    ...extra,
  });
  return { clock, keys };
}

async function codeOf(promise: Promise<unknown>): Promise<ShieldErrorCode> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(ShieldError);
    return (error as ShieldError).code;
  }
  throw new Error("lookup unexpectedly succeeded");
}

describe("staticSigningKeys", () => {
  it("resolves the kids of the given document and nothing else", async () => {
    const keys = staticSigningKeys(documentOf(first, second));
    expect((await keys.getKey(second.kid)).equals(second.publicKey)).toBe(true);
    expect(await codeOf(keys.getKey(third.kid))).toBe("ERR_TOKEN_KID");
  });

  it("rejects a malformed document up front", () => {
    expect(() => staticSigningKeys({ keys: "nope" })).toThrow(
      expect.objectContaining({ code: "ERR_JWKS_MALFORMED" }),
    );
  });
});

describe("createCachedSigningKeys", () => {
  it("fetches <issuer>/certs once and serves lookups from the cache", async () => {
    const endpoint = fakeIssuer(documentOf(first, second));
    const { keys } = resolverFor(endpoint);
    expect((await keys.getKey(first.kid)).equals(first.publicKey)).toBe(true);
    expect((await keys.getKey(second.kid)).equals(second.publicKey)).toBe(true);
    expect(await keys.getKey(first.kid)).toBe(await keys.getKey(first.kid));
    expect(endpoint.urls).toEqual([`${ISSUER}/certs`]);
  });

  it("builds the URL from the issuer alone, dropping one trailing slash", () => {
    expect(certsUrlOf(`${ISSUER}/`)).toBe(`${ISSUER}/certs`);
    expect(certsUrlOf("http://127.0.0.1:8443")).toBe("http://127.0.0.1:8443/certs");
    for (const bad of ["shared.attest.example", "ftp://x.example", `${ISSUER}?x=1`, `${ISSUER}#f`]) {
      expect(() => certsUrlOf(bad)).toThrow(TypeError);
    }
  });

  it("refreshes on an unknown kid (key rotation)", async () => {
    const endpoint = fakeIssuer(documentOf(first), documentOf(first, second));
    const { keys, clock } = resolverFor(endpoint);
    await keys.getKey(first.kid);
    clock.advance(10_000);
    expect((await keys.getKey(second.kid)).equals(second.publicKey)).toBe(true);
    expect(endpoint.urls).toHaveLength(2);
  });

  it("refreshes at most once per interval for unknown kids", async () => {
    const endpoint = fakeIssuer(documentOf(first), documentOf(first), documentOf(first, third));
    const { keys, clock } = resolverFor(endpoint);
    await keys.getKey(first.kid);
    clock.advance(10_000);
    expect(await codeOf(keys.getKey(second.kid))).toBe("ERR_TOKEN_KID");
    expect(endpoint.urls).toHaveLength(2);
    clock.advance(9_999);
    expect(await codeOf(keys.getKey(third.kid))).toBe("ERR_TOKEN_KID");
    expect(endpoint.urls).toHaveLength(2);
    clock.advance(1);
    expect((await keys.getKey(third.kid)).equals(third.publicKey)).toBe(true);
    expect(endpoint.urls).toHaveLength(3);
  });

  it("refreshes a set older than maxAgeMs", async () => {
    const endpoint = fakeIssuer(documentOf(first), documentOf(second));
    const { keys, clock } = resolverFor(endpoint);
    await keys.getKey(first.kid);
    clock.advance(59_999);
    await keys.getKey(first.kid);
    expect(endpoint.urls).toHaveLength(1);
    clock.advance(1);
    expect(await codeOf(keys.getKey(first.kid))).toBe("ERR_TOKEN_KID");
    expect(endpoint.urls).toHaveLength(2);
  });

  it("serves the stale set while refreshes fail, for the kids it has, up to maxStaleMs", async () => {
    const endpoint = fakeIssuer(documentOf(first), new Error("503"));
    const { keys, clock } = resolverFor(endpoint);
    await keys.getKey(first.kid);
    clock.advance(60_000);
    expect((await keys.getKey(first.kid)).equals(first.publicKey)).toBe(true);
    expect(endpoint.urls).toHaveLength(2);
    const missing = await keys.getKey(second.kid).catch((error: unknown) => error as ShieldError);
    expect(missing).toMatchObject({ code: "ERR_JWKS_UNAVAILABLE", transient: true });
    clock.advance(120_000 - 1);
    expect((await keys.getKey(first.kid)).equals(first.publicKey)).toBe(true);
    clock.advance(1);
    expect(await codeOf(keys.getKey(first.kid))).toBe("ERR_JWKS_UNAVAILABLE");
  });

  it("treats a malformed document from the issuer as a failed refresh", async () => {
    const endpoint = fakeIssuer(documentOf(first), { keys: [{ kid: 1 }] });
    const { keys, clock } = resolverFor(endpoint);
    await keys.getKey(first.kid);
    clock.advance(60_000);
    expect((await keys.getKey(first.kid)).equals(first.publicKey)).toBe(true);
    const error = (await keys.getKey(second.kid).catch((e: unknown) => e)) as ShieldError;
    expect(error.code).toBe("ERR_JWKS_UNAVAILABLE");
    expect((error.cause as ShieldError).code).toBe("ERR_JWKS_MALFORMED");
  });

  it("fails with ERR_JWKS_UNAVAILABLE when nothing is cached, and retries after the interval", async () => {
    const endpoint = fakeIssuer(new Error("ECONNREFUSED"), documentOf(first));
    const { keys, clock } = resolverFor(endpoint);
    const error = (await keys.getKey(first.kid).catch((e: unknown) => e)) as ShieldError;
    expect(error).toMatchObject({ code: "ERR_JWKS_UNAVAILABLE", transient: true });
    expect(error.message).not.toContain("ECONNREFUSED");
    expect(await codeOf(keys.getKey(first.kid))).toBe("ERR_JWKS_UNAVAILABLE");
    expect(endpoint.urls).toHaveLength(1);
    clock.advance(10_000);
    expect((await keys.getKey(first.kid)).equals(first.publicKey)).toBe(true);
  });

  it("lets concurrent lookups share one fetch", async () => {
    const endpoint = fakeIssuer("hold");
    const { keys } = resolverFor(endpoint);
    const lookups = [keys.getKey(first.kid), keys.getKey(second.kid), keys.getKey(third.kid)];
    while (endpoint.urls.length === 0) await Promise.resolve();
    endpoint.release(documentOf(first, second));
    const [a, b, c] = await Promise.allSettled(lookups);
    expect(a).toMatchObject({ status: "fulfilled" });
    expect(b).toMatchObject({ status: "fulfilled" });
    expect(c).toMatchObject({ status: "rejected", reason: { code: "ERR_TOKEN_KID" } });
    expect(endpoint.urls).toHaveLength(1);
  });

  it("never fetches a URL the token names", async () => {
    const endpoint = fakeIssuer(documentOf(first));
    const { keys } = resolverFor(endpoint);
    const token = second.sign(
      {
        alg: "RS256",
        jku: "https://attacker.example/certs",
        x5u: "https://attacker.example/x",
        kid: second.kid,
      },
      { iss: ISSUER, exp: START.getTime() / 1000 + 60, "x-ms-attestation-type": "sgx" },
    );
    const error = (await validateMaaToken(token, { keys, issuer: ISSUER, at: START }).catch(
      (e: unknown) => e,
    )) as ShieldError;
    expect(error.code).toBe("ERR_TOKEN_KID");
    expect(endpoint.urls).toEqual([`${ISSUER}/certs`]);
  });

  it("treats bad options as caller misuse", () => {
    const fetchJson = (): Promise<unknown> => Promise.resolve({});
    const clock = fixedClock(START);
    expect(() => createCachedSigningKeys({ issuer: "nope", fetchJson, clock })).toThrow(TypeError);
    expect(() => createCachedSigningKeys({ issuer: ISSUER, fetchJson, clock, maxAgeMs: -1 })).toThrow(
      TypeError,
    );
  });
});
