/**
 * The local Key Vault's Event Grid events: KeyNewVersionCreated on every new version,
 * KeyNearExpiry at the rotation policy's Notify time before `exp` (P30D by default), KeyExpired
 * after `exp`, each once per version, in the Event Grid schema the rotate intake parses.
 */
import { randomBytes } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import {
  cachedIssuerKeys,
  createLocalKeyVault,
  type LocalKeyVault,
} from "../../../adapters/local/keyvault/engine.js";
import {
  KEY_EXPIRED,
  KEY_NEAR_EXPIRY,
  KEY_NEW_VERSION_CREATED,
  startKeyVaultEventPublisher,
  type KeyVaultEventGridEvent,
  type KeyVaultEventPublisher,
} from "../../../adapters/local/keyvault/events.js";
import { parseKeyVaultEvents } from "../../../core/lifecycle/keyvault-events.js";
import { fixedClock } from "../../../core/ports/clock.js";

const DAY = 24 * 3600 * 1000;
const start = new Date("2026-03-01T00:00:00Z");
let publisher: KeyVaultEventPublisher | undefined;

async function setUp(deliver?: (events: KeyVaultEventGridEvent[]) => Promise<void>) {
  const clock = fixedClock(start);
  const vault: LocalKeyVault = await createLocalKeyVault({
    vaultUrl: "https://events-test.vault.azure.net",
    masterKey: randomBytes(32),
    clock,
    tokenKeys: cachedIssuerKeys({ clock, fetchJson: () => Promise.resolve({ keys: [] }) }),
  });
  const received: KeyVaultEventGridEvent[] = [];
  publisher = startKeyVaultEventPublisher({
    vault,
    vaultName: "events-test",
    clock,
    scanMs: 60_000,
    deliver: deliver ?? ((events) => Promise.resolve(void received.push(...events))),
  });
  return { clock, vault, received, publisher };
}

afterEach(async () => {
  await publisher?.stop();
});

describe("local Key Vault events", () => {
  it("sends KeyNewVersionCreated, then KeyNearExpiry 30 days before exp, then KeyExpired, each once", async () => {
    const { clock, vault, received, publisher } = await setUp();
    const created = await vault.createKey("orders", {
      kty: "RSA-HSM",
      keySize: 2048,
      expires: new Date(start.getTime() + 40 * DAY),
    });
    await publisher.scan();
    expect(received.map((e) => e.eventType)).toEqual([KEY_NEW_VERSION_CREATED]);
    expect(received[0]!.topic).toMatch(/\/providers\/Microsoft\.KeyVault\/vaults\/events-test$/);
    expect(received[0]).toMatchObject({
      subject: "orders",
      data: {
        Id: `https://events-test.vault.azure.net/keys/orders/${created.version}`,
        VaultName: "events-test",
        ObjectType: "Key",
        ObjectName: "orders",
        Version: created.version,
        EXP: Math.floor((start.getTime() + 40 * DAY) / 1000),
      },
      dataVersion: "1",
      metadataVersion: "1",
    });

    clock.advance(9 * DAY); // 31 days left: not yet near expiry
    await publisher.scan();
    expect(received).toHaveLength(1);
    clock.advance(2 * DAY); // 29 days left
    await publisher.scan();
    await publisher.scan();
    expect(received.map((e) => e.eventType)).toEqual([KEY_NEW_VERSION_CREATED, KEY_NEAR_EXPIRY]);
    clock.advance(30 * DAY);
    await publisher.scan();
    expect(received.map((e) => e.eventType)).toEqual([KEY_NEW_VERSION_CREATED, KEY_NEAR_EXPIRY, KEY_EXPIRED]);

    // What the rotate intake parses: the same events, nothing refused.
    const parsed = parseKeyVaultEvents(JSON.parse(JSON.stringify(received)));
    expect(parsed.map((e) => e.type)).toEqual(received.map((e) => e.eventType));
  });

  it("uses the rotation policy's Notify timeBeforeExpiry", async () => {
    const { clock, vault, received, publisher } = await setUp();
    await vault.createKey("short", {
      kty: "oct-HSM",
      keySize: 256,
      expires: new Date(start.getTime() + 40 * DAY),
    });
    await vault.setRotationPolicy("short", {
      lifetimeActions: [{ action: "Notify", timeBeforeExpiry: "P7D" }],
    });
    await publisher.scan();
    expect(received.map((e) => e.eventType)).toEqual([KEY_NEW_VERSION_CREATED]);
    clock.advance(31 * DAY); // 9 days left: near expiry by P30D, not by P7D
    await publisher.scan();
    expect(received.map((e) => e.eventType)).toEqual([KEY_NEW_VERSION_CREATED]);
    clock.advance(3 * DAY); // 6 days left
    await publisher.scan();
    expect(received.map((e) => e.eventType)).toEqual([KEY_NEW_VERSION_CREATED, KEY_NEAR_EXPIRY]);
  });

  it("delivers again after a failed delivery, and never twice after success", async () => {
    let fail = true;
    const got: string[] = [];
    const { vault, publisher } = await setUp((events) => {
      if (fail) return Promise.reject(new Error("subscriber down"));
      got.push(...events.map((e) => e.id));
      return Promise.resolve();
    });
    await vault.createKey("k", { kty: "oct-HSM", keySize: 256 });
    await publisher.scan();
    expect(got).toEqual([]);
    fail = false;
    await publisher.scan();
    await publisher.scan();
    expect(got).toHaveLength(1);
    expect(publisher.delivered().map((e) => e.id)).toEqual(got);
  });
});
