/**
 * `shield token verify`: validates an MAA token exactly as the functions do — key by `kid` from
 * the issuer's `/certs` (or a given copy of it), RS256 only, `iss` pinned, lifetime, nonce —
 * and prints its header and claims.
 */
import { decodeJwt } from "jose";
import { ShieldError } from "../../core/errors.js";
import {
  createCachedSigningKeys,
  staticSigningKeys,
  validateMaaToken,
  type SigningKeyResolver,
  type ValidatedMaaToken,
} from "../../core/token/index.js";
import { UsageError, optionalString, parseAt, requireString, type Command } from "../command.js";
import { fetchJson, readJson, readText } from "../io.js";

const MAX_TOKEN_FILE_BYTES = 64 * 1024;

export interface TokenFromFilesOptions {
  readonly tokenPath: string;
  readonly jwksPath?: string | undefined;
  /** Pins `iss`; without a jwks file, keys are fetched from `<issuer>/certs`. */
  readonly issuer?: string | undefined;
  /**
   * Chooses the issuer to pin (and fetch keys from) given the token's unverified `iss`; used by
   * `policy test`, which, like Key Vault, only trusts issuers the policy names.
   */
  readonly issuerFor?: (unverifiedIss: string) => string;
  readonly at: Date;
  readonly nonce?: string | undefined;
}

export interface VerifiedTokenFromFiles {
  readonly issuer: string;
  readonly claims: Record<string, unknown>;
  readonly validated: ValidatedMaaToken;
  readonly keySource: string;
}

function unverifiedIssuer(token: string): string {
  try {
    const iss = decodeJwt(token).iss;
    if (typeof iss === "string") return iss;
  } catch {
    // fall through: the validator reports malformed tokens with its own code
  }
  throw new ShieldError("ERR_TOKEN_MALFORMED", "token has no readable iss claim");
}

export async function verifyTokenFromFiles(options: TokenFromFilesOptions): Promise<VerifiedTokenFromFiles> {
  const token = (await readText(options.tokenPath, "--token", MAX_TOKEN_FILE_BYTES)).trim();
  let pinned = options.issuer;
  if (pinned === undefined && options.issuerFor !== undefined)
    pinned = options.issuerFor(unverifiedIssuer(token));
  let keys: SigningKeyResolver;
  let keySource: string;
  if (options.jwksPath !== undefined) {
    keys = staticSigningKeys(await readJson(options.jwksPath, "--jwks"));
    keySource = options.jwksPath;
  } else if (pinned !== undefined) {
    keys = createCachedSigningKeys({
      issuer: pinned,
      fetchJson: (url) => fetchJson(url),
      clock: { now: () => new Date() },
    });
    keySource = `${pinned.replace(/\/+$/, "")}/certs`;
  } else {
    throw new UsageError("give --issuer (keys are fetched from <issuer>/certs) or --jwks");
  }
  const validated = await validateMaaToken(token, {
    keys,
    issuer: pinned,
    at: options.at,
    expectedNonce: options.nonce,
  });
  return { issuer: validated.claims.iss, claims: { ...validated.claims }, validated, keySource };
}

export const tokenVerify: Command = {
  words: ["token", "verify"],
  summary: "validate an MAA token as the functions do and print its header and claims",
  usage: [
    "Usage: shield token verify --token F [--issuer URL] [--jwks F] [--at T] [--nonce S] [--json]",
    "",
    "  --token F      the MAA token (compact JWT)",
    "  --issuer URL   pins iss; without --jwks, signing keys are fetched from URL/certs",
    "  --jwks F       a /certs document (MAA's x5c form) read from a file; without --issuer the",
    "                 token's iss is reported, not trusted for fetching",
    "  --at T         judge exp/nbf as of this ISO 8601 time (default: now)",
    "  --nonce S      the nonce the token must carry",
  ].join("\n"),
  options: {
    token: { type: "string" },
    issuer: { type: "string" },
    jwks: { type: "string" },
    at: { type: "string" },
    nonce: { type: "string" },
  },
  async run(values) {
    const verified = await verifyTokenFromFiles({
      tokenPath: requireString(values, "token"),
      jwksPath: optionalString(values, "jwks"),
      issuer: optionalString(values, "issuer"),
      at: parseAt(values),
      nonce: optionalString(values, "nonce"),
    });
    const { header, attestationType, tokenHash } = verified.validated;
    return {
      ok: true,
      data: {
        verified: true,
        issuer: verified.issuer,
        issuerPinned: optionalString(values, "issuer") !== undefined,
        attestationType,
        tokenSha256: tokenHash,
        header,
        claims: verified.claims,
      },
      lines: [
        `token verified (sha256 ${tokenHash})`,
        `  issuer            ${verified.issuer}${optionalString(values, "issuer") === undefined ? " (reported, not pinned)" : ""}`,
        `  signing key       kid ${header.kid} from ${verified.keySource}`,
        `  attestation type  ${attestationType}`,
        `  header            ${JSON.stringify(header)}`,
        `  claims            ${JSON.stringify(verified.claims, null, 2).replace(/\n/g, "\n  ")}`,
      ],
    };
  },
};
