import { createHash } from "node:crypto";
import { beforeAll, describe, expect, it } from "vitest";
import { decodeProtectedHeader, decodeJwt } from "jose";
import {
  createMaaTokenIssuer,
  staticSigningKeys,
  validateMaaToken,
  type MaaTokenIssuer,
} from "../../../core/token/index.js";

const AT = new Date("2026-03-01T00:00:00Z");
const IAT = AT.getTime() / 1000;

let issuer: MaaTokenIssuer;

beforeAll(async () => {
  issuer = await createMaaTokenIssuer({ issuer: "http://127.0.0.1:8443/" });
});

describe("createMaaTokenIssuer", () => {
  it("publishes a self-signed certificate under kid = base64(sha256(DER)), in MAA's x5c-only form", () => {
    expect(issuer.issuer).toBe("http://127.0.0.1:8443");
    expect(issuer.certificate.subject).toBe("CN=http://127.0.0.1:8443");
    expect(issuer.certificate.issuer).toBe("CN=http://127.0.0.1:8443");
    expect(issuer.certificate.verify(issuer.publicKey)).toBe(true);
    expect(issuer.publicKey.asymmetricKeyDetails?.modulusLength).toBe(2048);
    expect(issuer.kid).toBe(createHash("sha256").update(issuer.certificate.raw).digest("base64"));
    expect(JSON.stringify(issuer.certsDocument())).toBe(
      JSON.stringify({
        keys: [{ x5c: [issuer.certificate.raw.toString("base64")], kid: issuer.kid, kty: "RSA" }],
      }),
    );
  });

  it("serves OpenID metadata in snake_case", () => {
    expect(issuer.openIdConfiguration()).toMatchObject({
      issuer: "http://127.0.0.1:8443",
      jwks_uri: "http://127.0.0.1:8443/certs",
      revocation_endpoint: "http://127.0.0.1:8443/revoke",
      id_token_signing_alg_values_supported: ["RS256"],
      response_types_supported: ["token", "none"],
    });
  });

  it("issues tokens with MAA's header and standard claims, merged with the given claims", async () => {
    const token = await issuer.issue(
      { "x-ms-attestation-type": "sevsnpvm", "x-ms-sevsnpvm-vmpl": 0 },
      { at: new Date(AT.getTime() + 999), nonce: "n-7" },
    );
    expect(Buffer.from(token.split(".")[0]!, "base64url").toString()).toBe(
      JSON.stringify({ alg: "RS256", jku: "http://127.0.0.1:8443/certs", kid: issuer.kid, typ: "JWT" }),
    );
    expect(decodeProtectedHeader(token).kid).toBe(issuer.kid);
    const claims = decodeJwt(token);
    expect(claims).toMatchObject({
      iss: "http://127.0.0.1:8443",
      iat: IAT,
      nbf: IAT,
      exp: IAT + 28800,
      nonce: "n-7",
      "x-ms-ver": "1.0",
      "x-ms-attestation-type": "sevsnpvm",
      "x-ms-sevsnpvm-vmpl": 0,
    });
    expect(claims.jti).toMatch(/^[0-9a-f]{64}$/);
    expect(Object.keys(claims)).toEqual([...Object.keys(claims)].sort());
    expect(decodeJwt(await issuer.issue({}, { at: AT })).jti).not.toBe(claims.jti);
  });

  it("lets given claims replace or drop standard ones", async () => {
    const claims = decodeJwt(await issuer.issue({ exp: IAT + 5, "x-ms-ver": undefined }, { at: AT }));
    expect(claims.exp).toBe(IAT + 5);
    expect(claims).not.toHaveProperty("x-ms-ver");
  });

  it("issues tokens that validate against its /certs document after a JSON round trip", async () => {
    const token = await issuer.issue({ "x-ms-attestation-type": "sgx" }, { at: AT, nonce: "n-8" });
    const keys = staticSigningKeys(JSON.parse(JSON.stringify(issuer.certsDocument())));
    const result = await validateMaaToken(token, {
      keys,
      issuer: "http://127.0.0.1:8443",
      at: new Date(AT.getTime() + 28799_000),
      expectedNonce: "n-8",
      requireAttestationType: "sgx",
    });
    expect(result.header.jku).toBe("http://127.0.0.1:8443/certs");
  });

  it("honours rsaBits and lifetimeSeconds", async () => {
    const other = await createMaaTokenIssuer({
      issuer: "https://maa.example",
      rsaBits: 3072,
      lifetimeSeconds: 60,
    });
    expect(other.publicKey.asymmetricKeyDetails?.modulusLength).toBe(3072);
    expect(decodeJwt(await other.issue({}, { at: AT })).exp).toBe(IAT + 60);
    expect(other.kid).not.toBe(issuer.kid);
  });

  it("treats bad arguments as caller misuse", async () => {
    await expect(createMaaTokenIssuer({ issuer: "maa.example" })).rejects.toBeInstanceOf(TypeError);
    await expect(
      createMaaTokenIssuer({ issuer: "https://maa.example", rsaBits: 1024 as 2048 }),
    ).rejects.toBeInstanceOf(TypeError);
    await expect(issuer.issue({}, { at: new Date(Number.NaN) })).rejects.toBeInstanceOf(TypeError);
  });
});
