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
});

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
  if (problems.length > 0 || state === undefined || bus === undefined || appraisal === undefined)
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
  };
}
