/**
 * The deployment side of the composition: the webhook (its authenticator, with the HMAC key
 * read from Key Vault secrets and pipeline tokens checked against the issuer's JWKS), the
 * rollout use case for the policy-update queue and the retirement timer, and the status
 * snapshot, built once per process over the adapters the root already made.
 */
import { createRemoteJWKSet } from "jose";
import { ShieldError } from "../../core/errors.js";
import { retrying, type RetryPolicy } from "../../core/retry.js";
import { createAuthenticator } from "../../core/deploy/authenticate.js";
import { createDeploymentsHandler, errorAnswer, type HttpAnswer } from "../../core/deploy/deployments.js";
import type { PolicyUpdate } from "../../core/messages/index.js";
import { systemRandom, type Clock } from "../../core/ports/clock.js";
import type { KeyStore } from "../../core/ports/key-store.js";
import type { Logger } from "../../core/ports/logger.js";
import type { ShieldMetrics } from "../../core/ports/metrics.js";
import type { PolicyStateStore } from "../../core/ports/policy-state.js";
import type { StateStore } from "../../core/ports/state.js";
import { createRollout, type RetirementReport } from "../../core/rollout/rollout.js";
import { INTAKE_AUDIT_PARTITION } from "../../core/attest/attest.js";
import { readStatus, type StatusSnapshot } from "../../core/status/status.js";
import type { DeployHttpRequest } from "./http.js";
import type { FunctionsSettings } from "./settings.js";

/** Retries inside one invocation for the audit writes; redelivery does the rest. */
const ROLLOUT_RETRY: RetryPolicy = { attempts: 3, baseDelayMs: 200, maxDelayMs: 2_000 };

interface TokenCredentialLike {
  getToken(scopes: string | string[]): Promise<{ token: string; expiresOnTimestamp: number } | null>;
}

export interface RolloutHandlers {
  postDeployment(
    request: DeployHttpRequest,
    enqueue: (message: PolicyUpdate) => Promise<void>,
  ): Promise<HttpAnswer>;
  getDeployment(deploymentId: string): Promise<HttpAnswer>;
  applyPolicyUpdate(message: PolicyUpdate): Promise<void>;
  /**
   * Records a policy-update message that does not parse (intake audit: message id and code), so
   * that completing it loses nothing, as for the other queues.
   */
  rejectPolicyUpdate(error: ShieldError, messageId: string): Promise<void>;
  retireDue(): Promise<RetirementReport>;
  /** The status snapshot (core/status). */
  status(): Promise<StatusSnapshot>;
}

export async function buildRolloutHandlers(
  settings: FunctionsSettings,
  ports: {
    readonly keys: KeyStore;
    readonly state: StateStore;
    readonly policyState: PolicyStateStore;
    readonly keyVaultCredential: TokenCredentialLike;
    readonly logger: Logger;
    /** The composition's clock (configureComposition), so the retirement timer follows it too. */
    readonly clock: Clock;
    readonly metrics: ShieldMetrics;
  },
): Promise<RolloutHandlers> {
  const deploy = settings.deploy;
  const clock = ports.clock;
  const rollout = createRollout(
    {
      keys: ports.keys,
      policyState: ports.policyState,
      state: retrying(ports.state, ROLLOUT_RETRY),
      clock,
      random: systemRandom,
      logger: ports.logger,
      metrics: ports.metrics,
    },
    { seed: settings.appraisal, leaseSeconds: deploy.leaseSeconds },
  );
  let deployments: ReturnType<typeof createDeploymentsHandler> | undefined;
  if (deploy.hmacSecretName !== undefined || deploy.oidc !== undefined) {
    const { createKeyVaultSecretReader } = await import("../../adapters/keyvault/secrets.js");
    const authenticator = createAuthenticator(
      {
        policyState: ports.policyState,
        ...(deploy.hmacSecretName === undefined
          ? {}
          : {
              secrets: createKeyVaultSecretReader({
                vaultUrl: settings.keyVaultUrl,
                credential: ports.keyVaultCredential,
                clock,
              }),
            }),
        ...(deploy.oidc === undefined ? {} : { oidcKeys: createRemoteJWKSet(new URL(deploy.oidc.jwksUrl)) }),
        clock,
      },
      {
        ...(deploy.hmacSecretName === undefined ? {} : { hmac: { secretName: deploy.hmacSecretName } }),
        ...(deploy.oidc === undefined ? {} : { oidc: deploy.oidc }),
      },
    );
    deployments = createDeploymentsHandler(
      {
        authenticator,
        rollout,
        keys: ports.keys,
        policyState: ports.policyState,
        enqueue: () => Promise.reject(new ShieldError("ERR_CONFIG", "no policy-update queue")),
        clock,
        random: systemRandom,
        logger: ports.logger,
      },
      { maxBodyBytes: deploy.maxBodyBytes },
    );
  }
  const notConfigured = errorAnswer(
    new ShieldError("ERR_CONFIG", "deployments are not configured (no HMAC secret, no OIDC audience)"),
  );
  return {
    postDeployment: async (request, enqueue) =>
      deployments === undefined ? notConfigured : deployments.post(request.headers, request.body, enqueue),
    getDeployment: async (deploymentId) =>
      deployments === undefined ? notConfigured : deployments.get(deploymentId),
    applyPolicyUpdate: async (message) => {
      await rollout.applyPolicyUpdate(message);
    },
    rejectPolicyUpdate: async (error, messageId) => {
      await retrying(ports.state, ROLLOUT_RETRY).appendAudit(INTAKE_AUDIT_PARTITION, {
        at: clock.now(),
        kind: "message-rejected",
        subject: "policy-update",
        details: {
          messageId: messageId.slice(0, 128),
          code: error.code,
          violations: error.violations.length,
        },
      });
    },
    retireDue: () => rollout.retireDue(),
    status: () =>
      readStatus({
        state: ports.state,
        keys: ports.keys,
        policyState: ports.policyState,
        clock,
        lifecycles: settings.lifecycles,
      }),
  };
}
