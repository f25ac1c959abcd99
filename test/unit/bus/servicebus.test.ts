/**
 * The Service Bus adapters against a hand-written fake of the SDK surface they use (sender,
 * acceptSession, session receiver). There is no broker or emulator here, so these tests pin
 * what the adapters ask of the SDK — queue, session id, message id, content type, application
 * properties, body bytes, settlement and lock renewal — not how Service Bus answers. Messages to
 * agents are signed by the test control plane; their body is the JWS text.
 */
import { randomUUID } from "node:crypto";
import type { TokenCredential } from "@azure/core-auth";
import type * as ServiceBusSdk from "@azure/service-bus";
import type {
  ServiceBusClientOptions,
  ServiceBusMessage,
  ServiceBusSessionReceiverOptions,
} from "@azure/service-bus";
import { afterEach, describe, expect, it, vi } from "vitest";
import {
  createServiceBusAgentChannel,
  createServiceBusAgentInbox,
  createServiceBusRequestChannel,
} from "../../../adapters/servicebus/bus.js";
import {
  createServiceBusClient,
  serviceBusError,
  type ServiceBusClientLike,
  type ServiceBusReceivedMessageLike,
  type ServiceBusSenderLike,
  type ServiceBusSessionReceiverLike,
} from "../../../adapters/servicebus/client.js";
import { verifyControlMessage } from "../../../core/control/signed.js";
import { ShieldError } from "../../../core/errors.js";
import {
  makeAttestationRequest,
  makeAttestationResult,
  makeChallenge,
  makeChallengeRequest,
  makeKeyEvent,
} from "../../../core/messages/index.js";
import {
  agentMessageId,
  requestMessageId,
  type AgentMessage,
  type SignedAgentMessage,
} from "../../../core/ports/bus.js";
import type { LogFields, LogLevel } from "../../../core/ports/logger.js";
import { createTestControlPlane } from "../../support/control.js";

/** Real SDK clients built in this file: the SDK's own class, counted as it is constructed. */
const sdkClients = vi.hoisted(() => ({ built: 0 }));
vi.mock("@azure/service-bus", async (importOriginal) => {
  const sdk = await importOriginal<typeof ServiceBusSdk>();
  class CountedServiceBusClient extends sdk.ServiceBusClient {
    constructor(namespace: string, credential: TokenCredential, options?: ServiceBusClientOptions) {
      super(namespace, credential, options);
      sdkClients.built += 1;
    }
  }
  return { ...sdk, ServiceBusClient: CountedServiceBusClient };
});

const SENT_AT = new Date("2026-03-01T12:00:00Z");
const AGENT = "payments.pod-7f9c:0";
const control = createTestControlPlane();

function result(agentId = AGENT, requestId = randomUUID()) {
  return makeAttestationResult({
    agentId,
    requestId,
    keys: [{ name: "payments-db", version: "0123456789abcdef", releaseResponse: "a.b.c" }],
    attestedUntil: new Date(SENT_AT.getTime() + 3_600_000),
    sentAt: SENT_AT,
  });
}

function request(agentId = AGENT) {
  return makeAttestationRequest({
    agentId,
    requestId: randomUUID(),
    workload: "payments",
    tee: "sgx",
    evidence: { tee: "sgx", format: "dcap-quote", quote: Buffer.alloc(600, 7).toString("base64url") },
    runtimeData: Buffer.alloc(300, 1).toString("base64url"),
    challenge: Buffer.alloc(32, 2).toString("base64url"),
    keys: ["payments-db"],
    sentAt: SENT_AT,
  });
}

/** A result signed for its agent by the test control plane. */
const signedResult = (agentId = AGENT): Promise<SignedAgentMessage> => control.sign(result(agentId));

/** The body is the JWS text byte for byte, and it verifies for the agent to the message signed. */
async function expectSignedBody(body: unknown, signed: SignedAgentMessage, message?: AgentMessage) {
  const text = Buffer.isBuffer(body) ? body.toString("utf8") : body;
  expect(text).toBe(signed.jws);
  if (Buffer.isBuffer(body)) expect(body.equals(Buffer.from(signed.jws, "utf8"))).toBe(true);
  const verified = await verifyControlMessage(text, {
    keys: control.keys,
    agentId: signed.agentId,
    at: new Date(),
  });
  expect(verified.messageId).toBe(signed.messageId);
  if (message !== undefined) expect(verified.message).toEqual(message);
}

class SdkError extends Error {
  override readonly name = "ServiceBusError";
  constructor(readonly code: string) {
    super(`fake ${code}`);
  }
}

interface FakeMessage extends ServiceBusReceivedMessageLike {
  readonly body: Buffer | string | object;
  readonly deliveryCount: number;
}

/** The session receiver: hands out what the fake holds for its session, waits otherwise. */
class FakeSessionReceiver implements ServiceBusSessionReceiverLike {
  sessionLockedUntilUtc: Date | undefined;
  readonly completed: ServiceBusReceivedMessageLike[] = [];
  readonly waits: number[] = [];
  renewals = 0;
  closed = false;
  failReceive: string[] = [];
  failComplete: string | undefined;

  constructor(
    private readonly fake: FakeServiceBus,
    private readonly key: string,
    lockMs: number,
  ) {
    this.sessionLockedUntilUtc = new Date(Date.now() + lockMs);
  }

  async receiveMessages(
    maxMessageCount: number,
    options?: { maxWaitTimeInMs?: number; abortSignal?: AbortSignal },
  ): Promise<ServiceBusReceivedMessageLike[]> {
    expect(maxMessageCount).toBe(1);
    this.waits.push(options?.maxWaitTimeInMs ?? 60_000);
    const failure = this.failReceive.shift();
    if (failure !== undefined) throw new SdkError(failure);
    const deadline = Date.now() + (options?.maxWaitTimeInMs ?? 60_000);
    for (;;) {
      const next = this.fake.held(this.key).shift();
      if (next !== undefined) return [next];
      if (Date.now() >= deadline) return [];
      if (options?.abortSignal?.aborted === true) {
        throw Object.assign(new Error("aborted"), { name: "AbortError" });
      }
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  completeMessage(message: ServiceBusReceivedMessageLike): Promise<void> {
    if (this.failComplete !== undefined) return Promise.reject(new SdkError(this.failComplete));
    this.completed.push(message);
    return Promise.resolve();
  }

  renewSessionLock(): Promise<Date> {
    this.renewals += 1;
    this.sessionLockedUntilUtc = new Date(Date.now() + 60_000);
    return Promise.resolve(this.sessionLockedUntilUtc);
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
}

/** Records every send and hands session messages to the receiver of that session. */
class FakeServiceBus implements ServiceBusClientLike {
  readonly sent: { queue: string; message: ServiceBusMessage }[] = [];
  readonly accepted: { queue: string; sessionId: string; options?: ServiceBusSessionReceiverOptions }[] = [];
  readonly receivers: FakeSessionReceiver[] = [];
  readonly senders: { queue: string; closed: boolean }[] = [];
  readonly #held = new Map<string, FakeMessage[]>();
  failSend: string | undefined;
  failAccept: string | undefined;
  lockMs = 60_000;
  closed = false;

  held(key: string): FakeMessage[] {
    let list = this.#held.get(key);
    if (list === undefined) {
      list = [];
      this.#held.set(key, list);
    }
    return list;
  }

  /** Puts a message on a session directly, as another producer could. */
  put(queue: string, sessionId: string, message: Partial<FakeMessage> & Pick<FakeMessage, "body">): void {
    this.held(`${queue}/${sessionId}`).push({ deliveryCount: 0, messageId: randomUUID(), ...message });
  }

  createSender(queue: string): ServiceBusSenderLike {
    const record = { queue, closed: false };
    this.senders.push(record);
    return {
      sendMessages: (message: ServiceBusMessage) => {
        if (this.failSend !== undefined) return Promise.reject(new SdkError(this.failSend));
        this.sent.push({ queue, message });
        if (message.sessionId !== undefined) {
          this.put(queue, message.sessionId, {
            body: Buffer.from(message.body as Buffer),
            messageId: message.messageId,
            enqueuedTimeUtc: new Date(),
          });
        }
        return Promise.resolve();
      },
      close: () => {
        record.closed = true;
        return Promise.resolve();
      },
    };
  }

  acceptSession(
    queue: string,
    sessionId: string,
    options?: ServiceBusSessionReceiverOptions,
  ): Promise<ServiceBusSessionReceiverLike> {
    this.accepted.push({ queue, sessionId, options });
    if (this.failAccept !== undefined) return Promise.reject(new SdkError(this.failAccept));
    const receiver = new FakeSessionReceiver(this, `${queue}/${sessionId}`, this.lockMs);
    this.receivers.push(receiver);
    return Promise.resolve(receiver);
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
}

async function caught(promise: Promise<unknown>): Promise<ShieldError> {
  const error = await promise.then(
    () => undefined,
    (failure: unknown) => failure,
  );
  expect(error).toBeInstanceOf(ShieldError);
  return error as ShieldError;
}

describe("Service Bus agent channel (functions → agent)", () => {
  it("posts the JWS to the agent's session on attestation-results with its signed id and no body secrets in properties", async () => {
    const client = new FakeServiceBus();
    const channel = createServiceBusAgentChannel({ client });
    const message = result();
    const signed = await control.sign(message);
    await channel.sendToAgent(AGENT, signed);
    expect(client.sent).toHaveLength(1);
    const [{ queue, message: sent }] = client.sent as [{ queue: string; message: ServiceBusMessage }];
    expect(queue).toBe("attestation-results");
    expect(sent.sessionId).toBe(AGENT);
    expect(sent.contentType).toBe("application/jose");
    expect(sent.messageId).toBe(agentMessageId(signed));
    expect(sent.messageId).toBe(`attestation-result-${signed.messageId}`);
    expect(sent.applicationProperties).toEqual({ type: "attestation-result", version: 1 });
    expect(Buffer.isBuffer(sent.body)).toBe(true);
    await expectSignedBody(sent.body, signed, message);
    expect(Object.keys(sent).sort()).toEqual(
      ["applicationProperties", "body", "contentType", "messageId", "sessionId"].sort(),
    );
  });

  it("gives one signed message the same id every time, and every signing and agent its own", async () => {
    const client = new FakeServiceBus();
    const channel = createServiceBusAgentChannel({ client, resultsQueue: "results-test" });
    const message = await signedResult();
    await channel.sendToAgent(AGENT, message);
    await channel.sendToAgent(AGENT, message);
    const event = (agentId: string) =>
      makeKeyEvent({ agentId, event: "revoked", keyName: "payments-db", keyVersion: "abc", sentAt: SENT_AT });
    await channel.sendToAgent("agent-a", await control.sign(event("agent-a")));
    await channel.sendToAgent("agent-b", await control.sign(event("agent-b")));
    const ids = client.sent.map((entry) => entry.message.messageId);
    expect(ids[0]).toBe(ids[1]);
    expect(ids[2]).not.toBe(ids[3]);
    expect(new Set([ids[0], ids[2], ids[3]]).size).toBe(3);
    expect(client.sent.map((entry) => entry.message.applicationProperties?.["type"])).toEqual([
      "attestation-result",
      "attestation-result",
      "key-event",
      "key-event",
    ]);
    expect(client.sent.map((entry) => entry.queue)).toEqual(Array(4).fill("results-test"));
    expect(client.sent.map((entry) => entry.message.sessionId)).toEqual([AGENT, AGENT, "agent-a", "agent-b"]);
    // One sender, created on first use.
    expect(client.senders).toHaveLength(1);
  });

  it("refuses a message addressed to another agent, an unsigned one, and an oversize body, before sending", async () => {
    const client = new FakeServiceBus();
    const challenge = (nonceChars: number) =>
      control.sign(
        makeChallenge({ agentId: AGENT, nonce: "n".repeat(nonceChars), deadline: SENT_AT, sentAt: SENT_AT }),
      );
    const [fits, over] = [await challenge(100), await challenge(103)];
    const maxBodyBytes = Buffer.byteLength(fits.jws);
    const overBytes = Buffer.byteLength(over.jws);
    expect(overBytes).toBeGreaterThan(maxBodyBytes);
    const channel = createServiceBusAgentChannel({ client, maxBodyBytes });
    await expect(channel.sendToAgent("someone-else", await signedResult())).rejects.toThrow(
      /addressed to another agent/,
    );
    await expect(channel.sendToAgent(AGENT, result() as unknown as SignedAgentMessage)).rejects.toThrow(
      /must be signed/,
    );
    await channel.sendToAgent(AGENT, fits);
    const error = await caught(channel.sendToAgent(AGENT, over));
    expect(error.code).toBe("ERR_INPUT_TOO_LARGE");
    expect(error.violations).toEqual([
      { field: "body", expected: `at most ${maxBodyBytes} bytes`, actual: `${overBytes} bytes` },
    ]);
    expect(client.sent).toHaveLength(1);
    await expectSignedBody(client.sent[0]?.message.body, fits);
  });

  it("maps SDK failures to typed errors: transient ones retryable, configuration ones not", async () => {
    const client = new FakeServiceBus();
    const channel = createServiceBusAgentChannel({ client });
    const cases: [string, string, boolean][] = [
      ["ServiceBusy", "ERR_THROTTLED", true],
      ["ServiceTimeout", "ERR_TIMEOUT", true],
      ["ServiceCommunicationProblem", "ERR_NETWORK", true],
      ["MessagingEntityNotFound", "ERR_CONFIG", false],
      ["UnauthorizedAccess", "ERR_CONFIG", false],
      ["MessageSizeExceeded", "ERR_INPUT_TOO_LARGE", false],
      ["SomethingNew", "ERR_IO", false],
    ];
    const signed = await signedResult();
    for (const [sdkCode, code, transient] of cases) {
      client.failSend = sdkCode;
      const error = await caught(channel.sendToAgent(AGENT, signed));
      expect([error.code, error.transient]).toEqual([code, transient]);
      expect(error.message).toContain(sdkCode);
    }
    expect(serviceBusError("x", new Error("no code")).code).toBe("ERR_IO");
  });

  it("closes its sender, and leaves a client it was given to its owner", async () => {
    const client = new FakeServiceBus();
    const channel = createServiceBusAgentChannel({ client });
    await channel.sendToAgent(AGENT, await signedResult());
    await channel.close();
    expect(client.senders[0]?.closed).toBe(true);
    expect(client.closed).toBe(false);
  });
});

describe("Service Bus request channel (agent → functions)", () => {
  it("posts to attestation-requests with message id = request id and no session", async () => {
    const client = new FakeServiceBus();
    const channel = createServiceBusRequestChannel({ client });
    const sent = request();
    await channel.sendRequest(sent);
    const [{ queue, message }] = client.sent as [{ queue: string; message: ServiceBusMessage }];
    expect(queue).toBe("attestation-requests");
    expect(message.messageId).toBe(sent.requestId);
    expect(message.sessionId).toBeUndefined();
    expect(message.contentType).toBe("application/json");
    expect(message.applicationProperties).toEqual({ type: "attestation-request", version: 1 });
    expect(JSON.parse((message.body as Buffer).toString("utf8"))).toEqual(sent);
  });

  it("posts a challenge request as JSON with a digest message id and no session", async () => {
    const client = new FakeServiceBus();
    const channel = createServiceBusRequestChannel({ client });
    const sent = makeChallengeRequest({ agentId: AGENT, workload: "payments", tee: "sgx", sentAt: SENT_AT });
    await channel.sendRequest(sent);
    const [{ queue, message }] = client.sent as [{ queue: string; message: ServiceBusMessage }];
    expect(queue).toBe("attestation-requests");
    expect(message.messageId).toBe(requestMessageId(sent));
    expect(message.messageId).toMatch(/^challenge-request-[0-9a-f]{40}$/);
    expect(message.sessionId).toBeUndefined();
    expect(message.contentType).toBe("application/json");
    expect(message.applicationProperties).toEqual({ type: "challenge-request", version: 1 });
    expect((message.body as Buffer).equals(Buffer.from(JSON.stringify(sent), "utf8"))).toBe(true);
    await expect(channel.sendRequest({ ...sent, agentId: "has space" })).rejects.toThrow(TypeError);
    expect(client.sent).toHaveLength(1);
  });

  it("refuses a body over the limit (256 KiB by default) before sending", async () => {
    const client = new FakeServiceBus();
    const channel = createServiceBusRequestChannel({ client, maxBodyBytes: 1_000 });
    expect((await caught(channel.sendRequest(request()))).code).toBe("ERR_INPUT_TOO_LARGE");
    expect(client.sent).toEqual([]);
  });
});

describe("Service Bus agent inbox", () => {
  const inboxes: { close(): Promise<void> }[] = [];
  afterEach(async () => {
    for (const inbox of inboxes.splice(0)) await inbox.close();
  });
  const open = (
    client: FakeServiceBus,
    logger?: (level: LogLevel, message: string, fields?: LogFields) => void,
  ) => {
    const inbox = createServiceBusAgentInbox({ client, agentId: AGENT, ...(logger ? { logger } : {}) });
    inboxes.push(inbox);
    return inbox;
  };

  it("accepts the agent's own session, receives, completes, and counts this delivery", async () => {
    const client = new FakeServiceBus();
    const channel = createServiceBusAgentChannel({ client });
    const inbox = open(client);
    const message = result();
    const sent = await control.sign(message);
    await channel.sendToAgent(AGENT, sent);
    const got = await inbox.receive(1_000);
    await expectSignedBody(got?.body, sent, message);
    expect(got?.messageId).toBe(agentMessageId(sent));
    expect(got?.deliveryCount).toBe(1);
    expect(got?.enqueuedAt).toBeInstanceOf(Date);
    expect(client.accepted).toEqual([
      {
        queue: "attestation-results",
        sessionId: AGENT,
        options: { receiveMode: "peekLock", maxAutoLockRenewalDurationInMs: 0, skipParsingBodyAsJson: true },
      },
    ]);
    expect(client.receivers[0]?.completed).toHaveLength(1);
    // The session is kept for the next receive.
    expect(await inbox.receive(20)).toBeUndefined();
    expect(client.accepted).toHaveLength(1);
  });

  it("reports an SDK delivery count of 0 as the first delivery", async () => {
    const client = new FakeServiceBus();
    client.put("attestation-results", AGENT, { body: Buffer.from("{}"), deliveryCount: 2 });
    const got = await open(client).receive(1_000);
    expect(got?.deliveryCount).toBe(3);
  });

  it("hands on a body that is not JSON as its raw text, and other AMQP bodies as they are", async () => {
    const client = new FakeServiceBus();
    client.put("attestation-results", AGENT, { body: Buffer.from("not json") });
    client.put("attestation-results", AGENT, { body: Buffer.from([0xff, 0xfe, 0x00]) });
    client.put("attestation-results", AGENT, { body: { amqp: "value" } });
    const inbox = open(client);
    expect((await inbox.receive(1_000))?.body).toBe("not json");
    expect((await inbox.receive(1_000))?.body).toBe(Buffer.from([0xff, 0xfe, 0x00]).toString("base64"));
    expect((await inbox.receive(1_000))?.body).toEqual({ amqp: "value" });
  });

  it("returns undefined on timeout, waiting in slices of at most 20 s", async () => {
    const client = new FakeServiceBus();
    const inbox = open(client);
    const started = Date.now();
    expect(await inbox.receive(100)).toBeUndefined();
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(Math.max(...(client.receivers[0]?.waits ?? []))).toBeLessThanOrEqual(100);
  });

  it("renews the session lock before a wait that could outlive it", async () => {
    const client = new FakeServiceBus();
    client.lockMs = 5_000;
    const inbox = open(client);
    await inbox.receive(50);
    expect(client.receivers[0]?.renewals).toBe(1);
    // Renewed to 60 s: the next short wait needs no renewal.
    await inbox.receive(50);
    expect(client.receivers[0]?.renewals).toBe(1);
  });

  it("accepts the session again when its lock was lost, once per receive", async () => {
    const client = new FakeServiceBus();
    const inbox = open(client);
    await inbox.receive(10);
    client.receivers[0]?.failReceive.push("SessionLockLost");
    client.put("attestation-results", AGENT, { body: Buffer.from('{"a":1}') });
    expect((await inbox.receive(1_000))?.body).toEqual({ a: 1 });
    expect(client.accepted).toHaveLength(2);
    expect(client.receivers[0]?.closed).toBe(true);

    client.receivers[1]?.failReceive.push("SessionLockLost");
    client.failAccept = "SessionLockLost";
    const error = await caught(inbox.receive(1_000));
    expect(error.code).toBe("ERR_CONFLICT");
  });

  it("reports a session held by another receiver as a transient conflict", async () => {
    const client = new FakeServiceBus();
    client.failAccept = "SessionCannotBeLocked";
    const error = await caught(open(client).receive(100));
    expect([error.code, error.transient]).toEqual(["ERR_CONFLICT", true]);
  });

  it("hands a message on even when completing it fails, and logs ids only", async () => {
    const client = new FakeServiceBus();
    const lines: unknown[] = [];
    const inbox = open(client, (level, message, fields) => lines.push({ level, message, fields }));
    await inbox.receive(10);
    const receiver = client.receivers[0]!;
    receiver.failComplete = "MessageLockLost";
    const secret = "wrapped-key-material-that-must-not-be-logged";
    client.put("attestation-results", AGENT, { body: Buffer.from(JSON.stringify({ secret })) });
    expect((await inbox.receive(1_000))?.body).toEqual({ secret });
    expect(JSON.stringify(lines)).toContain("bus message not completed after receive");
    expect(JSON.stringify(lines)).not.toContain(secret);
  });

  it("wakes a waiting receive on close, closes its receiver, and refuses use after close", async () => {
    const client = new FakeServiceBus();
    const inbox = createServiceBusAgentInbox({ client, agentId: AGENT });
    const waiting = inbox.receive(10_000);
    await new Promise((resolve) => setTimeout(resolve, 30));
    const started = Date.now();
    await inbox.close();
    expect(await waiting).toBeUndefined();
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(client.receivers[0]?.closed).toBe(true);
    expect(client.closed).toBe(false);
    await expect(inbox.receive(10)).rejects.toThrow(TypeError);
  });

  it("refuses an agent id that cannot be a session id", () => {
    const client = new FakeServiceBus();
    expect(() => createServiceBusAgentInbox({ client, agentId: "has space" })).toThrow(TypeError);
    expect(() => createServiceBusAgentInbox({ client, agentId: "x".repeat(129) })).toThrow(TypeError);
  });
});

describe("Service Bus client", () => {
  const credential = {
    getToken: () => Promise.resolve({ token: "t", expiresOnTimestamp: Date.now() + 60_000 }),
  };

  it("refuses a namespace that is not a host name", () => {
    for (const fullyQualifiedNamespace of [
      "",
      "sb://ns.servicebus.windows.net",
      "ns",
      "ns.servicebus.windows.net/x",
    ]) {
      expect(() => createServiceBusAgentChannel({ fullyQualifiedNamespace, credential })).toThrow(
        expect.objectContaining({ code: "ERR_CONFIG" }) as Error,
      );
    }
  });

  it("builds nothing until first use, and closes cleanly when never used", async () => {
    // From a namespace: making and closing the adapters builds no SDK client.
    const built = sdkClients.built;
    const fullyQualifiedNamespace = "ns.servicebus.windows.net";
    const unused = [
      createServiceBusAgentChannel({ fullyQualifiedNamespace, credential }),
      createServiceBusRequestChannel({ fullyQualifiedNamespace, credential }),
      createServiceBusAgentInbox({ fullyQualifiedNamespace, credential, agentId: AGENT }),
    ];
    for (const adapter of unused) await adapter.close();
    expect(sdkClients.built).toBe(built);

    // From a given client: no sender until the first send, no session receiver until the first
    // receive, then one each.
    const client = new FakeServiceBus();
    const channel = createServiceBusAgentChannel({ client });
    const requests = createServiceBusRequestChannel({ client });
    const inbox = createServiceBusAgentInbox({ client, agentId: AGENT });
    expect(client.senders).toEqual([]);
    expect(client.accepted).toEqual([]);
    await channel.sendToAgent(AGENT, await signedResult());
    await channel.sendToAgent(AGENT, await signedResult());
    expect(client.senders.map((sender) => sender.queue)).toEqual(["attestation-results"]);
    await requests.sendRequest(request());
    expect(client.senders.map((sender) => sender.queue)).toEqual([
      "attestation-results",
      "attestation-requests",
    ]);
    expect(client.accepted).toEqual([]);
    await inbox.receive(1_000);
    await inbox.receive(1_000);
    expect(client.accepted.map(({ queue, sessionId }) => [queue, sessionId])).toEqual([
      ["attestation-results", AGENT],
    ]);
    await channel.close();
    await requests.close();
    await inbox.close();
    expect(client.senders.map((sender) => sender.closed)).toEqual([true, true]);
    expect(client.receivers.map((receiver) => receiver.closed)).toEqual([true]);
    // The caller's client is the caller's to close.
    expect(client.closed).toBe(false);
  });

  it("builds the real SDK client (loaded on demand) without connecting", async () => {
    const built = sdkClients.built;
    const client = await createServiceBusClient("ns.servicebus.windows.net", credential);
    expect(sdkClients.built).toBe(built + 1);
    expect(typeof client.createSender).toBe("function");
    expect(typeof client.acceptSession).toBe("function");
    await client.close();
  });
});
