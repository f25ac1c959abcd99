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
import { systemClock, systemRandom } from "../../core/ports/clock.js";
import { createControlChannel } from "../../core/control/signed.js";
import { retrying, type RetryPolicy } from "../../core/retry.js";
import { createCachedSigningKeys } from "../../core/token/index.js";
import { readSettings, type FunctionsSettings } from "./settings.js";

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

/** Forwards to whichever logger the current invocation supplied. */
function invocationLogger(): { logger: Logger; use<T>(logger: Logger, run: () => Promise<T>): Promise<T> } {
  const storage = new AsyncLocalStorage<Logger>();
  return {
    logger: (level, message, fields) => storage.getStore()?.(level, message, fields),
    use: (logger, run) => storage.run(logger, run),
  };
}

export async function buildComposition(settings: FunctionsSettings): Promise<Composition> {
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
  const handle = createAttestHandler(
    {
      attestation: retrying(maa, INVOCATION_RETRY),
      keys: retrying(keys, INVOCATION_RETRY),
      tokenKeys,
      state: retrying(state, INVOCATION_RETRY),
      agents: createControlChannel({
        transport: retrying(agents, INVOCATION_RETRY),
        signer: retrying(controlSigner, INVOCATION_RETRY),
        clock: systemClock,
        random: systemRandom,
        ttlSeconds: settings.controlMessageTtlSeconds,
      }),
      clock: systemClock,
      random: systemRandom,
      logger: logs.logger,
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
  return {
    settings,
    attest: (body, delivery, logger) => logs.use(logger, () => handle(body, delivery)),
    close: () => agents.close(),
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
