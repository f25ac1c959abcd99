/**
 * The deployment webhook's use case (`POST /api/deployments`, `GET /api/deployments/{id}`). A
 * pipeline announces a new measurement for some keys; the request goes through these steps, in
 * this order, and every refusal is a 4xx with a typed code that has changed nothing:
 *
 * 1. **size**: the raw body is at most `maxBodyBytes` (413 ERR_INPUT_TOO_LARGE), before it is
 *    read as anything;
 * 2. **authenticate**: HMAC or OIDC (authenticate.ts) — 401, or 409 for a replayed delivery;
 * 3. **parse**: UTF-8 JSON (400 ERR_INPUT_MALFORMED), then the schema below (422
 *    ERR_MESSAGE_SCHEMA, naming each failing field): measurements as lowercase hex of their
 *    TEE's length, distinct key names, a grace period within bounds;
 * 4. **authorize**: an OIDC pipeline may change only its allowlisted keys (403);
 * 5. **known keys**: each key exists in the key store (422 ERR_DEPLOY_UNKNOWN_KEY);
 * 6. **plan**: every key's edit is worked out; a key whose policies cannot be edited safely
 *    refuses the deployment (422, the plan says why);
 * 7. `dryRun`: 200 with the plan — the policy diff per key and version. Otherwise the deployment
 *    is recorded, a `policy-update` is handed to the queue, and the answer is 202 with its id.
 *
 * Body (version 1):
 * `{"keys": ["orders-key"], "add": [{"tee": "sevsnp", "hostData": "<64 hex>"}],
 *   "retire"?: [...], "graceSeconds": 3600, "dryRun"?: false}` — without `retire`, the keys'
 * other measurements of the same TEE are retired once the grace period ends.
 */
import { z } from "zod";
import { ShieldError, isShieldError, type ShieldErrorCode, type Violation } from "../errors.js";
import { makePolicyUpdate, type Measurement, type PolicyUpdate } from "../messages/index.js";
import { MAX_GRACE_SECONDS, MAX_MEASUREMENTS_PER_UPDATE, keyNames, measurement } from "../messages/fields.js";
import { formatPath } from "../messages/parse.js";
import type { Clock, Random } from "../ports/clock.js";
import type { KeyStore } from "../ports/key-store.js";
import type { Logger } from "../ports/logger.js";
import type { DeploymentRecord, PolicyStateStore } from "../ports/policy-state.js";
import type { KeyPlan, Rollout } from "../rollout/rollout.js";
import { callerName, type Caller, type Headers } from "./authenticate.js";

export const DEFAULT_DEPLOYMENT_BODY_BYTES = 16 * 1024;
/** Shorter grace periods than this cannot let running workloads re-attest first. */
export const MIN_GRACE_SECONDS = 60;

export const deploymentRequestSchema = z
  .strictObject(
    {
      version: z.literal(1, { error: "1" }).optional(),
      keys: keyNames,
      add: z
        .array(measurement, { error: `array of 1..${MAX_MEASUREMENTS_PER_UPDATE} measurements` })
        .min(1)
        .max(MAX_MEASUREMENTS_PER_UPDATE),
      retire: z
        .array(measurement, { error: `array of at most ${MAX_MEASUREMENTS_PER_UPDATE} measurements` })
        .max(MAX_MEASUREMENTS_PER_UPDATE)
        .optional(),
      graceSeconds: z
        .number({ error: `integer number of seconds, ${MIN_GRACE_SECONDS}..${MAX_GRACE_SECONDS}` })
        .int()
        .min(MIN_GRACE_SECONDS)
        .max(MAX_GRACE_SECONDS),
      dryRun: z.boolean({ error: "boolean" }).optional(),
    },
    { error: "object" },
  )
  .superRefine((body, ctx) => {
    body.add.forEach((m, index) => {
      if (m.tee === "sgx" && m.mrenclave === undefined && m.mrsigner === undefined)
        ctx.addIssue({ code: "custom", path: ["add", index], message: "mrenclave and/or mrsigner" });
    });
  });

export type DeploymentRequest = z.infer<typeof deploymentRequestSchema>;

export interface HttpAnswer {
  readonly status: number;
  readonly body: Readonly<Record<string, unknown>>;
}

export interface DeploymentsPorts {
  readonly authenticator: {
    authenticate(headers: Headers, body: Uint8Array): Promise<Caller>;
    authorizeKeys(caller: Caller, keys: readonly string[]): void;
  };
  readonly rollout: Pick<Rollout, "plan" | "resolveRetire">;
  readonly keys: Pick<KeyStore, "getKey">;
  readonly policyState: PolicyStateStore;
  /** Hands the policy-update to its queue (a call may pass its own: an output binding). */
  readonly enqueue: (message: PolicyUpdate) => Promise<void>;
  readonly clock: Clock;
  readonly random: Random;
  readonly logger: Logger;
}

export interface DeploymentsConfig {
  readonly maxBodyBytes?: number;
}

const STATUS: Partial<Record<ShieldErrorCode, number>> = {
  ERR_INPUT_TOO_LARGE: 413,
  ERR_INPUT_MALFORMED: 400,
  ERR_MESSAGE_SCHEMA: 422,
  ERR_WEBHOOK_UNAUTHENTICATED: 401,
  ERR_WEBHOOK_SIGNATURE: 401,
  ERR_WEBHOOK_TIMESTAMP: 401,
  ERR_WEBHOOK_TOKEN: 401,
  ERR_WEBHOOK_TOKEN_AUDIENCE: 401,
  ERR_WEBHOOK_TOKEN_EXPIRED: 401,
  ERR_WEBHOOK_REPLAYED: 409,
  ERR_WEBHOOK_NOT_ALLOWED: 403,
  ERR_DEPLOY_UNKNOWN_KEY: 422,
  ERR_DEPLOYMENT_UNKNOWN: 404,
  ERR_POLICY_UNSAFE_CHANGE: 422,
  ERR_POLICY_UNSAFE: 422,
};

/** An error as the webhook answers it: terminal ones are 4xx, anything else 503 (try again). */
export function errorAnswer(error: unknown): HttpAnswer {
  const shield = isShieldError(error) ? error : new ShieldError("ERR_INTERNAL", "unexpected failure");
  const status = STATUS[shield.code] ?? (shield.transient ? 503 : 500);
  return { status, body: { ok: false, error: shield.toJSON() } };
}

function parseBody(raw: Uint8Array): DeploymentRequest {
  let document: unknown;
  try {
    document = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw)) as unknown;
  } catch {
    throw new ShieldError("ERR_INPUT_MALFORMED", "the body is not UTF-8 JSON");
  }
  const parsed = deploymentRequestSchema.safeParse(document);
  if (!parsed.success) {
    const violations: Violation[] = parsed.error.issues.slice(0, 32).map((issue) => ({
      field: formatPath(issue.path),
      expected: issue.message,
      actual: "invalid",
    }));
    throw new ShieldError(
      "ERR_MESSAGE_SCHEMA",
      `the deployment request is malformed at ${violations[0]?.field}`,
      {
        violations,
      },
    );
  }
  return parsed.data;
}

function deploymentView(record: DeploymentRecord): Record<string, unknown> {
  const { etag: _etag, ...rest } = record;
  return { ...rest, createdAt: record.createdAt.toISOString(), updatedAt: record.updatedAt.toISOString() };
}

export function createDeploymentsHandler(ports: DeploymentsPorts, config: DeploymentsConfig = {}) {
  const maxBodyBytes = config.maxBodyBytes ?? DEFAULT_DEPLOYMENT_BODY_BYTES;

  async function checkKnownKeys(keyNames: readonly string[]): Promise<void> {
    const unknown: string[] = [];
    for (const name of keyNames) {
      try {
        await ports.keys.getKey(name);
      } catch (error) {
        if (isShieldError(error) && error.code === "ERR_CONFIG") unknown.push(name);
        else throw error;
      }
    }
    if (unknown.length > 0) {
      throw new ShieldError("ERR_DEPLOY_UNKNOWN_KEY", `no such key: ${unknown.join(", ")}`, {
        violations: unknown.map((name) => ({
          field: `keys.${name}`,
          expected: "a key Shield manages",
          actual: "absent",
        })),
      });
    }
  }

  function refusedPlan(plans: readonly KeyPlan[]): ShieldError | undefined {
    const refused = plans.filter((p) => p.error !== undefined);
    if (refused.length === 0) return undefined;
    return new ShieldError("ERR_POLICY_UNSAFE_CHANGE", "the change cannot be applied safely to every key", {
      violations: refused.map((p) => ({
        field: `keys.${p.keyName}`,
        expected: "release policies this change can edit safely",
        actual: `${p.error!.code}: ${p.error!.message}`.slice(0, 500),
      })),
    });
  }

  return {
    /** `POST /api/deployments` */
    async post(
      headers: Headers,
      body: Uint8Array,
      enqueue: (message: PolicyUpdate) => Promise<void> = ports.enqueue,
    ): Promise<HttpAnswer> {
      try {
        if (body.length > maxBodyBytes) {
          throw new ShieldError("ERR_INPUT_TOO_LARGE", `the body exceeds ${maxBodyBytes} bytes`);
        }
        const caller = await ports.authenticator.authenticate(headers, body);
        const request = parseBody(body);
        ports.authenticator.authorizeKeys(caller, request.keys);
        await checkKnownKeys(request.keys);
        const retire: Measurement[] = await ports.rollout.resolveRetire(
          request.keys,
          request.add,
          request.retire,
        );
        const plans = await ports.rollout.plan({ keys: request.keys, add: request.add });
        const refused = refusedPlan(plans);
        if (request.dryRun === true) {
          return {
            status: refused === undefined ? 200 : 422,
            body: {
              ok: refused === undefined,
              dryRun: true,
              retire,
              graceSeconds: request.graceSeconds,
              keys: plans,
            },
          };
        }
        if (refused !== undefined) throw refused;
        const now = ports.clock.now();
        const deploymentId = `dep-${ports.random.uuid()}`;
        const update = makePolicyUpdate({
          deploymentId,
          keys: request.keys,
          add: request.add,
          retire,
          graceSeconds: request.graceSeconds,
          dryRun: false,
          sentAt: now,
        });
        const record = await ports.policyState.createDeployment({
          deploymentId,
          status: "queued",
          keys: request.keys,
          add: request.add,
          retire,
          graceSeconds: request.graceSeconds,
          requestedBy: callerName(caller),
          createdAt: now,
          updatedAt: now,
          progress: request.keys.map((keyName) => ({ keyName, status: "pending", versions: [] })),
        });
        await enqueue(update);
        ports.logger("info", "deployment queued", {
          deploymentId,
          keys: request.keys.length,
          by: record.requestedBy,
        });
        return {
          status: 202,
          body: { ok: true, deploymentId, status: "queued", location: `/api/deployments/${deploymentId}` },
        };
      } catch (error) {
        const answer = errorAnswer(error);
        ports.logger(answer.status >= 500 ? "error" : "info", "deployment refused", {
          status: answer.status,
          code: (answer.body["error"] as { code?: string } | undefined)?.code,
        });
        return answer;
      }
    },

    /** `GET /api/deployments/{id}` */
    async get(deploymentId: string): Promise<HttpAnswer> {
      try {
        if (!/^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/.test(deploymentId)) {
          throw new ShieldError("ERR_DEPLOYMENT_UNKNOWN", "no such deployment");
        }
        const record = await ports.policyState.getDeployment(deploymentId);
        if (record === undefined) throw new ShieldError("ERR_DEPLOYMENT_UNKNOWN", "no such deployment");
        return { status: 200, body: { ok: true, deployment: deploymentView(record) } };
      } catch (error) {
        return errorAnswer(error);
      }
    },
  };
}
