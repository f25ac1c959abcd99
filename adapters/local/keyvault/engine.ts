/**
 * The local Key Vault engine: what Azure Key Vault Premium / Managed HSM does with exportable
 * HSM keys and Secure Key Release, done in-process for the embedded default and tests. It keeps
 * keys and their versions (type, size, attributes, release policy, tags, rotation policy), and
 * releases a version only to an attestation token that its release policy accepts, wrapped to
 * the token's `x-ms-runtime` key in Key Vault's signed response (`core/keywrap`), so that the
 * agent's unwrap code runs against the real format. `server.ts` puts Key Vault's REST API in
 * front of it; `key-store.ts` is the `KeyStore` port directly on it.
 *
 * Key material at rest is sealed under the master key (AES-256-GCM, a fresh 96-bit nonce per
 * record, the versioned key id as associated data, so a record cannot be moved to another key).
 * The engine holds only sealed records, in memory and on disk alike; plaintext exists only for
 * the moment a release wraps it, and is zeroed afterwards.
 *
 * Choices where Key Vault's behaviour is not documented (azure-wire-formats §3.3, §8):
 * - `rotate` makes a version of the same type and size that inherits the current version's
 *   release policy (the wire form as stored, `immutable` included), exportability and tags, and
 *   takes `exp` from the rotation policy's `expiryTime` when one is set.
 * - `create` of an exportable key without a release policy inherits the current version's policy
 *   when the key exists (the REST spec requires one only for the first version), and is refused
 *   as `AKV.SKR.1004` otherwise.
 * - `release` without `enc` wraps with `CKM_RSA_AES_KEY_WRAP` (what the SKR sidecar's tokens get
 *   in practice; the default is undocumented) and the response says which `enc` was used.
 * - A disabled key version, or one outside its `nbf`/`exp`, is not released (403).
 * - The rotation policy is stored and served; it is not executed on a timer here.
 */
import {
  constants,
  createCipheriv,
  createDecipheriv,
  createHmac,
  createPrivateKey,
  createPublicKey,
  privateEncrypt,
  createSecretKey,
  generateKeyPair,
  hkdfSync,
  randomBytes,
  timingSafeEqual,
  type KeyObject,
  type X509Certificate,
} from "node:crypto";
import { mkdir, readFile, readdir, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { ShieldError, isShieldError, type ShieldErrorCode, type Violation } from "../../../core/errors.js";
import {
  buildReleaseResponse,
  exportForRelease,
  isReleaseEncryption,
  type ReleaseEncryption,
  type ReleaseResponseSigner,
  type RsaPublicJwk,
} from "../../../core/keywrap/index.js";
import {
  authorityMatchesIssuer,
  evaluateReleasePolicy,
  normalizeIssuer,
  parseReleasePolicy,
  serializeReleasePolicy,
  RELEASE_POLICY_CONTENT_TYPE,
  type Condition,
  type ReleasePolicy,
} from "../../../core/policy/index.js";
import { systemRandom, type Clock, type Random } from "../../../core/ports/clock.js";
import {
  createCachedSigningKeys,
  validateMaaToken,
  DEFAULT_MAX_TOKEN_BYTES,
  type CachedSigningKeysOptions,
  type SigningKeyResolver,
  type ValidatedMaaToken,
} from "../../../core/token/index.js";
import { buildCertificate } from "../../../core/x509/certificate.js";
import { keyAttributesToWire } from "./wire.js";

export type LocalKeyType = "oct-HSM" | "RSA-HSM" | "EC-HSM";
export type LocalCurve = "P-256" | "P-384" | "P-521";

export const LOCAL_KEY_TYPES: readonly LocalKeyType[] = ["oct-HSM", "RSA-HSM", "EC-HSM"];
const RSA_SIZES = [2048, 3072, 4096];
const OCT_SIZES = [128, 192, 256];
const CURVES: readonly LocalCurve[] = ["P-256", "P-384", "P-521"];
const NODE_CURVE: Readonly<Record<LocalCurve, string>> = {
  "P-256": "prime256v1",
  "P-384": "secp384r1",
  "P-521": "secp521r1",
};
const KEY_OPERATIONS = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey", "import", "export"];
const DEFAULT_KEY_OPS: Readonly<Record<LocalKeyType, readonly string[]>> = {
  "RSA-HSM": ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"],
  "EC-HSM": ["sign", "verify"],
  "oct-HSM": ["encrypt", "decrypt", "wrapKey", "unwrapKey"],
};
/** Key Vault's key names. */
const KEY_NAME = /^[0-9A-Za-z-]{1,127}$/;
const KEY_VERSION = /^[0-9a-f]{32}$/;
const MAX_TAGS = 15;
const MAX_NONCE_CHARS = 256;
const MAX_VERSIONS_PER_KEY = 500;
const DEFAULT_ENCRYPTION: ReleaseEncryption = "CKM_RSA_AES_KEY_WRAP";
const DEFAULT_API_VERSION = "7.6";
const MASTER_KEY_BYTES = 32;
const GCM_NONCE_BYTES = 12;
const STORAGE_FORMAT = 2;
const RECORD_MAC_INFO = "shield local key vault record mac";
const VAULT_CHECK_TEXT = "shield local key vault";
const DAY_MS = 24 * 60 * 60 * 1000;

// ---------------------------------------------------------------------------------------------
// Public types

export interface LocalKeyAttributes {
  readonly enabled: boolean;
  readonly exportable: boolean;
  readonly created: Date;
  readonly updated: Date;
  readonly notBefore?: Date;
  readonly expires?: Date;
}

/** A stored release policy: the wire form Key Vault keeps, and its parsed model. */
export interface LocalReleasePolicy {
  readonly contentType: string;
  /** BASE64URL of the policy JSON, as received. */
  readonly data: string;
  readonly immutable: boolean;
  readonly policy: ReleasePolicy;
}

/** One key version, public parts only. */
export interface LocalKeyVersion {
  readonly name: string;
  readonly version: string;
  /** `{vaultUrl}/keys/{name}/{version}` */
  readonly kid: string;
  readonly kty: LocalKeyType;
  readonly keySize?: number;
  readonly curve?: LocalCurve;
  readonly keyOps: readonly string[];
  readonly attributes: LocalKeyAttributes;
  readonly releasePolicy?: LocalReleasePolicy;
  readonly tags?: Readonly<Record<string, string>>;
  /** Public JWK members: `n`, `e` for RSA; `crv`, `x`, `y` for EC; none for oct. */
  readonly publicKey: Readonly<Record<string, string>>;
}

/** The release policy as it arrives on the wire (`KeyReleasePolicy`). */
export interface ReleasePolicyInput {
  readonly contentType?: string;
  readonly data: string;
  readonly immutable?: boolean;
}

export interface CreateLocalKeyParameters {
  readonly kty: string;
  readonly keySize?: number;
  readonly publicExponent?: number;
  readonly curve?: string;
  readonly keyOps?: readonly string[];
  readonly enabled?: boolean;
  readonly exportable?: boolean;
  readonly notBefore?: Date;
  readonly expires?: Date;
  readonly tags?: Readonly<Record<string, string>>;
  readonly releasePolicy?: ReleasePolicyInput;
}

export interface UpdateLocalKeyParameters {
  readonly keyOps?: readonly string[];
  readonly enabled?: boolean;
  /** Key Vault refuses any change of exportability after creation. */
  readonly exportable?: boolean;
  readonly notBefore?: Date;
  readonly expires?: Date;
  readonly tags?: Readonly<Record<string, string>>;
  readonly releasePolicy?: ReleasePolicyInput;
}

export interface LocalReleaseRequest {
  /** The attestation token (`target`). */
  readonly target: string;
  readonly enc?: string;
  readonly nonce?: string;
  /** The API version the request used, echoed in the signed response. */
  readonly apiVersion?: string;
}

export interface LocalLifetimeAction {
  readonly action: "Rotate" | "Notify";
  readonly timeAfterCreate?: string;
  readonly timeBeforeExpiry?: string;
}

export interface LocalRotationPolicy {
  readonly lifetimeActions: readonly LocalLifetimeAction[];
  /** ISO 8601 duration: the `exp` given to versions made by rotation. */
  readonly expiryTime?: string;
  readonly created?: Date;
  readonly updated?: Date;
}

export interface LocalRotationPolicyInput {
  readonly lifetimeActions?: readonly {
    readonly action: string;
    readonly timeAfterCreate?: string;
    readonly timeBeforeExpiry?: string;
  }[];
  readonly expiryTime?: string;
}

export interface ReleaseCounters {
  /** Every call of `release`, answered or refused. */
  readonly calls: number;
  readonly released: number;
  /** Refused by the key's policy or because the token was not accepted. */
  readonly refused: number;
}

export interface LocalKeyVaultStats extends ReleaseCounters {
  readonly byKey: Readonly<Record<string, ReleaseCounters>>;
  /** Every `sign` call answered (the control-plane key's signatures). */
  readonly signatures: number;
}

export interface LocalKeyVaultOptions {
  /**
   * The vault's identity: the prefix of every key id (`{vaultUrl}/keys/{name}/{version}`), also
   * bound into each sealed record. It need not be the address a server listens on, so ids stay
   * the same when a server restarts on another port.
   */
  readonly vaultUrl: string;
  /** 32 bytes. Copied; the caller may wipe its buffer afterwards. */
  readonly masterKey: Buffer;
  readonly clock: Clock;
  readonly random?: Random;
  /**
   * How release checks an attestation token: the signing keys of `issuer`, called only with an
   * `authority` named by the key version's release policy (never with anything from the token
   * but its `iss`, and never with its `jku`). See {@link cachedIssuerKeys}.
   */
  readonly tokenKeys: (issuer: string) => SigningKeyResolver;
  /** Signs release responses; a self-signed RSA-2048 signer is generated when absent. */
  readonly releaseSigner?: ReleaseResponseSigner;
  /** `"memory"` (default) or a directory that holds the sealed records. */
  readonly storage?: string;
  /** Enables {@link LocalKeyVault.keyMaterialForTests}; never set outside tests. */
  readonly exposeKeyMaterialForTests?: boolean;
}

export interface LocalKeyVault {
  readonly vaultUrl: string;
  /** The release-response signer's certificate chain, leaf first (what agents trust). */
  readonly signerCertificates: readonly X509Certificate[];
  createKey(name: string, parameters: CreateLocalKeyParameters): Promise<LocalKeyVersion>;
  getKey(name: string, version?: string): Promise<LocalKeyVersion>;
  /** Every version, oldest first. */
  listVersions(name: string): Promise<LocalKeyVersion[]>;
  /** Updates one version (the current one when `version` is omitted). */
  updateKey(
    name: string,
    version: string | undefined,
    parameters: UpdateLocalKeyParameters,
  ): Promise<LocalKeyVersion>;
  rotateKey(name: string): Promise<LocalKeyVersion>;
  getRotationPolicy(name: string): Promise<LocalRotationPolicy>;
  setRotationPolicy(name: string, policy: LocalRotationPolicyInput): Promise<LocalRotationPolicy>;
  /**
   * Key Vault `sign` over a digest: RS256 with an RSA-HSM key whose key_ops include `sign`
   * (the one signing algorithm this stand-in implements; see its README).
   */
  sign(
    name: string,
    version: string | undefined,
    algorithm: string,
    digest: Buffer,
  ): Promise<{ kid: string; value: Buffer }>;
  /** Key Vault `release`: the signed response's `value`. */
  release(
    name: string,
    version: string | undefined,
    request: LocalReleaseRequest,
  ): Promise<{ value: string }>;
  stats(): LocalKeyVaultStats;
  /** The names of every key, in no particular order. */
  keyNames(): string[];
  /**
   * Calls `listener` after each new key version is stored (create, rotate): the local Event
   * Grid publisher's source of `KeyNewVersionCreated`. Returns a function that unsubscribes.
   */
  onVersionCreated(listener: (version: LocalKeyVersion) => void): () => void;
  /** The stored form of every key, as text (what is on disk, or the memory store's contents). */
  dumpStorage(): Promise<string>;
  /** The plaintext a release would wrap; only with `exposeKeyMaterialForTests`. */
  keyMaterialForTests(name: string, version?: string): Promise<Buffer>;
}

/**
 * The error of a Key Vault operation: a ShieldError (its `code` is what the KeyStore port
 * reports) that also carries the HTTP status and Key Vault error code the server answers with.
 */
export class LocalKeyVaultError extends ShieldError {
  override readonly name: string = "LocalKeyVaultError";
  constructor(
    readonly status: number,
    readonly vaultCode: string,
    code: ShieldErrorCode,
    message: string,
    options: { violations?: readonly Violation[]; cause?: unknown } = {},
  ) {
    super(code, message, options);
  }
}

/** DER prefix of a DigestInfo for SHA-256 (RFC 8017 §9.2, note 1). */
const SHA256_DIGEST_INFO = Buffer.from("3031300d060960864801650304020105000420", "hex");

const notFound = (what: string): LocalKeyVaultError =>
  new LocalKeyVaultError(404, "KeyNotFound", "ERR_CONFIG", `${what} was not found`);
const badParameter = (message: string, code: ShieldErrorCode = "ERR_CONFIG", cause?: unknown) =>
  new LocalKeyVaultError(400, "BadParameter", code, message, cause === undefined ? {} : { cause });
const forbidden = (message: string, violations: readonly Violation[] = [], cause?: unknown) =>
  new LocalKeyVaultError(403, "Forbidden", "ERR_POLICY_DENIED", message, {
    violations,
    ...(cause === undefined ? {} : { cause }),
  });

// ---------------------------------------------------------------------------------------------
// Storage

interface Sealed {
  readonly nonce: string;
  readonly ciphertext: string;
  readonly tag: string;
}

interface StoredVersion {
  readonly version: string;
  readonly kty: LocalKeyType;
  readonly keySize?: number;
  readonly curve?: LocalCurve;
  readonly keyOps: readonly string[];
  readonly attributes: {
    readonly enabled: boolean;
    readonly exportable: boolean;
    readonly created: number;
    readonly updated: number;
    readonly notBefore?: number;
    readonly expires?: number;
  };
  readonly releasePolicy?: {
    readonly contentType: string;
    readonly data: string;
    readonly immutable: boolean;
  };
  readonly tags?: Readonly<Record<string, string>>;
  readonly publicKey: Readonly<Record<string, string>>;
  readonly sealed: Sealed;
}

interface StoredRotationPolicy {
  readonly lifetimeActions: readonly LocalLifetimeAction[];
  readonly expiryTime?: string;
  readonly created: number;
  readonly updated: number;
}

interface StoredKey {
  readonly format: number;
  readonly name: string;
  readonly versions: readonly StoredVersion[];
  readonly rotationPolicy?: StoredRotationPolicy;
  /** HMAC-SHA256 of the record's JSON without this member (see `recordMac`). */
  readonly mac: string;
}

interface StoredVault {
  readonly format: number;
  readonly vaultUrl: string;
  readonly check: Sealed;
}

/** Where sealed records live. Only JSON text of sealed records passes through it. */
interface RecordStorage {
  readVault(): Promise<string | undefined>;
  writeVault(text: string): Promise<void>;
  readKeys(): Promise<string[]>;
  writeKey(name: string, text: string): Promise<void>;
  dump(): Promise<string>;
}

function memoryStorage(): RecordStorage {
  let vault: string | undefined;
  const keys = new Map<string, string>();
  return {
    readVault: () => Promise.resolve(vault),
    writeVault: (text) => {
      vault = text;
      return Promise.resolve();
    },
    readKeys: () => Promise.resolve([...keys.values()]),
    writeKey: (name, text) => {
      keys.set(name, text);
      return Promise.resolve();
    },
    dump: () => Promise.resolve([vault ?? "", ...keys.values()].join("\n")),
  };
}

function directoryStorage(directory: string): RecordStorage {
  const keysDirectory = join(directory, "keys");
  const vaultFile = join(directory, "vault.json");
  // Write-then-rename, so a crash leaves the old record or the new one, never half of one.
  const writeAtomically = async (path: string, text: string): Promise<void> => {
    const temporary = `${path}.${randomBytes(6).toString("hex")}.tmp`;
    await writeFile(temporary, text, { mode: 0o600 });
    await rename(temporary, path);
  };
  const readIfPresent = async (path: string): Promise<string | undefined> => {
    try {
      return await readFile(path, "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw error;
    }
  };
  const listKeyFiles = async (): Promise<string[]> =>
    (await readdir(keysDirectory)).filter((file) => file.endsWith(".json")).sort();
  return {
    readVault: () => readIfPresent(vaultFile),
    writeVault: async (text) => {
      await mkdir(keysDirectory, { recursive: true, mode: 0o700 });
      await writeAtomically(vaultFile, text);
    },
    readKeys: async () => {
      const files = await listKeyFiles().catch((error: NodeJS.ErrnoException) => {
        if (error.code === "ENOENT") return [];
        throw error;
      });
      return Promise.all(files.map((file) => readFile(join(keysDirectory, file), "utf8")));
    },
    // Key names are [0-9A-Za-z-], so they are safe file names as they are.
    writeKey: (name, text) => writeAtomically(join(keysDirectory, `${name}.json`), text),
    dump: async () => {
      const files = await listKeyFiles();
      const texts = await Promise.all(files.map((file) => readFile(join(keysDirectory, file), "utf8")));
      return [(await readIfPresent(vaultFile)) ?? "", ...texts].join("\n");
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Helpers

interface KeyEntry {
  readonly name: string;
  versions: VersionEntry[];
  rotationPolicy?: StoredRotationPolicy;
}

interface VersionEntry {
  readonly stored: StoredVersion;
  /** Parsed once, when stored or loaded. */
  readonly policy?: ReleasePolicy;
}

const generateKeyPairAsync = promisify(generateKeyPair);

/** Runs `operation`, turning a synchronous throw into a rejection. */
async function settle<T>(operation: () => T | Promise<T>): Promise<T> {
  return await operation();
}

/** Array.isArray without narrowing a readonly array to any[]. */
function isList(value: unknown): boolean {
  return Array.isArray(value);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function checkKeyName(name: string): void {
  if (typeof name !== "string" || !KEY_NAME.test(name)) {
    throw badParameter("key name must be 1-127 letters, digits and dashes");
  }
}

function checkDate(value: Date | undefined, what: string): void {
  if (value !== undefined && (!(value instanceof Date) || Number.isNaN(value.getTime()))) {
    throw badParameter(`${what} is not a valid time`);
  }
}

function checkKeyOps(keyOps: readonly string[]): readonly string[] {
  if (!isList(keyOps) || keyOps.some((op) => !KEY_OPERATIONS.includes(op))) {
    throw badParameter(`key_ops may hold only ${KEY_OPERATIONS.join(", ")}`);
  }
  return [...new Set(keyOps)];
}

function checkTags(tags: Readonly<Record<string, string>>): Readonly<Record<string, string>> {
  const entries = Object.entries(tags);
  if (entries.length > MAX_TAGS) throw badParameter(`at most ${MAX_TAGS} tags are allowed`);
  for (const [name, value] of entries) {
    if (typeof value !== "string" || name.length > 512 || value.length > 256) {
      throw badParameter("tag names are at most 512 and values at most 256 characters");
    }
  }
  return Object.fromEntries(entries);
}

function parsePolicyInput(input: ReleasePolicyInput): {
  readonly wire: { contentType: string; data: string; immutable: boolean };
  readonly policy: ReleasePolicy;
} {
  const contentType = input.contentType ?? RELEASE_POLICY_CONTENT_TYPE;
  let policy: ReleasePolicy;
  try {
    policy = parseReleasePolicy({ contentType, data: input.data });
  } catch (cause) {
    if (!isShieldError(cause)) throw cause;
    throw new LocalKeyVaultError(400, "BadParameter", cause.code, `release policy: ${cause.message}`, {
      violations: cause.violations,
      cause,
    });
  }
  // Key Vault keeps the policy normalised, not as sent (azure-wire-formats §9): minified,
  // `version` first, `authority` before its list, and JSON booleans as strings.
  const stored = Buffer.from(serializeReleasePolicy(booleansAsStrings(policy)), "utf8").toString("base64url");
  return { wire: { contentType, data: stored, immutable: input.immutable === true }, policy };
}

function booleansAsStrings(policy: ReleasePolicy): ReleasePolicy {
  const convert = (condition: Condition): Condition =>
    condition.kind === "claim"
      ? typeof condition.value === "boolean" && condition.operator !== "exists"
        ? { ...condition, value: String(condition.value) }
        : condition
      : { ...condition, conditions: condition.conditions.map(convert) };
  return {
    version: policy.version,
    authorities: policy.authorities.map((rule) => ({ ...rule, conditions: rule.conditions.map(convert) })),
  };
}

const ISO_DURATION =
  /^P(?!$)(?:(\d{1,4})Y)?(?:(\d{1,4})M)?(?:(\d{1,4})W)?(?:(\d{1,5})D)?(?:T(?=\d)(?:(\d{1,5})H)?(?:(\d{1,6})M)?(?:(\d{1,7})S)?)?$/;

/** `at` plus an ISO 8601 duration, in UTC calendar arithmetic; undefined if it is not one. */
export function addIsoDuration(at: Date, duration: string): Date | undefined {
  const match = ISO_DURATION.exec(duration);
  if (match === null) return undefined;
  const [, years, months, weeks, days, hours, minutes, secondsPart] = match.map<number>((part) =>
    part === undefined ? 0 : Number(part),
  );
  const out = new Date(at.getTime());
  out.setUTCFullYear(out.getUTCFullYear() + (years ?? 0), out.getUTCMonth() + (months ?? 0));
  out.setUTCDate(out.getUTCDate() + (weeks ?? 0) * 7 + (days ?? 0));
  out.setTime(out.getTime() + (((hours ?? 0) * 60 + (minutes ?? 0)) * 60 + (secondsPart ?? 0)) * 1000);
  return out;
}

function checkDuration(value: string, what: string, minimumDays = 0): string {
  const base = new Date(0);
  const end = addIsoDuration(base, value);
  if (end === undefined) throw badParameter(`${what} must be an ISO 8601 duration such as P90D`);
  if (end.getTime() - base.getTime() < minimumDays * DAY_MS) {
    throw badParameter(`${what} must be at least ${minimumDays} days`);
  }
  return value;
}

function checkLifetimeActions(
  actions: NonNullable<LocalRotationPolicyInput["lifetimeActions"]>,
): LocalLifetimeAction[] {
  if (!isList(actions)) throw badParameter("lifetimeActions must be a list");
  const checked = actions.map((action): LocalLifetimeAction => {
    const type = typeof action.action === "string" ? action.action.toLowerCase() : "";
    if (type !== "rotate" && type !== "notify")
      throw badParameter("lifetime action type must be Rotate or Notify");
    const triggers = [action.timeAfterCreate, action.timeBeforeExpiry].filter((t) => t !== undefined);
    if (triggers.length !== 1) {
      throw badParameter("a lifetime action needs exactly one of timeAfterCreate, timeBeforeExpiry");
    }
    return {
      action: type === "rotate" ? "Rotate" : "Notify",
      ...(action.timeAfterCreate === undefined
        ? {}
        : { timeAfterCreate: checkDuration(action.timeAfterCreate, "timeAfterCreate") }),
      ...(action.timeBeforeExpiry === undefined
        ? {}
        : { timeBeforeExpiry: checkDuration(action.timeBeforeExpiry, "timeBeforeExpiry") }),
    };
  });
  if (new Set(checked.map((a) => a.action)).size !== checked.length) {
    throw badParameter("at most one Rotate and one Notify action are allowed");
  }
  return checked;
}

function rotationPolicyFromStored(stored: StoredRotationPolicy): LocalRotationPolicy {
  return {
    lifetimeActions: stored.lifetimeActions.map((a) => ({ ...a })),
    ...(stored.expiryTime === undefined ? {} : { expiryTime: stored.expiryTime }),
    created: new Date(stored.created),
    updated: new Date(stored.updated),
  };
}

const DEFAULT_ROTATION_POLICY: LocalRotationPolicy = {
  lifetimeActions: [{ action: "Notify", timeBeforeExpiry: "P30D" }],
};

/** The unverified `iss` of a token: used only to choose which authority's keys verify it. */
function unverifiedIssuer(token: string): string | undefined {
  const first = token.indexOf(".");
  const second = first < 0 ? -1 : token.indexOf(".", first + 1);
  if (first <= 0 || second <= first + 1) return undefined;
  try {
    const payload: unknown = JSON.parse(
      Buffer.from(token.slice(first + 1, second), "base64url").toString("utf8"),
    );
    return isObject(payload) && typeof payload["iss"] === "string" ? payload["iss"] : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The first suitable key in the token's top-level `x-ms-runtime.keys`, as Key Vault chooses it:
 * RSA, with a `kid`, and `key_ops` containing "encrypt" or `key_use` "enc". (The key under
 * `x-ms-isolation-tee.x-ms-runtime` in CVM tokens is not the one Key Vault wraps to.)
 */
function selectRuntimeKey(claims: Readonly<Record<string, unknown>>): RsaPublicJwk | undefined {
  const runtime = claims["x-ms-runtime"];
  if (!isObject(runtime) || !Array.isArray(runtime["keys"])) return undefined;
  for (const key of runtime["keys"] as unknown[]) {
    if (!isObject(key) || key["kty"] !== "RSA") continue;
    const { kid, n, e } = key;
    if (typeof kid !== "string" || kid.length === 0 || typeof n !== "string" || typeof e !== "string")
      continue;
    const keyOps = key["key_ops"];
    const forEncryption = (Array.isArray(keyOps) && keyOps.includes("encrypt")) || key["key_use"] === "enc";
    if (forEncryption) return { kty: "RSA", kid, n, e };
  }
  return undefined;
}

/** A self-signed RSA-2048 release-response signer, as the vault makes when it is given none. */
export async function generateReleaseSigner(
  vaultUrl: string,
  clock: Clock,
  random: Random,
): Promise<ReleaseResponseSigner> {
  const { publicKey, privateKey } = await generateKeyPairAsync("rsa", { modulusLength: 2048 });
  const now = clock.now().getTime();
  const name = [["CN", `${new URL(vaultUrl).hostname} release signer`]] as const;
  const certificate = buildCertificate({
    subject: name,
    issuer: name,
    serialNumber: BigInt(`0x${random.bytes(8).toString("hex")}`) & 0x7fffffffffffffffn || 1n,
    notBefore: new Date(now - 365 * DAY_MS),
    notAfter: new Date(now + 20 * 365 * DAY_MS),
    publicKey,
    signingKey: privateKey,
    signatureAlgorithm: "rsa-sha256",
  });
  return { privateKey, certificateChain: [certificate] };
}

function checkVaultUrl(vaultUrl: string): string {
  let url: URL;
  try {
    url = new URL(vaultUrl);
  } catch {
    throw new TypeError("vaultUrl must be an absolute URL");
  }
  if (
    (url.protocol !== "https:" && url.protocol !== "http:") ||
    url.search ||
    url.hash ||
    url.pathname !== "/"
  ) {
    throw new TypeError("vaultUrl must be an http(s) origin without a path, query or fragment");
  }
  return url.origin;
}

// ---------------------------------------------------------------------------------------------
// Factory

/**
 * Opens (or creates) a local vault. With a storage directory, the vault's records are loaded and
 * the master key is checked against them (ERR_CONFIG when it does not open them, or when they
 * belong to another `vaultUrl`).
 */
export async function createLocalKeyVault(options: LocalKeyVaultOptions): Promise<LocalKeyVault> {
  if (typeof options !== "object" || options === null) throw new TypeError("options must be an object");
  const vaultUrl = checkVaultUrl(options.vaultUrl);
  if (!Buffer.isBuffer(options.masterKey) || options.masterKey.length !== MASTER_KEY_BYTES) {
    throw new TypeError(`masterKey must be a ${MASTER_KEY_BYTES}-byte Buffer`);
  }
  if (typeof options.clock?.now !== "function") throw new TypeError("clock must have a now() method");
  if (typeof options.tokenKeys !== "function") throw new TypeError("tokenKeys must be a function");
  const { clock, tokenKeys } = options;
  const random = options.random ?? systemRandom;
  const masterKey: KeyObject = createSecretKey(Buffer.from(options.masterKey));
  const storage =
    options.storage === undefined || options.storage === "memory"
      ? memoryStorage()
      : directoryStorage(options.storage);
  const signer = options.releaseSigner ?? (await generateReleaseSigner(vaultUrl, clock, random));

  const seal = (plaintext: Uint8Array, aad: string): Sealed => {
    const nonce = random.bytes(GCM_NONCE_BYTES);
    if (!Buffer.isBuffer(nonce) || nonce.length !== GCM_NONCE_BYTES) {
      throw new TypeError(`random.bytes must return ${GCM_NONCE_BYTES} bytes`);
    }
    const cipher = createCipheriv("aes-256-gcm", masterKey, nonce);
    cipher.setAAD(Buffer.from(aad, "utf8"));
    const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    return {
      nonce: nonce.toString("base64"),
      ciphertext: ciphertext.toString("base64"),
      tag: cipher.getAuthTag().toString("base64"),
    };
  };

  const open = (sealed: Sealed, aad: string): Buffer => {
    try {
      const decipher = createDecipheriv("aes-256-gcm", masterKey, Buffer.from(sealed.nonce, "base64"));
      decipher.setAAD(Buffer.from(aad, "utf8"));
      decipher.setAuthTag(Buffer.from(sealed.tag, "base64"));
      return Buffer.concat([decipher.update(Buffer.from(sealed.ciphertext, "base64")), decipher.final()]);
    } catch {
      throw new LocalKeyVaultError(
        500,
        "InternalError",
        "ERR_CONFIG",
        "a sealed record does not open under the master key",
      );
    }
  };

  const keyId = (name: string, version: string): string => `${vaultUrl}/keys/${name}/${version}`;
  const vaultCheckAad = `vault:${vaultUrl}`;

  // Each key record carries an HMAC-SHA256 of its text under a key derived from the master key.
  const macKey = Buffer.from(hkdfSync("sha256", masterKey, Buffer.alloc(0), RECORD_MAC_INFO, 32));
  const recordMac = (name: string, text: string): string =>
    createHmac("sha256", macKey).update(`${vaultUrl}/keys/${name}\n`).update(text).digest("base64");
  const sealRecord = (record: Omit<StoredKey, "mac">): string =>
    JSON.stringify({ ...record, mac: recordMac(record.name, JSON.stringify(record)) });
  const parseStored = (text: string, what: string): Record<string, unknown> => {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new ShieldError("ERR_CONFIG", `${what} is not JSON (damaged storage)`);
    }
    if (!isObject(parsed)) throw new ShieldError("ERR_CONFIG", `${what} is not a JSON object`);
    return parsed;
  };
  const checkRecord = (parsed: Record<string, unknown>): StoredKey => {
    const { mac, ...record } = parsed;
    if (record["format"] !== STORAGE_FORMAT) {
      throw new ShieldError("ERR_CONFIG", "a stored key record has an unknown format");
    }
    const name = record["name"];
    if (typeof name !== "string" || !KEY_NAME.test(name) || typeof mac !== "string") {
      throw new ShieldError("ERR_CONFIG", "a stored key record has no valid name or MAC");
    }
    const expected = Buffer.from(recordMac(name, JSON.stringify(record)), "base64");
    const given = Buffer.from(mac, "base64");
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      throw new ShieldError(
        "ERR_CONFIG",
        `the stored record of key ${name} fails its MAC check (edited or damaged, or another master key)`,
      );
    }
    if (!isList(record["versions"])) {
      throw new ShieldError("ERR_CONFIG", `the stored record of key ${name} has no versions`);
    }
    return record as unknown as StoredKey;
  };

  // Open or initialise the storage. Every record is checked now, at open: its MAC under the
  // master key (so no attribute, release policy or tag can be edited on disk) and every sealed
  // key (so a moved or damaged one is found at start, not at its first release).
  const entries = new Map<string, KeyEntry>();
  const vaultText = await storage.readVault();
  if (vaultText === undefined) {
    if ((await storage.readKeys()).length > 0) {
      throw new ShieldError("ERR_CONFIG", "the storage holds key records but no vault record");
    }
    const vault: StoredVault = {
      format: STORAGE_FORMAT,
      vaultUrl,
      check: seal(Buffer.from(VAULT_CHECK_TEXT), vaultCheckAad),
    };
    await storage.writeVault(JSON.stringify(vault));
  } else {
    const vault = parseStored(vaultText, "the vault record") as Partial<StoredVault>;
    if (vault.format !== STORAGE_FORMAT || vault.vaultUrl !== vaultUrl || !isObject(vault.check)) {
      throw new ShieldError("ERR_CONFIG", "the storage belongs to another vault or format");
    }
    try {
      open(vault.check, vaultCheckAad);
    } catch {
      throw new ShieldError("ERR_CONFIG", "the master key does not open this vault's storage");
    }
    for (const text of await storage.readKeys()) {
      const stored = checkRecord(parseStored(text, "a stored key record"));
      for (const v of stored.versions) {
        try {
          open(v.sealed, keyId(stored.name, v.version)).fill(0);
        } catch {
          throw new ShieldError(
            "ERR_CONFIG",
            `a sealed version of key ${stored.name} does not open under the master key`,
          );
        }
      }
      entries.set(stored.name, {
        name: stored.name,
        versions: stored.versions.map((v) => ({
          stored: v,
          ...(v.releasePolicy === undefined ? {} : { policy: parseReleasePolicy(v.releasePolicy) }),
        })),
        ...(stored.rotationPolicy === undefined ? {} : { rotationPolicy: stored.rotationPolicy }),
      });
    }
  }

  // Operations on one key run one at a time, so a write never loses a concurrent one.
  const locks = new Map<string, Promise<unknown>>();
  const withLock = <T>(name: string, operation: () => Promise<T>): Promise<T> => {
    const previous = locks.get(name) ?? Promise.resolve();
    const next = previous.then(operation, operation);
    const settled = next.then(
      () => undefined,
      () => undefined,
    );
    locks.set(name, settled);
    void settled.then(() => {
      if (locks.get(name) === settled) locks.delete(name);
    });
    return next;
  };

  const persist = (entry: KeyEntry): Promise<void> => {
    const stored: Omit<StoredKey, "mac"> = {
      format: STORAGE_FORMAT,
      name: entry.name,
      versions: entry.versions.map((v) => v.stored),
      ...(entry.rotationPolicy === undefined ? {} : { rotationPolicy: entry.rotationPolicy }),
    };
    return storage.writeKey(entry.name, sealRecord(stored));
  };

  const toVersion = (name: string, entry: VersionEntry): LocalKeyVersion => {
    const s = entry.stored;
    const a = s.attributes;
    return {
      name,
      version: s.version,
      kid: keyId(name, s.version),
      kty: s.kty,
      ...(s.keySize === undefined ? {} : { keySize: s.keySize }),
      ...(s.curve === undefined ? {} : { curve: s.curve }),
      keyOps: [...s.keyOps],
      attributes: {
        enabled: a.enabled,
        exportable: a.exportable,
        created: new Date(a.created),
        updated: new Date(a.updated),
        ...(a.notBefore === undefined ? {} : { notBefore: new Date(a.notBefore) }),
        ...(a.expires === undefined ? {} : { expires: new Date(a.expires) }),
      },
      ...(s.releasePolicy === undefined || entry.policy === undefined
        ? {}
        : { releasePolicy: { ...s.releasePolicy, policy: entry.policy } }),
      ...(s.tags === undefined ? {} : { tags: { ...s.tags } }),
      publicKey: { ...s.publicKey },
    };
  };

  const findEntry = (name: string): KeyEntry => {
    checkKeyName(name);
    const entry = entries.get(name);
    if (entry === undefined || entry.versions.length === 0) throw notFound(`key ${name}`);
    return entry;
  };

  const findVersion = (name: string, version: string | undefined): { entry: KeyEntry; index: number } => {
    const entry = findEntry(name);
    if (version === undefined || version === "") return { entry, index: entry.versions.length - 1 };
    if (typeof version !== "string" || !KEY_VERSION.test(version)) throw notFound(`key ${name} version`);
    const index = entry.versions.findIndex((v) => v.stored.version === version);
    if (index === -1) throw notFound(`key ${name} version ${version}`);
    return { entry, index };
  };

  /** Generates the key and returns the bytes a release wraps, with the public members. */
  const generate = async (
    kty: LocalKeyType,
    keySize: number | undefined,
    curve: LocalCurve | undefined,
  ): Promise<{ plaintext: Buffer; publicKey: Record<string, string> }> => {
    if (kty === "oct-HSM") return { plaintext: random.bytes((keySize ?? 256) / 8), publicKey: {} };
    const { privateKey } =
      kty === "RSA-HSM"
        ? await generateKeyPairAsync("rsa", { modulusLength: keySize ?? 2048, publicExponent: 0x10001 })
        : await generateKeyPairAsync("ec", { namedCurve: NODE_CURVE[curve ?? "P-256"] });
    const jwk = createPublicKey(privateKey).export({ format: "jwk" });
    const publicKey: Record<string, string> =
      kty === "RSA-HSM"
        ? { n: jwk.n ?? "", e: jwk.e ?? "" }
        : { crv: curve ?? "P-256", x: jwk.x ?? "", y: jwk.y ?? "" };
    return { plaintext: exportForRelease({ kty, privateKey }), publicKey };
  };

  /** Makes, seals and appends a version; the caller holds the key's lock. */
  const versionListeners = new Set<(version: LocalKeyVersion) => void>();
  const addVersion = async (
    name: string,
    spec: {
      kty: LocalKeyType;
      keySize?: number;
      curve?: LocalCurve;
      keyOps: readonly string[];
      enabled: boolean;
      exportable: boolean;
      notBefore?: Date;
      expires?: Date;
      tags?: Readonly<Record<string, string>>;
      releasePolicy?: {
        wire: { contentType: string; data: string; immutable: boolean };
        policy: ReleasePolicy;
      };
    },
  ): Promise<LocalKeyVersion> => {
    const entry = entries.get(name) ?? { name, versions: [] };
    if (entry.versions.length >= MAX_VERSIONS_PER_KEY) {
      throw badParameter(`key ${name} has the maximum of ${MAX_VERSIONS_PER_KEY} versions`);
    }
    const { plaintext, publicKey } = await generate(spec.kty, spec.keySize, spec.curve);
    const version = random.bytes(16).toString("hex");
    let sealed: Sealed;
    try {
      sealed = seal(plaintext, keyId(name, version));
    } finally {
      plaintext.fill(0);
    }
    const now = clock.now().getTime();
    const stored: StoredVersion = {
      version,
      kty: spec.kty,
      ...(spec.keySize === undefined ? {} : { keySize: spec.keySize }),
      ...(spec.curve === undefined ? {} : { curve: spec.curve }),
      keyOps: [...spec.keyOps],
      attributes: {
        enabled: spec.enabled,
        exportable: spec.exportable,
        created: now,
        updated: now,
        ...(spec.notBefore === undefined ? {} : { notBefore: spec.notBefore.getTime() }),
        ...(spec.expires === undefined ? {} : { expires: spec.expires.getTime() }),
      },
      ...(spec.releasePolicy === undefined ? {} : { releasePolicy: spec.releasePolicy.wire }),
      ...(spec.tags === undefined ? {} : { tags: spec.tags }),
      publicKey,
      sealed,
    };
    const versionEntry: VersionEntry = {
      stored,
      ...(spec.releasePolicy === undefined ? {} : { policy: spec.releasePolicy.policy }),
    };
    const updated: KeyEntry = { ...entry, versions: [...entry.versions, versionEntry] };
    await persist(updated);
    entries.set(name, updated);
    const created = toVersion(name, versionEntry);
    for (const listener of [...versionListeners]) {
      try {
        listener(created);
      } catch {
        // A listener's failure is its own; the version is stored either way.
      }
    }
    return created;
  };

  const counters = { calls: 0, released: 0, refused: 0 };
  let signatures = 0;
  const byKey = new Map<string, { calls: number; released: number; refused: number }>();
  const countersFor = (name: string) => {
    let entry = byKey.get(name);
    if (entry === undefined) {
      entry = { calls: 0, released: 0, refused: 0 };
      byKey.set(name, entry);
    }
    return entry;
  };

  /**
   * Key Vault `release`. Checks, in order:
   * 1. the key version exists (404), is exportable and has a release policy (400), and is
   *    enabled and within its `nbf`/`exp` (403);
   * 2. the request: `target` within the token size limit, `enc` known (default
   *    CKM_RSA_AES_KEY_WRAP), `nonce` short (400);
   * 3. the token's `iss` (read unverified, only to choose keys) names an authority of the policy
   *    (403 naming the expected authorities);
   * 4. the token validates with that authority's signing keys, with `iss` pinned to the value
   *    step 3 routed on and `exp`/`nbf` judged at the engine's clock (403; 503 when the keys
   *    cannot be fetched);
   * 5. the verified claims satisfy the release policy (403 listing every failing clause);
   * 6. the token carries a suitable `x-ms-runtime` key (403);
   * 7. the key is unsealed, wrapped to that key and signed into the response.
   */
  const release = async (
    name: string,
    version: string | undefined,
    request: LocalReleaseRequest,
  ): Promise<{ value: string }> => {
    const { entry, index } = findVersion(name, version);
    const versionEntry = entry.versions[index]!;
    const stored = versionEntry.stored;
    const kid = keyId(name, stored.version);
    const now = clock.now();
    // 1
    if (!stored.attributes.exportable) throw badParameter(`key ${name} is not exportable`);
    const policy = versionEntry.policy;
    if (policy === undefined || stored.releasePolicy === undefined) {
      throw badParameter(`key ${name} has no release policy`);
    }
    if (!stored.attributes.enabled) throw forbidden(`key ${name} version is disabled`);
    const { notBefore, expires } = stored.attributes;
    if (
      (notBefore !== undefined && now.getTime() < notBefore) ||
      (expires !== undefined && now.getTime() >= expires)
    ) {
      throw forbidden(`key ${name} version is not within its validity period`);
    }
    // 2
    const target = request.target;
    if (typeof target !== "string" || target.length === 0) throw badParameter("target is required");
    if (target.length > DEFAULT_MAX_TOKEN_BYTES) throw badParameter("target exceeds the token size limit");
    const enc = request.enc ?? DEFAULT_ENCRYPTION;
    if (!isReleaseEncryption(enc)) throw badParameter("enc is not a supported key wrapping algorithm");
    if (
      request.nonce !== undefined &&
      (typeof request.nonce !== "string" || request.nonce.length > MAX_NONCE_CHARS)
    ) {
      throw badParameter(`nonce must be a string of at most ${MAX_NONCE_CHARS} characters`);
    }
    // 3
    const issuer = unverifiedIssuer(target);
    if (issuer === undefined) {
      throw forbidden("attestation token rejected: it is not a JWT with an iss claim");
    }
    const authority = policy.authorities.find((rule) =>
      authorityMatchesIssuer(rule.authority, issuer),
    )?.authority;
    if (authority === undefined) {
      const expected = `one of ${policy.authorities.map((a) => a.authority).join(", ")}`;
      throw forbidden(
        `release policy not satisfied: token issuer ${issuer} is not an authority of the policy`,
        [{ field: "iss", expected, actual: issuer }],
      );
    }
    // 4
    let token: ValidatedMaaToken;
    try {
      token = await validateMaaToken(target, { keys: tokenKeys(authority), issuer, at: now });
    } catch (cause) {
      if (!isShieldError(cause)) throw cause;
      if (cause.transient) {
        throw new LocalKeyVaultError(
          503,
          "ServiceUnavailable",
          cause.code,
          "attestation signing keys are unavailable",
          { cause },
        );
      }
      throw forbidden(
        `attestation token rejected (${cause.code}): ${cause.message}`,
        cause.violations,
        cause,
      );
    }
    // 5
    const decision = evaluateReleasePolicy(policy, { issuer: token.claims.iss, claims: token.claims });
    if (!decision.released)
      throw forbidden(`release policy not satisfied: ${decision.summary}`, decision.violations);
    // 6
    const targetKey = selectRuntimeKey(token.claims);
    if (targetKey === undefined) {
      throw forbidden("attestation token has no suitable x-ms-runtime key", [
        {
          field: "x-ms-runtime.keys",
          expected: 'an RSA key with kid and key_ops ["encrypt"]',
          actual: "none",
        },
      ]);
    }
    // 7
    const plaintext = open(stored.sealed, kid);
    try {
      const value = await buildReleaseResponse({
        keyId: kid,
        requestKeyId: version === undefined || version === "" ? `${vaultUrl}/keys/${name}` : kid,
        kty: stored.kty,
        keyOps: stored.keyOps,
        attributes: { ...keyAttributesToWire(toVersion(name, versionEntry).attributes) },
        ...(stored.tags === undefined ? {} : { tags: stored.tags }),
        releasePolicy: { ...stored.releasePolicy },
        enc,
        targetKey,
        plaintext,
        signer,
        requestApiVersion: request.apiVersion ?? DEFAULT_API_VERSION,
        ...(request.nonce === undefined ? {} : { nonce: request.nonce }),
        at: now,
      });
      return { value };
    } catch (cause) {
      if (isShieldError(cause) && !(cause instanceof LocalKeyVaultError)) {
        // The runtime key could not be wrapped to (too small, bad exponent): the token's fault.
        throw forbidden(`the x-ms-runtime key cannot be wrapped to (${cause.code})`, [], cause);
      }
      throw cause;
    } finally {
      plaintext.fill(0);
    }
  };

  return {
    vaultUrl,
    signerCertificates: [...signer.certificateChain],

    createKey: (name, parameters) =>
      settle(() => {
        checkKeyName(name);
        if (typeof parameters !== "object" || parameters === null)
          throw new TypeError("parameters must be an object");
        if (!(LOCAL_KEY_TYPES as readonly string[]).includes(parameters.kty)) {
          throw badParameter(`kty must be one of ${LOCAL_KEY_TYPES.join(", ")}`);
        }
        const kty = parameters.kty as LocalKeyType;
        let keySize: number | undefined;
        let curve: LocalCurve | undefined;
        if (kty === "RSA-HSM") {
          keySize = parameters.keySize ?? 2048;
          if (!RSA_SIZES.includes(keySize))
            throw badParameter(`RSA key_size must be one of ${RSA_SIZES.join(", ")}`);
          if (parameters.publicExponent !== undefined && parameters.publicExponent !== 65537) {
            throw badParameter("public_exponent must be 65537");
          }
        } else if (kty === "oct-HSM") {
          keySize = parameters.keySize ?? 256;
          if (!OCT_SIZES.includes(keySize))
            throw badParameter(`oct key_size must be one of ${OCT_SIZES.join(", ")}`);
        } else {
          const requested = parameters.curve ?? "P-256";
          if (!(CURVES as readonly string[]).includes(requested)) {
            throw badParameter(`crv must be one of ${CURVES.join(", ")}`);
          }
          curve = requested as LocalCurve;
        }
        checkDate(parameters.notBefore, "nbf");
        checkDate(parameters.expires, "exp");
        const keyOps = checkKeyOps(parameters.keyOps ?? DEFAULT_KEY_OPS[kty]);
        const tags = parameters.tags === undefined ? undefined : checkTags(parameters.tags);
        const exportable = parameters.exportable === true;
        const requested =
          parameters.releasePolicy === undefined ? undefined : parsePolicyInput(parameters.releasePolicy);
        if (!exportable && requested !== undefined) {
          throw badParameter("AKV.SKR.1005: Non-exportable keys must not have release policy");
        }
        return withLock(name, () => {
          let releasePolicy = requested;
          if (exportable && releasePolicy === undefined) {
            const latest = entries.get(name)?.versions.at(-1);
            if (latest?.policy === undefined || latest.stored.releasePolicy === undefined) {
              throw badParameter("AKV.SKR.1004: Exportable keys must have release policy");
            }
            releasePolicy = { wire: latest.stored.releasePolicy, policy: latest.policy };
          }
          return addVersion(name, {
            kty,
            ...(keySize === undefined ? {} : { keySize }),
            ...(curve === undefined ? {} : { curve }),
            keyOps,
            enabled: parameters.enabled ?? true,
            exportable,
            ...(parameters.notBefore === undefined ? {} : { notBefore: parameters.notBefore }),
            ...(parameters.expires === undefined ? {} : { expires: parameters.expires }),
            ...(tags === undefined ? {} : { tags }),
            ...(releasePolicy === undefined ? {} : { releasePolicy }),
          });
        });
      }),

    getKey: (name, version) =>
      settle(() => {
        const { entry, index } = findVersion(name, version);
        return toVersion(name, entry.versions[index]!);
      }),

    listVersions: (name) => settle(() => findEntry(name).versions.map((v) => toVersion(name, v))),

    updateKey: (name, version, parameters) =>
      settle(() => {
        findVersion(name, version);
        if (typeof parameters !== "object" || parameters === null)
          throw new TypeError("parameters must be an object");
        checkDate(parameters.notBefore, "nbf");
        checkDate(parameters.expires, "exp");
        const requested =
          parameters.releasePolicy === undefined ? undefined : parsePolicyInput(parameters.releasePolicy);
        const requestedKeyOps = parameters.keyOps === undefined ? undefined : checkKeyOps(parameters.keyOps);
        const requestedTags = parameters.tags === undefined ? undefined : checkTags(parameters.tags);
        return withLock(name, async () => {
          const { entry, index } = findVersion(name, version);
          const current = entry.versions[index]!;
          const stored = current.stored;
          if (parameters.exportable !== undefined && parameters.exportable !== stored.attributes.exportable) {
            throw badParameter("exportable cannot be changed after the key is created");
          }
          let releasePolicy = stored.releasePolicy;
          let policy = current.policy;
          if (requested !== undefined) {
            if (!stored.attributes.exportable) {
              throw badParameter("AKV.SKR.1005: Non-exportable keys must not have release policy");
            }
            if (stored.releasePolicy?.immutable === true && policy !== undefined) {
              const unchanged =
                requested.wire.immutable &&
                requested.wire.contentType === stored.releasePolicy.contentType &&
                serializeReleasePolicy(requested.policy) === serializeReleasePolicy(policy);
              if (!unchanged) throw badParameter("the release policy of this key version is immutable");
            }
            releasePolicy = requested.wire;
            policy = requested.policy;
          }
          const tags = requestedTags ?? stored.tags;
          const a = stored.attributes;
          const updatedStored: StoredVersion = {
            ...stored,
            keyOps: [...(requestedKeyOps ?? stored.keyOps)],
            attributes: {
              ...a,
              enabled: parameters.enabled ?? a.enabled,
              updated: clock.now().getTime(),
              ...(parameters.notBefore === undefined ? {} : { notBefore: parameters.notBefore.getTime() }),
              ...(parameters.expires === undefined ? {} : { expires: parameters.expires.getTime() }),
            },
            ...(releasePolicy === undefined ? {} : { releasePolicy }),
            ...(tags === undefined ? {} : { tags }),
          };
          const updatedEntry: VersionEntry = {
            stored: updatedStored,
            ...(policy === undefined ? {} : { policy }),
          };
          const versions = [...entry.versions];
          versions[index] = updatedEntry;
          const next: KeyEntry = { ...entry, versions };
          await persist(next);
          entries.set(name, next);
          return toVersion(name, updatedEntry);
        });
      }),

    keyNames: () => [...entries.keys()],

    onVersionCreated(listener) {
      versionListeners.add(listener);
      return () => versionListeners.delete(listener);
    },

    rotateKey: (name) =>
      settle(() => {
        findEntry(name);
        return withLock(name, () => {
          const entry = findEntry(name);
          const latest = entry.versions.at(-1)!;
          const s = latest.stored;
          const expiryTime = entry.rotationPolicy?.expiryTime;
          const expires = expiryTime === undefined ? undefined : addIsoDuration(clock.now(), expiryTime);
          return addVersion(name, {
            kty: s.kty,
            ...(s.keySize === undefined ? {} : { keySize: s.keySize }),
            ...(s.curve === undefined ? {} : { curve: s.curve }),
            keyOps: s.keyOps,
            enabled: true,
            exportable: s.attributes.exportable,
            ...(expires === undefined ? {} : { expires }),
            ...(s.tags === undefined ? {} : { tags: s.tags }),
            ...(s.releasePolicy === undefined || latest.policy === undefined
              ? {}
              : { releasePolicy: { wire: s.releasePolicy, policy: latest.policy } }),
          });
        });
      }),

    getRotationPolicy: (name) =>
      settle(() => {
        const stored = findEntry(name).rotationPolicy;
        return stored === undefined ? DEFAULT_ROTATION_POLICY : rotationPolicyFromStored(stored);
      }),

    setRotationPolicy: (name, input) =>
      settle(() => {
        findEntry(name);
        if (typeof input !== "object" || input === null) throw new TypeError("policy must be an object");
        const lifetimeActions = checkLifetimeActions(input.lifetimeActions ?? []);
        if (input.expiryTime !== undefined) checkDuration(input.expiryTime, "expiryTime", 28);
        return withLock(name, async () => {
          const entry = findEntry(name);
          const now = clock.now().getTime();
          const rotationPolicy: StoredRotationPolicy = {
            lifetimeActions,
            ...(input.expiryTime === undefined ? {} : { expiryTime: input.expiryTime }),
            created: entry.rotationPolicy?.created ?? now,
            updated: now,
          };
          const next: KeyEntry = { ...entry, rotationPolicy };
          await persist(next);
          entries.set(name, next);
          return rotationPolicyFromStored(rotationPolicy);
        });
      }),

    async release(name, version, request) {
      counters.calls++;
      const perKey = typeof name === "string" && KEY_NAME.test(name) ? countersFor(name) : undefined;
      if (perKey !== undefined) perKey.calls++;
      try {
        const result = await release(name, version, request);
        counters.released++;
        if (perKey !== undefined) perKey.released++;
        return result;
      } catch (error) {
        if (error instanceof LocalKeyVaultError && error.status === 403) {
          counters.refused++;
          if (perKey !== undefined) perKey.refused++;
        }
        throw error;
      }
    },

    sign: (name, version, algorithm, digest) =>
      settle(() => {
        const { entry, index } = findVersion(name, version);
        const stored = entry.versions[index]!.stored;
        const kid = keyId(name, stored.version);
        if (!stored.keyOps.includes("sign")) throw forbidden(`key ${name} does not permit sign`);
        if (!stored.attributes.enabled) throw forbidden(`key ${name} version is disabled`);
        const now = clock.now().getTime();
        const { notBefore, expires } = stored.attributes;
        if ((notBefore !== undefined && now < notBefore) || (expires !== undefined && now >= expires)) {
          throw forbidden(`key ${name} version is not within its validity period`);
        }
        if (algorithm !== "RS256" || stored.kty !== "RSA-HSM") {
          throw badParameter(`the algorithm ${algorithm} is not supported for this key`);
        }
        if (!Buffer.isBuffer(digest) || digest.length !== 32) {
          throw badParameter("the digest must be 32 bytes for RS256");
        }
        const der = open(stored.sealed, kid);
        signatures++;
        try {
          const privateKey = createPrivateKey({ key: der, format: "der", type: "pkcs8" });
          // RSASSA-PKCS1-v1_5 over a given digest: the DigestInfo of SHA-256, then type-1 padding.
          const value = privateEncrypt(
            { key: privateKey, padding: constants.RSA_PKCS1_PADDING },
            Buffer.concat([SHA256_DIGEST_INFO, digest]),
          );
          return { kid, value };
        } finally {
          der.fill(0);
        }
      }),

    stats: () => ({
      ...counters,
      signatures,
      byKey: Object.fromEntries([...byKey].map(([name, c]) => [name, { ...c }])),
    }),

    dumpStorage: () => storage.dump(),

    keyMaterialForTests: (name, version) =>
      settle(() => {
        if (options.exposeKeyMaterialForTests !== true) {
          throw new TypeError("key material is exposed only with exposeKeyMaterialForTests");
        }
        const { entry, index } = findVersion(name, version);
        const stored = entry.versions[index]!.stored;
        return open(stored.sealed, keyId(name, stored.version));
      }),
  };
}

/**
 * `tokenKeys` for {@link createLocalKeyVault}: each issuer's keys come from `<issuer>/certs`
 * through `createCachedSigningKeys`, one cache per issuer (as normalised by the policy module),
 * so a release costs no fetch while the issuer's key set is fresh.
 */
export function cachedIssuerKeys(
  options: Omit<CachedSigningKeysOptions, "issuer">,
): (issuer: string) => SigningKeyResolver {
  const resolvers = new Map<string, SigningKeyResolver>();
  return (issuer) => {
    const normalized = normalizeIssuer(issuer);
    let resolver = resolvers.get(normalized);
    if (resolver === undefined) {
      resolver = createCachedSigningKeys({ ...options, issuer });
      resolvers.set(normalized, resolver);
    }
    return resolver;
  };
}
