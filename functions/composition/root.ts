/**
 * The composition root: builds every adapter once per process, on first use, from the settings.
 * Azure SDKs are loaded with dynamic imports here and nowhere earlier, so a cold start pays only
 * for the adapters the first invocation needs. Network ports are wrapped with `retrying()` so
 * transient MAA, Key Vault and storage failures are retried with backoff inside an invocation.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { createAttestHandler, type AttestDelivery, type AttestOutcome } from "../../core/attest/attest.js";
import type { Logger } from "../../core/ports/logger.js";
import type { AgentChannel } from "../../core/ports/bus.js";
import type { StateStore } from "../../core/ports/state.js";
import { systemClock as realClock, systemRandom, type Clock } from "../../core/ports/clock.js";
import type { PolicyStateStore } from "../../core/ports/policy-state.js";
import { createControlChannel } from "../../core/control/signed.js";
import { retrying, type RetryPolicy } from "../../core/retry.js";
import { createCachedSigningKeys } from "../../core/token/index.js";
import { readSettings, type FunctionsSettings } from "./settings.js";
import type { RotationQueue } from "../../core/ports/bus.js";
import { createChallengeIssuer } from "../../core/attest/challenge.js";
import { createRevoker, type RevocationOutcome } from "../../core/lifecycle/revoke.js";
import { createReattestTick, type TickReport } from "../../core/lifecycle/reattest.js";
import { createRotation, type RotationOutcome } from "../../core/lifecycle/rotate.js";
import {
  createKeyVaultEventHandler,
  vaultNameOf,
  type EventIntake,
} from "../../core/lifecycle/keyvault-events.js";
import { createAppraisalPolicySource } from "../../core/rollout/appraisal-source.js";
import { buildRolloutHandlers, type RolloutHandlers } from "./rollout.js";
import type { MeterProvider } from "@opentelemetry/api";
import { noMetrics, type ShieldMetrics } from "../../core/ports/metrics.js";

/** Retries inside one invocation: a few quick attempts; redelivery does the rest. */
const INVOCATION_RETRY: RetryPolicy = { attempts: 3, baseDelayMs: 200, maxDelayMs: 2_000 };

export type AttestHandler = (
  body: unknown,
  delivery: AttestDelivery,
  logger: Logger,
) => Promise<AttestOutcome>;

export interface Composition {
  readonly settings: FunctionsSettings;
  readonly attest: AttestHandler;
  readonly reattest: (timer: { isPastDue?: boolean }, logger: Logger) => Promise<TickReport>;
  readonly rotate: (
    body: unknown,
    delivery: { messageId: string; deliveryCount: number },
    logger: Logger,
  ) => Promise<RotationOutcome>;
  readonly rotationTick: (logger: Logger) => Promise<{ queued: number; retired: number; waiting: number }>;
  readonly keyVaultEvents: (body: unknown, logger: Logger) => Promise<EventIntake>;
  readonly operator: {
    revoke(
      agentId: string,
      by: { operator: string; requestId: string },
      logger: Logger,
    ): Promise<RevocationOutcome>;
    reinstate(
      agentId: string,
      by: { operator: string; requestId: string },
      logger: Logger,
    ): Promise<{ changed: boolean; previousReason?: string }>;
    /** Queues a `rotate-key` (reason `manual`) for the key, audited with the operator's name. */
    rotateKey(
      keyName: string,
      by: { operator: string; requestId: string },
      logger: Logger,
    ): Promise<{ keyName: string; currentVersion: string; sourceEventId: string }>;
  };
  /** Deployments, policy updates and retirement (rollout.ts). */
  readonly rollout: RolloutHandlers;
  close(): Promise<void>;
}

interface TokenCredentialLike {
  getToken(scopes: string | string[]): Promise<{ token: string; expiresOnTimestamp: number } | null>;
}

async function defaultCredential(): Promise<TokenCredentialLike> {
  const { DefaultAzureCredential } = await import("@azure/identity");
  return new DefaultAzureCredential();
}

async function buildState(
  settings: FunctionsSettings,
  credential: () => Promise<TokenCredentialLike>,
): Promise<StateStore> {
  const { createTableStateStore } = await import("../../adapters/state/table.js");
  const s = settings.state;
  return s.kind === "connection-string"
    ? createTableStateStore({
        tableName: s.table,
        createTable: s.createTable,
        connectionString: s.connectionString,
      })
    : createTableStateStore({
        tableName: s.table,
        createTable: s.createTable,
        endpoint: s.endpoint,
        credential: await credential(),
      });
}

async function buildRotationQueue(
  settings: FunctionsSettings,
  credential: () => Promise<TokenCredentialLike>,
): Promise<RotationQueue & { close(): Promise<void> }> {
  if (settings.bus.kind === "servicebus") {
    const { createServiceBusRotationQueue } = await import("../../adapters/servicebus/bus.js");
    return createServiceBusRotationQueue({
      ...("connectionString" in settings.bus
        ? { connectionString: settings.bus.connectionString }
        : { fullyQualifiedNamespace: settings.bus.fullyQualifiedNamespace, credential: await credential() }),
      queue: settings.rotateKeyQueue,
    });
  }
  const { createStorageQueueBus } = await import("../../adapters/storage-queue/bus.js");
  return createStorageQueueBus({
    connectionString: settings.bus.connectionString,
    rotationQueue: settings.rotateKeyQueue,
  });
}

async function buildPolicyState(
  settings: FunctionsSettings,
  credential: () => Promise<TokenCredentialLike>,
): Promise<PolicyStateStore> {
  const { createTablePolicyStateStore } = await import("../../adapters/state/policy-table.js");
  const s = settings.state;
  return s.kind === "connection-string"
    ? createTablePolicyStateStore({
        tableName: s.table,
        createTable: s.createTable,
        connectionString: s.connectionString,
      })
    : createTablePolicyStateStore({
        tableName: s.table,
        createTable: s.createTable,
        endpoint: s.endpoint,
        credential: await credential(),
      });
}

async function buildAgentChannel(
  settings: FunctionsSettings,
  credential: () => Promise<TokenCredentialLike>,
): Promise<AgentChannel & { close(): Promise<void>; readonly maxBodyBytes: number }> {
  if (settings.bus.kind === "servicebus") {
    const { createServiceBusAgentChannel } = await import("../../adapters/servicebus/bus.js");
    const channel = createServiceBusAgentChannel(
      "connectionString" in settings.bus
        ? { connectionString: settings.bus.connectionString }
        : { fullyQualifiedNamespace: settings.bus.fullyQualifiedNamespace, credential: await credential() },
    );
    // Service Bus Standard carries 256 KiB per message; keep room for headers.
    return Object.assign(channel, { maxBodyBytes: 240_000 });
  }
  const { createStorageQueueBus } = await import("../../adapters/storage-queue/bus.js");
  return createStorageQueueBus({ connectionString: settings.bus.connectionString });
}

/** The metrics port: the distro only when Application Insights is configured, loaded lazily. */
async function buildMetrics(
  settings: FunctionsSettings,
  options: CompositionOptions,
): Promise<ShieldMetrics> {
  const { createOpenTelemetryMetrics } = await import("../../adapters/telemetry/metrics.js");
  if (options.meterProvider !== undefined) return createOpenTelemetryMetrics(options.meterProvider);
  if (settings.applicationInsightsConnectionString === undefined) return noMetrics;
  try {
    const { startAzureMonitor } = await import("../../adapters/telemetry/azure-monitor.js");
    await startAzureMonitor(settings.applicationInsightsConnectionString);
  } catch {
    // Metrics must never stop attestations and releases: without the exporter, none are sent.
    console.warn("Application Insights exporter could not start; metrics are not exported");
    return noMetrics;
  }
  const { metrics } = await import("@opentelemetry/api");
  return createOpenTelemetryMetrics(metrics.getMeterProvider());
}

/** Forwards to whichever logger the current invocation supplied. */
function invocationLogger(): { logger: Logger; use<T>(logger: Logger, run: () => Promise<T>): Promise<T> } {
  const storage = new AsyncLocalStorage<Logger>();
  return {
    logger: (level, message, fields) => storage.getStore()?.(level, message, fields),
    use: (logger, run) => storage.run(logger, run),
  };
}

export interface CompositionOptions {
  /**
   * The clock every use case reads (default: the system's). The embedded default's scenario and
   * the tests move it, to show a day of re-attestation and rotation in a minute.
   */
  readonly clock?: Clock;
  /**
   * Where metrics go (default: with APPLICATIONINSIGHTS_CONNECTION_STRING, the global
   * OpenTelemetry provider Microsoft's distro registers; without it, nowhere). Tests pass an SDK
   * provider with an in-memory reader.
   */
  readonly meterProvider?: MeterProvider;
}

let compositionOptions: CompositionOptions = {};

/** Options for compositions built from now on (call before the first invocation, or reset after). */
export function configureComposition(options: CompositionOptions): void {
  compositionOptions = { ...options };
}

export async function buildComposition(
  settings: FunctionsSettings,
  options: CompositionOptions = compositionOptions,
): Promise<Composition> {
  const systemClock = options.clock ?? realClock;
  const metrics = await buildMetrics(settings, options);
  let credentialPromise: Promise<TokenCredentialLike> | undefined;
  const credential = () => (credentialPromise ??= defaultCredential());
  const logs = invocationLogger();

  const { createMaaClient } = await import("../../adapters/maa/client.js");
  const maa = createMaaClient({ instanceUrl: settings.maaEndpoint, logger: logs.logger });
  const { createKeyVaultKeyStore } = await import("../../adapters/keyvault/key-store.js");
  let keyVaultCredential: TokenCredentialLike;
  if (settings.keyVaultLocalToken !== undefined) {
    const { localKeyVaultCredential } = await import("../../adapters/local/keyvault/credential.js");
    keyVaultCredential = localKeyVaultCredential(settings.keyVaultLocalToken);
  } else {
    keyVaultCredential = await credential();
  }
  const keys = createKeyVaultKeyStore({ vaultUrl: settings.keyVaultUrl, credential: keyVaultCredential });
  const state = await buildState(settings, credential);
  const policyState = retrying(await buildPolicyState(settings, credential), INVOCATION_RETRY);
  const agents = await buildAgentChannel(settings, credential);
  const { createKeyVaultControlSigner } = await import("../../adapters/keyvault/control-signer.js");
  const controlSigner = createKeyVaultControlSigner({
    keyId: settings.controlKey.keyId,
    algorithm: settings.controlKey.algorithm,
    credential: keyVaultCredential,
  });
  const tokenKeys = createCachedSigningKeys({
    issuer: settings.maaEndpoint,
    // The resolver asks only for `<issuer>/certs`; the MAA client fetches exactly that.
    fetchJson: () => retrying(maa, INVOCATION_RETRY).getSigningCertificates(),
    clock: systemClock,
  });
  const rotationQueue = await buildRotationQueue(settings, credential);
  const rotations = retrying(rotationQueue, INVOCATION_RETRY);
  const control = createControlChannel({
    transport: retrying(agents, INVOCATION_RETRY),
    signer: retrying(controlSigner, INVOCATION_RETRY),
    clock: systemClock,
    random: systemRandom,
    ttlSeconds: settings.controlMessageTtlSeconds,
  });
  const retryingState = retrying(state, INVOCATION_RETRY);
  const retryingKeys = retrying(keys, INVOCATION_RETRY);
  const revoker = createRevoker(
    { state: retryingState, agents: control, rotations, clock: systemClock, logger: logs.logger },
    settings.lifecycles,
  );
  const challenges = createChallengeIssuer(
    { state: retryingState, agents: control, clock: systemClock, random: systemRandom, logger: logs.logger },
    { challengeSeconds: settings.challengeSeconds },
  );
  const tick = createReattestTick(
    { state: retryingState, challenges, revoker, clock: systemClock, logger: logs.logger, metrics },
    { budget: settings.reattest.budget, marginSeconds: settings.reattest.marginSeconds },
  );
  const rotation = createRotation(
    {
      state: retryingState,
      keys: retryingKeys,
      agents: control,
      rotations,
      clock: systemClock,
      logger: logs.logger,
      metrics,
    },
    {
      lifecycles: settings.lifecycles,
      managedKeys: settings.managedKeys,
      maxDeliveryCount: settings.maxDeliveryCount,
    },
  );
  const events = createKeyVaultEventHandler(
    { state: retryingState, rotations, clock: systemClock, logger: logs.logger },
    {
      vaultName: settings.keyVaultName ?? vaultNameOf(settings.keyVaultUrl),
      managedKeys: settings.managedKeys,
    },
  );
  const handle = createAttestHandler(
    {
      attestation: retrying(maa, INVOCATION_RETRY),
      keys: retryingKeys,
      tokenKeys,
      state: retryingState,
      agents: control,
      clock: systemClock,
      random: systemRandom,
      logger: logs.logger,
      revoker,
      metrics,
      appraisalPolicies: createAppraisalPolicySource(policyState, settings.appraisal),
    },
    {
      issuer: settings.maaEndpoint,
      appraisal: settings.appraisal,
      attestationPeriodSeconds: settings.attestationPeriodSeconds,
      encryption: settings.releaseEncryption,
      maxDeliveryCount: settings.maxDeliveryCount,
      maxResultBytes: agents.maxBodyBytes,
      challengeSeconds: settings.challengeSeconds,
    },
  );
  const rollout = await buildRolloutHandlers(settings, {
    keys: retrying(keys, INVOCATION_RETRY),
    state, // listAgents is an async iterable, which retrying() does not wrap
    policyState,
    keyVaultCredential,
    logger: logs.logger,
    clock: systemClock,
    metrics,
  });
  return {
    settings,
    attest: (body, delivery, logger) => logs.use(logger, () => handle(body, delivery)),
    rollout,
    reattest: (timer, logger) => logs.use(logger, () => tick(timer)),
    rotate: (body, delivery, logger) => logs.use(logger, () => rotation.handle(body, delivery)),
    rotationTick: (logger) => logs.use(logger, () => rotation.scheduleTick()),
    keyVaultEvents: (body, logger) => logs.use(logger, () => events(body)),
    operator: {
      revoke: (agentId, by, logger) =>
        logs.use(logger, () => revoker.revoke(agentId, { kind: "operator", ...by })),
      reinstate: (agentId, by, logger) => logs.use(logger, () => revoker.reinstate(agentId, by)),
      rotateKey: (keyName, by, logger) => logs.use(logger, () => rotation.requestRotation(keyName, by)),
    },
    close: async () => {
      await agents.close();
      await rotationQueue.close();
    },
  };
}

let current: Promise<Composition> | undefined;

/** The process's composition, built on first call from `process.env`. */
export function composition(
  env: Readonly<Record<string, string | undefined>> = process.env,
): Promise<Composition> {
  current ??= Promise.resolve()
    .then(() => buildComposition(readSettings(env)))
    .catch((error: unknown) => {
      current = undefined; // a later invocation may succeed once settings are fixed
      throw error;
    });
  return current;
}

/** Drops the process's composition (the local host after a settings change, and tests). */
export async function resetComposition(): Promise<void> {
  const previous = current;
  current = undefined;
  if (previous !== undefined) await (await previous.catch(() => undefined))?.close();
}
