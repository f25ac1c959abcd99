/**
 * An MAA-compatible token issuer whose next tokens a test can bend: it signs exactly as the
 * local attestation server's issuer does (RS256, `{alg, jku, kid, typ}`, an x5c-only `/certs`
 * entry, MAA's time claims), but before signing it hands header and claims to the case's
 * `mutation`, which may change them, re-encode them by hand (duplicate members), sign with
 * another key or not sign at all. The local attestation engine built over it still verifies
 * the evidence for real; only what it says about it is then distorted, so every token case
 * reaches the functions' token validation (and, when that passes, Key Vault's) as a real MAA
 * answer would.
 */
import { createHash, createHmac, generateKeyPairSync, randomUUID, sign, type KeyObject } from "node:crypto";
import { buildCertificate } from "../../core/x509/certificate.js";
import type { IssueOptions, MaaTokenIssuer } from "../../core/token/index.js";

export interface TokenParts {
  header: Record<string, unknown>;
  claims: Record<string, unknown>;
}

export interface TokenTools {
  /** The issuer's signing key (the one `/certs` publishes). */
  readonly key: KeyObject;
  /** The issuer's public key as PEM: what an HS256 confusion attack keys the HMAC with. */
  readonly publicKeyPem: string;
  /** A key `/certs` does not publish. */
  readonly rogueKey: KeyObject;
  /** `base64url(header).base64url(payload)` signed RS256 with `key` (default: the issuer's). */
  sign(header: object | string, payload: object | string, key?: KeyObject): string;
  /** HS256 over the signing input with `secret`. */
  hmac(header: object, payload: object, secret: string): string;
  encode(part: object | string): string;
}

export type TokenMutation = (parts: TokenParts, tools: TokenTools) => string;

export interface HostileIssuer extends MaaTokenIssuer {
  /** The mutation applied to every token until it is set again (undefined: honest tokens). */
  mutation: TokenMutation | undefined;
  readonly tools: TokenTools;
}

const LIFETIME_SECONDS = 8 * 3600;

export function createHostileIssuer(issuerUrl: string): HostileIssuer {
  const issuer = issuerUrl.replace(/\/$/, "");
  const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const rogue = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const name = [["CN", issuer]] as const;
  const certificate = buildCertificate({
    subject: name,
    issuer: name,
    serialNumber: 0x5eedn,
    notBefore: new Date("2019-05-01T00:00:00Z"),
    notAfter: new Date("2050-12-31T23:59:59Z"),
    publicKey,
    signingKey: privateKey,
    signatureAlgorithm: "rsa-sha256",
  });
  const kid = createHash("sha256").update(certificate.raw).digest("base64");
  const encode = (part: object | string): string =>
    Buffer.from(typeof part === "string" ? part : JSON.stringify(part), "utf8").toString("base64url");
  const tools: TokenTools = {
    key: privateKey,
    publicKeyPem: publicKey.export({ type: "spki", format: "pem" }).toString(),
    rogueKey: rogue.privateKey,
    encode,
    sign(header, payload, key = privateKey) {
      const input = `${encode(header)}.${encode(payload)}`;
      return `${input}.${sign("sha256", Buffer.from(input), key).toString("base64url")}`;
    },
    hmac(header, payload, secret) {
      const input = `${encode(header)}.${encode(payload)}`;
      return `${input}.${createHmac("sha256", secret).update(input).digest("base64url")}`;
    },
  };
  const self: HostileIssuer = {
    issuer,
    kid,
    certificate,
    publicKey,
    mutation: undefined,
    tools,
    certsDocument: () => ({ keys: [{ x5c: [certificate.raw.toString("base64")], kid, kty: "RSA" }] }),
    openIdConfiguration: () => ({
      response_types_supported: ["token", "none"],
      id_token_signing_alg_values_supported: ["RS256"],
      revocation_endpoint: `${issuer}/revoke`,
      issuer,
      jwks_uri: `${issuer}/certs`,
      claims_supported: ["nonce", "x-ms-ver", "x-ms-attestation-type"],
    }),
    issue(claims: Readonly<Record<string, unknown>>, options: IssueOptions): Promise<string> {
      const iat = Math.floor(options.at.getTime() / 1000);
      const all: Record<string, unknown> = {
        iss: issuer,
        iat,
        nbf: iat,
        exp: iat + LIFETIME_SECONDS,
        jti: createHash("sha256").update(randomUUID()).digest("hex"),
        "x-ms-ver": "1.0",
        ...(options.nonce === undefined ? {} : { nonce: options.nonce }),
      };
      for (const [claim, value] of Object.entries(claims)) if (value !== undefined) all[claim] = value;
      const header = { alg: "RS256", jku: `${issuer}/certs`, kid, typ: "JWT" };
      const mutation = self.mutation;
      return Promise.resolve(
        mutation === undefined ? tools.sign(header, all) : mutation({ header, claims: all }, tools),
      );
    },
  };
  return self;
}
