/**
 * Who is asking for a deployment. Two ways in (DESIGN §6 rule 5), checked before the body is
 * parsed and before anything is written:
 *
 * **HMAC** (`X-Shield-Signature: sha256=<hex>`, `X-Shield-Timestamp: <unix seconds>`,
 * `X-Shield-Delivery: <id>`): checks, in order,
 * 1. all three headers present and well-formed (ERR_WEBHOOK_UNAUTHENTICATED);
 * 2. the timestamp within the window of now, either side (ERR_WEBHOOK_TIMESTAMP);
 * 3. HMAC-SHA256 with the shared secret over `timestamp + "." + raw body`, compared in constant
 *    time (ERR_WEBHOOK_SIGNATURE);
 * 4. the delivery id not seen within the replay window (ERR_WEBHOOK_REPLAYED) — only a signed,
 *    fresh request reaches the replay cache, so nobody can fill it with guesses.
 *
 * **OIDC** (`Authorization: Bearer <pipeline token>`): `jose` verifies, in order, `alg` (RS256
 * only), the key from the configured issuer's JWKS (never the token's own headers), the
 * signature, then `iss` pinned, `aud` pinned, `exp`/`nbf` (ERR_WEBHOOK_TOKEN,
 * ERR_WEBHOOK_TOKEN_AUDIENCE, ERR_WEBHOOK_TOKEN_EXPIRED). Which keys the token's repository may
 * change is decided after the body is parsed (`authorizeKeys`).
 *
 * Messages never contain the token, the signature or the secret.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { errors as joseErrors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from "jose";
import { ShieldError } from "../errors.js";
import type { Clock } from "../ports/clock.js";
import type { PolicyStateStore } from "../ports/policy-state.js";
import type { SecretReader } from "../ports/secrets.js";
import { DELIVERY_ID_PATTERN } from "../state/policy-records.js";

export const SIGNATURE_HEADER = "x-shield-signature";
export const TIMESTAMP_HEADER = "x-shield-timestamp";
export const DELIVERY_HEADER = "x-shield-delivery";

/** One pipeline allowed to change a key: every given claim must equal the token's. */
export interface PipelineRule {
  readonly repository: string;
  readonly ref?: string;
  readonly environment?: string;
  readonly job_workflow_ref?: string;
}

export interface OidcConfig {
  readonly issuer: string;
  readonly audience: string;
  /** Key name → the pipelines that may change it. */
  readonly allow: Readonly<Record<string, readonly PipelineRule[]>>;
}

export interface HmacConfig {
  /** The Key Vault secret holding the shared key. */
  readonly secretName: string;
}

export interface AuthenticateConfig {
  readonly hmac?: HmacConfig;
  readonly oidc?: OidcConfig;
  /** Accepted clock difference for HMAC timestamps, either side (default 300 s). */
  readonly timestampWindowSeconds?: number;
}

export interface AuthenticatePorts {
  readonly policyState: PolicyStateStore;
  readonly secrets?: SecretReader;
  /** The OIDC issuer's signing keys (a `createRemoteJWKSet` built at the edge). */
  readonly oidcKeys?: JWTVerifyGetKey;
  readonly clock: Clock;
}

export type Caller =
  | { readonly kind: "hmac"; readonly deliveryId: string }
  | { readonly kind: "oidc"; readonly claims: JWTPayload };

export type Headers = Readonly<Record<string, string | undefined>>;

const SIGNATURE = /^sha256=([0-9a-f]{64})$/;
const TIMESTAMP = /^[0-9]{1,12}$/;
export const DEFAULT_TIMESTAMP_WINDOW_SECONDS = 300;

const unauthenticated = (message: string) => new ShieldError("ERR_WEBHOOK_UNAUTHENTICATED", message);

/** The signature a sender computes (`shield deploy` uses the same function). */
export function webhookSignature(secret: string, timestamp: string, body: Uint8Array): string {
  const mac = createHmac("sha256", Buffer.from(secret, "utf8"));
  mac.update(`${timestamp}.`, "utf8");
  mac.update(body);
  return `sha256=${mac.digest("hex")}`;
}

export function createAuthenticator(ports: AuthenticatePorts, config: AuthenticateConfig) {
  const windowSeconds = config.timestampWindowSeconds ?? DEFAULT_TIMESTAMP_WINDOW_SECONDS;
  if (config.hmac === undefined && config.oidc === undefined) {
    throw new TypeError("configure HMAC, OIDC or both");
  }
  if (config.hmac !== undefined && ports.secrets === undefined)
    throw new TypeError("HMAC needs a SecretReader");
  if (config.oidc !== undefined && ports.oidcKeys === undefined) throw new TypeError("OIDC needs its keys");

  async function hmac(headers: Headers, body: Uint8Array, hmacConfig: HmacConfig): Promise<Caller> {
    const signature = SIGNATURE.exec(headers[SIGNATURE_HEADER] ?? "");
    const timestamp = headers[TIMESTAMP_HEADER] ?? "";
    const deliveryId = headers[DELIVERY_HEADER] ?? "";
    if (signature === null || !TIMESTAMP.test(timestamp) || !DELIVERY_ID_PATTERN.test(deliveryId)) {
      throw unauthenticated(
        `a signed request needs ${SIGNATURE_HEADER} (sha256=<hex>), ${TIMESTAMP_HEADER} and ${DELIVERY_HEADER}`,
      );
    }
    const now = ports.clock.now();
    const skew = Math.abs(now.getTime() / 1000 - Number(timestamp));
    if (skew > windowSeconds) {
      throw new ShieldError(
        "ERR_WEBHOOK_TIMESTAMP",
        `the request timestamp is outside the ${windowSeconds} s window`,
      );
    }
    const secret = await ports.secrets!.getSecret(hmacConfig.secretName);
    const expected = Buffer.from(webhookSignature(secret, timestamp, body).slice("sha256=".length), "hex");
    const given = Buffer.from(signature[1]!, "hex");
    if (!timingSafeEqual(expected, given)) {
      throw new ShieldError("ERR_WEBHOOK_SIGNATURE", "the request signature does not verify");
    }
    // Remembered for longer than a timestamp stays acceptable, so no replay outlives its entry.
    const use = await ports.policyState.rememberDelivery(deliveryId, {
      at: now,
      expiresAt: new Date(now.getTime() + 2 * windowSeconds * 1000 + 60_000),
    });
    if (use === "replayed") throw new ShieldError("ERR_WEBHOOK_REPLAYED", "this delivery id was seen before");
    return { kind: "hmac", deliveryId };
  }

  async function oidc(token: string, oidcConfig: OidcConfig): Promise<Caller> {
    try {
      const { payload } = await jwtVerify(token, ports.oidcKeys!, {
        issuer: oidcConfig.issuer,
        audience: oidcConfig.audience,
        algorithms: ["RS256"],
        currentDate: ports.clock.now(),
        clockTolerance: 30,
        requiredClaims: ["exp", "iat", "repository"],
      });
      return { kind: "oidc", claims: payload };
    } catch (error) {
      throw oidcError(error);
    }
  }

  return {
    /** Authenticates the request; the body is the raw bytes as received. */
    async authenticate(headers: Headers, body: Uint8Array): Promise<Caller> {
      const authorization = headers["authorization"];
      if (authorization !== undefined && config.oidc !== undefined) {
        const match = /^Bearer ([A-Za-z0-9_.-]{1,16384})$/.exec(authorization);
        if (match === null) throw unauthenticated("the Authorization header must be a Bearer token");
        return oidc(match[1]!, config.oidc);
      }
      if (headers[SIGNATURE_HEADER] !== undefined && config.hmac !== undefined) {
        return hmac(headers, body, config.hmac);
      }
      throw unauthenticated(
        [config.oidc && "a Bearer token", config.hmac && "an HMAC signature"].filter(Boolean).join(" or ") +
          " is required",
      );
    },

    /** OIDC callers may change only the keys their pipeline is allowed for (ERR_WEBHOOK_NOT_ALLOWED). */
    authorizeKeys(caller: Caller, keyNames: readonly string[]): void {
      if (caller.kind !== "oidc") return;
      const claims = caller.claims;
      const denied = keyNames.filter(
        (key) =>
          !(config.oidc?.allow[key] ?? []).some(
            (rule) =>
              claims["repository"] === rule.repository &&
              (rule.ref === undefined || claims["ref"] === rule.ref) &&
              (rule.environment === undefined || claims["environment"] === rule.environment) &&
              (rule.job_workflow_ref === undefined || claims["job_workflow_ref"] === rule.job_workflow_ref),
          ),
      );
      if (denied.length > 0) {
        throw new ShieldError("ERR_WEBHOOK_NOT_ALLOWED", "this pipeline may not change these keys", {
          violations: denied.map((key) => ({
            field: `keys.${key}`,
            expected: "a pipeline on the key's allowlist",
            actual:
              typeof claims["repository"] === "string" ? claims["repository"].slice(0, 200) : "no repository",
          })),
        });
      }
    },
  };
}

/** Who asked, as a deployment records it. */
export function callerName(caller: Caller): string {
  if (caller.kind === "hmac") return "hmac";
  const repository = caller.claims["repository"];
  return typeof repository === "string" ? `oidc:${repository}`.slice(0, 300) : "oidc";
}

function oidcError(error: unknown): ShieldError {
  if (error instanceof joseErrors.JWTExpired) {
    return new ShieldError("ERR_WEBHOOK_TOKEN_EXPIRED", "the pipeline token has expired");
  }
  if (error instanceof joseErrors.JWTClaimValidationFailed && error.claim === "aud") {
    return new ShieldError("ERR_WEBHOOK_TOKEN_AUDIENCE", "the pipeline token is for another audience");
  }
  if (error instanceof joseErrors.JWTClaimValidationFailed) {
    return new ShieldError("ERR_WEBHOOK_TOKEN", `the pipeline token's ${error.claim} claim is not accepted`);
  }
  if (error instanceof joseErrors.JWKSTimeout) {
    return new ShieldError("ERR_JWKS_UNAVAILABLE", "the pipeline token issuer's keys could not be fetched");
  }
  if (error instanceof joseErrors.JOSEError) {
    return new ShieldError("ERR_WEBHOOK_TOKEN", `the pipeline token is not valid (${error.code})`);
  }
  return new ShieldError("ERR_JWKS_UNAVAILABLE", "the pipeline token could not be checked");
}
