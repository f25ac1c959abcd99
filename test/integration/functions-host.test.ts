/**
 * The local Functions host drives a function app from its own `app.*` registrations
 * (test/support/function-app): queue triggers with peek-lock semantics over Storage Queues
 * (Azurite) and over the local Service Bus endpoint through `@azure/service-bus`, timers from
 * `%SETTING%` schedules, HTTP with auth levels, output bindings, Event Grid deliveries and hooks.
 */
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ServiceBusClient } from "@azure/service-bus";
import { loadFunctionApp, type Registration } from "../../local/host/registrations.js";
import {
  startFunctionAppHost,
  matchRoute,
  resolveSettingExpression,
  type FunctionAppHost,
} from "../../local/host/host.js";
import { calls, hookEvents } from "../support/function-app/lib/recorder.js";
import { azuriteConnectionString } from "../support/storage.js";
import { RULES, startTestServiceBus } from "../support/servicebus.js";
import type { LocalServiceBus } from "../../adapters/local/servicebus/server.js";

const APP = fileURLToPath(new URL("../support/function-app", import.meta.url));
let registrations: Registration[];

async function until<T>(probe: () => T | undefined | Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function callsOf(name: string, marker: string) {
  return calls.filter((c) => c.functionName === name && JSON.stringify(c.input).includes(marker));
}

beforeAll(async () => {
  registrations = await loadFunctionApp(APP);
});

describe("registrations", () => {
  it("are captured from the files' own app.* calls, with the metadata the host reads", () => {
    const byName = new Map(registrations.map((r) => [r.name, r]));
    expect([...byName.keys()].sort()).toEqual(
      ["admin-only", "events", "keyed", "open", "produce", "sessions", "tick", "work"].sort(),
    );
    expect(byName.get("work")!.trigger).toMatchObject({
      type: "serviceBusTrigger",
      direction: "in",
      queueName: "%FIXTURE_QUEUE%",
      connection: "FixtureBus",
    });
    expect(byName.get("produce")!.extraOutputs).toEqual([
      expect.objectContaining({ type: "serviceBus", direction: "out", queueName: "%FIXTURE_QUEUE%" }),
    ]);
  });

  it("resolves %SETTING% expressions, and refuses one that names no setting", () => {
    expect(resolveSettingExpression("q-%A%-x", { A: "1" }, "t")).toBe("q-1-x");
    expect(() => resolveSettingExpression("%MISSING%", {}, "function x")).toThrow(/MISSING/);
  });

  it("matches routes as the host does", () => {
    expect(matchRoute("deployments/{id}", "deployments/abc")).toEqual({ id: "abc" });
    expect(matchRoute("deployments/{id}", "deployments")).toBeUndefined();
    expect(matchRoute("status", "status/page")).toBeUndefined();
    expect(matchRoute("items/{id?}", "items")).toEqual({});
  });
});

function settingsFor(extra: Record<string, string>): Record<string, string> {
  const run = randomBytes(4).toString("hex");
  return {
    FIXTURE_QUEUE: `host-work-${run}`,
    FIXTURE_SESSION_QUEUE: `host-sessions-${run}`,
    FIXTURE_SCHEDULE: "*/1 * * * * *",
    ...extra,
  };
}

describe("over Storage Queues", () => {
  let host: FunctionAppHost;
  const settings = settingsFor({});

  beforeAll(async () => {
    host = await startFunctionAppHost({
      registrations,
      settings,
      transport: { kind: "storage-queue", connectionString: azuriteConnectionString() },
      maxDeliveryCount: 3,
      pollMs: { min: 20, max: 100 },
      hostJson: { extensions: { serviceBus: { maxConcurrentCalls: 2 } } },
    });
  });
  afterAll(async () => {
    await host?.stop();
  });

  it("honours auth levels: anonymous, function key or master key, master key only", async () => {
    expect(await (await fetch(`${host.url}/api/open/ann`)).json()).toEqual({ hello: "ann" });
    expect((await fetch(`${host.url}/api/keyed`)).status).toBe(401);
    expect((await fetch(`${host.url}/api/keyed?code=wrong`)).status).toBe(401);
    expect(await (await fetch(`${host.url}/api/keyed?code=${host.keys.functionKey}`)).text()).toBe("keyed");
    const byHeader = await fetch(`${host.url}/api/keyed`, {
      headers: { "x-functions-key": host.keys.masterKey },
    });
    expect(byHeader.status).toBe(200);
    expect((await fetch(`${host.url}/api/admin?code=${host.keys.functionKey}`)).status).toBe(401);
    expect((await fetch(`${host.url}/api/admin?code=${host.keys.masterKey}`)).status).toBe(200);
    expect((await fetch(`${host.url}/api/nothing-here`)).status).toBe(404);
    expect((await fetch(`${host.url}/api/open/ann`, { method: "DELETE" })).status).toBe(405);
  });

  it("sends an output binding's message once the function returns, and the queue trigger completes it", async () => {
    const marker = `out-${randomBytes(4).toString("hex")}`;
    const posted = await fetch(`${host.url}/api/produce`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ marker }),
    });
    expect(posted.status).toBe(202);
    const [call] = await until(() =>
      callsOf("work", marker).length > 0 ? callsOf("work", marker) : undefined,
    );
    expect(call!.input).toEqual({ marker });
    expect(call!.triggerMetadata).toMatchObject({ deliveryCount: 1 });
    expect(typeof call!.triggerMetadata?.["messageId"]).toBe("string");
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(callsOf("work", marker)).toHaveLength(1); // completed: not delivered again
  });

  it("abandons on throw (delivery count + 1) and dead-letters at the max delivery count with the reason", async () => {
    const retried = `retry-${randomBytes(4).toString("hex")}`;
    const poison = `poison-${randomBytes(4).toString("hex")}`;
    await fetch(`${host.url}/api/produce`, {
      method: "POST",
      body: JSON.stringify({ marker: retried, failUntil: 1 }),
    });
    await fetch(`${host.url}/api/produce`, {
      method: "POST",
      body: JSON.stringify({ marker: poison, failUntil: 99 }),
    });
    await until(() => (callsOf("work", retried).length >= 2 ? true : undefined));
    expect(callsOf("work", retried).map((c) => c.triggerMetadata?.["deliveryCount"])).toEqual([1, 2]);
    await until(() => (callsOf("work", poison).length >= 3 ? true : undefined));
    const { createStorageQueueBus } = await import("../../adapters/storage-queue/bus.js");
    const bus = createStorageQueueBus({
      connectionString: azuriteConnectionString(),
      requestsQueue: settings.FIXTURE_QUEUE,
    });
    const deadLetters = await until(async () => {
      const found = (await bus.readDeadLetters()).filter((d) => JSON.stringify(d.body).includes(poison));
      return found.length > 0 ? found : undefined;
    });
    expect(deadLetters[0]).toMatchObject({
      reason: "Error",
      description: "failing delivery 3",
      deliveryCount: 3,
    });
    expect(callsOf("work", poison)).toHaveLength(3);
    expect(hookEvents).toContain("work:error");
    expect(hookEvents).toContain("work:ok");
  });

  it("runs timers on their %SETTING% schedule and delivers Event Grid events through the webhook", async () => {
    const before = calls.filter((c) => c.functionName === "tick").length;
    await until(() =>
      calls.filter((c) => c.functionName === "tick").length >= before + 2 ? true : undefined,
    );
    const tick = calls.filter((c) => c.functionName === "tick").at(-1)!.input as { isPastDue: boolean };
    expect(tick.isPastDue).toBe(false);

    const webhook = host.eventGridWebhookUrl("events");
    const validation = await fetch(webhook, {
      method: "POST",
      headers: { "aeg-event-type": "SubscriptionValidation" },
      body: JSON.stringify([
        { eventType: "Microsoft.EventGrid.SubscriptionValidationEvent", data: { validationCode: "abc" } },
      ]),
    });
    expect(await validation.json()).toEqual({ validationResponse: "abc" });
    const event = {
      id: `e-${randomBytes(4).toString("hex")}`,
      eventType: "Test.Happened",
      subject: "s",
      data: {},
    };
    const delivered = await fetch(webhook, {
      method: "POST",
      headers: { "aeg-event-type": "Notification" },
      body: JSON.stringify([event]),
    });
    expect(delivered.status).toBe(202);
    expect(callsOf("events", event.id).map((c) => c.input)).toEqual([event]);
    const withoutKey = await fetch(webhook.replace(/code=[^&]+/, "code=nope"), {
      method: "POST",
      body: "[]",
    });
    expect(withoutKey.status).toBe(401);
  });
});

describe("over the local Service Bus endpoint (@azure/service-bus)", () => {
  let endpoint: LocalServiceBus;
  let host: FunctionAppHost;
  let client: ServiceBusClient;
  let settings: Record<string, string>;

  beforeAll(async () => {
    endpoint = await startTestServiceBus();
    settings = settingsFor({ FixtureBus: endpoint.connectionString(RULES.root.keyName) });
    endpoint.createQueue({ name: settings.FIXTURE_QUEUE!, maxDeliveryCount: 3 });
    endpoint.createQueue({ name: settings.FIXTURE_SESSION_QUEUE!, requiresSession: true });
    client = new ServiceBusClient(settings.FixtureBus!);
    host = await startFunctionAppHost({
      registrations,
      settings,
      transport: { kind: "servicebus", storageConnectionString: azuriteConnectionString() },
      hostJson: {
        extensions: {
          serviceBus: { maxConcurrentCalls: 2, maxConcurrentSessions: 2, sessionIdleTimeout: "00:00:00.300" },
        },
      },
    });
  });
  afterAll(async () => {
    await host?.stop();
    await client?.close();
    await endpoint?.close();
  });

  it("completes on return, abandons on throw, and Service Bus dead-letters at MaxDeliveryCount", async () => {
    const ok = `sb-ok-${randomBytes(4).toString("hex")}`;
    const poison = `sb-poison-${randomBytes(4).toString("hex")}`;
    const sender = client.createSender(settings.FIXTURE_QUEUE!);
    await sender.sendMessages({
      body: { marker: ok, failUntil: 1 },
      messageId: ok,
      contentType: "application/json",
    });
    await sender.sendMessages({
      body: { marker: poison, failUntil: 99 },
      messageId: poison,
      contentType: "application/json",
    });
    await sender.close();
    await until(() => (callsOf("work", ok).length >= 2 ? true : undefined));
    expect(callsOf("work", ok).map((c) => c.triggerMetadata)).toEqual([
      expect.objectContaining({ deliveryCount: 1, messageId: ok }),
      expect.objectContaining({ deliveryCount: 2, messageId: ok }),
    ]);
    await until(() => (callsOf("work", poison).length >= 3 ? true : undefined));
    const deadLetters = client.createReceiver(settings.FIXTURE_QUEUE!, { subQueueType: "deadLetter" });
    const peeked = await until(async () => {
      const found = await deadLetters.peekMessages(10);
      return found.length > 0 ? found : undefined;
    });
    await deadLetters.close();
    expect(peeked.map((m) => [m.messageId, m.deadLetterReason])).toEqual([
      [poison, "MaxDeliveryCountExceeded"],
    ]);
    expect(endpoint.queue(settings.FIXTURE_QUEUE!)?.size).toBe(0);
  });

  it("reads session queues a session at a time, with sessionId in the trigger metadata", async () => {
    const marker = `sess-${randomBytes(4).toString("hex")}`;
    const sender = client.createSender(settings.FIXTURE_SESSION_QUEUE!);
    const messages = ["a", "b"].flatMap((session) =>
      [1, 2, 3].map((n) => ({ body: { marker, session, n }, sessionId: `${marker}-${session}` })),
    );
    for (const message of messages) await sender.sendMessages(message);
    await sender.close();
    await until(() => (callsOf("sessions", marker).length >= 6 ? true : undefined));
    const seen = callsOf("sessions", marker);
    for (const session of ["a", "b"]) {
      const mine = seen.filter((c) => (c.input as { session: string }).session === session);
      expect(mine.map((c) => (c.input as { n: number }).n)).toEqual([1, 2, 3]); // in order
      expect(mine.every((c) => c.triggerMetadata?.["sessionId"] === `${marker}-${session}`)).toBe(true);
    }
  });
});
