/**
 * The bus contract over Azure Service Bus: the production adapters, through the unmodified
 * `@azure/service-bus` client, against the local Service Bus-compatible AMQP endpoint.
 */
import { randomBytes } from "node:crypto";
import { getEventListeners } from "node:events";
import { ServiceBusClient } from "@azure/service-bus";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createSasToken } from "../../adapters/local/servicebus/sas.js";
import {
  startLocalServiceBus,
  type LocalServiceBus,
  type QueueSettings,
} from "../../adapters/local/servicebus/server.js";
import { serviceBusErrorCode, withCallSignal } from "../../adapters/servicebus/client.js";
import { createServiceBusLocalBus } from "../../adapters/servicebus/local-bus.js";
import { ShieldError } from "../../core/errors.js";
import { MAX_DELIVERY_COUNT_EXCEEDED } from "../../core/ports/bus.js";
import { RULES, isolatedQueue, startTestServiceBus, testClient } from "../support/servicebus.js";
import { defineBusContract, expectSignedBody, request, signedResult } from "./bus.contract.js";

let endpoint: LocalServiceBus;
beforeAll(async () => {
  endpoint = await startTestServiceBus();
});
afterAll(async () => {
  await endpoint.close();
});

defineBusContract("Azure Service Bus (local AMQP endpoint)", ({ maxDeliveryCount }) => {
  const requestsQueue = isolatedQueue(endpoint, "requests", { maxDeliveryCount });
  const resultsQueue = isolatedQueue(endpoint, "results", { requiresSession: true });
  const client = testClient(endpoint);
  // A limit the contract's size tests can reach with a valid request.
  const maxBodyBytes = 40_000;
  const bus = createServiceBusLocalBus({
    client,
    ownsClient: true,
    requestsQueue,
    resultsQueue,
    maxBodyBytes,
  });
  const putRaw = async (queue: string, text: string, sessionId?: string): Promise<void> => {
    const sender = client.createSender(queue);
    await sender.sendMessages({
      body: Buffer.from(text, "utf8"),
      ...(sessionId === undefined ? {} : { sessionId }),
    });
    await sender.close();
  };
  return Promise.resolve({
    bus,
    maxBodyBytes,
    // Sessions keep their messages in order.
    fifo: true,
    putRawRequest: (text) => putRaw(requestsQueue, text),
    putRawAgentMessage: (agentId, text) => putRaw(resultsQueue, text, agentId),
  });
});

/** What Service Bus does that the contract leaves open, through the adapters and the bare SDK. */
describe("Service Bus specifics", () => {
  const closing: { close(): Promise<void> }[] = [];
  const track = <T extends { close(): Promise<void> }>(thing: T): T => {
    closing.push(thing);
    return thing;
  };
  afterEach(async () => {
    for (const thing of closing.splice(0).reverse()) await thing.close().catch(() => undefined);
  });
  const queues = (
    settings: { requests?: Omit<QueueSettings, "name">; results?: Omit<QueueSettings, "name"> } = {},
  ) => ({
    requestsQueue: isolatedQueue(endpoint, "requests", settings.requests),
    resultsQueue: isolatedQueue(endpoint, "results", { requiresSession: true, ...settings.results }),
  });
  const localBus = (
    names: { requestsQueue: string; resultsQueue: string },
    rule: "root" | "listen" | "send" = "root",
  ) => track(createServiceBusLocalBus({ client: testClient(endpoint, rule), ownsClient: true, ...names }));
  const agentId = (): string => `payments.pod-${randomBytes(4).toString("hex")}:0`;
  const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

  it("gives a session receiver only its own session's messages, and each session to one receiver", async () => {
    const names = queues();
    const bus = localBus(names);
    const [a, b] = [agentId(), agentId()];
    const forA = await signedResult(a);
    const forB = await signedResult(b);
    await bus.sendToAgent(b, forB);
    await bus.sendToAgent(a, forA);
    const client = track(testClient(endpoint));
    const sessionA = await client.acceptSession(names.resultsQueue, a, { maxAutoLockRenewalDurationInMs: 0 });
    const got = await sessionA.receiveMessages(10, { maxWaitTimeInMs: 1_000 });
    expect(got.map((message) => message.sessionId)).toEqual([a]);
    expect(Buffer.from(got[0]!.body as Uint8Array).toString("utf8")).toBe(forA.jws);
    // A second receiver cannot take a session that is locked.
    const refused = await client.acceptSession(names.resultsQueue, a).then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(refused).toMatchObject({ code: "SessionCannotBeLocked" });
    // The agent's inbox for b gets b's message only.
    await expectSignedBody((await bus.openAgentInbox(b).receive(5_000))?.body, forB);
    await sessionA.close();
  });

  it("takes a batch (sendMessages with an array) whole: every message stored, in order, sessions kept", async () => {
    const names = queues();
    const client = track(testClient(endpoint));
    const plain = client.createSender(names.requestsQueue);
    await plain.sendMessages([{ body: "one" }, { body: "two", messageId: "m-2" }, { body: "three" }]);
    const receiver = client.createReceiver(names.requestsQueue, { receiveMode: "receiveAndDelete" });
    const got = await receiver.receiveMessages(10, { maxWaitTimeInMs: 1_000 });
    expect(got.map((m): unknown => m.body)).toEqual(["one", "two", "three"]);
    expect(got[1]!.messageId).toBe("m-2");
    expect(got.map((m) => String(m.sequenceNumber))).toEqual(["1", "2", "3"]);
    const sessions = client.createSender(names.resultsQueue);
    const batch = await sessions.createMessageBatch();
    for (const body of ["a1", "a2"]) expect(batch.tryAddMessage({ body, sessionId: "agent-a" })).toBe(true);
    await sessions.sendMessages(batch);
    const session = await client.acceptSession(names.resultsQueue, "agent-a", {
      receiveMode: "receiveAndDelete",
    });
    expect(
      (await session.receiveMessages(10, { maxWaitTimeInMs: 1_000 })).map((m): unknown => m.body),
    ).toEqual(["a1", "a2"]);
    // One message without a session id refuses the whole batch: nothing of it is stored.
    await expect(
      sessions.sendMessages([{ body: "b1", sessionId: "agent-b" }, { body: "b2" }]),
    ).rejects.toThrow(/SessionId was not set/);
    const other = await client.acceptSession(names.resultsQueue, "agent-b", {
      receiveMode: "receiveAndDelete",
    });
    expect(await other.receiveMessages(10, { maxWaitTimeInMs: 500 })).toEqual([]);
  });

  it("counts deliveries in the AMQP header: 0 first, one more after each abandon", async () => {
    const names = queues();
    const bus = localBus(names);
    await bus.sendRequest(request(agentId()));
    const client = track(testClient(endpoint));
    const receiver = client.createReceiver(names.requestsQueue, { maxAutoLockRenewalDurationInMs: 0 });
    for (const expected of [0, 1, 2]) {
      const [message] = await receiver.receiveMessages(1, { maxWaitTimeInMs: 2_000 });
      expect(message?.deliveryCount).toBe(expected);
      expect(String(message?.sequenceNumber)).toBe("1");
      expect(message?.enqueuedTimeUtc).toBeInstanceOf(Date);
      expect(message?.lockedUntilUtc?.getTime()).toBeGreaterThan(Date.now());
      expect(message?.lockToken).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      await receiver.abandonMessage(message!);
    }
  });

  it("dead-letters on the tenth abandon with MaxDeliveryCountExceeded (the queue default)", async () => {
    const names = queues();
    const bus = localBus(names);
    const sent = request(agentId());
    await bus.sendRequest(sent);
    const receiver = track(bus.openRequestReceiver());
    for (let delivery = 1; delivery <= 10; delivery++) {
      const got = await receiver.receive(2_000);
      expect(got?.deliveryCount).toBe(delivery);
      await got?.abandon();
    }
    expect(await receiver.receive(300)).toBeUndefined();
    const [deadLetter, ...others] = await receiver.readDeadLetters();
    expect(others).toEqual([]);
    expect(deadLetter).toMatchObject({ body: sent, reason: MAX_DELIVERY_COUNT_EXCEEDED, deliveryCount: 10 });
    // The SDK reads the reason from the dead-lettered message's application properties.
    const client = track(testClient(endpoint));
    const [peeked] = await client
      .createReceiver(names.requestsQueue, { subQueueType: "deadLetter" })
      .peekMessages(1);
    expect(peeked?.deadLetterReason).toBe(MAX_DELIVERY_COUNT_EXCEEDED);
    expect(peeked?.deadLetterErrorDescription).toMatch(/10 delivery attempts/);
  });

  it("delivers a request again when its lock runs out, and refuses the old lock", async () => {
    const names = queues({ requests: { lockDurationMs: 1_000 } });
    const bus = localBus(names);
    await bus.sendRequest(request(agentId()));
    const receiver = track(bus.openRequestReceiver());
    const first = await receiver.receive(2_000);
    expect(first?.deliveryCount).toBe(1);
    expect(await receiver.receive(500)).toBeUndefined();
    const second = await receiver.receive(3_000);
    expect(second?.deliveryCount).toBe(2);
    await expect(first!.complete()).rejects.toMatchObject({ code: "ERR_CONFLICT" });
    await second?.complete();
  });

  it("keeps a request locked while its lock is renewed", async () => {
    const names = queues({ requests: { lockDurationMs: 1_000 } });
    const bus = localBus(names);
    await bus.sendRequest(request(agentId()));
    const receiver = track(bus.openRequestReceiver());
    const got = await receiver.receive(2_000);
    for (let renewal = 0; renewal < 3; renewal++) {
      await sleep(600);
      await got?.renewLock();
    }
    expect(await receiver.receive(300)).toBeUndefined();
    await got?.complete();
    expect(await receiver.readDeadLetters()).toEqual([]);
  });

  it("keeps an agent's session across several lock durations: the inbox renews the session lock", async () => {
    const names = queues({ results: { lockDurationMs: 1_000 } });
    const bus = localBus(names);
    const id = agentId();
    const inbox = bus.openAgentInbox(id);
    expect(await inbox.receive(3_000)).toBeUndefined();
    const sent = await signedResult(id);
    await bus.sendToAgent(id, sent);
    await expectSignedBody((await inbox.receive(3_000))?.body, sent);
  });

  it("loses a session lock that is not renewed: settling then fails with SessionLockLost", async () => {
    const names = queues({ results: { lockDurationMs: 1_000 } });
    const bus = localBus(names);
    const id = agentId();
    await bus.sendToAgent(id, await signedResult(id));
    const client = track(testClient(endpoint));
    const session = await client.acceptSession(names.resultsQueue, id, { maxAutoLockRenewalDurationInMs: 0 });
    const [message] = await session.receiveMessages(1, { maxWaitTimeInMs: 1_000 });
    await sleep(1_300);
    await expect(session.completeMessage(message!)).rejects.toMatchObject({ code: "SessionLockLost" });
    // The message is free again, one delivery counted.
    const again = await client.acceptSession(names.resultsQueue, id, { maxAutoLockRenewalDurationInMs: 0 });
    const [redelivered] = await again.receiveMessages(1, { maxWaitTimeInMs: 1_000 });
    expect(redelivered?.deliveryCount).toBe(1);
    await again.completeMessage(redelivered!);
  });

  it("drops a message whose time to live has passed", async () => {
    const names = queues();
    const client = track(testClient(endpoint));
    const sender = client.createSender(names.requestsQueue);
    await sender.sendMessages({ body: Buffer.from("{}"), timeToLive: 200 });
    await sender.sendMessages({ body: Buffer.from('{"kept":true}') });
    await sleep(400);
    const receiver = client.createReceiver(names.requestsQueue, { skipParsingBodyAsJson: true });
    const got = await receiver.receiveMessages(5, { maxWaitTimeInMs: 1_000 });
    expect(got.map((message) => Buffer.from(message.body as Uint8Array).toString("utf8"))).toEqual([
      '{"kept":true}',
    ]);
    expect(endpoint.queue(`${names.requestsQueue}/$deadletterqueue`)?.size).toBe(0);
  });

  it("refuses a token signed with the wrong key, without repeating the key", async () => {
    const names = queues();
    const wrongKey = randomBytes(32).toString("base64");
    const client = track(
      new ServiceBusClient(
        `Endpoint=${endpoint.endpoint};SharedAccessKeyName=${RULES.root.keyName};SharedAccessKey=${wrongKey};UseDevelopmentEmulator=true`,
        { retryOptions: { maxRetries: 0, timeoutInMs: 5_000 } },
      ),
    );
    const bus = track(createServiceBusLocalBus({ client, ...names }));
    const error = await bus.sendRequest(request(agentId())).then(
      () => undefined,
      (caught: unknown) => caught,
    );
    expect(error).toMatchObject({ code: "ERR_CONFIG" });
    expect(serviceBusErrorCode((error as ShieldError).cause)).toBe("UnauthorizedAccess");
    expect(String((error as ShieldError).cause)).toMatch(/InvalidSignature/);
    expect(JSON.stringify(error) + String((error as ShieldError).cause)).not.toContain(wrongKey);
    expect(endpoint.queue(names.requestsQueue)?.size).toBe(0);
  });

  it("refuses an expired token", async () => {
    const names = queues();
    const token = createSasToken(
      `${endpoint.endpoint}/`,
      RULES.root.keyName,
      RULES.root.key,
      new Date(Date.now() - 1_000),
    );
    const client = track(
      new ServiceBusClient(
        `Endpoint=${endpoint.endpoint};SharedAccessSignature=${token};UseDevelopmentEmulator=true`,
        {
          retryOptions: { maxRetries: 0, timeoutInMs: 5_000 },
        },
      ),
    );
    const error = await client
      .createSender(names.requestsQueue)
      .sendMessages({ body: "x" })
      .then(
        () => undefined,
        (caught: unknown) => caught,
      );
    expect(error).toMatchObject({
      code: "UnauthorizedAccess",
      message: expect.stringMatching(/ExpiredToken/) as string,
    });
    // The same token, still valid, is accepted.
    const valid = createSasToken(
      `${endpoint.endpoint}/`,
      RULES.root.keyName,
      RULES.root.key,
      new Date(Date.now() + 60_000),
    );
    const good = track(
      new ServiceBusClient(
        `Endpoint=${endpoint.endpoint};SharedAccessSignature=${valid};UseDevelopmentEmulator=true`,
      ),
    );
    await good.createSender(names.requestsQueue).sendMessages({ body: "x" });
    expect(endpoint.queue(names.requestsQueue)?.size).toBe(1);
  });

  it("refuses to send with listen-only rights and to receive with send-only rights", async () => {
    const names = queues();
    const listening = localBus(names, "listen");
    const error = await listening.sendRequest(request(agentId())).then(
      () => undefined,
      (caught: unknown) => caught,
    );
    expect(error).toMatchObject({ code: "ERR_CONFIG" });
    expect(String((error as ShieldError).cause)).toMatch(/'Send' claim\(s\) are required/);
    expect(endpoint.queue(names.requestsQueue)?.size).toBe(0);

    const sending = localBus(names, "send");
    await sending.sendRequest(request(agentId()));
    const refused = await sending
      .openRequestReceiver()
      .receive(2_000)
      .then(
        () => undefined,
        (caught: unknown) => caught,
      );
    expect(refused).toBeInstanceOf(ShieldError);
    expect(String((refused as ShieldError).cause)).toMatch(/'Listen' claim\(s\) are required/);
    // What the listener may do, it does.
    const got = await listening.openRequestReceiver().receive(2_000);
    expect(got?.deliveryCount).toBe(1);
    await got?.complete();
  });

  it("answers what it does not implement with an error, at once", async () => {
    const names = queues();
    const client = track(testClient(endpoint));
    const sender = client.createSender(names.requestsQueue);
    const started = Date.now();
    await expect(sender.scheduleMessages({ body: "x" }, new Date(Date.now() + 60_000))).rejects.toThrow(
      /not implemented/,
    );
    await sender.sendMessages({ body: "x" });
    const receiver = client.createReceiver(names.requestsQueue, { maxAutoLockRenewalDurationInMs: 0 });
    const [message] = await receiver.receiveMessages(1, { maxWaitTimeInMs: 1_000 });
    // Refused and settled; the message stays locked until its lock runs out.
    await expect(receiver.deferMessage(message!)).rejects.toThrow(/not implemented/);
    const session = await client.acceptSession(names.resultsQueue, "s1", {
      maxAutoLockRenewalDurationInMs: 0,
    });
    await expect(session.getSessionState()).rejects.toThrow(/not implemented/);
    await expect(session.setSessionState("state")).rejects.toThrow(/not implemented/);
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it("leaves no abort listener on a long-lived signal, though the SDK leaves one per receive", async () => {
    const names = queues();
    const client = track(testClient(endpoint));
    const receiver = client.createReceiver(names.requestsQueue);
    const bare = new AbortController();
    const guarded = new AbortController();
    for (let call = 0; call < 3; call++) {
      await receiver.receiveMessages(1, { maxWaitTimeInMs: 10, abortSignal: bare.signal });
      await withCallSignal(guarded.signal, (abortSignal) =>
        receiver.receiveMessages(1, { maxWaitTimeInMs: 10, abortSignal }),
      );
    }
    expect(getEventListeners(bare.signal, "abort")).toHaveLength(3);
    expect(getEventListeners(guarded.signal, "abort")).toHaveLength(0);
    // Closing still reaches a call in progress.
    const waiting = withCallSignal(guarded.signal, (abortSignal) =>
      receiver.receiveMessages(1, { maxWaitTimeInMs: 10_000, abortSignal }),
    );
    guarded.abort();
    await expect(waiting).rejects.toMatchObject({ name: "AbortError" });
  });

  it("logs no key, token or signature", async () => {
    const lines: string[] = [];
    const logged = await startLocalServiceBus({
      queues: [{ name: "q" }],
      rules: Object.values(RULES),
      logger: (level, message, fields) => lines.push(JSON.stringify([level, message, fields])),
    });
    try {
      const client = new ServiceBusClient(logged.connectionString(RULES.root.keyName), {
        retryOptions: { maxRetries: 0, timeoutInMs: 5_000 },
      });
      await client.createSender("q").sendMessages({ body: "secret body text" });
      const wrong = new ServiceBusClient(
        `Endpoint=${logged.endpoint};SharedAccessKeyName=${RULES.root.keyName};SharedAccessKey=not-the-key;UseDevelopmentEmulator=true`,
        { retryOptions: { maxRetries: 0, timeoutInMs: 5_000 } },
      );
      await wrong
        .createSender("q")
        .sendMessages({ body: "x" })
        .catch(() => undefined);
      await wrong.close();
      await client.close();
    } finally {
      await logged.close();
    }
    const text = lines.join("\n");
    expect(text).toContain("cbs token accepted");
    expect(text).toContain("cbs token refused");
    for (const secret of [
      RULES.root.key,
      "not-the-key",
      "SharedAccessSignature",
      "sig=",
      "secret body text",
    ]) {
      expect(text).not.toContain(secret);
    }
  });
});
