/**
 * The agent's configuration: environment variables only, each described once in
 * `AGENT_VARIABLES` (name, default, meaning), which both validates them (zod) and writes the
 * `--help` text. `loadAgentConfig` checks every variable and reports every problem at once;
 * values of secret variables (connection strings) never appear in a problem, a log line or a
 * serialised config.
 *
 * Two layers of checks: `loadAgentConfig` refuses malformed values at once; `startRequirements`
 * lists what the bus round trip additionally needs (a Service Bus namespace or a storage
 * connection string, at least one key). The entry point asks for the latter only after a TEE
 * interface was found, so an agent started where there is no TEE says that first.
 */
import { isIPv4, isIPv6 } from "node:net";
import { isAbsolute } from "node:path";
import { inspect } from "node:util";
import { z } from "zod";
import { isServiceBusConnectionString } from "../adapters/servicebus/client.js";
import { IDENTIFIER_PATTERN, KEY_NAME_PATTERN, MAX_KEYS_PER_REQUEST } from "../core/messages/index.js";
import { KEY_VERSION_PATTERN } from "../core/messages/fields.js";
import { DEFAULT_SIDECAR_URL } from "./evidence/azure-sidecar.js";
import { DEFAULT_TSM_ROOT } from "./evidence/configfs-tsm.js";
import { DEFAULT_GRAMINE_ROOT } from "./evidence/gramine.js";
import { PROVIDER_NAMES, type ProviderName } from "./evidence/provider.js";
import { DEFAULT_THIM_URL } from "./evidence/thim.js";
import { RUNTIME_KEY_BITS, type RuntimeKeyBits } from "./runtime-key.js";

export type Environment = Readonly<Record<string, string | undefined>>;

export const TEE_SELECTIONS = ["auto", ...PROVIDER_NAMES] as const;
export type TeeSelection = "auto" | ProviderName;
export const BUS_TRANSPORTS = ["servicebus", "storage-queue"] as const;
export type BusTransport = (typeof BUS_TRANSPORTS)[number];
export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const;
export type AgentLogLevel = (typeof LOG_LEVELS)[number];

/** A value that is never shown: `reveal()` is the only way to read it. */
export class Secret {
  readonly #value: string;
  constructor(value: string) {
    this.#value = value;
  }
  reveal(): string {
    return this.#value;
  }
  toJSON(): string {
    return "[redacted]";
  }
  toString(): string {
    return "[redacted]";
  }
  [inspect.custom](): string {
    return "[redacted]";
  }
}

export type ListenAddress =
  | { readonly kind: "tcp"; readonly host: string; readonly port: number }
  | { readonly kind: "unix"; readonly path: string };

export interface AgentConfig {
  readonly agentId: string;
  readonly workload: string;
  readonly keys: readonly string[];
  readonly tee: TeeSelection;
  readonly tsm: { readonly root: string; readonly privlevel?: number };
  readonly sidecar: { readonly url: string };
  /** Absent when THIM is disabled (`SHIELD_THIM_URL=`). */
  readonly thimUrl?: string;
  readonly snpChainFile?: string;
  readonly uvmSecurityContextDir?: string;
  readonly gramine: { readonly root: string };
  readonly simulated: { readonly platformFile?: string; readonly hostData?: string };
  readonly runtimeKeyBits: RuntimeKeyBits;
  readonly listen: ListenAddress;
  readonly allowNonLoopback: boolean;
  /** File holding the key API's bearer token; unset: no token is asked for. */
  readonly keyApiTokenFile?: string;
  readonly keyDir?: string;
  /** False: the key API never answers with key material, only through the encryption routes. */
  readonly serveKeys: boolean;
  /** Per key name, the oldest version the encryption API still decrypts; empty: every held version. */
  readonly minDecryptionVersions: ReadonlyMap<string, string>;
  /** Settings file of the PostgreSQL proxy (agent/pg-proxy/settings.ts); unset: no proxy. */
  readonly pgProxyFile?: string;
  readonly bus: {
    readonly transport: BusTransport;
    readonly serviceBusNamespace?: string;
    /** Instead of the namespace and the managed identity: a shared access key or signature. */
    readonly serviceBusConnectionString?: Secret;
    readonly storageConnectionString?: Secret;
    readonly requestQueue: string;
    readonly resultQueue: string;
  };
  /** Who may sign Key Vault release responses; at least one is needed to start. */
  readonly releaseSigner: { readonly caFile?: string; readonly host?: string };
  /** JWK set file of the control-plane public keys the agent pins; needed to start. */
  readonly controlKeysFile?: string;
  /** Origin of the vault release responses must name; needed to start. */
  readonly keyVaultUrl?: string;
  /** 0: only when challenged. */
  readonly reattestSeconds: number;
  readonly timeouts: {
    readonly evidenceMs: number;
    readonly probeMs: number;
    readonly resultSeconds: number;
  };
  readonly logLevel: AgentLogLevel;
}

export interface AgentVariable {
  /** The default as `--help` shows it. */
  readonly default: string;
  readonly meaning: string;
  /** Never echoed back. */
  readonly secret?: boolean;
  readonly schema: z.ZodType;
}

// Field helpers: every variable arrives as `string | undefined`; an empty value counts as unset
// except where the meaning says otherwise (SHIELD_THIM_URL).
const raw = z.string().optional();
const unset = (value: string | undefined): boolean => value === undefined || value.trim() === "";

function choice<T extends string>(values: readonly T[], fallback: T) {
  return raw.transform((value, ctx): T => {
    const chosen = unset(value) ? fallback : value!.trim();
    if (!(values as readonly string[]).includes(chosen)) {
      ctx.addIssue({ code: "custom", message: `one of ${values.join(", ")}` });
      return z.NEVER;
    }
    return chosen as T;
  });
}

function integer(min: number, max: number, fallback: number | undefined) {
  return raw.transform((value, ctx): number | undefined => {
    if (unset(value)) return fallback;
    const text = value!.trim();
    const parsed = /^\d{1,10}$/.test(text) ? Number(text) : Number.NaN;
    if (!Number.isInteger(parsed) || parsed < min || parsed > max) {
      ctx.addIssue({ code: "custom", message: `an integer from ${min} to ${max}` });
      return z.NEVER;
    }
    return parsed;
  });
}

/** `name=version,...`: one minimum per key name, each a Key Vault key name and version. */
const minimumVersions = raw.transform((value, ctx): ReadonlyMap<string, string> => {
  const pairs = new Map<string, string>();
  if (unset(value)) return pairs;
  for (const part of value!.split(",")) {
    const [name = "", version = "", ...rest] = part.trim().split("=");
    if (
      !KEY_NAME_PATTERN.test(name) ||
      !KEY_VERSION_PATTERN.test(version) ||
      rest.length > 0 ||
      pairs.has(name)
    ) {
      ctx.addIssue({ code: "custom", message: "comma-separated name=version pairs, one per key name" });
      return z.NEVER;
    }
    pairs.set(name, version);
  }
  return pairs;
});

function flag(fallback: boolean) {
  return raw.transform((value, ctx): boolean => {
    if (unset(value)) return fallback;
    const text = value!.trim().toLowerCase();
    if (text === "true") return true;
    if (text === "false") return false;
    ctx.addIssue({ code: "custom", message: "true or false" });
    return z.NEVER;
  });
}

function path(fallback: string | undefined) {
  return raw.transform((value, ctx): string | undefined => {
    if (unset(value)) return fallback;
    const text = value!.trim();
    if (!isAbsolute(text) || text.includes("\0")) {
      ctx.addIssue({ code: "custom", message: "an absolute path" });
      return z.NEVER;
    }
    return text;
  });
}

/** A vault origin: https, or plain http on a loopback host (the local Key Vault server). */
function vaultUrl() {
  return raw.transform((value, ctx): string | undefined => {
    if (unset(value)) return undefined;
    let url: URL;
    try {
      url = new URL(value!.trim());
    } catch {
      ctx.addIssue({ code: "custom", message: "an https:// URL" });
      return z.NEVER;
    }
    const loopback = ["127.0.0.1", "localhost", "[::1]"].includes(url.hostname);
    if (
      (url.protocol !== "https:" && !(url.protocol === "http:" && loopback)) ||
      url.username !== "" ||
      url.password !== "" ||
      (url.pathname !== "/" && url.pathname !== "") ||
      url.search !== ""
    ) {
      ctx.addIssue({ code: "custom", message: "an https:// origin (http only on loopback), without a path" });
      return z.NEVER;
    }
    return url.origin;
  });
}

function httpUrl(fallback: string, emptyDisables: boolean) {
  return raw.transform((value, ctx): string | undefined => {
    if (value === undefined) return fallback;
    if (value.trim() === "") return emptyDisables ? undefined : fallback;
    const text = value.trim();
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      ctx.addIssue({ code: "custom", message: "an http:// or https:// URL" });
      return z.NEVER;
    }
    if (
      (url.protocol !== "http:" && url.protocol !== "https:") ||
      url.username !== "" ||
      url.password !== ""
    ) {
      ctx.addIssue({ code: "custom", message: "an http:// or https:// URL without credentials" });
      return z.NEVER;
    }
    return text;
  });
}

function identifierValue(fallback: string | undefined) {
  return raw.transform((value, ctx): string | undefined => {
    if (unset(value)) return fallback;
    const text = value!.trim();
    if (!IDENTIFIER_PATTERN.test(text)) {
      ctx.addIssue({
        code: "custom",
        message: "1..128 characters of A-Z a-z 0-9 . _ : - starting with a letter or digit",
      });
      return z.NEVER;
    }
    return text;
  });
}

const keyList = raw.transform((value, ctx): string[] => {
  if (unset(value)) return [];
  const names = value!
    .split(",")
    .map((name) => name.trim())
    .filter((name) => name !== "");
  const bad = names.filter((name) => !KEY_NAME_PATTERN.test(name));
  if (bad.length > 0) {
    ctx.addIssue({
      code: "custom",
      message: "Key Vault key names (1..127 characters of A-Z a-z 0-9 -), comma-separated",
    });
    return z.NEVER;
  }
  if (new Set(names).size !== names.length) {
    ctx.addIssue({ code: "custom", message: "each key name once" });
    return z.NEVER;
  }
  if (names.length > MAX_KEYS_PER_REQUEST) {
    ctx.addIssue({ code: "custom", message: `at most ${MAX_KEYS_PER_REQUEST} key names` });
    return z.NEVER;
  }
  return names;
});

const listenAddress = raw.transform((value, ctx): ListenAddress => {
  const text = unset(value) ? "127.0.0.1:8280" : value!.trim();
  const parsed = parseListen(text);
  if (parsed === undefined) {
    ctx.addIssue({ code: "custom", message: "host:port, [ipv6]:port or unix:/absolute/path" });
    return z.NEVER;
  }
  return parsed;
});

const hostName = raw.transform((value, ctx): string | undefined => {
  if (unset(value)) return undefined;
  const text = value!.trim().toLowerCase();
  if (
    !/^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$/.test(
      text,
    )
  ) {
    ctx.addIssue({ code: "custom", message: "a host name, e.g. contoso.vault.azure.net" });
    return z.NEVER;
  }
  return text;
});

const serviceBusConnectionString = raw.transform((value, ctx): Secret | undefined => {
  if (unset(value)) return undefined;
  const text = value!.trim();
  if (!isServiceBusConnectionString(text)) {
    ctx.addIssue({
      code: "custom",
      message:
        "a Service Bus connection string (Endpoint=sb://<host> and SharedAccessKeyName with SharedAccessKey, or SharedAccessSignature)",
    });
    return z.NEVER;
  }
  return new Secret(text);
});

const serviceBusNamespace = raw.transform((value, ctx): string | undefined => {
  if (unset(value)) return undefined;
  const text = value!.trim();
  if (!/^[A-Za-z0-9][A-Za-z0-9-]{0,61}(\.[A-Za-z0-9-]{1,63})+$/.test(text)) {
    ctx.addIssue({
      code: "custom",
      message: "a fully qualified namespace, e.g. contoso.servicebus.windows.net",
    });
    return z.NEVER;
  }
  return text;
});

const connectionString = raw.transform((value, ctx): Secret | undefined => {
  if (unset(value)) return undefined;
  const text = value!.trim();
  const pairs = text.split(";").filter((part) => part !== "");
  const wellFormed =
    text.length <= 4096 && pairs.length > 0 && pairs.every((part) => /^[A-Za-z]+=.+$/s.test(part));
  const names = new Set(pairs.map((part) => part.slice(0, part.indexOf("=")).toLowerCase()));
  const usable =
    names.has("usedevelopmentstorage") ||
    (names.has("accountname") && (names.has("accountkey") || names.has("sharedaccesssignature"))) ||
    names.has("queueendpoint");
  if (!wellFormed || !usable) {
    ctx.addIssue({
      code: "custom",
      message:
        "a storage connection string (AccountName and AccountKey, a SAS, or UseDevelopmentStorage=true)",
    });
    return z.NEVER;
  }
  return new Secret(text);
});

/** Every variable the agent reads. The one place each is described. */
export const AGENT_VARIABLES = {
  SHIELD_AGENT_ID: {
    default: "$HOSTNAME, else shield-agent",
    meaning: "This agent's id: its Service Bus session and its name in the functions' records.",
    schema: identifierValue(undefined),
  },
  SHIELD_WORKLOAD: {
    default: "default",
    meaning: "The workload this agent belongs to (the key release policy's unit).",
    schema: identifierValue("default"),
  },
  SHIELD_KEYS: {
    default: "unset",
    meaning: "Comma-separated Key Vault key names to request; at least one is needed to start.",
    schema: keyList,
  },
  SHIELD_TEE: {
    default: "auto",
    meaning:
      "Evidence provider: auto (try sevsnp-configfs, sevsnp-sidecar, sgx-gramine in that order; never simulated), " +
      "sevsnp-configfs, sevsnp-sidecar, sgx-gramine, or simulated (development only).",
    schema: choice(TEE_SELECTIONS, "auto"),
  },
  SHIELD_TSM_ROOT: {
    default: DEFAULT_TSM_ROOT,
    meaning: "configfs-tsm report directory (SEV-SNP, Linux 6.7+).",
    schema: path(DEFAULT_TSM_ROOT),
  },
  SHIELD_TSM_PRIVLEVEL: {
    default: "unset (kernel default)",
    meaning: "VMPL to request through configfs-tsm, 0..3.",
    schema: integer(0, 3, undefined),
  },
  SHIELD_SIDECAR_URL: {
    default: DEFAULT_SIDECAR_URL,
    meaning: "Microsoft attestation sidecar base URL (/status, /attest/combined, /attest/raw).",
    schema: httpUrl(DEFAULT_SIDECAR_URL, false),
  },
  SHIELD_THIM_URL: {
    default: DEFAULT_THIM_URL,
    meaning: "Azure THIM URL for the VCEK chain when the TEE interface gives none; set it empty to disable.",
    schema: httpUrl(DEFAULT_THIM_URL, true),
  },
  SHIELD_SNP_CHAIN_FILE: {
    default: "unset",
    meaning: "PEM file with VCEK, ASK, ARK (or ASK, ARK when the host supplies the VCEK); used before THIM.",
    schema: path(undefined),
  },
  SHIELD_SIMULATED_PLATFORM: {
    default: "unset (a new platform per start)",
    meaning:
      "With SHIELD_TEE=simulated: JSON file of a simulated SEV-SNP platform (what the embedded default writes), " +
      "so the agent plays the TEE the local attestation server trusts. Development only.",
    schema: path(undefined),
  },
  SHIELD_SIMULATED_HOST_DATA: {
    default: "unset (zeros)",
    meaning:
      "With SHIELD_TEE=simulated: HOST_DATA (64 hex) the simulated reports carry, i.e. the workload measurement.",
    schema: raw.transform((value, ctx): string | undefined => {
      if (unset(value)) return undefined;
      const text = value!.trim().toLowerCase();
      if (!/^[0-9a-f]{64}$/.test(text)) {
        ctx.addIssue({ code: "custom", message: "64 hex digits" });
        return z.NEVER;
      }
      return text;
    }),
  },
  UVM_SECURITY_CONTEXT_DIR: {
    default: "first /security-context-*",
    meaning: "Confidential ACI security context (host-amd-cert-base64, reference-info-base64); ACI sets it.",
    schema: path(undefined),
  },
  SHIELD_GRAMINE_ROOT: {
    default: DEFAULT_GRAMINE_ROOT,
    meaning: "Gramine attestation pseudo-files (attestation_type, user_report_data, quote).",
    schema: path(DEFAULT_GRAMINE_ROOT),
  },
  SHIELD_RUNTIME_KEY_BITS: {
    default: "2048",
    meaning: "Size of the ephemeral RSA runtime key: 2048 or 3072.",
    schema: choice(
      RUNTIME_KEY_BITS.map((bits) => String(bits) as `${RuntimeKeyBits}`),
      "2048",
    ).transform((bits) => Number(bits) as RuntimeKeyBits),
  },
  SHIELD_LISTEN: {
    default: "127.0.0.1:8280",
    meaning: "Local key API address: host:port, [ipv6]:port, or unix:/path.",
    schema: listenAddress,
  },
  SHIELD_ALLOW_NON_LOOPBACK: {
    default: "false",
    meaning: "Must be true to bind the key API to an address other than loopback or a Unix socket.",
    schema: flag(false),
  },
  SHIELD_KEY_API_TOKEN_FILE: {
    default: "unset (no token)",
    meaning:
      "File holding one bearer token (at least 32 characters, e.g. openssl rand -base64 48) that the key API then requires on every route but /healthz, for pods where another container must not read keys. Read at start; a shorter or malformed token stops the agent.",
    schema: path(undefined),
  },
  SHIELD_SERVE_KEYS: {
    default: "true",
    meaning:
      "false: GET /keys/{name} answers 403 key-export-disabled and no key leaves the agent; the application uses the encryption API (/v1/...) only. Cannot be combined with SHIELD_KEY_DIR.",
    schema: flag(true),
  },
  SHIELD_MIN_DECRYPTION_VERSIONS: {
    default: "unset (every held version decrypts)",
    meaning:
      "Comma-separated name=version pairs: the encryption API (/v1/decrypt, /v1/rewrap) refuses ciphertext of that key under versions installed before this one (403 version-retired); while the version is not installed, only the current one decrypts.",
    schema: minimumVersions,
  },
  SHIELD_PG_PROXY_FILE: {
    default: "unset (no proxy)",
    meaning:
      "JSON settings of the transparent PostgreSQL proxy (listen address, key, protected columns, the server and how to authenticate to it; docs/transparent-proxy.md). Read at start; a bad file stops the agent.",
    schema: path(undefined),
  },
  SHIELD_KEY_DIR: {
    default: "unset",
    meaning: "Also write released keys as files here, for apps that read files; use a tmpfs.",
    schema: path(undefined),
  },
  SHIELD_BUS: {
    default: "servicebus",
    meaning:
      "Message transport: servicebus (Azure) or storage-queue (Azure Storage queues, Azurite locally).",
    schema: choice(BUS_TRANSPORTS, "servicebus"),
  },
  SHIELD_SERVICEBUS_NAMESPACE: {
    default: "unset",
    meaning: "Fully qualified Service Bus namespace; the agent signs in with its managed identity.",
    schema: serviceBusNamespace,
  },
  SHIELD_SERVICEBUS_CONNECTION_STRING: {
    default: "unset",
    meaning:
      "Service Bus connection string with a shared access key or signature, used instead of SHIELD_SERVICEBUS_NAMESPACE and the managed identity (the local Service Bus endpoint sets UseDevelopmentEmulator=true). Secret: never printed.",
    secret: true,
    schema: serviceBusConnectionString,
  },
  SHIELD_STORAGE_CONNECTION_STRING: {
    default: "unset",
    meaning: "Storage connection string for SHIELD_BUS=storage-queue. Secret: never printed.",
    secret: true,
    schema: connectionString,
  },
  SHIELD_REQUEST_QUEUE: {
    default: "attestation-requests",
    meaning: "Queue the agent sends attestation requests to.",
    schema: identifierValue("attestation-requests"),
  },
  SHIELD_RESULT_QUEUE: {
    default: "attestation-results",
    meaning:
      "Queue (session = agent id on Service Bus) the agent receives results, challenges and key events on.",
    schema: identifierValue("attestation-results"),
  },
  SHIELD_RELEASE_SIGNER_CA_FILE: {
    default: "unset",
    meaning:
      "PEM file of the certificates trusted to sign Key Vault release responses (the signer itself or a CA above it). For the embedded default: the local Key Vault-compatible server's signer.",
    schema: path(undefined),
  },
  SHIELD_RELEASE_SIGNER_HOST: {
    default: "unset",
    meaning:
      "Key Vault or Managed HSM host (e.g. contoso.vault.azure.net) the release-response signing certificate must be issued to; without SHIELD_RELEASE_SIGNER_CA_FILE its chain must reach a public CA that Node ships, as Microsoft's SKR sidecar checks it.",
    schema: hostName,
  },
  SHIELD_CONTROL_KEYS_FILE: {
    default: "unset",
    meaning:
      'JSON file of the control-plane public keys ({"keys":[JWK, ...]}, one, or two while that key rotates; each with the kid the functions sign with): only results, challenges and key events signed by one of them are acted on.',
    schema: path(undefined),
  },
  SHIELD_KEYVAULT_URL: {
    default: "unset",
    meaning:
      "The Key Vault or Managed HSM URL (https://<vault>.vault.azure.net): every released key's id must name it.",
    schema: vaultUrl(),
  },
  SHIELD_REATTEST_SECONDS: {
    default: "3600",
    meaning:
      "Re-attest on its own this often (and always before attestedUntil), besides answering challenges and rotations; 0: only then, and keys are wiped when the attestation lapses.",
    schema: integer(0, 7 * 24 * 3600, 3600),
  },
  SHIELD_EVIDENCE_TIMEOUT_MS: {
    default: "10000",
    meaning: "Deadline for one call to the sidecar or THIM.",
    schema: integer(100, 120_000, 10_000),
  },
  SHIELD_PROBE_TIMEOUT_MS: {
    default: "1000",
    meaning: "Deadline for probing a TEE interface at start.",
    schema: integer(50, 30_000, 1_000),
  },
  SHIELD_RESULT_TIMEOUT_SECONDS: {
    default: "120",
    meaning: "How long to wait for an attestation result before asking again.",
    schema: integer(1, 3600, 120),
  },
  SHIELD_LOG_LEVEL: {
    default: "info",
    meaning: "debug, info, warn or error.",
    schema: choice(LOG_LEVELS, "info"),
  },
} as const satisfies Record<string, AgentVariable>;

export type AgentVariableName = keyof typeof AGENT_VARIABLES;

const environmentSchema = z.object(
  Object.fromEntries(Object.entries(AGENT_VARIABLES).map(([name, spec]) => [name, spec.schema])) as {
    [K in AgentVariableName]: (typeof AGENT_VARIABLES)[K]["schema"];
  },
);

export type ConfigResult =
  | { readonly ok: true; readonly config: AgentConfig }
  | { readonly ok: false; readonly problems: readonly string[] };

/** Validates every variable; on failure lists every problem (secret values never shown). */
export function loadAgentConfig(env: Environment): ConfigResult {
  const input = Object.fromEntries(Object.keys(AGENT_VARIABLES).map((name) => [name, env[name]]));
  const parsed = environmentSchema.safeParse(input);
  // Checks that relate two variables run whatever else failed, so every problem shows at once.
  const problems = [
    ...(parsed.success ? [] : parsed.error.issues.map((issue) => describeIssue(issue, env))),
    ...crossFieldProblems(env),
  ];
  if (!parsed.success || problems.length > 0) return { ok: false, problems };
  const values = parsed.data;

  const config: AgentConfig = {
    agentId: values.SHIELD_AGENT_ID ?? defaultAgentId(env),
    workload: values.SHIELD_WORKLOAD ?? "default",
    keys: Object.freeze([...values.SHIELD_KEYS]),
    tee: values.SHIELD_TEE,
    tsm: {
      root: values.SHIELD_TSM_ROOT ?? DEFAULT_TSM_ROOT,
      ...(values.SHIELD_TSM_PRIVLEVEL === undefined ? {} : { privlevel: values.SHIELD_TSM_PRIVLEVEL }),
    },
    sidecar: { url: values.SHIELD_SIDECAR_URL ?? DEFAULT_SIDECAR_URL },
    ...(values.SHIELD_THIM_URL === undefined ? {} : { thimUrl: values.SHIELD_THIM_URL }),
    ...(values.SHIELD_SNP_CHAIN_FILE === undefined ? {} : { snpChainFile: values.SHIELD_SNP_CHAIN_FILE }),
    ...(values.UVM_SECURITY_CONTEXT_DIR === undefined
      ? {}
      : { uvmSecurityContextDir: values.UVM_SECURITY_CONTEXT_DIR }),
    gramine: { root: values.SHIELD_GRAMINE_ROOT ?? DEFAULT_GRAMINE_ROOT },
    simulated: {
      ...(values.SHIELD_SIMULATED_PLATFORM === undefined
        ? {}
        : { platformFile: values.SHIELD_SIMULATED_PLATFORM }),
      ...(values.SHIELD_SIMULATED_HOST_DATA === undefined
        ? {}
        : { hostData: values.SHIELD_SIMULATED_HOST_DATA }),
    },
    runtimeKeyBits: values.SHIELD_RUNTIME_KEY_BITS,
    listen: values.SHIELD_LISTEN,
    allowNonLoopback: values.SHIELD_ALLOW_NON_LOOPBACK,
    ...(values.SHIELD_KEY_API_TOKEN_FILE === undefined
      ? {}
      : { keyApiTokenFile: values.SHIELD_KEY_API_TOKEN_FILE }),
    ...(values.SHIELD_KEY_DIR === undefined ? {} : { keyDir: values.SHIELD_KEY_DIR }),
    serveKeys: values.SHIELD_SERVE_KEYS,
    minDecryptionVersions: values.SHIELD_MIN_DECRYPTION_VERSIONS,
    ...(values.SHIELD_PG_PROXY_FILE === undefined ? {} : { pgProxyFile: values.SHIELD_PG_PROXY_FILE }),
    bus: {
      transport: values.SHIELD_BUS,
      ...(values.SHIELD_SERVICEBUS_NAMESPACE === undefined
        ? {}
        : { serviceBusNamespace: values.SHIELD_SERVICEBUS_NAMESPACE }),
      ...(values.SHIELD_SERVICEBUS_CONNECTION_STRING === undefined
        ? {}
        : { serviceBusConnectionString: values.SHIELD_SERVICEBUS_CONNECTION_STRING }),
      ...(values.SHIELD_STORAGE_CONNECTION_STRING === undefined
        ? {}
        : { storageConnectionString: values.SHIELD_STORAGE_CONNECTION_STRING }),
      requestQueue: values.SHIELD_REQUEST_QUEUE ?? "attestation-requests",
      resultQueue: values.SHIELD_RESULT_QUEUE ?? "attestation-results",
    },
    releaseSigner: {
      ...(values.SHIELD_RELEASE_SIGNER_CA_FILE === undefined
        ? {}
        : { caFile: values.SHIELD_RELEASE_SIGNER_CA_FILE }),
      ...(values.SHIELD_RELEASE_SIGNER_HOST === undefined ? {} : { host: values.SHIELD_RELEASE_SIGNER_HOST }),
    },
    ...(values.SHIELD_CONTROL_KEYS_FILE === undefined
      ? {}
      : { controlKeysFile: values.SHIELD_CONTROL_KEYS_FILE }),
    ...(values.SHIELD_KEYVAULT_URL === undefined ? {} : { keyVaultUrl: values.SHIELD_KEYVAULT_URL }),
    reattestSeconds: values.SHIELD_REATTEST_SECONDS ?? 3600,
    timeouts: {
      evidenceMs: values.SHIELD_EVIDENCE_TIMEOUT_MS ?? 10_000,
      probeMs: values.SHIELD_PROBE_TIMEOUT_MS ?? 1_000,
      resultSeconds: values.SHIELD_RESULT_TIMEOUT_SECONDS ?? 120,
    },
    logLevel: values.SHIELD_LOG_LEVEL,
  };
  return { ok: true, config: deepFreeze(config) };
}

function crossFieldProblems(env: Environment): string[] {
  return [...listenProblems(env), ...keyExportProblems(env)];
}

/** Key files are key material outside the agent: not while it is told to serve none. */
function keyExportProblems(env: Environment): string[] {
  const serve = AGENT_VARIABLES.SHIELD_SERVE_KEYS.schema.safeParse(env["SHIELD_SERVE_KEYS"]);
  const keyDir = AGENT_VARIABLES.SHIELD_KEY_DIR.schema.safeParse(env["SHIELD_KEY_DIR"]);
  if (!serve.success || !keyDir.success || serve.data || keyDir.data === undefined) return [];
  return ["SHIELD_KEY_DIR: key files cannot be written while SHIELD_SERVE_KEYS=false"];
}

function listenProblems(env: Environment): string[] {
  const listen = AGENT_VARIABLES.SHIELD_LISTEN.schema.safeParse(env["SHIELD_LISTEN"]);
  const allow = AGENT_VARIABLES.SHIELD_ALLOW_NON_LOOPBACK.schema.safeParse(env["SHIELD_ALLOW_NON_LOOPBACK"]);
  if (!listen.success || !allow.success) return [];
  if (listen.data.kind === "tcp" && !isLoopback(listen.data.host) && !allow.data) {
    return [
      `SHIELD_LISTEN: ${listen.data.host} is not a loopback address; set SHIELD_ALLOW_NON_LOOPBACK=true to bind it`,
    ];
  }
  return [];
}

/** What the bus round trip needs beyond well-formed values; empty when it can start. */
export function startRequirements(config: AgentConfig): string[] {
  const problems: string[] = [];
  if (config.keys.length === 0) problems.push("SHIELD_KEYS: at least one Key Vault key name is needed");
  if (
    config.bus.transport === "servicebus" &&
    config.bus.serviceBusNamespace === undefined &&
    config.bus.serviceBusConnectionString === undefined
  ) {
    problems.push(
      "SHIELD_SERVICEBUS_NAMESPACE (or SHIELD_SERVICEBUS_CONNECTION_STRING): required when SHIELD_BUS=servicebus",
    );
  }
  if (config.bus.transport === "storage-queue" && config.bus.storageConnectionString === undefined) {
    problems.push("SHIELD_STORAGE_CONNECTION_STRING: required when SHIELD_BUS=storage-queue");
  }
  if (config.releaseSigner.caFile === undefined && config.releaseSigner.host === undefined) {
    problems.push(
      "SHIELD_RELEASE_SIGNER_CA_FILE or SHIELD_RELEASE_SIGNER_HOST: required to verify who signed the keys Key Vault releases",
    );
  }
  if (config.controlKeysFile === undefined) {
    problems.push("SHIELD_CONTROL_KEYS_FILE: required to verify that messages come from the control plane");
  }
  if (config.keyVaultUrl === undefined) {
    problems.push("SHIELD_KEYVAULT_URL: required to check which vault released keys come from");
  }
  return problems;
}

/** The variables table as `--help` prints it. */
export function variablesHelp(): string[] {
  const lines: string[] = [];
  for (const [name, spec] of Object.entries(AGENT_VARIABLES) as [string, AgentVariable][]) {
    lines.push(`  ${name}  (default: ${spec.default})`);
    for (const line of wrap(spec.meaning, 76)) lines.push(`      ${line}`);
  }
  return lines;
}

function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (line !== "" && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line === "" ? word : `${line} ${word}`;
    }
  }
  if (line !== "") lines.push(line);
  return lines;
}

/** True for addresses only this machine can reach. */
export function isLoopback(host: string): boolean {
  if (host === "localhost") return true;
  if (isIPv4(host)) return host.startsWith("127.");
  if (isIPv6(host)) return host === "::1" || host.toLowerCase() === "0:0:0:0:0:0:0:1";
  return false;
}

function parseListen(text: string): ListenAddress | undefined {
  if (text.startsWith("unix:")) {
    const socketPath = text.slice("unix:".length);
    return isAbsolute(socketPath) && !socketPath.includes("\0")
      ? { kind: "unix", path: socketPath }
      : undefined;
  }
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(text);
  if (match === null) return undefined;
  const host = match[1] ?? match[2]!;
  const port = Number(match[3]);
  if (port > 65_535) return undefined;
  if (match[1] !== undefined && !isIPv6(host)) return undefined;
  return { kind: "tcp", host, port };
}

function defaultAgentId(env: Environment): string {
  const host = env["HOSTNAME"]?.trim();
  return host !== undefined && IDENTIFIER_PATTERN.test(host) ? host : "shield-agent";
}

function describeIssue(issue: z.core.$ZodIssue, env: Environment): string {
  const name = String(issue.path[0] ?? "environment");
  const spec = (AGENT_VARIABLES as Record<string, AgentVariable>)[name];
  const value = env[name];
  const shown =
    spec === undefined || spec.secret === true || value === undefined
      ? ""
      : ` (got "${value.length > 64 ? `${value.slice(0, 64)}…` : value}")`;
  return `${name}: expected ${issue.message}${shown}`;
}

function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null && !(value instanceof Secret) && !Object.isFrozen(value)) {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}
