/**
 * The Functions app's settings, read once from the environment (App Settings in Azure,
 * `local.settings.json` or the embedded default's host locally) and checked with a schema.
 * A missing or malformed setting is ERR_CONFIG naming the variable — never its value, since
 * some of them hold connection strings.
 */
import { z } from "zod";
import { ShieldError, type Violation } from "../../core/errors.js";
import { parseAppraisalPolicy, type AppraisalPolicy } from "../../core/appraisal/index.js";
import { RELEASE_ENCRYPTIONS, type ReleaseEncryption } from "../../core/keywrap/index.js";
import { CONTROL_ALGORITHMS, type ControlAlgorithm } from "../../core/ports/control-signer.js";
import { parseKeyLifecycles, type KeyLifecycles } from "../../core/lifecycle/keys.js";
import { checkSchedule, DEFAULT_REATTEST_SCHEDULE, DEFAULT_ROTATION_SCHEDULE } from "./schedules.js";
import { isServiceBusConnectionString } from "../../adapters/servicebus/client.js";

const url = z.string().url();
const positiveInt = (fallback: number) => z.coerce.number().int().positive().default(fallback);

const schema = z.object({
  SHIELD_MAA_ENDPOINT: url,
  SHIELD_KEYVAULT_URL: url,
  /** Local mode: the fixed bearer token the local Key Vault-compatible server accepts. */
  SHIELD_KEYVAULT_LOCAL_TOKEN: z.string().min(16).optional(),
  SHIELD_STATE_CONNECTION: z.string().min(1).optional(),
  SHIELD_STATE_TABLE_ENDPOINT: url.optional(),
  SHIELD_STATE_TABLE: z
    .string()
    .regex(/^[A-Za-z][A-Za-z0-9]{2,62}$/)
    .default("shield"),
  SHIELD_STATE_CREATE_TABLE: z.enum(["true", "false"]).default("false"),
  SHIELD_BUS: z.enum(["servicebus", "storage-queue"]).default("servicebus"),
  /** Service Bus namespace for identity-based connections (`<ns>.servicebus.windows.net`). */
  ServiceBusConnection__fullyQualifiedNamespace: z.string().min(1).optional(),
  /**
   * A Service Bus connection string in the same setting the trigger's `connection` names (the
   * Functions convention): the local endpoint, or a namespace without Entra ID.
   */
  ServiceBusConnection: z.string().min(1).optional(),
  SHIELD_BUS_CONNECTION: z.string().min(1).optional(),
  SHIELD_APPRAISAL_POLICY: z.string().min(2),
  SHIELD_ATTESTATION_PERIOD_SECONDS: positiveInt(3600),
  SHIELD_RELEASE_ENCRYPTION: z
    .enum(RELEASE_ENCRYPTIONS as unknown as [ReleaseEncryption, ...ReleaseEncryption[]])
    .default("RSA_AES_KEY_WRAP_256"),
  SHIELD_MAX_DELIVERY_COUNT: positiveInt(10),
  /** The control-plane signing key, with its version: `https://<vault>/keys/<name>/<version>`. */
  SHIELD_CONTROL_KEY_ID: url,
  SHIELD_CONTROL_KEY_ALGORITHM: z
    .enum(CONTROL_ALGORITHMS as unknown as [ControlAlgorithm, ...ControlAlgorithm[]])
    .default("ES256"),
  SHIELD_CHALLENGE_SECONDS: z.coerce.number().int().min(10).max(3600).default(300),
  SHIELD_CONTROL_MESSAGE_TTL_SECONDS: z.coerce.number().int().min(60).max(86_400).default(900),
  // the lifecycle: re-attestation, revocation, rotation
  SHIELD_REATTEST_SCHEDULE: z.string().default(DEFAULT_REATTEST_SCHEDULE),
  SHIELD_REATTEST_BUDGET: z.coerce.number().int().min(1).max(1000).default(100),
  SHIELD_REATTEST_MARGIN_SECONDS: z.coerce.number().int().min(0).max(86_400).optional(),
  SHIELD_ROTATION_SCHEDULE: z.string().default(DEFAULT_ROTATION_SCHEDULE),
  /** The queue `rotate-key` work goes to (session-enabled on Service Bus). */
  SHIELD_ROTATE_KEY_QUEUE: z
    .string()
    .regex(/^(?=.{3,63}$)[a-z0-9]+(?:-[a-z0-9]+)*$/)
    .default("rotate-key"),
  /** Per-key lifecycle (core/lifecycle/keys.ts), JSON; keys not named get the defaults. */
  SHIELD_KEY_LIFECYCLE: z.string().default("{}"),
  /** The vault's name as Key Vault events name it (default: the first label of SHIELD_KEYVAULT_URL's host). */
  SHIELD_KEYVAULT_NAME: z
    .string()
    .regex(/^[A-Za-z0-9-]{1,64}$/)
    .optional(),
  /** Set by Azure when the app has Application Insights: metrics are exported there. */
  APPLICATIONINSIGHTS_CONNECTION_STRING: z.string().max(2048).optional(),
});

// ---------------------------------------------------------------------------------------------
// Deployments: the webhook's authentication and the rollout (a block of its own)

const GITHUB_ACTIONS_ISSUER = "https://token.actions.githubusercontent.com";

const pipelineRule = z.strictObject({
  repository: z.string().min(1).max(200),
  ref: z.string().min(1).max(300).optional(),
  environment: z.string().min(1).max(200).optional(),
  job_workflow_ref: z.string().min(1).max(500).optional(),
});

const deploySchema = z.object({
  /** The Key Vault secret (in SHIELD_KEYVAULT_URL) holding the webhook's HMAC key; HMAC is off without it. */
  SHIELD_DEPLOY_HMAC_SECRET_NAME: z
    .string()
    .regex(/^[0-9a-zA-Z-]{1,127}$/)
    .optional(),
  /** The `aud` pipeline tokens must carry; OIDC is off without it. */
  SHIELD_DEPLOY_OIDC_AUDIENCE: z.string().min(1).max(300).optional(),
  SHIELD_DEPLOY_OIDC_ISSUER: url.default(GITHUB_ACTIONS_ISSUER),
  /** Default `<issuer>/.well-known/jwks` (GitHub Actions); Azure DevOps and GitLab name theirs. */
  SHIELD_DEPLOY_OIDC_JWKS_URL: url.optional(),
  /** JSON: key name → [{repository, ref?, environment?, job_workflow_ref?}]. */
  SHIELD_DEPLOY_OIDC_ALLOW: z
    .string()
    .max(64 * 1024)
    .default("{}"),
  SHIELD_DEPLOY_MAX_BODY_BYTES: z.coerce
    .number()
    .int()
    .min(1024)
    .max(1024 * 1024)
    .default(16 * 1024),
  SHIELD_POLICY_LEASE_SECONDS: z.coerce.number().int().min(10).max(3600).default(120),
});

/**
 * Every setting name the app reads from its environment: infra/main.bicep may set only these
 * (and the host's and SDKs' own, listed in test/infra), which test/infra/cross-check.test.ts checks.
 */
export const FUNCTIONS_SETTING_NAMES: readonly string[] = Object.freeze([
  ...Object.keys(schema.shape),
  ...Object.keys(deploySchema.shape),
]);

export interface DeploySettings {
  readonly hmacSecretName?: string;
  readonly oidc?: {
    readonly issuer: string;
    readonly audience: string;
    readonly jwksUrl: string;
    readonly allow: Readonly<Record<string, readonly z.infer<typeof pipelineRule>[]>>;
  };
  readonly maxBodyBytes: number;
  readonly leaseSeconds: number;
}

export function readDeploySettings(env: Readonly<Record<string, string | undefined>>): DeploySettings {
  const parsed = deploySchema.safeParse(env);
  const problems: Violation[] = parsed.success
    ? []
    : parsed.error.issues.map((issue) => ({
        field: issue.path.join("."),
        expected: issue.message,
        actual: env[String(issue.path[0])] === undefined ? "missing" : "invalid",
      }));
  let allow: Record<string, z.infer<typeof pipelineRule>[]> = {};
  if (parsed.success) {
    let document: unknown;
    try {
      document = JSON.parse(parsed.data.SHIELD_DEPLOY_OIDC_ALLOW) as unknown;
    } catch {
      document = undefined;
    }
    const rules = z
      .record(z.string().regex(/^[0-9a-zA-Z-]{1,127}$/), z.array(pipelineRule).max(32))
      .safeParse(document);
    if (rules.success) allow = rules.data;
    else
      problems.push({
        field: "SHIELD_DEPLOY_OIDC_ALLOW",
        expected: "JSON: key name → [{repository, ref?, environment?, job_workflow_ref?}]",
        actual: "invalid",
      });
  }
  if (!parsed.success || problems.length > 0) throw configError(problems);
  const s = parsed.data;
  const issuer = s.SHIELD_DEPLOY_OIDC_ISSUER.replace(/\/+$/, "");
  return {
    ...(s.SHIELD_DEPLOY_HMAC_SECRET_NAME === undefined
      ? {}
      : { hmacSecretName: s.SHIELD_DEPLOY_HMAC_SECRET_NAME }),
    ...(s.SHIELD_DEPLOY_OIDC_AUDIENCE === undefined
      ? {}
      : {
          oidc: {
            issuer,
            audience: s.SHIELD_DEPLOY_OIDC_AUDIENCE,
            jwksUrl: s.SHIELD_DEPLOY_OIDC_JWKS_URL ?? `${issuer}/.well-known/jwks`,
            allow,
          },
        }),
    maxBodyBytes: s.SHIELD_DEPLOY_MAX_BODY_BYTES,
    leaseSeconds: s.SHIELD_POLICY_LEASE_SECONDS,
  };
}

export interface FunctionsSettings {
  readonly maaEndpoint: string;
  readonly keyVaultUrl: string;
  readonly keyVaultLocalToken?: string;
  readonly state:
    | {
        readonly kind: "connection-string";
        readonly connectionString: string;
        readonly table: string;
        readonly createTable: boolean;
      }
    | {
        readonly kind: "endpoint";
        readonly endpoint: string;
        readonly table: string;
        readonly createTable: boolean;
      };
  readonly bus:
    | { readonly kind: "servicebus"; readonly fullyQualifiedNamespace: string }
    | { readonly kind: "servicebus"; readonly connectionString: string }
    | { readonly kind: "storage-queue"; readonly connectionString: string };
  readonly appraisal: AppraisalPolicy;
  readonly attestationPeriodSeconds: number;
  readonly releaseEncryption: ReleaseEncryption;
  readonly maxDeliveryCount: number;
  readonly controlKey: { readonly keyId: string; readonly algorithm: ControlAlgorithm };
  readonly challengeSeconds: number;
  readonly controlMessageTtlSeconds: number;
  readonly reattest: {
    readonly schedule: string;
    readonly budget: number;
    /** Challenge this long before an attestation ends. */
    readonly marginSeconds: number;
  };
  readonly rotationSchedule: string;
  readonly rotateKeyQueue: string;
  readonly lifecycles: KeyLifecycles;
  /** Keys named in SHIELD_KEY_LIFECYCLE: managed (scheduled rotation, events) from the start. */
  readonly managedKeys: readonly string[];
  readonly keyVaultName?: string;
  readonly deploy: DeploySettings;
  /** APPLICATIONINSIGHTS_CONNECTION_STRING: metrics go to Application Insights (never logged). */
  readonly applicationInsightsConnectionString?: string;
}

function configError(violations: Violation[]): ShieldError {
  return new ShieldError("ERR_CONFIG", `invalid settings: ${violations.map((v) => v.field).join(", ")}`, {
    violations,
  });
}

export function readSettings(env: Readonly<Record<string, string | undefined>>): FunctionsSettings {
  const parsed = schema.safeParse(env);
  if (!parsed.success) {
    throw configError(
      parsed.error.issues.map((issue) => ({
        field: issue.path.join("."),
        expected: issue.message,
        actual: env[String(issue.path[0])] === undefined ? "missing" : "invalid",
      })),
    );
  }
  const s = parsed.data;
  const problems: Violation[] = [];
  const table = s.SHIELD_STATE_TABLE;
  const createTable = s.SHIELD_STATE_CREATE_TABLE === "true";
  let state: FunctionsSettings["state"] | undefined;
  if (s.SHIELD_STATE_CONNECTION !== undefined)
    state = { kind: "connection-string", connectionString: s.SHIELD_STATE_CONNECTION, table, createTable };
  else if (s.SHIELD_STATE_TABLE_ENDPOINT !== undefined)
    state = { kind: "endpoint", endpoint: s.SHIELD_STATE_TABLE_ENDPOINT, table, createTable };
  else
    problems.push({
      field: "SHIELD_STATE_TABLE_ENDPOINT",
      expected: "a Table endpoint (or SHIELD_STATE_CONNECTION)",
      actual: "missing",
    });
  let bus: FunctionsSettings["bus"] | undefined;
  if (s.SHIELD_BUS === "servicebus") {
    if (s.ServiceBusConnection__fullyQualifiedNamespace !== undefined) {
      bus = { kind: "servicebus", fullyQualifiedNamespace: s.ServiceBusConnection__fullyQualifiedNamespace };
    } else if (s.ServiceBusConnection !== undefined) {
      if (isServiceBusConnectionString(s.ServiceBusConnection)) {
        bus = { kind: "servicebus", connectionString: s.ServiceBusConnection };
      } else {
        problems.push({
          field: "ServiceBusConnection",
          expected: "a Service Bus connection string (Endpoint=sb://… and a key or a signature)",
          actual: "invalid",
        });
      }
    } else {
      problems.push({
        field: "ServiceBusConnection__fullyQualifiedNamespace",
        expected: "the Service Bus namespace (or a ServiceBusConnection connection string)",
        actual: "missing",
      });
    }
  } else if (s.SHIELD_BUS_CONNECTION === undefined) {
    problems.push({
      field: "SHIELD_BUS_CONNECTION",
      expected: "a Storage connection string for storage-queue",
      actual: "missing",
    });
  } else bus = { kind: "storage-queue", connectionString: s.SHIELD_BUS_CONNECTION };
  let appraisal: AppraisalPolicy | undefined;
  try {
    appraisal = parseAppraisalPolicy(s.SHIELD_APPRAISAL_POLICY);
  } catch (error) {
    problems.push({
      field: "SHIELD_APPRAISAL_POLICY",
      expected: "an appraisal policy (JSON)",
      actual: error instanceof ShieldError ? error.code : "invalid",
    });
  }
  for (const name of ["SHIELD_REATTEST_SCHEDULE", "SHIELD_ROTATION_SCHEDULE"] as const) {
    const problem = checkSchedule(s[name]);
    if (problem !== undefined)
      problems.push({ field: name, expected: "an NCRONTAB schedule", actual: problem });
  }
  let lifecycle: ReturnType<typeof parseKeyLifecycles> | undefined;
  try {
    lifecycle = parseKeyLifecycles(JSON.parse(s.SHIELD_KEY_LIFECYCLE) as unknown);
  } catch (error) {
    problems.push({
      field: "SHIELD_KEY_LIFECYCLE",
      expected: "per-key lifecycle settings (JSON)",
      actual: error instanceof ShieldError ? error.code : "not JSON",
    });
  }
  if (
    problems.length > 0 ||
    state === undefined ||
    bus === undefined ||
    appraisal === undefined ||
    lifecycle === undefined
  )
    throw configError(problems);
  return {
    maaEndpoint: s.SHIELD_MAA_ENDPOINT.replace(/\/+$/, ""),
    keyVaultUrl: s.SHIELD_KEYVAULT_URL,
    ...(s.SHIELD_KEYVAULT_LOCAL_TOKEN === undefined
      ? {}
      : { keyVaultLocalToken: s.SHIELD_KEYVAULT_LOCAL_TOKEN }),
    state,
    bus,
    appraisal,
    attestationPeriodSeconds: s.SHIELD_ATTESTATION_PERIOD_SECONDS,
    releaseEncryption: s.SHIELD_RELEASE_ENCRYPTION,
    maxDeliveryCount: s.SHIELD_MAX_DELIVERY_COUNT,
    controlKey: { keyId: s.SHIELD_CONTROL_KEY_ID, algorithm: s.SHIELD_CONTROL_KEY_ALGORITHM },
    challengeSeconds: s.SHIELD_CHALLENGE_SECONDS,
    controlMessageTtlSeconds: s.SHIELD_CONTROL_MESSAGE_TTL_SECONDS,
    reattest: {
      schedule: s.SHIELD_REATTEST_SCHEDULE,
      budget: s.SHIELD_REATTEST_BUDGET,
      marginSeconds: s.SHIELD_REATTEST_MARGIN_SECONDS ?? s.SHIELD_CHALLENGE_SECONDS + 60,
    },
    rotationSchedule: s.SHIELD_ROTATION_SCHEDULE,
    rotateKeyQueue: s.SHIELD_ROTATE_KEY_QUEUE,
    lifecycles: lifecycle.lifecycles,
    managedKeys: lifecycle.named,
    ...(s.SHIELD_KEYVAULT_NAME === undefined ? {} : { keyVaultName: s.SHIELD_KEYVAULT_NAME }),
    deploy: readDeploySettings(env),
    ...(s.APPLICATIONINSIGHTS_CONNECTION_STRING === undefined ||
    s.APPLICATIONINSIGHTS_CONNECTION_STRING.trim() === ""
      ? {}
      : { applicationInsightsConnectionString: s.APPLICATIONINSIGHTS_CONNECTION_STRING }),
  };
}
