/**
 * Test signers for MAA token tests: RSA keys with self-signed certificates published in MAA's
 * x5c-only `/certs` form, and a way to sign any header and payload (including ones the
 * validator must refuse) with them.
 */
import { createHash, createHmac, generateKeyPairSync, sign, constants, type KeyObject } from "node:crypto";
import { buildCertificate } from "../../../core/x509/certificate.js";

export interface TestSigner {
  readonly kid: string;
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
  readonly x5c: string;
  /** `{"keys":[{x5c,kid,kty}]}` for this signer, optionally under another kid. */
  certsDocument(kid?: string): { keys: { x5c: string[]; kid: string; kty: string }[] };
  /** Signs with RS256 (or another algorithm the test names) over the exact header and payload. */
  sign(header: object, payload: object | string, alg?: SigningAlgorithm): string;
  /** RS256 over an exact signing input `<header part>.<payload part>`, however malformed. */
  signInput(input: string): string;
}

export type SigningAlgorithm = "RS256" | "RS384" | "PS256" | "HS256-with-public-pem" | "none";

export const b64url = (data: string | Uint8Array): string => Buffer.from(data).toString("base64url");

export function createTestSigner(subject = "https://test.attest.example", modulusLength = 2048): TestSigner {
  const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength });
  const certificate = buildCertificate({
    subject: [["CN", subject]],
    issuer: [["CN", subject]],
    serialNumber: 7n,
    notBefore: new Date("2019-05-01T00:00:00Z"),
    notAfter: new Date("2050-12-31T23:59:59Z"),
    publicKey,
    signingKey: privateKey,
    signatureAlgorithm: "rsa-sha256",
  });
  const kid = createHash("sha256").update(certificate.raw).digest("base64");
  const x5c = certificate.raw.toString("base64");
  return {
    kid,
    privateKey,
    publicKey,
    x5c,
    certsDocument: (asKid = kid) => ({ keys: [{ x5c: [x5c], kid: asKid, kty: "RSA" }] }),
    sign(header, payload, alg = "RS256") {
      const input = `${b64url(JSON.stringify(header))}.${b64url(typeof payload === "string" ? payload : JSON.stringify(payload))}`;
      return `${input}.${b64url(signature(alg, input, privateKey, publicKey))}`;
    },
    signInput: (input) => `${input}.${b64url(signature("RS256", input, privateKey, publicKey))}`,
  };
}

function signature(
  alg: SigningAlgorithm,
  input: string,
  privateKey: KeyObject,
  publicKey: KeyObject,
): Buffer {
  switch (alg) {
    case "RS256":
      return sign("sha256", Buffer.from(input), privateKey);
    case "RS384":
      return sign("sha384", Buffer.from(input), privateKey);
    case "PS256":
      return sign("sha256", Buffer.from(input), {
        key: privateKey,
        padding: constants.RSA_PKCS1_PSS_PADDING,
        saltLength: 32,
      });
    case "HS256-with-public-pem":
      // The classic confusion attack: the verifier's public key used as an HMAC secret.
      return createHmac("sha256", publicKey.export({ type: "spki", format: "pem" }))
        .update(input)
        .digest();
    case "none":
      return Buffer.alloc(0);
  }
}

export const sha256Hex = (data: Uint8Array | string): string =>
  createHash("sha256").update(data).digest("hex");
