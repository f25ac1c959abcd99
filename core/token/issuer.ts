/**
 * An issuer of MAA-compatible tokens, for tests and for the local attestation server. It signs
 * the way Microsoft Azure Attestation does — RS256 with a key published at `<issuer>/certs` as a
 * self-signed certificate in an x5c-only JWK, `kid` = base64 of the certificate's SHA-256, header
 * `{alg, jku, kid, typ}`, an 8-hour lifetime and `x-ms-ver` 1.0 — so that everything that
 * consumes real MAA tokens can be exercised against it unchanged. Which claims a token carries is
 * the caller's business; this module knows no TEE.
 */
import {
  createHash,
  createPublicKey,
  generateKeyPair,
  type KeyObject,
  type X509Certificate,
} from "node:crypto";
import { promisify } from "node:util";
import { CompactSign } from "jose";
import { buildCertificate } from "../x509/certificate.js";
import { systemRandom, type Random } from "../ports/clock.js";
import { issuerBaseUrl } from "./keys.js";

export interface MaaTokenIssuerOptions {
  /** The issuer URL put in `iss`; one trailing slash is dropped. */
  readonly issuer: string;
  readonly rsaBits?: 2048 | 3072;
  /** Token lifetime (default 28800 s, MAA's 8 hours). */
  readonly lifetimeSeconds?: number;
  /** Source of `jti` values and the certificate serial number (default: the system RNG). */
  readonly random?: Random;
  /**
   * The signing key to use instead of a fresh one (an issuer that keeps its key across
   * restarts); RSA of `rsaBits`. With `certificate`, that certificate is served as it is (it
   * must hold this key's public half); without, a self-signed one is made.
   */
  readonly signingKey?: { readonly privateKey: KeyObject; readonly certificate?: X509Certificate };
}

export interface IssueOptions {
  /** The issuing moment: `iat` and `nbf`. */
  readonly at: Date;
  /** Echoed as the `nonce` claim, as MAA echoes the request's nonce. */
  readonly nonce?: string;
}

/** The `/certs` document, in MAA's x5c-only form. */
export interface MaaCertsDocument {
  readonly keys: readonly { readonly x5c: readonly string[]; readonly kid: string; readonly kty: "RSA" }[];
}

/** `/.well-known/openid-configuration`, snake_case as MAA serves it. */
export interface MaaOpenIdConfiguration {
  readonly response_types_supported: readonly string[];
  readonly id_token_signing_alg_values_supported: readonly string[];
  readonly revocation_endpoint: string;
  readonly issuer: string;
  readonly jwks_uri: string;
  readonly claims_supported: readonly string[];
}

export interface MaaTokenIssuer {
  /** The issuer URL, without a trailing slash. */
  readonly issuer: string;
  readonly kid: string;
  readonly certificate: X509Certificate;
  readonly publicKey: KeyObject;
  certsDocument(): MaaCertsDocument;
  openIdConfiguration(): MaaOpenIdConfiguration;
  /**
   * Signs a token: `iss`, `iat`, `nbf`, `exp`, `jti`, `x-ms-ver` (and `nonce` when given), then
   * the given claims, which win on a clash (a claim set to `undefined` is left out).
   */
  issue(claims: Readonly<Record<string, unknown>>, options: IssueOptions): Promise<string>;
}

export const MAA_TOKEN_LIFETIME_SECONDS = 8 * 60 * 60;

// The validity MAA's own signing certificates carry (e.g. sharedeus: 2019-05-01 .. 2050-12-31).
const CERT_NOT_BEFORE = new Date("2019-05-01T00:00:00Z");
const CERT_NOT_AFTER = new Date("2050-12-31T23:59:59Z");

// As listed by MAA's shared providers' OpenID metadata.
const CLAIMS_SUPPORTED = [
  "cnf",
  "nonce",
  "x-ms-ver",
  "x-ms-attestation-type",
  "x-ms-policy-hash",
  "x-ms-policy-signer",
  "x-ms-sgx-is-debuggable",
  "x-ms-sgx-mrenclave",
  "x-ms-sgx-mrsigner",
  "x-ms-sgx-svn",
  "x-ms-sgx-ehd",
  "x-ms-sgx-collateral",
  "is-debuggable",
  "sgx-mrsigner",
  "sgx-mrenclave",
  "product-id",
  "svn",
  "tee",
];

const generateRsaKeyPair = promisify(generateKeyPair);

export async function createMaaTokenIssuer(options: MaaTokenIssuerOptions): Promise<MaaTokenIssuer> {
  const issuer = issuerBaseUrl(options.issuer);
  const rsaBits = options.rsaBits ?? 2048;
  if (rsaBits !== 2048 && rsaBits !== 3072) throw new TypeError("rsaBits must be 2048 or 3072");
  const lifetimeSeconds = options.lifetimeSeconds ?? MAA_TOKEN_LIFETIME_SECONDS;
  if (!Number.isSafeInteger(lifetimeSeconds) || lifetimeSeconds <= 0) {
    throw new TypeError("lifetimeSeconds must be a positive integer");
  }
  const random = options.random ?? systemRandom;

  const given = options.signingKey;
  if (
    given !== undefined &&
    (given.privateKey?.type !== "private" || given.privateKey.asymmetricKeyType !== "rsa")
  ) {
    throw new TypeError("signingKey.privateKey must be an RSA private key");
  }
  const { publicKey, privateKey } =
    given === undefined
      ? await generateRsaKeyPair("rsa", { modulusLength: rsaBits })
      : { publicKey: createPublicKey(given.privateKey), privateKey: given.privateKey };
  if (given?.certificate !== undefined && !given.certificate.publicKey.equals(publicKey)) {
    throw new TypeError("signingKey.certificate does not hold the signing key's public half");
  }
  const name = [["CN", issuer]] as const;
  const certificate =
    given?.certificate ??
    buildCertificate({
      subject: name,
      issuer: name,
      // A positive 63-bit serial: RFC 5280 §4.1.2.2 wants it unique and positive.
      serialNumber: BigInt(`0x${random.bytes(8).toString("hex")}`) & 0x7fffffffffffffffn || 1n,
      notBefore: CERT_NOT_BEFORE,
      notAfter: CERT_NOT_AFTER,
      publicKey,
      signingKey: privateKey,
      signatureAlgorithm: "rsa-sha256",
    });
  const kid = createHash("sha256").update(certificate.raw).digest("base64");
  const jku = `${issuer}/certs`;
  const x5c = certificate.raw.toString("base64");

  return {
    issuer,
    kid,
    certificate,
    publicKey,
    certsDocument: () => ({ keys: [{ x5c: [x5c], kid, kty: "RSA" }] }),
    openIdConfiguration: () => ({
      response_types_supported: ["token", "none"],
      id_token_signing_alg_values_supported: ["RS256"],
      revocation_endpoint: `${issuer}/revoke`,
      issuer,
      jwks_uri: jku,
      claims_supported: [...CLAIMS_SUPPORTED],
    }),
    async issue(claims, issueOptions) {
      if (typeof claims !== "object" || claims === null) throw new TypeError("claims must be an object");
      const at = issueOptions?.at;
      if (!(at instanceof Date) || Number.isNaN(at.getTime()))
        throw new TypeError("options.at must be a valid Date");
      const iat = Math.floor(at.getTime() / 1000);
      const payload: Record<string, unknown> = {
        iss: issuer,
        iat,
        nbf: iat,
        exp: iat + lifetimeSeconds,
        jti: random.bytes(32).toString("hex"),
        "x-ms-ver": "1.0",
        ...(issueOptions.nonce === undefined ? {} : { nonce: issueOptions.nonce }),
        ...claims,
      };
      return new CompactSign(Buffer.from(JSON.stringify(sortedMembers(payload)), "utf8"))
        .setProtectedHeader({ alg: "RS256", jku, kid, typ: "JWT" })
        .sign(privateKey);
    },
  };
}

/** MAA serialises claims with members in code-point order. */
function sortedMembers(payload: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const name of Object.keys(payload).sort()) out[name] = payload[name];
  return out;
}
