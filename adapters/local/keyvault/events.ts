/**
 * Key Vault's Event Grid events for the local Key Vault: what a vault with an Event Grid
 * subscription sends, in the Event Grid schema (`reference/azure-wire-formats.md` §4):
 *
 * - `Microsoft.KeyVault.KeyNewVersionCreated` when a version is stored (create or rotate);
 * - `Microsoft.KeyVault.KeyNearExpiry` once the current version's `exp` is within the key's
 *   rotation policy's `Notify` `timeBeforeExpiry` (Key Vault's default policy: P30D);
 * - `Microsoft.KeyVault.KeyExpired` once the current version's `exp` has passed.
 *
 * Each event is sent once per version, `data` with Key Vault's PascalCase members (`Id` the
 * versioned key id, `VaultName`, `ObjectType` "Key", `ObjectName`, `Version`, `NBF`/`EXP` unix
 * seconds), `dataVersion` and `metadataVersion` "1". Deliveries go to a webhook as Event Grid
 * posts them — a JSON array, header `aeg-event-type: Notification` — and a delivery that fails
 * is tried again on the next scan, as Event Grid retries (it gives up after its retry policy;
 * this publisher after `maxAttempts`). Expiry is checked every `scanMs` against the vault's
 * clock, so a test or the scenario that moves the clock sees the events it would cause.
 */
import { randomUUID } from "node:crypto";
import type { Clock } from "../../../core/ports/clock.js";
import { silentLogger, type Logger } from "../../../core/ports/logger.js";
import { addIsoDuration, type LocalKeyVault, type LocalKeyVersion } from "./engine.js";

export const KEY_NEAR_EXPIRY = "Microsoft.KeyVault.KeyNearExpiry";
export const KEY_EXPIRED = "Microsoft.KeyVault.KeyExpired";
export const KEY_NEW_VERSION_CREATED = "Microsoft.KeyVault.KeyNewVersionCreated";

/** An event in the Event Grid schema. */
export interface KeyVaultEventGridEvent {
  readonly id: string;
  readonly topic: string;
  readonly subject: string;
  readonly eventType: string;
  readonly eventTime: string;
  readonly data: {
    readonly Id: string;
    readonly VaultName: string;
    readonly ObjectType: "Key";
    readonly ObjectName: string;
    readonly Version: string;
    readonly NBF?: number;
    readonly EXP?: number;
  };
  readonly dataVersion: "1";
  readonly metadataVersion: "1";
}

export interface KeyVaultEventPublisherOptions {
  readonly vault: LocalKeyVault;
  /** The vault's name (`VaultName`, and the last segment of `topic`). */
  readonly vaultName: string;
  readonly clock: Clock;
  /** Where events go: a webhook URL (posted as Event Grid posts) or a function. */
  readonly deliver: string | ((events: KeyVaultEventGridEvent[]) => Promise<void>);
  /** How often expiry is checked (default 1 s). */
  readonly scanMs?: number;
  /** Deliveries of one event before it is dropped (default 30). */
  readonly maxAttempts?: number;
  /** Azure resource path parts of `topic` (defaults name a local subscription). */
  readonly subscriptionId?: string;
  readonly resourceGroup?: string;
  readonly logger?: Logger;
}

export interface KeyVaultEventPublisher {
  /** Checks expiry now and delivers what is pending (also runs every `scanMs`). */
  scan(): Promise<void>;
  /** Events delivered so far, oldest first (ids, types, key names: no key material). */
  delivered(): readonly KeyVaultEventGridEvent[];
  stop(): Promise<void>;
}

const DEFAULT_NOTIFY_BEFORE_EXPIRY = "P30D";

/** The Notify action's `timeBeforeExpiry` of a rotation policy, or Key Vault's default. */
function notifyBeforeExpiry(policy: {
  lifetimeActions: readonly { action: string; timeBeforeExpiry?: string }[];
}): string {
  const notify = policy.lifetimeActions.find(
    (a) => a.action === "Notify" && a.timeBeforeExpiry !== undefined,
  );
  return notify?.timeBeforeExpiry ?? DEFAULT_NOTIFY_BEFORE_EXPIRY;
}

/** Subtracts an ISO 8601 duration: the moment `duration` before `at`. */
function before(at: Date, duration: string): Date | undefined {
  const later = addIsoDuration(at, duration);
  return later === undefined ? undefined : new Date(at.getTime() - (later.getTime() - at.getTime()));
}

export function startKeyVaultEventPublisher(options: KeyVaultEventPublisherOptions): KeyVaultEventPublisher {
  const log = options.logger ?? silentLogger;
  const maxAttempts = options.maxAttempts ?? 30;
  const topic =
    `/subscriptions/${options.subscriptionId ?? "00000000-0000-0000-0000-000000000000"}` +
    `/resourceGroups/${options.resourceGroup ?? "shield-local"}` +
    `/providers/Microsoft.KeyVault/vaults/${options.vaultName}`;
  const vaultOrigin = `https://${options.vaultName}.vault.azure.net`;
  const sent = new Set<string>(); // `<type>|<name>|<version>` already queued
  const pending: { event: KeyVaultEventGridEvent; attempts: number }[] = [];
  const delivered: KeyVaultEventGridEvent[] = [];
  let scanning: Promise<void> | undefined;
  let stopped = false;

  const event = (eventType: string, version: LocalKeyVersion): KeyVaultEventGridEvent => {
    const { notBefore, expires } = version.attributes;
    return {
      id: randomUUID(),
      topic,
      subject: version.name,
      eventType,
      eventTime: options.clock.now().toISOString(),
      data: {
        Id: `${vaultOrigin}/keys/${version.name}/${version.version}`,
        VaultName: options.vaultName,
        ObjectType: "Key",
        ObjectName: version.name,
        Version: version.version,
        ...(notBefore === undefined ? {} : { NBF: Math.floor(notBefore.getTime() / 1000) }),
        ...(expires === undefined ? {} : { EXP: Math.floor(expires.getTime() / 1000) }),
      },
      dataVersion: "1",
      metadataVersion: "1",
    };
  };

  const queue = (eventType: string, version: LocalKeyVersion): void => {
    const key = `${eventType}|${version.name}|${version.version}`;
    if (sent.has(key)) return;
    sent.add(key);
    pending.push({ event: event(eventType, version), attempts: 0 });
  };

  const post = async (events: KeyVaultEventGridEvent[]): Promise<void> => {
    if (typeof options.deliver === "function") return options.deliver(events);
    const response = await fetch(options.deliver, {
      method: "POST",
      headers: { "content-type": "application/json", "aeg-event-type": "Notification" },
      body: JSON.stringify(events),
      signal: AbortSignal.timeout(30_000),
    });
    if (response.status < 200 || response.status > 299)
      throw new Error(`webhook answered ${response.status}`);
  };

  async function checkExpiry(): Promise<void> {
    const now = options.clock.now();
    for (const name of options.vault.keyNames()) {
      let current: LocalKeyVersion;
      let policy;
      try {
        current = await options.vault.getKey(name);
        policy = await options.vault.getRotationPolicy(name);
      } catch {
        continue; // a key being written or just gone: the next scan looks again
      }
      const expires = current.attributes.expires;
      if (expires === undefined || !current.attributes.enabled) continue;
      if (expires.getTime() <= now.getTime()) {
        queue(KEY_EXPIRED, current);
        continue;
      }
      const notifyAt = before(expires, notifyBeforeExpiry(policy));
      if (notifyAt !== undefined && notifyAt.getTime() <= now.getTime()) queue(KEY_NEAR_EXPIRY, current);
    }
  }

  async function flush(): Promise<void> {
    while (pending.length > 0 && !stopped) {
      const next = pending[0]!;
      try {
        await post([next.event]);
        pending.shift();
        delivered.push(next.event);
        log("info", "key vault event delivered", {
          eventType: next.event.eventType,
          key: next.event.subject,
        });
      } catch (error) {
        next.attempts++;
        log("warn", "key vault event not delivered; tried again later", {
          eventType: next.event.eventType,
          key: next.event.subject,
          attempts: next.attempts,
          reason: error instanceof Error ? error.message : "unknown",
        });
        if (next.attempts >= maxAttempts) pending.shift();
        return;
      }
    }
  }

  const scan = (): Promise<void> => {
    scanning ??= (async () => {
      try {
        await checkExpiry();
        await flush();
      } finally {
        scanning = undefined;
      }
    })();
    return scanning;
  };

  const unsubscribe = options.vault.onVersionCreated((version) => {
    queue(KEY_NEW_VERSION_CREATED, version);
    void scan().catch(() => undefined);
  });
  const timer = setInterval(() => void scan().catch(() => undefined), options.scanMs ?? 1_000);
  timer.unref();

  return {
    scan,
    delivered: () => [...delivered],
    async stop() {
      stopped = true;
      clearInterval(timer);
      unsubscribe();
      await scanning?.catch(() => undefined);
    },
  };
}
