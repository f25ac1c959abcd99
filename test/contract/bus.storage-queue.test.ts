import { randomBytes, randomUUID } from "node:crypto";
import { QueueServiceClient } from "@azure/storage-queue";
import { afterEach, describe, expect, it } from "vitest";
import { StorageQueueBus, type StorageQueueBusOptions } from "../../adapters/storage-queue/bus.js";
import {
  STORAGE_QUEUE_MAX_MESSAGE_CHARS,
  agentQueueName,
  createQueueServiceClient,
} from "../../adapters/storage-queue/queues.js";
import { ShieldError } from "../../core/errors.js";
import { makeAttestationResult } from "../../core/messages/index.js";
import { agentMessageId, requestMessageId } from "../../core/ports/bus.js";
import type { LogFields, LogLevel } from "../../core/ports/logger.js";
import { azuriteConnectionString } from "../support/storage.js";
import { challengeRequest, control, defineBusContract, expectSignedBody, request } from "./bus.contract.js";

/** Queue names no other test uses: a letter-led random prefix on every queue. */
function isolatedQueues(): Pick<StorageQueueBusOptions, "requestsQueue" | "agentQueuePrefix"> {
  const prefix = `t${randomBytes(5).toString("hex")}`;
  return { requestsQueue: `${prefix}-requests`, agentQueuePrefix: `${prefix}-agent-` };
}

function rawQueue(name: string) {
  return QueueServiceClient.fromConnectionString(azuriteConnectionString()).getQueueClient(name);
}

defineBusContract("Azure Storage Queues (Azurite)", ({ maxDeliveryCount }) => {
  const bus = new StorageQueueBus({
    connectionString: azuriteConnectionString(),
    ...isolatedQueues(),
    maxDeliveryCount,
    minPollMs: 20,
    maxPollMs: 200,
  });
  const putRaw = async (queueName: string, text: string): Promise<void> => {
    const queue = rawQueue(queueName);
    await queue.createIfNotExists();
    await queue.sendMessage(text);
  };
  return Promise.resolve({
    bus,
    maxBodyBytes: bus.maxBodyBytes,
    fifo: false,
    putRawRequest: (text) => putRaw(bus.requestsQueue, text),
    putRawAgentMessage: (agentId, text) => putRaw(bus.agentQueue(agentId), text),
  });
});

describe("Storage queue bus specifics", () => {
  const opened: StorageQueueBus[] = [];
  const open = (options: Partial<StorageQueueBusOptions> = {}): StorageQueueBus => {
    const bus = new StorageQueueBus({
      connectionString: azuriteConnectionString(),
      ...isolatedQueues(),
      minPollMs: 20,
      maxPollMs: 200,
      ...options,
    });
    opened.push(bus);
    return bus;
  };
  afterEach(async () => {
    for (const bus of opened.splice(0)) await bus.close();
  });

  const result = (agentId: string) =>
    makeAttestationResult({
      agentId,
      requestId: randomUUID(),
      keys: [],
      attestedUntil: new Date("2026-03-01T13:00:00Z"),
      sentAt: new Date("2026-03-01T12:00:00Z"),
    });
  const peekText = async (queueName: string): Promise<string> =>
    (await rawQueue(queueName).peekMessages()).peekedMessageItems[0]?.messageText ?? "";

  it("names each agent's queue agent- plus 40 hex of sha256 of its id", () => {
    expect(agentQueueName("payments.pod-7f9c:0")).toMatch(/^agent-[0-9a-f]{40}$/);
    expect(agentQueueName("payments.pod-7f9c:0")).toBe(agentQueueName("payments.pod-7f9c:0"));
    expect(agentQueueName("Payments.pod-7f9c:0")).not.toBe(agentQueueName("payments.pod-7f9c:0"));
    expect(agentQueueName("A".repeat(128))).toHaveLength(46);
    const bus = open({ agentQueuePrefix: "shield-agent-" });
    expect(bus.agentQueue("x")).toMatch(/^shield-agent-[0-9a-f]{40}$/);
    expect(bus.deadLetterQueue).toBe(`${bus.requestsQueue}-deadletter`);
  });

  it("refuses queue names Azure would refuse", () => {
    for (const requestsQueue of ["ab", "Upper", "double--hyphen", "-lead", "trail-", "x".repeat(64)]) {
      expect(() => open({ requestsQueue })).toThrow(expect.objectContaining({ code: "ERR_CONFIG" }) as Error);
    }
    for (const agentQueuePrefix of ["Agent-", "a--", "x".repeat(24), "under_score-"]) {
      expect(() => open({ agentQueuePrefix })).toThrow(
        expect.objectContaining({ code: "ERR_CONFIG" }) as Error,
      );
    }
  });

  it("stores a signed message as base64 of its JWS text, as the Functions queue trigger reads it", async () => {
    const bus = open();
    const id = "payments.pod-1:0";
    const message = result(id);
    const sent = await control.sign(message);
    await bus.sendToAgent(id, sent);
    const text = await peekText(bus.agentQueue(id));
    expect(text).toMatch(/^[A-Za-z0-9+/]+=*$/);
    expect(text).toBe(Buffer.from(sent.jws, "utf8").toString("base64"));
    const stored = Buffer.from(text, "base64").toString("utf8");
    await expectSignedBody(stored, sent, message);
    await expectSignedBody((await bus.openAgentInbox(id).receive(5_000))?.body, sent, message);
  });

  it("stores requests as base64 of their JSON, a challenge request as well as an attestation request", async () => {
    const bus = open();
    for (const sent of [challengeRequest("payments.pod-1:0"), request("payments.pod-1:0")]) {
      await bus.sendRequest(sent);
      const text = await peekText(bus.requestsQueue);
      expect(text).toBe(Buffer.from(JSON.stringify(sent), "utf8").toString("base64"));
      const receiver = bus.openRequestReceiver();
      const got = await receiver.receive(5_000);
      expect(got?.body).toEqual(sent);
      await got?.complete();
      await receiver.close();
    }
  });

  it("also reads JSON a producer stored without base64", async () => {
    const bus = open();
    const queue = rawQueue(bus.requestsQueue);
    await queue.createIfNotExists();
    await queue.sendMessage(JSON.stringify({ type: "attestation-request", version: 1 }));
    const receiver = bus.openRequestReceiver();
    const got = await receiver.receive(5_000);
    expect(got?.body).toEqual({ type: "attestation-request", version: 1 });
    await got?.complete();
  });

  it("delivers a request again when its lock (visibility timeout) runs out", async () => {
    const bus = open({ lockDurationMs: 1_000 });
    const receiver = bus.openRequestReceiver();
    const id = "payments.pod-2:0";
    await bus.sendRequest(request(id));
    const first = await receiver.receive(5_000);
    expect(first?.deliveryCount).toBe(1);
    const second = await receiver.receive(5_000);
    expect(second?.deliveryCount).toBe(2);
    await expect(first!.complete()).rejects.toMatchObject({ code: "ERR_CONFLICT" });
    await second?.complete();
  });

  it("keeps a request hidden while its lock is renewed", async () => {
    const bus = open({ lockDurationMs: 1_000 });
    const receiver = bus.openRequestReceiver();
    await bus.sendRequest(request("payments.pod-3:0"));
    const got = await receiver.receive(5_000);
    await new Promise((resolve) => setTimeout(resolve, 600));
    await got?.renewLock();
    await new Promise((resolve) => setTimeout(resolve, 600));
    await got?.renewLock();
    expect(await receiver.receive(300)).toBeUndefined();
    await got?.complete();
  });

  it("dead-letters a foreign body too large to keep beside its reason by its hash", async () => {
    const bus = open();
    const queue = rawQueue(bus.requestsQueue);
    await queue.createIfNotExists();
    const text = "x".repeat(STORAGE_QUEUE_MAX_MESSAGE_CHARS - 16);
    await queue.sendMessage(text);
    const receiver = bus.openRequestReceiver();
    const got = await receiver.receive(5_000);
    expect(got?.body).toBe(text);
    await got?.deadLetter("ERR_INPUT_TOO_LARGE", "too large");
    const [deadLetter] = await receiver.readDeadLetters();
    expect(deadLetter?.reason).toBe("ERR_INPUT_TOO_LARGE");
    expect(deadLetter?.body).toBeUndefined();
    expect(deadLetter?.bodyOmitted?.bytes).toBe(text.length);
    expect(deadLetter?.bodyOmitted?.sha256).toMatch(/^[0-9a-f]{64}$/);
  });

  it("logs message ids and sizes, never bodies", async () => {
    const lines: { level: LogLevel; message: string; fields?: LogFields }[] = [];
    const bus = open({ logger: (level, message, fields) => lines.push({ level, message, fields }) });
    const id = "payments.pod-4:0";
    const message = result(id);
    const sent = await control.sign(message);
    await bus.sendToAgent(id, sent);
    await bus.openAgentInbox(id).receive(5_000);
    const receiver = bus.openRequestReceiver();
    const asked = challengeRequest(id);
    await bus.sendRequest(asked);
    await (await receiver.receive(5_000))?.complete();
    await bus.sendRequest(request(id));
    await (await receiver.receive(5_000))?.deadLetter("ERR_MESSAGE_SCHEMA", "secret-free description");
    const logged = JSON.stringify(lines);
    expect(lines.map((line) => line.message)).toEqual(
      expect.arrayContaining(["bus message sent", "bus message received", "bus message dead-lettered"]),
    );
    expect(logged).toContain(agentMessageId(sent));
    expect(logged).toContain(requestMessageId(asked));
    const [header, payload, signature] = sent.jws.split(".") as [string, string, string];
    expect(logged).not.toContain(message.requestId);
    expect(logged).not.toContain(header.slice(0, 40));
    expect(logged).not.toContain(payload.slice(0, 40));
    expect(logged).not.toContain(signature.slice(0, 40));
    expect(logged).not.toContain(Buffer.from(sent.jws).toString("base64").slice(0, 40));
    expect(logged).not.toContain("secret-free description");
  });

  it("creates its queues on first use only", async () => {
    const bus = open();
    const service = QueueServiceClient.fromConnectionString(azuriteConnectionString());
    const names = async (): Promise<string[]> => {
      const found: string[] = [];
      for await (const queue of service.listQueues({ prefix: bus.requestsQueue })) found.push(queue.name);
      return found;
    };
    expect(await names()).toEqual([]);
    await bus.sendRequest(request("payments.pod-5:0"));
    expect(await names()).toEqual([bus.requestsQueue]);
  });
});

describe("Storage queue connection settings", () => {
  const credential = { getToken: () => Promise.resolve({ token: "t", expiresOnTimestamp: 0 }) };

  it("accepts https, and plain http only on loopback", () => {
    expect(
      createQueueServiceClient({ accountUrl: "https://acct.queue.core.windows.net", credential }).url,
    ).toBe("https://acct.queue.core.windows.net");
    expect(createQueueServiceClient({ connectionString: azuriteConnectionString() }).url).toMatch(
      /^http:\/\/127\.0\.0\.1:\d+/,
    );
    for (const accountUrl of [
      "http://acct.queue.core.windows.net",
      "http://10.0.0.4:10001/devstoreaccount1",
    ]) {
      expect(() => createQueueServiceClient({ accountUrl, credential })).toThrow(
        expect.objectContaining({ code: "ERR_CONFIG" }) as Error,
      );
    }
  });

  it("does not repeat an invalid connection string, which may hold an account key", () => {
    let caught: unknown;
    try {
      createQueueServiceClient({ connectionString: "AccountKey=SECRETKEYMATERIAL;nonsense" });
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(ShieldError);
    expect((caught as ShieldError).code).toBe("ERR_CONFIG");
    expect(JSON.stringify((caught as ShieldError).toJSON())).not.toContain("SECRETKEYMATERIAL");
    expect((caught as ShieldError).cause).toBeUndefined();
  });
});
