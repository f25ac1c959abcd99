/**
 * The one place that knows `@azure/keyvault-keys`' types: client options, the create/update
 * request shapes, `KeyVaultKey` → `KeyVersionInfo`, and the SDK's errors → typed ShieldErrors.
 * Only types are imported from the SDK here, so loading this module never loads the SDK.
 *
 * Error mapping (status from the SDK's `RestError`):
 * - 429 → ERR_THROTTLED; 408 → ERR_TIMEOUT; 5xx → ERR_UPSTREAM_UNAVAILABLE (all transient);
 * - no response (connection refused or reset, DNS) → ERR_NETWORK; an aborted or timed-out request
 *   → ERR_TIMEOUT (transient);
 * - 403 on `release` → ERR_POLICY_DENIED (terminal; Key Vault's reason is kept, with anything
 *   token-like removed); 401, 403 elsewhere, 404, 400, 409 and other 4xx → ERR_CONFIG: a missing
 *   key, version or permission, or a request the vault refuses, is an operator's problem;
 * - a credential that cannot produce a token → ERR_CONFIG, or ERR_UPSTREAM_UNAVAILABLE when the
 *   identity endpoint answered 5xx.
 */
import { serviceOrigin } from "../loopback.js";
import type { TokenCredential } from "@azure/core-auth";
import type {
  CreateEcKeyOptions,
  CreateOctKeyOptions,
  CreateRsaKeyOptions,
  KeyClientOptions,
  KeyReleasePolicy,
  KeyVaultKey,
  ReleaseKeyOptions,
} from "@azure/keyvault-keys";
import { ShieldError, isShieldError, type ShieldErrorCode } from "../../core/errors.js";
import type { CreateKeyOptions, KeyVersionInfo, ManagedKeyType } from "../../core/ports/key-store.js";
import {
  parseReleasePolicy,
  serializeReleasePolicy,
  RELEASE_POLICY_CONTENT_TYPE,
  type ReleasePolicy,
} from "../../core/policy/index.js";
import type { ReleaseEncryption } from "../../core/keywrap/index.js";

export type { TokenCredential };

/** What callers may tune; transport security is decided from the vault URL, not here. */
export type KeyVaultClientSettings = Omit<
  KeyClientOptions,
  "allowInsecureConnection" | "disableChallengeResourceVerification"
>;

export type KeyVaultOperation = "create" | "get" | "list" | "release" | "rotate" | "sign" | "update";

/**
 * Pinned API version: the service's behaviour for release, rotation and policies is what the
 * project's references describe for 7.x; a newer default in a future SDK must be a decision.
 */
export const KEY_VAULT_API_VERSION = "7.6";

/**
 * One quick retry inside the SDK for a 5xx, 408 or a dropped connection (and for 429/503 that
 * carry Retry-After), with a short delay; everything beyond is the caller's `retrying()`, whose
 * jittered backoff spans longer outages. Two layers of long retries would multiply the calls.
 */
export const KEY_VAULT_RETRY_OPTIONS = {
  maxRetries: 1,
  retryDelayInMs: 250,
  maxRetryDelayInMs: 2_000,
} as const;

const MANAGED_KEY_TYPES: readonly string[] = ["oct-HSM", "RSA-HSM", "EC-HSM"];

/**
 * Checks the vault URL: `https://` anywhere, plain `http://` only on a loopback host (the local
 * Key Vault-compatible server). Returns the origin and whether the connection is a local one.
 */
export function checkVaultUrl(vaultUrl: string): { readonly origin: string; readonly local: boolean } {
  return serviceOrigin(vaultUrl, {
    invalid: "the Key Vault URL is not a valid URL",
    notOrigin: "the Key Vault URL must be an origin without a path, query or credentials",
    insecure: "the Key Vault URL must use https (plain http only on loopback)",
  });
}

/** Options for `new KeyClient(...)`. */
export function keyClientOptions(local: boolean, settings: KeyVaultClientSettings = {}): KeyClientOptions {
  return {
    serviceVersion: KEY_VAULT_API_VERSION,
    ...settings,
    retryOptions: { ...KEY_VAULT_RETRY_OPTIONS, ...settings.retryOptions },
    // A loopback host is no subdomain of vault.azure.net, so the challenge's resource check
    // would refuse it; both relaxations exist for the local server only.
    allowInsecureConnection: local,
    disableChallengeResourceVerification: local,
  };
}

/** Key Vault's `KeyReleasePolicy` for a parsed policy (the SDK base64url-encodes the bytes). */
export function releasePolicyForSdk(policy: ReleasePolicy): KeyReleasePolicy {
  return {
    encodedPolicy: Buffer.from(serializeReleasePolicy(policy), "utf8"),
    contentType: RELEASE_POLICY_CONTENT_TYPE,
    immutable: false,
  };
}

export type SdkCreateRequest =
  | { readonly method: "createRsaKey"; readonly options: CreateRsaKeyOptions }
  | { readonly method: "createEcKey"; readonly options: CreateEcKeyOptions }
  | { readonly method: "createOctKey"; readonly options: CreateOctKeyOptions };

/** An exportable HSM key with the given release policy (none given: the vault refuses it). */
export function createKeyRequest(options: CreateKeyOptions, timeoutMs: number): SdkCreateRequest {
  const common = {
    hsm: true,
    exportable: true,
    ...(options.releasePolicy === undefined
      ? {}
      : { releasePolicy: releasePolicyForSdk(options.releasePolicy) }),
    ...(options.expiresOn === undefined ? {} : { expiresOn: options.expiresOn }),
    ...(options.tags === undefined ? {} : { tags: { ...options.tags } }),
    requestOptions: { timeout: timeoutMs },
  };
  switch (options.keyType) {
    case "RSA-HSM":
      return { method: "createRsaKey", options: { ...common, keySize: options.keySize ?? 2048 } };
    case "EC-HSM":
      return { method: "createEcKey", options: { ...common, curve: options.curve ?? "P-256" } };
    case "oct-HSM":
      return { method: "createOctKey", options: { ...common, keySize: options.keySize ?? 256 } };
    default:
      throw new TypeError("keyType must be oct-HSM, RSA-HSM or EC-HSM");
  }
}

export function releaseKeyOptions(
  options: { readonly version?: string; readonly encryption: ReleaseEncryption; readonly nonce?: string },
  timeoutMs: number,
): ReleaseKeyOptions {
  return {
    algorithm: options.encryption,
    ...(options.version === undefined ? {} : { version: options.version }),
    ...(options.nonce === undefined ? {} : { nonce: options.nonce }),
    requestOptions: { timeout: timeoutMs },
  };
}

/**
 * A key version as the port describes it. The release policy is parsed back with the trust
 * core's parser: a policy this project cannot read is an error (ERR_POLICY_MALFORMED), never
 * silently dropped.
 */
export function keyVersionInfoFromKeyVaultKey(key: KeyVaultKey): KeyVersionInfo {
  const { properties } = key;
  const keyType = key.keyType;
  if (keyType === undefined || !MANAGED_KEY_TYPES.includes(keyType)) {
    throw new ShieldError("ERR_CONFIG", `key ${key.name} is ${keyType ?? "untyped"}, not an HSM key type`);
  }
  const version = properties.version;
  const id = key.id ?? properties.id;
  if (version === undefined || id === undefined) {
    throw new ShieldError("ERR_CONFIG", `Key Vault returned key ${key.name} without a version`);
  }
  const encoded = properties.releasePolicy?.encodedPolicy;
  return {
    name: key.name,
    version,
    id,
    keyType: keyType as ManagedKeyType,
    exportable: properties.exportable === true,
    enabled: properties.enabled !== false,
    ...(encoded === undefined || encoded.length === 0 ? {} : { releasePolicy: parseReleasePolicy(encoded) }),
    ...(properties.releasePolicy?.immutable === true ? { releasePolicyImmutable: true } : {}),
    ...(properties.createdOn === undefined ? {} : { createdOn: properties.createdOn }),
    ...(properties.expiresOn === undefined ? {} : { expiresOn: properties.expiresOn }),
  };
}

// ---------------------------------------------------------------------------------------------
// Errors

interface RestErrorShape {
  readonly name: string;
  readonly statusCode?: number;
  readonly code?: string;
  readonly message?: string;
  readonly details?: unknown;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null;
}

function isRestError(error: unknown): error is RestErrorShape {
  return isObject(error) && error["name"] === "RestError";
}

/** Key Vault's own error code and message from the response body, when there is one. */
function serviceError(error: RestErrorShape): { code?: string; message?: string; innerCode?: string } {
  const details = error.details;
  if (isObject(details) && isObject(details["error"])) {
    const inner = details["error"];
    const innerError = inner["innererror"];
    return {
      ...(typeof inner["code"] === "string" ? { code: inner["code"] } : {}),
      ...(typeof inner["message"] === "string" ? { message: inner["message"] } : {}),
      ...(isObject(innerError) && typeof innerError["code"] === "string"
        ? { innerCode: innerError["code"] }
        : {}),
    };
  }
  return typeof error.code === "string" ? { code: error.code } : {};
}

const JWT_LIKE = /[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*/g;
const LONG_BASE64 = /[A-Za-z0-9+/_=-]{64,}/g;
const SERVICE_CODE = /^[A-Za-z0-9_.]{1,64}$/;

/** Key Vault's reason for a refusal, cut short and with anything token-like removed. */
export function sanitizeServiceMessage(message: string | undefined): string {
  if (message === undefined) return "";
  const cleaned = message
    .replace(JWT_LIKE, "[token]")
    .replace(LONG_BASE64, "[data]")
    .replace(/\s+/g, " ")
    .trim();
  return cleaned.length > 300 ? `${cleaned.slice(0, 300)}…` : cleaned;
}

/** Key Vault's codes for a caller that lacks permission (as opposed to a release-policy refusal). */
const PERMISSION_CODES = new Set([
  "ForbiddenByRbac",
  "ForbiddenByPolicy",
  "AccessDenied",
  "ForbiddenByFirewall",
  "ForbiddenByConnection",
]);

const SYSTEM_TIMEOUT_CODES = new Set(["ETIMEDOUT", "ESOCKETTIMEDOUT", "UND_ERR_CONNECT_TIMEOUT"]);

/** Maps anything the SDK (or the credential under it) throws to a typed error. */
export function keyVaultError(error: unknown, operation: KeyVaultOperation, keyName: string): ShieldError {
  if (isShieldError(error)) return error;
  const subject = `Key Vault ${operation} of key ${keyName}`;
  const make = (code: ShieldErrorCode, message: string) => new ShieldError(code, message, { cause: error });
  if (!isObject(error)) return make("ERR_IO", `${subject} failed`);
  const name = typeof error["name"] === "string" ? error["name"] : "";
  if (name === "AbortError") return make("ERR_TIMEOUT", `${subject} timed out`);
  if (isRestError(error)) {
    const status = error.statusCode;
    if (status === undefined) {
      return typeof error.code === "string" && SYSTEM_TIMEOUT_CODES.has(error.code)
        ? make("ERR_TIMEOUT", `${subject} timed out`)
        : make("ERR_NETWORK", `${subject} could not reach the vault`);
    }
    const service = serviceError(error);
    const code = service.code !== undefined && SERVICE_CODE.test(service.code) ? ` (${service.code})` : "";
    if (status === 429) return make("ERR_THROTTLED", `${subject} was throttled`);
    if (status === 408) return make("ERR_TIMEOUT", `${subject} timed out`);
    if (status >= 500) return make("ERR_UPSTREAM_UNAVAILABLE", `${subject} failed: HTTP ${status}${code}`);
    // A 403 for missing permissions (RBAC, access policy, firewall) is the operator's problem,
    // not a verdict on the workload's evidence.
    const permission = [service.code, service.innerCode].some(
      (c) => c !== undefined && PERMISSION_CODES.has(c),
    );
    if (status === 403 && operation === "release" && !permission) {
      const reason = sanitizeServiceMessage(service.message);
      return make(
        "ERR_POLICY_DENIED",
        `Key Vault refused to release key ${keyName}${reason ? `: ${reason}` : ""}`,
      );
    }
    if (status === 401) return make("ERR_CONFIG", `${subject} was not authenticated: HTTP 401${code}`);
    if (status === 403) return make("ERR_CONFIG", `${subject} is not permitted: HTTP 403${code}`);
    if (status === 404) return make("ERR_CONFIG", `${subject}: key or version not found${code}`);
    return make("ERR_CONFIG", `${subject} was refused: HTTP ${status}${code}`);
  }
  if (name === "CredentialUnavailableError") {
    return make("ERR_CONFIG", `${subject}: no credential is available`);
  }
  if (name === "AuthenticationError") {
    const status = error["statusCode"];
    return typeof status === "number" && status >= 500
      ? make("ERR_UPSTREAM_UNAVAILABLE", `${subject}: the identity endpoint failed`)
      : make("ERR_CONFIG", `${subject}: the credential could not get a token`);
  }
  return make("ERR_IO", `${subject} failed`);
}
