/**
 * Signed control messages (core/control/signed.ts): what the functions sign, what an agent
 * pinning the control-plane keys accepts, and every refusal with its code. Forged messages are
 * built two ways: through the control-plane signer port (a valid signature by the pinned key over
 * any header and payload, so each test changes exactly one thing) and with jose for other keys.
 */
import { createHash, generateKeyPairSync, randomUUID, type KeyObject } from "node:crypto";
import { CompactSign, type CompactJWSHeaderParameters } from "jose";
import { describe, expect, it } from "vitest";
import {
  CONTROL_CLOCK_SKEW_SECONDS,
  CONTROL_JWS_TYPE,
  ControlReplayGuard,
  DEFAULT_CONTROL_TTL_SECONDS,
  MAX_CONTROL_LIFETIME_SECONDS,
  MAX_CONTROL_MESSAGE_CHARS,
  controlKeySet,
  createControlChannel,
  signControlMessage,
  verifyControlMessage,
  type ControlKeySet,
} from "../../../core/control/signed.js";
import { ShieldError } from "../../../core/errors.js";
import {
  makeAttestationResult,
  makeChallenge,
  makeChallengeRequest,
  makeKeyEvent,
  makePolicyUpdate,
  type AttestationResult,
} from "../../../core/messages/index.js";
import type { AgentChannel, AgentMessage, SignedAgentMessage } from "../../../core/ports/bus.js";
import { fixedClock, type Random } from "../../../core/ports/clock.js";
import type { ControlSigner } from "../../../core/ports/control-signer.js";
import { createTestControlPlane } from "../../support/control.js";

const AGENT = "payments.pod-7f9c:0";
const OTHER = "payments.pod-0000:1";
const NOW = new Date("2026-03-01T12:00:00.000Z");
const NOW_SECONDS = NOW.getTime() / 1000;

const control = createTestControlPlane();
const KID = control.signer.keyId;

function result(agentId = AGENT, attestedUntil = new Date(NOW.getTime() + 3_600_000)): AttestationResult {
  return makeAttestationResult({
    agentId,
    requestId: "4b7e6a2c-1f0d-4c52-9a53-0c8f2a6f1d11",
    keys: [{ name: "payments-db", version: "0123456789abcdef", releaseResponse: "aGVhZA.cGF5bG9hZA.c2ln" }],
    attestedUntil,
    sentAt: NOW,
  });
}

const challenge = (agentId = AGENT) =>
  makeChallenge({
    agentId,
    nonce: Buffer.alloc(32, 9).toString("base64url"),
    deadline: new Date(NOW.getTime() + 120_000),
    sentAt: NOW,
  });

const keyEvent = (agentId = AGENT) =>
  makeKeyEvent({ agentId, event: "revoked", keyName: "payments-db", keyVersion: "abc123", sentAt: NOW });

function verifyAs(body: unknown, agentId = AGENT, at = NOW, keys: ControlKeySet = control.keys) {
  return verifyControlMessage(body, { keys, agentId, at });
}

const b64 = (value: unknown): string =>
  Buffer.from(typeof value === "string" ? value : JSON.stringify(value), "utf8").toString("base64url");

const decode = (part: string): unknown => JSON.parse(Buffer.from(part, "base64url").toString("utf8"));

/** A valid protected header for AGENT issued at NOW; an override of `undefined` drops the member. */
function claims(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    alg: "RS256",
    kid: KID,
    typ: CONTROL_JWS_TYPE,
    sub: AGENT,
    jti: randomUUID(),
    iat: NOW_SECONDS,
    exp: NOW_SECONDS + 300,
    ...overrides,
  };
}

/** Signs any header and payload through a signer port: by default a valid signature of the pinned key. */
async function forge(
  header: Record<string, unknown>,
  payload: unknown,
  signer: ControlSigner = control.signer,
): Promise<string> {
  const input = `${b64(header)}.${b64(payload)}`;
  const signature = await signer.sign(createHash("sha256").update(input, "ascii").digest());
  return `${input}.${signature.toString("base64url")}`;
}

/** Signs with jose and any key: other key types, other algorithms, a MAC. */
function joseSign(
  header: Record<string, unknown>,
  payload: unknown,
  key: KeyObject | Uint8Array,
): Promise<string> {
  return new CompactSign(Buffer.from(JSON.stringify(payload), "utf8"))
    .setProtectedHeader(header as CompactJWSHeaderParameters)
    .sign(key);
}

function rsaKey(modulusLength = 2048) {
  return generateKeyPairSync("rsa", { modulusLength });
}

function publicJwk(key: KeyObject, extra: Record<string, unknown>): Record<string, unknown> {
  return { ...key.export({ format: "jwk" }), ...extra };
}

function configError(value: unknown): ShieldError {
  try {
    controlKeySet(value);
  } catch (error) {
    expect(error).toBeInstanceOf(ShieldError);
    return error as ShieldError;
  }
  throw new Error("expected the key set to be refused");
}

describe("signing and verifying", () => {
  it("round-trips a message: the agent gets it back unchanged, with its id, expiry and key", async () => {
    for (const message of [result(), challenge(), keyEvent()] as AgentMessage[]) {
      const signed = await control.sign(message, { at: NOW, ttlMs: 300_000 });
      expect(signed).toEqual({
        type: message.type,
        agentId: AGENT,
        messageId: expect.any(String) as string,
        jws: expect.stringMatching(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/) as string,
      });
      const verified = await verifyAs(signed.jws);
      expect(verified).toEqual({
        message,
        messageId: signed.messageId,
        expiresAt: new Date(NOW.getTime() + 300_000),
        kid: KID,
      });
    }
  });

  it("puts exactly the documented claims in the header and the message itself in the payload", async () => {
    const message = result();
    const signed = await control.sign(message, { at: NOW, ttlMs: 900_000, messageId: "m-1" });
    const [header, payload] = signed.jws.split(".") as [string, string, string];
    expect(decode(header)).toEqual({
      alg: "RS256",
      kid: KID,
      typ: "shield-control+jws",
      sub: AGENT,
      jti: "m-1",
      iat: NOW_SECONDS,
      exp: NOW_SECONDS + 900,
    });
    expect(Buffer.from(payload, "base64url").toString("utf8")).toBe(JSON.stringify(message));
  });

  it("hands the signer only the SHA-256 digest of the signing input", async () => {
    const digests: Buffer[] = [];
    const recording: ControlSigner = {
      keyId: KID,
      algorithm: "RS256",
      sign: (digest) => {
        digests.push(Buffer.from(digest));
        return control.signer.sign(digest);
      },
    };
    const signed = await signControlMessage(result(), {
      signer: recording,
      messageId: "m-2",
      issuedAt: NOW,
      expiresAt: new Date(NOW.getTime() + 60_000),
    });
    const input = signed.jws.split(".").slice(0, 2).join(".");
    expect(digests).toEqual([createHash("sha256").update(input, "ascii").digest()]);
    expect((await verifyAs(signed.jws)).messageId).toBe("m-2");
  });

  it("refuses to sign what agents are not sent, or with a bad id, lifetime or algorithm (caller bugs)", async () => {
    const options = {
      signer: control.signer,
      messageId: "m-3",
      issuedAt: NOW,
      expiresAt: new Date(NOW.getTime() + 60_000),
    };
    const request = makeChallengeRequest({
      agentId: AGENT,
      workload: "payments",
      tee: "sevsnp",
      sentAt: NOW,
    });
    await expect(signControlMessage(request as unknown as AgentMessage, options)).rejects.toThrow(TypeError);
    await expect(signControlMessage(result(), { ...options, messageId: "not an id" })).rejects.toThrow(
      /messageId/,
    );
    await expect(signControlMessage(result(), { ...options, expiresAt: NOW })).rejects.toThrow(
      /expiresAt must be after issuedAt/,
    );
    const tooLong = new Date(NOW.getTime() + (MAX_CONTROL_LIFETIME_SECONDS + 1) * 1000);
    await expect(signControlMessage(result(), { ...options, expiresAt: tooLong })).rejects.toThrow(
      /lifetime/,
    );
    const hmac = { ...control.signer, algorithm: "HS256" } as unknown as ControlSigner;
    await expect(signControlMessage(result(), { ...options, signer: hmac })).rejects.toThrow(/algorithm/);
    expect(control.signer.signatures).toBeGreaterThan(0);
  });

  it("accepts a forged-by-the-pinned-key message built by these tests (the refusals below change one thing)", async () => {
    const verified = await verifyAs(await forge(claims({ jti: "forged-1" }), result()));
    expect(verified).toMatchObject({ messageId: "forged-1", kid: KID, message: result() });
  });
});

describe("verification refusals", () => {
  it("refuses a body that is not a string: ERR_CONTROL_MALFORMED", async () => {
    const signed = await control.sign(result(), { at: NOW });
    for (const body of [result(), Buffer.from(signed.jws), undefined, null, 42, [signed.jws]]) {
      await expect(verifyAs(body)).rejects.toMatchObject({ code: "ERR_CONTROL_MALFORMED" });
    }
  });

  it("refuses a body over the size bound before looking inside: ERR_INPUT_TOO_LARGE", async () => {
    const [header, , signature] = (await control.sign(result(), { at: NOW })).jws.split(".");
    const body = `${header}.${"A".repeat(MAX_CONTROL_MESSAGE_CHARS)}.${signature}`;
    await expect(verifyAs(body)).rejects.toMatchObject({ code: "ERR_INPUT_TOO_LARGE" });
  });

  it("refuses anything but the compact form: ERR_CONTROL_MALFORMED", async () => {
    const jws = (await control.sign(result(), { at: NOW })).jws;
    const [h, p, s] = jws.split(".") as [string, string, string];
    const bodies = [
      "",
      `${h}.${p}`,
      `${h}.${p}.${s}.${s}`,
      `${h}..${s}`,
      `${h}.${p}.`,
      `${h}.${p}.${s}=`,
      ` ${jws}`,
      `${h}.${p}.${s}\n`,
      JSON.stringify({ protected: h, payload: p, signature: s }),
      `${b64("not json")}.${p}.${s}`,
      `${b64([1, 2])}.${p}.${s}`,
      `${b64("null")}.${p}.${s}`,
    ];
    for (const body of bodies) {
      await expect(verifyAs(body)).rejects.toMatchObject({ code: "ERR_CONTROL_MALFORMED" });
    }
  });

  it("refuses a header whose typ is not shield-control+jws: ERR_CONTROL_MALFORMED", async () => {
    for (const typ of ["JWT", "shield-control", undefined, 1]) {
      await expect(verifyAs(await forge(claims({ typ }), result()))).rejects.toMatchObject({
        code: "ERR_CONTROL_MALFORMED",
      });
    }
  });

  it("refuses alg none and HS256 (a MAC keyed with the public key): ERR_CONTROL_ALG", async () => {
    const input = `${b64(claims({ alg: "none" }))}.${b64(result())}`;
    await expect(verifyAs(`${input}.AAAA`)).rejects.toMatchObject({ code: "ERR_CONTROL_ALG" });
    const secret = Buffer.from(control.keys.keys[0]!.key.export({ format: "pem", type: "spki" }));
    const hs256 = await joseSign(claims({ alg: "HS256" }), result(), secret);
    const refused = verifyAs(hs256);
    await expect(refused).rejects.toMatchObject({
      code: "ERR_CONTROL_ALG",
      violations: [{ field: "alg", expected: "ES256 | RS256 | PS256", actual: "HS256" }],
    });
  });

  it("checks the algorithm against the allowlist before the key id", async () => {
    for (const alg of ["none", "HS256", "RS512", undefined]) {
      const input = `${b64(claims({ alg, kid: "https://elsewhere.example/keys/k/1" }))}.${b64(result())}`;
      await expect(verifyAs(`${input}.AAAA`)).rejects.toMatchObject({ code: "ERR_CONTROL_ALG" });
    }
  });

  it("refuses an allowed algorithm the pinned key is not made for: ERR_CONTROL_ALG", async () => {
    // The test plane's key is pinned for RS256 only (its JWK's alg).
    const { privateKey, publicKey } = rsaKey();
    const keys = controlKeySet([publicJwk(publicKey, { kid: "rsa-rs256", alg: "RS256" })]);
    const ps256 = await joseSign(claims({ alg: "PS256", kid: "rsa-rs256" }), result(), privateKey);
    await expect(verifyAs(ps256, AGENT, NOW, keys)).rejects.toMatchObject({
      code: "ERR_CONTROL_ALG",
      violations: [{ field: "alg", expected: "RS256", actual: "PS256" }],
    });
    const rs256 = await joseSign(claims({ alg: "RS256", kid: "rsa-rs256" }), result(), privateKey);
    expect((await verifyAs(rs256, AGENT, NOW, keys)).kid).toBe("rsa-rs256");
    // Without a JWK alg, an RSA key verifies both RS256 and PS256.
    const both = controlKeySet([publicJwk(publicKey, { kid: "rsa-any" })]);
    for (const alg of ["RS256", "PS256"]) {
      const jws = await joseSign(claims({ alg, kid: "rsa-any" }), result(), privateKey);
      expect((await verifyAs(jws, AGENT, NOW, both)).kid).toBe("rsa-any");
    }
    const es256 = `${b64(claims({ alg: "ES256" }))}.${b64(result())}.AAAA`;
    await expect(verifyAs(es256)).rejects.toMatchObject({ code: "ERR_CONTROL_ALG" });
  });

  it("refuses a kid the agent does not pin, or none: ERR_CONTROL_KID", async () => {
    for (const kid of ["https://shield-test.vault.azure.net/keys/control/ffffffffffffffff", undefined, 7]) {
      await expect(verifyAs(await forge(claims({ kid }), result()))).rejects.toMatchObject({
        code: "ERR_CONTROL_KID",
      });
    }
  });

  it("refuses a signature by another key under the pinned kid: ERR_CONTROL_SIGNATURE", async () => {
    const impostor = createTestControlPlane(KID);
    const signed = await impostor.sign(result(), { at: NOW });
    expect(JSON.parse(Buffer.from(signed.jws.split(".")[0]!, "base64url").toString())).toMatchObject({
      kid: KID,
    });
    await expect(verifyAs(signed.jws)).rejects.toMatchObject({ code: "ERR_CONTROL_SIGNATURE" });
  });

  it("refuses a tampered payload, header or signature: ERR_CONTROL_SIGNATURE", async () => {
    const signed = await control.sign(result(), { at: NOW });
    const [h, p, s] = signed.jws.split(".") as [string, string, string];
    const longer = result(AGENT, new Date(NOW.getTime() + 30 * 86_400_000));
    const header = decode(h) as Record<string, unknown>;
    const flipped = Buffer.from(s, "base64url");
    flipped[10] = flipped[10]! ^ 1;
    const bodies = [
      `${h}.${b64(longer)}.${s}`,
      `${h}.${b64({ ...result(), keys: [] })}.${s}`,
      `${b64({ ...header, exp: (header["exp"] as number) + 86_000 })}.${p}.${s}`,
      `${h}.${p}.${flipped.toString("base64url")}`,
      `${h}.${p}.${s.slice(0, -4)}`,
    ];
    for (const body of bodies) {
      await expect(verifyAs(body)).rejects.toMatchObject({ code: "ERR_CONTROL_SIGNATURE" });
    }
  });

  it("refuses a message signed for another agent (sub), even when its payload names this one: ERR_CONTROL_AUDIENCE", async () => {
    await expect(verifyAs(await forge(claims({ sub: OTHER }), result(AGENT)))).rejects.toMatchObject({
      code: "ERR_CONTROL_AUDIENCE",
      message: "control message is signed for another agent",
    });
    await expect(verifyAs(await forge(claims({ sub: undefined }), result(AGENT)))).rejects.toMatchObject({
      code: "ERR_CONTROL_AUDIENCE",
    });
    const signed = await control.sign(result(OTHER), { at: NOW });
    await expect(verifyAs(signed.jws, AGENT)).rejects.toMatchObject({ code: "ERR_CONTROL_AUDIENCE" });
  });

  it("refuses a payload addressed to another agent under the right sub: ERR_CONTROL_AUDIENCE", async () => {
    for (const message of [result(OTHER), challenge(OTHER), keyEvent(OTHER)]) {
      await expect(verifyAs(await forge(claims({ sub: AGENT }), message))).rejects.toMatchObject({
        code: "ERR_CONTROL_AUDIENCE",
        message: "control message is addressed to another agent",
      });
    }
  });

  it("refuses a message expired beyond the clock skew, and accepts one within it: ERR_CONTROL_EXPIRED", async () => {
    const signed = await control.sign(result(), { at: NOW, ttlMs: 300_000 });
    const exp = NOW.getTime() + 300_000;
    const at = (ms: number) => new Date(exp + ms);
    expect((await verifyAs(signed.jws, AGENT, at(0))).messageId).toBe(signed.messageId);
    expect((await verifyAs(signed.jws, AGENT, at(CONTROL_CLOCK_SKEW_SECONDS * 1000 - 1000))).kid).toBe(KID);
    await expect(verifyAs(signed.jws, AGENT, at(CONTROL_CLOCK_SKEW_SECONDS * 1000))).rejects.toMatchObject({
      code: "ERR_CONTROL_EXPIRED",
      violations: [{ field: "exp" }],
    });
    await expect(verifyAs(signed.jws, AGENT, at(86_400_000))).rejects.toMatchObject({
      code: "ERR_CONTROL_EXPIRED",
    });
  });

  it("refuses a message issued further in the future than the skew: ERR_CONTROL_EXPIRED", async () => {
    const skew = CONTROL_CLOCK_SKEW_SECONDS * 1000;
    const ahead = await control.sign(result(), { at: new Date(NOW.getTime() + skew + 1000) });
    await expect(verifyAs(ahead.jws)).rejects.toMatchObject({
      code: "ERR_CONTROL_EXPIRED",
      message: "control message was issued in the future",
    });
    const withinSkew = await control.sign(result(), { at: new Date(NOW.getTime() + skew) });
    expect((await verifyAs(withinSkew.jws)).messageId).toBe(withinSkew.messageId);
  });

  it("refuses a lifetime over 24 h, or none, even when signed: ERR_CONTROL_MALFORMED", async () => {
    const max = MAX_CONTROL_LIFETIME_SECONDS;
    const longest = await forge(claims({ iat: NOW_SECONDS - 10, exp: NOW_SECONDS - 10 + max }), result());
    expect((await verifyAs(longest)).expiresAt).toEqual(new Date((NOW_SECONDS - 10 + max) * 1000));
    for (const [iat, exp] of [
      [NOW_SECONDS - 10, NOW_SECONDS - 10 + max + 1],
      [NOW_SECONDS - 10, NOW_SECONDS + 10 * max],
      [NOW_SECONDS, NOW_SECONDS],
      [NOW_SECONDS, NOW_SECONDS - 1],
    ]) {
      await expect(verifyAs(await forge(claims({ iat, exp }), result()))).rejects.toMatchObject({
        code: "ERR_CONTROL_MALFORMED",
        message: "control message lifetime is out of bounds",
      });
    }
  });

  it("refuses header claims that are not integers, and a jti that is not an identifier: ERR_CONTROL_MALFORMED", async () => {
    const bad = [
      { iat: NOW_SECONDS + 0.5 },
      { iat: String(NOW_SECONDS) },
      { exp: undefined },
      { exp: null },
      { jti: undefined },
      { jti: "has space" },
      { jti: "j".repeat(129) },
    ];
    for (const overrides of bad) {
      await expect(verifyAs(await forge(claims(overrides), result()))).rejects.toMatchObject({
        code: "ERR_CONTROL_MALFORMED",
      });
    }
  });

  it("refuses a signed payload of a type agents are not sent: ERR_CONTROL_MALFORMED", async () => {
    const request = makeChallengeRequest({
      agentId: AGENT,
      workload: "payments",
      tee: "sevsnp",
      sentAt: NOW,
    });
    await expect(verifyAs(await forge(claims(), request))).rejects.toMatchObject({
      code: "ERR_CONTROL_MALFORMED",
      message: "a challenge-request message is not sent to agents",
    });
    const update = makePolicyUpdate({
      deploymentId: "d-1",
      keys: ["payments-db"],
      add: [{ tee: "sevsnp", hostData: "a".repeat(64) }],
      retire: [],
      graceSeconds: 0,
      dryRun: false,
      sentAt: NOW,
    });
    await expect(verifyAs(await forge(claims(), update))).rejects.toMatchObject({
      code: "ERR_CONTROL_MALFORMED",
    });
  });

  it("refuses a signed payload of an unknown message version: ERR_MESSAGE_VERSION", async () => {
    await expect(verifyAs(await forge(claims(), { ...result(), version: 2 }))).rejects.toMatchObject({
      code: "ERR_MESSAGE_VERSION",
    });
  });

  it("refuses a signed payload that is not a valid message with the parser's code", async () => {
    for (const payload of ["not json", { ...result(), extra: 1 }, { ...result(), agentId: undefined }]) {
      await expect(verifyAs(await forge(claims(), payload))).rejects.toMatchObject({
        code: "ERR_MESSAGE_SCHEMA",
      });
    }
  });
});

describe("pinned control-plane keys", () => {
  it("verifies messages from both keys pinned during a rotation, naming the key used", async () => {
    const next = createTestControlPlane("https://shield-test.vault.azure.net/keys/control/fedcba9876543210");
    const pinned = controlKeySet({ keys: [...control.jwks.keys, ...next.jwks.keys] });
    expect(pinned.keys.map((k) => k.kid)).toEqual([KID, next.signer.keyId]);
    const fromOld = await control.sign(result(), { at: NOW });
    const fromNew = await next.sign(result(), { at: NOW });
    expect((await verifyAs(fromOld.jws, AGENT, NOW, pinned)).kid).toBe(KID);
    expect((await verifyAs(fromNew.jws, AGENT, NOW, pinned)).kid).toBe(next.signer.keyId);
    // Once the old key is unpinned, its messages are refused.
    const after = controlKeySet(next.jwks);
    await expect(verifyAs(fromOld.jws, AGENT, NOW, after)).rejects.toMatchObject({ code: "ERR_CONTROL_KID" });
  });

  it("reads EC P-256 keys for ES256 and RSA keys for RS256 and PS256", async () => {
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const keys = controlKeySet([publicJwk(publicKey, { kid: "ec-1" }), ...control.jwks.keys]);
    expect(keys.find("ec-1")?.algorithms).toEqual(["ES256"]);
    expect(keys.find(KID)?.algorithms).toEqual(["RS256"]);
    expect(keys.find("ec-2")).toBeUndefined();
    const jws = await joseSign(claims({ alg: "ES256", kid: "ec-1" }), keyEvent(), privateKey);
    expect((await verifyAs(jws, AGENT, NOW, keys)).message).toEqual(keyEvent());
    expect(controlKeySet([publicJwk(rsaKey().publicKey, { kid: "r" })]).keys[0]?.algorithms).toEqual([
      "RS256",
      "PS256",
    ]);
  });

  it("refuses private keys and secrets: ERR_CONFIG", () => {
    const rsa = rsaKey();
    const ec = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const privates = [
      { ...rsa.privateKey.export({ format: "jwk" }), kid: "rsa-private" },
      { ...ec.privateKey.export({ format: "jwk" }), kid: "ec-private" },
      { ...publicJwk(rsa.publicKey, { kid: "rsa-d" }), d: "AAAA" },
      { kty: "oct", k: Buffer.alloc(32, 1).toString("base64url"), kid: "mac" },
    ];
    for (const jwk of privates) {
      const error = configError([jwk]);
      expect(error).toMatchObject({
        code: "ERR_CONFIG",
        message: "control-plane key 0: must be a public key",
      });
    }
  });

  it("refuses duplicate kids: ERR_CONFIG", () => {
    const other = publicJwk(rsaKey().publicKey, { kid: KID });
    expect(configError([...control.jwks.keys, other])).toMatchObject({
      code: "ERR_CONFIG",
      message: "control-plane keys: duplicate kid",
    });
  });

  it("refuses EC P-384 and RSA-1024: ERR_CONFIG", () => {
    const p384 = publicJwk(generateKeyPairSync("ec", { namedCurve: "P-384" }).publicKey, { kid: "p384" });
    const rsa1024 = publicJwk(rsaKey(1024).publicKey, { kid: "rsa1024" });
    for (const jwk of [p384, rsa1024]) {
      expect(configError({ keys: [jwk] })).toMatchObject({
        code: "ERR_CONFIG",
        message: "control-plane key 0: must be EC P-256 or RSA of at least 2048 bits",
      });
    }
  });

  it("refuses an empty set, too many keys, or something that is not a set: ERR_CONFIG", () => {
    const many = Array.from({ length: 5 }, (_, i) => ({ ...control.jwks.keys[0], kid: `k-${i}` }));
    for (const value of [{ keys: [] }, [], many, {}, null, "keys", { keys: "x" }]) {
      expect(configError(value)).toMatchObject({ code: "ERR_CONFIG" });
    }
  });

  it("refuses a key without a kid, an invalid JWK, or an alg that does not fit the key: ERR_CONFIG", () => {
    const { kid: _, ...noKid } = control.jwks.keys[0]!;
    const bad = [
      noKid,
      { ...control.jwks.keys[0], kid: "" },
      { kty: "RSA", n: "AAAA", e: "AQAB", kid: "tiny" },
      { kty: "EC", crv: "P-256", x: "AAAA", y: "AAAA", kid: "off-curve" },
      { ...control.jwks.keys[0], alg: "ES256" },
      { ...control.jwks.keys[0], alg: "HS256" },
      "not a jwk",
    ];
    for (const jwk of bad) expect(configError([jwk])).toMatchObject({ code: "ERR_CONFIG" });
  });
});

describe("replay guard", () => {
  const entry = (messageId: string, expiresAt: Date) => ({ messageId, expiresAt });

  it("admits a verified message once and refuses it again: ERR_CONTROL_REPLAYED", async () => {
    const guard = new ControlReplayGuard();
    const signed = await control.sign(result(), { at: NOW });
    const verified = await verifyAs(signed.jws);
    guard.admit(verified, NOW);
    expect(() => guard.admit(verified, new Date(NOW.getTime() + 1000))).toThrow(
      expect.objectContaining({ code: "ERR_CONTROL_REPLAYED" }) as Error,
    );
    // The same message signed again has a new id and is admitted.
    guard.admit(await verifyAs((await control.sign(result(), { at: NOW })).jws), NOW);
  });

  it("forgets an id once the message could no longer verify (expiry plus skew)", () => {
    const guard = new ControlReplayGuard();
    const expiresAt = new Date(NOW.getTime() + 300_000);
    guard.admit(entry("m-1", expiresAt), NOW);
    const forgotten = expiresAt.getTime() + CONTROL_CLOCK_SKEW_SECONDS * 1000;
    expect(() => guard.admit(entry("m-1", expiresAt), new Date(forgotten - 1))).toThrow(
      expect.objectContaining({ code: "ERR_CONTROL_REPLAYED" }) as Error,
    );
    // From then on verification refuses the message as expired, so the guard no longer needs it.
    guard.admit(entry("m-1", expiresAt), new Date(forgotten));
  });

  it("holds at most its capacity, making room by dropping the entry closest to expiry", () => {
    const guard = new ControlReplayGuard(2);
    const at = (minutes: number) => new Date(NOW.getTime() + minutes * 60_000);
    guard.admit(entry("late", at(30)), NOW);
    guard.admit(entry("soon", at(10)), NOW);
    guard.admit(entry("middle", at(20)), NOW);
    // "soon" made room; the other two are still remembered.
    for (const id of ["late", "middle"]) {
      expect(() => guard.admit(entry(id, at(30)), NOW)).toThrow(
        expect.objectContaining({ code: "ERR_CONTROL_REPLAYED" }) as Error,
      );
    }
    guard.admit(entry("soon", at(10)), NOW);
  });

  it("refuses a capacity that is not a positive integer (caller bug)", () => {
    for (const capacity of [0, -1, 1.5, Number.NaN]) {
      expect(() => new ControlReplayGuard(capacity)).toThrow(TypeError);
    }
  });
});

describe("control channel", () => {
  const capture = () => {
    const sent: { agentId: string; message: SignedAgentMessage }[] = [];
    const transport: AgentChannel = {
      sendToAgent: (agentId, message) => {
        sent.push({ agentId, message });
        return Promise.resolve();
      },
    };
    return { sent, transport };
  };
  const counter = (): Random => {
    let next = 0;
    return { bytes: (n) => Buffer.alloc(n), uuid: () => `id-${++next}` };
  };

  it("signs each send with a fresh id and the default lifetime, then hands it to the transport", async () => {
    const { sent, transport } = capture();
    const clock = fixedClock(NOW);
    const channel = createControlChannel({ transport, signer: control.signer, clock, random: counter() });
    await channel.sendToAgent(AGENT, result());
    await channel.sendToAgent(AGENT, result());
    expect(sent.map((s) => [s.agentId, s.message.type, s.message.agentId, s.message.messageId])).toEqual([
      [AGENT, "attestation-result", AGENT, "id-1"],
      [AGENT, "attestation-result", AGENT, "id-2"],
    ]);
    for (const { message } of sent) {
      const verified = await verifyAs(message.jws);
      expect(verified.message).toEqual(result());
      expect(verified.expiresAt).toEqual(new Date(NOW.getTime() + DEFAULT_CONTROL_TTL_SECONDS * 1000));
    }
  });

  it("lets a challenge live to its deadline", async () => {
    const { sent, transport } = capture();
    const channel = createControlChannel({
      transport,
      signer: control.signer,
      clock: fixedClock(NOW),
      random: counter(),
    });
    await channel.sendToAgent(AGENT, challenge());
    expect((await verifyAs(sent[0]!.message.jws)).expiresAt).toEqual(new Date(NOW.getTime() + 120_000));
  });

  it("refuses a message addressed to another agent and a lifetime out of bounds, sending nothing", async () => {
    const { sent, transport } = capture();
    const options = { transport, signer: control.signer, clock: fixedClock(NOW), random: counter() };
    await expect(createControlChannel(options).sendToAgent(OTHER, result(AGENT))).rejects.toThrow(
      /addressed to another agent/,
    );
    for (const ttlSeconds of [0, 1.5, MAX_CONTROL_LIFETIME_SECONDS + 1]) {
      expect(() => createControlChannel({ ...options, ttlSeconds })).toThrow(TypeError);
    }
    expect(sent).toEqual([]);
  });
});
