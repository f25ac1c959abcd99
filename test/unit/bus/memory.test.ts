/**
 * What the in-process bus does beyond the shared contract: Service Bus's defaults, lock expiry
 * and renewal, waiting without polling, and timers that never hold the process open.
 */
import { randomUUID } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { MemoryBus } from "../../../adapters/local/bus/memory.js";
import { verifyControlMessage } from "../../../core/control/signed.js";
import {
  makeAttestationRequest,
  makeAttestationResult,
  makeChallengeRequest,
} from "../../../core/messages/index.js";
import { fixedClock } from "../../../core/ports/clock.js";
import {
  MAX_DELIVERY_COUNT_EXCEEDED,
  agentMessageId,
  requestMessageId,
  type SignedAgentMessage,
} from "../../../core/ports/bus.js";
import { createTestControlPlane } from "../../support/control.js";

const SENT_AT = new Date("2026-03-01T12:00:00Z");
const AGENT = "payments.pod-7f9c:0";
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const control = createTestControlPlane();

function request(requestId = randomUUID()) {
  return makeAttestationRequest({
    agentId: AGENT,
    requestId,
    workload: "payments",
    tee: "sgx",
    evidence: { tee: "sgx", format: "dcap-quote", quote: Buffer.alloc(600, 7).toString("base64url") },
    runtimeData: Buffer.alloc(300, 1).toString("base64url"),
    challenge: Buffer.alloc(32, 2).toString("base64url"),
    keys: ["payments-db"],
    sentAt: SENT_AT,
  });
}

function result() {
  return makeAttestationResult({
    agentId: AGENT,
    requestId: randomUUID(),
    keys: [],
    attestedUntil: SENT_AT,
    sentAt: SENT_AT,
  });
}

/** A result signed for AGENT by the test control plane. */
const signed = (): Promise<SignedAgentMessage> => control.sign(result());

/** Timers that keep the event loop alive (unref'd timers are not counted). */
const liveTimers = (): number => process.getActiveResourcesInfo().filter((kind) => kind === "Timeout").length;

describe("in-process bus", () => {
  const buses: MemoryBus[] = [];
  const open = (options: ConstructorParameters<typeof MemoryBus>[0] = {}): MemoryBus => {
    const bus = new MemoryBus(options);
    buses.push(bus);
    return bus;
  };
  afterEach(async () => {
    for (const bus of buses.splice(0)) await bus.close();
  });

  it("dead-letters after 10 deliveries by default, as Service Bus does", async () => {
    const bus = open();
    const receiver = bus.openRequestReceiver();
    await bus.sendRequest(request());
    for (let delivery = 1; delivery <= 10; delivery++) {
      const got = await receiver.receive(100);
      expect(got?.deliveryCount).toBe(delivery);
      await got?.abandon();
    }
    expect(await receiver.receive(10)).toBeUndefined();
    expect((await receiver.readDeadLetters()).map((entry) => [entry.reason, entry.deliveryCount])).toEqual([
      [MAX_DELIVERY_COUNT_EXCEEDED, 10],
    ]);
  });

  it("uses the signed id for agent messages and a digest for challenge requests", async () => {
    const bus = open();
    const sent = await signed();
    await bus.sendToAgent(AGENT, sent);
    const got = await bus.openAgentInbox(AGENT).receive(100);
    expect(got?.messageId).toBe(agentMessageId(sent));
    expect(got?.messageId).toBe(`attestation-result-${sent.messageId}`);
    const receiver = bus.openRequestReceiver();
    const asked = makeChallengeRequest({ agentId: AGENT, workload: "payments", tee: "sgx", sentAt: SENT_AT });
    await bus.sendRequest(asked);
    const request = await receiver.receive(100);
    expect(request?.messageId).toBe(requestMessageId(asked));
    expect(request?.messageId).toMatch(/^challenge-request-[0-9a-f]{40}$/);
    expect(request?.body).toEqual(asked);
    await request?.complete();
  });

  it("uses message id = request id, and stamps times from its clock", async () => {
    const clock = fixedClock(new Date("2026-05-01T00:00:00Z"));
    const bus = open({ clock });
    const receiver = bus.openRequestReceiver();
    const sent = request();
    await bus.sendRequest(sent);
    const got = await receiver.receive(100);
    expect(got?.messageId).toBe(sent.requestId);
    expect(got?.enqueuedAt).toEqual(new Date("2026-05-01T00:00:00Z"));
    clock.advance(5_000);
    await got?.deadLetter("r", "d");
    expect((await receiver.readDeadLetters())[0]?.deadLetteredAt).toEqual(new Date("2026-05-01T00:00:05Z"));
  });

  it("delivers a request again when its lock expires, and refuses settling the expired lock", async () => {
    const bus = open({ lockDurationMs: 50 });
    const receiver = bus.openRequestReceiver();
    await bus.sendRequest(request());
    const first = await receiver.receive(100);
    const second = await receiver.receive(1_000);
    expect([first?.deliveryCount, second?.deliveryCount]).toEqual([1, 2]);
    await expect(first!.complete()).rejects.toMatchObject({ code: "ERR_CONFLICT" });
    await expect(first!.renewLock()).rejects.toMatchObject({ code: "ERR_CONFLICT" });
    await second?.complete();
  });

  it("keeps a request locked while the lock is renewed", async () => {
    const bus = open({ lockDurationMs: 80 });
    const receiver = bus.openRequestReceiver();
    await bus.sendRequest(request());
    const got = await receiver.receive(100);
    for (let turn = 0; turn < 4; turn++) {
      await sleep(40);
      await got?.renewLock();
    }
    expect(await receiver.receive(10)).toBeUndefined();
    await got?.complete();
  });

  it("puts an abandoned request back in its place, ahead of later ones", async () => {
    const bus = open();
    const receiver = bus.openRequestReceiver();
    const [first, second] = [request(), request()];
    await bus.sendRequest(first);
    await bus.sendRequest(second);
    await (await receiver.receive(10))?.abandon();
    expect((await receiver.receive(10))?.body).toEqual(first);
  });

  it("wakes a waiting receiver as soon as a message is sent, without polling", async () => {
    const bus = open();
    const inbox = bus.openAgentInbox(AGENT);
    const waiting = inbox.receive(5_000);
    await sleep(20);
    const message = await signed();
    const sentAt = Date.now();
    await bus.sendToAgent(AGENT, message);
    expect(await waiting).toBeDefined();
    expect(Date.now() - sentAt).toBeLessThan(50);
  });

  it("never keeps the process alive: waiting and lock timers are unref'd and cleared on close", async () => {
    const before = liveTimers();
    const bus = open({ lockDurationMs: 60_000 });
    const receiver = bus.openRequestReceiver();
    await bus.sendRequest(request());
    const locked = await receiver.receive(10);
    expect(locked).toBeDefined();
    const waiting = [receiver.receive(60_000), bus.openAgentInbox(AGENT).receive(60_000)];
    expect(liveTimers()).toBe(before);
    await bus.close();
    expect(await Promise.all(waiting)).toEqual([undefined, undefined]);
    await expect(locked!.complete()).rejects.toMatchObject({ code: "ERR_CONFLICT" });
    await expect(bus.sendToAgent(AGENT, await signed())).rejects.toThrow(TypeError);
    expect(() => bus.openAgentInbox(AGENT)).toThrow(TypeError);
  });

  it("copies bodies: a receiver never shares an object with the sender, nor sees it change", async () => {
    const bus = open();
    const message = result();
    const original = await control.sign(message);
    const sent = { ...original };
    await bus.sendToAgent(AGENT, sent);
    // Changing the sent object afterwards changes nothing on the queue.
    Object.assign(sent, { jws: (await signed()).jws, messageId: "changed" });
    const got = await bus.openAgentInbox(AGENT).receive(10);
    expect(got?.body).toBe(original.jws);
    const verified = await verifyControlMessage(got?.body, {
      keys: control.keys,
      agentId: AGENT,
      at: new Date(),
    });
    expect(verified).toMatchObject({ message, messageId: original.messageId });

    const receiver = bus.openRequestReceiver();
    const asked = request();
    await bus.sendRequest(asked);
    const copy = await receiver.receive(10);
    expect(copy?.body).toEqual(asked);
    expect(copy?.body).not.toBe(asked);
    await copy?.complete();
  });

  it("refuses bad options as caller errors", () => {
    expect(() => new MemoryBus({ maxDeliveryCount: 0 })).toThrow(TypeError);
    expect(() => new MemoryBus({ lockDurationMs: 1.5 })).toThrow(TypeError);
    expect(() => new MemoryBus({ maxBodyBytes: -1 })).toThrow(TypeError);
  });
});
