import { randomBytes, randomUUID } from "node:crypto";
import { QueueServiceClient } from "@azure/storage-queue";
import { afterEach, describe, expect, it } from "vitest";
import { agentQueueName as sdkAgentQueueName } from "../../adapters/storage-queue/queues.js";
import { createStorageQueueBus, type StorageQueueBus } from "../../adapters/storage-queue/bus.js";
import {
  agentQueueName,
  createStorageQueueAgentBus,
  parseDequeuedMessages,
  parseStorageConnectionString,
  sharedKeyStringToSign,
  type StorageQueueAgentBus,
} from "../../agent/storage-queue-rest.js";
import { ShieldError } from "../../core/errors.js";
import { makeAttestationResult } from "../../core/messages/index.js";
import { azuriteConnectionString } from "../support/storage.js";
import { challengeRequest, control, expectSignedBody, request } from "./bus.contract.js";

/** Queue names no other test uses: a letter-led random prefix on every queue. */
function isolatedQueues(): { requestsQueue: string; agentQueuePrefix: string } {
  const prefix = `t${randomBytes(5).toString("hex")}`;
  return { requestsQueue: `${prefix}-requests`, agentQueuePrefix: `${prefix}-agent-` };
}

const opened: { close(): Promise<void> }[] = [];

function open(): { rest: StorageQueueAgentBus; sdk: StorageQueueBus } {
  const queues = isolatedQueues();
  const rest = createStorageQueueAgentBus({
    connectionString: azuriteConnectionString(),
    ...queues,
    minPollMs: 20,
    maxPollMs: 100,
  });
  const sdk = createStorageQueueBus({
    connectionString: azuriteConnectionString(),
    ...queues,
    minPollMs: 20,
    maxPollMs: 100,
  });
  opened.push(rest, sdk);
  return { rest, sdk };
}

afterEach(async () => {
  await Promise.all(opened.splice(0).map((bus) => bus.close()));
});

const ACCOUNT_KEY = /AccountKey=([^;]+)/;

function withKey(connectionString: string, key: string): string {
  return connectionString.replace(ACCOUNT_KEY, `AccountKey=${key}`);
}

describe("the agent's Storage Queue REST client against Azurite and the SDK adapter", () => {
  it("sends a request the SDK adapter's request receiver gets with an identical body", async () => {
    const { rest, sdk } = open();
    const sent = request("payments.pod-7f9c:0");
    await rest.requests.sendRequest(sent);
    // Byte for byte what the SDK adapter would store: base64 of the UTF-8 JSON.
    const raw = QueueServiceClient.fromConnectionString(azuriteConnectionString()).getQueueClient(
      sdk.requestsQueue,
    );
    const [peeked] = (await raw.peekMessages({ numberOfMessages: 1 })).peekedMessageItems;
    expect(peeked?.messageText).toBe(Buffer.from(JSON.stringify(sent), "utf8").toString("base64"));
    const receiver = sdk.openRequestReceiver();
    const got = await receiver.receive(5_000);
    expect(got).toBeDefined();
    expect(got?.body).toEqual(JSON.parse(JSON.stringify(sent)));
    expect(got?.deliveryCount).toBe(1);
    await got?.complete();
    await receiver.close();
  });

  it("sends a challenge request the SDK adapter's request receiver gets with an identical body", async () => {
    const { rest, sdk } = open();
    const sent = challengeRequest("payments.pod-7f9c:0");
    await rest.requests.sendRequest(sent);
    const raw = QueueServiceClient.fromConnectionString(azuriteConnectionString()).getQueueClient(
      sdk.requestsQueue,
    );
    const [peeked] = (await raw.peekMessages({ numberOfMessages: 1 })).peekedMessageItems;
    expect(peeked?.messageText).toBe(Buffer.from(JSON.stringify(sent), "utf8").toString("base64"));
    const receiver = sdk.openRequestReceiver();
    const got = await receiver.receive(5_000);
    expect(got?.body).toEqual(sent);
    await got?.complete();
    expect(await receiver.receive(200)).toBeUndefined();
    await receiver.close();
  });

  it("receives what the SDK adapter sends to the agent, identical, and deletes it", async () => {
    const { rest, sdk } = open();
    const agentId = "payments.pod-7f9c:0";
    const message = makeAttestationResult({
      agentId,
      requestId: randomUUID(),
      keys: [],
      attestedUntil: new Date("2026-03-01T13:00:00Z"),
      sentAt: new Date("2026-03-01T12:00:00Z"),
    });
    const signed = await control.sign(message);
    await sdk.sendToAgent(agentId, signed);
    const inbox = rest.openInbox(agentId);
    const got = await inbox.receive(5_000);
    // The JWS text byte for byte, verifying as this agent to the message that was signed.
    await expectSignedBody(got?.body, signed, message);
    expect(got?.deliveryCount).toBe(1);
    expect(got?.enqueuedAt).toBeInstanceOf(Date);
    // Deleted, not merely hidden: the SDK's own inbox on the same queue sees nothing either.
    expect(await inbox.receive(300)).toBeUndefined();
    const sdkInbox = sdk.openAgentInbox(agentId);
    expect(await sdkInbox.receive(300)).toBeUndefined();
    await sdkInbox.close();
    await inbox.close();
  });

  it("names agent queues exactly as the SDK adapter does", () => {
    for (const agentId of ["payments.pod-7f9c:0", "A".repeat(128), "x"]) {
      expect(agentQueueName(agentId)).toBe(sdkAgentQueueName(agentId));
      expect(agentQueueName(agentId, "p-")).toBe(sdkAgentQueueName(agentId, "p-"));
    }
  });

  it("returns undefined when nothing arrives before the timeout, and when closed while waiting", async () => {
    const { rest } = open();
    const inbox = rest.openInbox("idle-agent");
    const started = Date.now();
    expect(await inbox.receive(250)).toBeUndefined();
    expect(Date.now() - started).toBeGreaterThanOrEqual(200);
    const waiting = inbox.receive(10_000);
    setTimeout(() => void inbox.close(), 100);
    expect(await waiting).toBeUndefined();
  });

  it("refuses a wrong account key with ERR_CONFIG, and never names the key", async () => {
    const wrongKey = randomBytes(64).toString("base64");
    const rest = createStorageQueueAgentBus({
      connectionString: withKey(azuriteConnectionString(), wrongKey),
      ...isolatedQueues(),
    });
    opened.push(rest);
    const failure = await rest.requests.sendRequest(request("payments.pod-7f9c:0")).catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(ShieldError);
    expect(failure).toMatchObject({ code: "ERR_CONFIG" });
    const text = `${String(failure)} ${JSON.stringify(failure)} ${(failure as Error).stack ?? ""}`;
    expect(text).not.toContain(wrongKey);
    expect(text).not.toContain(wrongKey.slice(0, 20));
    const realKey = ACCOUNT_KEY.exec(azuriteConnectionString())?.[1] ?? "";
    expect(text).not.toContain(realKey.slice(0, 20));

    const inboxFailure = await rest
      .openInbox("some-agent")
      .receive(100)
      .catch((e: unknown) => e);
    expect(inboxFailure).toMatchObject({ code: "ERR_CONFIG" });
    expect(String(inboxFailure)).not.toContain(wrongKey);
  });

  it("maps an unreachable endpoint to a transient error", async () => {
    const rest = createStorageQueueAgentBus({
      connectionString:
        "AccountName=devstoreaccount1;AccountKey=" +
        randomBytes(32).toString("base64") +
        ";QueueEndpoint=http://127.0.0.1:1/devstoreaccount1",
      requestTimeoutMs: 2_000,
    });
    const failure = await rest.requests.sendRequest(request("a1")).catch((e: unknown) => e);
    expect(failure).toMatchObject({ code: "ERR_NETWORK", transient: true });
  });
});

describe("connection strings", () => {
  it("reads QueueEndpoint, DefaultEndpointsProtocol/EndpointSuffix and UseDevelopmentStorage", () => {
    const key = randomBytes(32).toString("base64");
    expect(
      parseStorageConnectionString(
        `DefaultEndpointsProtocol=https;AccountName=contoso;AccountKey=${key};EndpointSuffix=core.windows.net`,
      ).queueEndpoint.href,
    ).toBe("https://contoso.queue.core.windows.net/");
    expect(parseStorageConnectionString(`AccountName=contoso;AccountKey=${key}`).queueEndpoint.href).toBe(
      "https://contoso.queue.core.windows.net/",
    );
    const dev = parseStorageConnectionString("UseDevelopmentStorage=true");
    expect(dev.accountName).toBe("devstoreaccount1");
    expect(dev.queueEndpoint.href).toBe("http://127.0.0.1:10001/devstoreaccount1");
  });

  it("refuses plain http off loopback, missing parts and a bad key, without repeating the string", () => {
    const key = randomBytes(32).toString("base64");
    const bad = [
      `DefaultEndpointsProtocol=http;AccountName=contoso;AccountKey=${key}`,
      `AccountName=contoso;AccountKey=${key};QueueEndpoint=http://10.0.0.5:10001/contoso`,
      `AccountName=contoso;QueueEndpoint=https://contoso.queue.core.windows.net`,
      `AccountKey=${key}`,
      `AccountName=contoso;AccountKey=not base64!${key}`,
      "garbage",
    ];
    for (const connectionString of bad) {
      let failure: unknown;
      try {
        parseStorageConnectionString(connectionString);
      } catch (error) {
        failure = error;
      }
      expect(failure).toMatchObject({ code: "ERR_CONFIG" });
      expect(String(failure)).not.toContain(key.slice(0, 16));
    }
  });
});

describe("Shared Key string-to-sign", () => {
  it("signs the verb, the standard headers, the x-ms- headers and /<account><path> with sorted query", () => {
    const url = new URL(
      "http://127.0.0.1:10001/devstoreaccount1/q1/messages?visibilitytimeout=30&numofmessages=1",
    );
    const text = sharedKeyStringToSign("devstoreaccount1", {
      method: "get",
      url,
      headers: { "x-ms-version": "2021-12-02", "x-ms-date": "Sun, 01 Mar 2026 12:00:00 GMT" },
    });
    expect(text).toBe(
      "GET\n\n\n\n\n\n\n\n\n\n\n\n" +
        "x-ms-date:Sun, 01 Mar 2026 12:00:00 GMT\nx-ms-version:2021-12-02\n" +
        "/devstoreaccount1/devstoreaccount1/q1/messages\nnumofmessages:1\nvisibilitytimeout:30",
    );
    const post = sharedKeyStringToSign("contoso", {
      method: "POST",
      url: new URL("https://contoso.queue.core.windows.net/q1/messages"),
      headers: { "content-length": "12", "content-type": "application/xml", "x-ms-date": "d" },
    });
    expect(post).toBe("POST\n\n\n12\n\napplication/xml\n\n\n\n\n\n\nx-ms-date:d\n/contoso/q1/messages");
  });
});

describe("Get Messages responses", () => {
  const one = (text: string): string =>
    `<?xml version="1.0" encoding="utf-8"?><QueueMessagesList><QueueMessage><MessageId>id-1</MessageId>` +
    `<InsertionTime>Sun, 01 Mar 2026 12:00:00 GMT</InsertionTime><ExpirationTime>Sun, 08 Mar 2026 12:00:00 GMT</ExpirationTime>` +
    `<PopReceipt>AgAAAA==</PopReceipt><TimeNextVisible>Sun, 01 Mar 2026 12:00:30 GMT</TimeNextVisible>` +
    `<DequeueCount>2</DequeueCount><MessageText>${text}</MessageText></QueueMessage></QueueMessagesList>`;

  it("reads one message and unescapes its text; an empty list is undefined", () => {
    expect(parseDequeuedMessages(one("a&lt;b&amp;&#x41;&#66;"))).toEqual({
      messageId: "id-1",
      popReceipt: "AgAAAA==",
      dequeueCount: 2,
      insertedOn: new Date("2026-03-01T12:00:00Z"),
      messageText: "a<b&AB",
    });
    expect(parseDequeuedMessages('<?xml version="1.0"?><QueueMessagesList />')).toBeUndefined();
    expect(parseDequeuedMessages("<QueueMessagesList></QueueMessagesList>")).toBeUndefined();
  });

  it("refuses a malformed list", () => {
    const malformed = [
      "",
      "<Other/>",
      one("x").replace("<DequeueCount>2</DequeueCount>", ""),
      one("x").replace("<DequeueCount>2", "<DequeueCount>two"),
      one("x").replace("<DequeueCount>2", "<DequeueCount>0"),
      one("x").replace("Sun, 01 Mar 2026 12:00:00 GMT</Insertion", "soon</Insertion"),
      one("&bogus;"),
      one("x").replace("</QueueMessagesList>", one("y").slice(one("y").indexOf("<QueueMessage>"))),
    ];
    for (const xml of malformed) {
      expect(() => parseDequeuedMessages(xml)).toThrow(expect.objectContaining({ code: "ERR_IO" }));
    }
  });
});
