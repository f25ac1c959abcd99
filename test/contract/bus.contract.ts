/**
 * The bus contract: every local transport (the in-process one and Storage Queues) must pass
 * these tests unchanged. Each test gets a fresh bus with queues no other test uses, so files can
 * run in parallel against one Azurite.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { ShieldError } from "../../core/errors.js";
import {
  makeAttestationRequest,
  makeAttestationResult,
  makeChallenge,
  makeKeyEvent,
  type AttestationRequest,
} from "../../core/messages/index.js";
import { MAX_DELIVERY_COUNT_EXCEEDED, type LocalBus } from "../../core/ports/bus.js";
import { derToPem } from "../../core/x509/certificate.js";

export interface BusHarness {
  readonly bus: LocalBus;
  /** The largest body, in bytes of JSON, the transport accepts. */
  readonly maxBodyBytes: number;
  /** True when the transport keeps each agent's messages in order (the in-process one). */
  readonly fifo: boolean;
  /** Puts text on the request queue behind the adapter's back, as a foreign producer could. */
  putRawRequest(text: string): Promise<void>;
  /** Puts text on an agent's queue behind the adapter's back. */
  putRawAgentMessage(agentId: string, text: string): Promise<void>;
}

export interface BusHarnessOptions {
  readonly maxDeliveryCount: number;
}

const SENT_AT = new Date("2026-03-01T12:00:00Z");
const b64url = (bytes: number): string => randomBytes(bytes).toString("base64url");
const pem = (bytes: number): string => derToPem(randomBytes(bytes));

/** A valid request whose UVM endorsement is `endorsementChars` long (size control for limit tests). */
export function request(agentId: string, endorsementChars = 4000): AttestationRequest {
  return makeAttestationRequest({
    agentId,
    requestId: randomUUID(),
    workload: "payments",
    tee: "sevsnp",
    evidence: {
      tee: "sevsnp",
      format: "raw",
      report: b64url(1184),
      vcekChain: pem(1350) + pem(1650) + pem(1650),
      uvmEndorsements: randomBytes(endorsementChars).toString("base64url").slice(0, endorsementChars),
    },
    runtimeData: b64url(420),
    keys: ["payments-db"],
    sentAt: SENT_AT,
  });
}

/** A request whose JSON is exactly `bytes` long, or one byte less where base64url forbids the length. */
function requestOfSize(agentId: string, bytes: number): AttestationRequest {
  const base = request(agentId, 4000);
  let chars = 4000 + bytes - Buffer.byteLength(JSON.stringify(base));
  if (chars % 4 === 1) chars -= 1;
  return request(agentId, chars);
}

export function result(agentId: string, requestId = randomUUID()) {
  return makeAttestationResult({
    agentId,
    requestId,
    keys: [{ name: "payments-db", version: "0123456789abcdef0123456789abcdef", releaseResponse: "a.b.c" }],
    attestedUntil: new Date(SENT_AT.getTime() + 3_600_000),
    sentAt: SENT_AT,
  });
}

const agent = (): string => `payments.pod-${randomBytes(4).toString("hex")}:0`;

async function expectCode(promise: Promise<unknown>, code: string): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  expect(error).toBeInstanceOf(ShieldError);
  expect((error as ShieldError).code).toBe(code);
}

export function defineBusContract(
  name: string,
  makeHarness: (options: BusHarnessOptions) => Promise<BusHarness>,
): void {
  describe(`bus contract: ${name}`, () => {
    const opened: LocalBus[] = [];
    const harness = async (options: Partial<BusHarnessOptions> = {}): Promise<BusHarness> => {
      const made = await makeHarness({ maxDeliveryCount: 3, ...options });
      opened.push(made.bus);
      return made;
    };
    afterEach(async () => {
      for (const bus of opened.splice(0)) await bus.close();
    });

    it("carries a request from the agent to the functions unchanged, once", async () => {
      const { bus } = await harness();
      const receiver = bus.openRequestReceiver();
      const sent = request(agent());
      await bus.sendRequest(sent);
      const got = await receiver.receive(5_000);
      expect(got).toBeDefined();
      expect(got?.body).toEqual(sent);
      expect(got?.deliveryCount).toBe(1);
      expect(got?.messageId).toEqual(expect.any(String));
      expect(got?.enqueuedAt).toBeInstanceOf(Date);
      await got?.complete();
      expect(await receiver.receive(200)).toBeUndefined();
      expect(await receiver.readDeadLetters()).toEqual([]);
    });

    it("completes a message once: settling it again is a lost lock", async () => {
      const { bus } = await harness();
      const receiver = bus.openRequestReceiver();
      await bus.sendRequest(request(agent()));
      const got = await receiver.receive(5_000);
      await got?.complete();
      await expectCode(got!.complete(), "ERR_CONFLICT");
      await expectCode(got!.abandon(), "ERR_CONFLICT");
      expect(await receiver.receive(200)).toBeUndefined();
    });

    it("delivers an abandoned request again with its delivery count one higher", async () => {
      const { bus } = await harness();
      const receiver = bus.openRequestReceiver();
      const sent = request(agent());
      await bus.sendRequest(sent);
      for (const expected of [1, 2, 3]) {
        const got = await receiver.receive(5_000);
        expect(got?.deliveryCount).toBe(expected);
        expect(got?.body).toEqual(sent);
        if (expected < 3) await got?.abandon();
        else await got?.complete();
      }
    });

    it("dead-letters a request past maxDeliveryCount with MaxDeliveryCountExceeded", async () => {
      const { bus } = await harness({ maxDeliveryCount: 3 });
      const receiver = bus.openRequestReceiver();
      const sent = request(agent());
      await bus.sendRequest(sent);
      for (let delivery = 1; delivery <= 3; delivery++) {
        const got = await receiver.receive(5_000);
        expect(got?.deliveryCount).toBe(delivery);
        await got?.abandon();
      }
      expect(await receiver.receive(300)).toBeUndefined();
      const deadLetters = await receiver.readDeadLetters();
      expect(deadLetters).toHaveLength(1);
      expect(deadLetters[0]).toMatchObject({
        body: sent,
        reason: MAX_DELIVERY_COUNT_EXCEEDED,
        deliveryCount: 3,
      });
      expect(deadLetters[0]?.description).toMatch(/3/);
      expect(deadLetters[0]?.deadLetteredAt).toBeInstanceOf(Date);
    });

    it("dead-letters a request on demand with its reason and description", async () => {
      const { bus } = await harness();
      const receiver = bus.openRequestReceiver();
      const sent = request(agent());
      await bus.sendRequest(sent);
      const got = await receiver.receive(5_000);
      await got?.deadLetter("ERR_UPSTREAM_UNAVAILABLE", "MAA answered 503 on every attempt");
      expect(await receiver.receive(200)).toBeUndefined();
      const deadLetters = await receiver.readDeadLetters();
      expect(deadLetters).toHaveLength(1);
      expect(deadLetters[0]).toMatchObject({
        body: sent,
        reason: "ERR_UPSTREAM_UNAVAILABLE",
        description: "MAA answered 503 on every attempt",
        deliveryCount: 1,
      });
      await expectCode(got!.complete(), "ERR_CONFLICT");
    });

    it("keeps agents apart: an agent never receives another agent's messages", async () => {
      const { bus } = await harness();
      const [a, b] = [agent(), agent()];
      const inboxA = bus.openAgentInbox(a);
      const inboxB = bus.openAgentInbox(b);
      const forA = result(a);
      const forB = makeChallenge({ agentId: b, nonce: b64url(24), deadline: SENT_AT, sentAt: SENT_AT });
      await bus.sendToAgent(a, forA);
      await bus.sendToAgent(b, forB);
      expect((await inboxA.receive(5_000))?.body).toEqual(forA);
      expect(await inboxA.receive(200)).toBeUndefined();
      expect((await inboxB.receive(5_000))?.body).toEqual(forB);
      expect(await inboxB.receive(200)).toBeUndefined();
    });

    it("refuses to post a message addressed to one agent to another", async () => {
      const { bus } = await harness();
      const [a, b] = [agent(), agent()];
      await expect(bus.sendToAgent(b, result(a))).rejects.toThrow(TypeError);
      await expect(bus.sendToAgent("not an id!", result(a))).rejects.toThrow(TypeError);
      // A key event names no agent and goes to whichever agent it is sent to.
      const event = makeKeyEvent({
        event: "rotated",
        keyName: "payments-db",
        keyVersion: "abc123",
        sentAt: SENT_AT,
      });
      await bus.sendToAgent(b, event);
      expect((await bus.openAgentInbox(b).receive(5_000))?.body).toEqual(event);
    });

    it("returns undefined when nothing arrives in time, without hanging", async () => {
      const { bus } = await harness();
      const inbox = bus.openAgentInbox(agent());
      const receiver = bus.openRequestReceiver();
      let started = Date.now();
      expect(await inbox.receive(300)).toBeUndefined();
      expect(Date.now() - started).toBeGreaterThanOrEqual(250);
      expect(Date.now() - started).toBeLessThan(3_000);
      started = Date.now();
      expect(await receiver.receive(0)).toBeUndefined();
      expect(Date.now() - started).toBeLessThan(2_000);
    });

    it("wakes a waiting receiver when its inbox or receiver is closed", async () => {
      const { bus } = await harness();
      const inbox = bus.openAgentInbox(agent());
      const receiver = bus.openRequestReceiver();
      const started = Date.now();
      const waiting = [inbox.receive(20_000), receiver.receive(20_000)];
      await new Promise((resolve) => setTimeout(resolve, 50));
      await inbox.close();
      await receiver.close();
      expect(await Promise.all(waiting)).toEqual([undefined, undefined]);
      expect(Date.now() - started).toBeLessThan(5_000);
      await expect(inbox.receive(10)).rejects.toThrow(TypeError);
    });

    it("hands a message sent while a receiver waits to that receiver", async () => {
      const { bus } = await harness();
      const id = agent();
      const inbox = bus.openAgentInbox(id);
      const waiting = inbox.receive(10_000);
      const sent = result(id);
      await bus.sendToAgent(id, sent);
      expect((await waiting)?.body).toEqual(sent);
    });

    it("delivers each agent's messages (in order where the transport promises it)", async () => {
      const { bus, fifo } = await harness();
      const id = agent();
      const inbox = bus.openAgentInbox(id);
      const sent = Array.from({ length: 5 }, () => result(id));
      for (const message of sent) await bus.sendToAgent(id, message);
      const got: unknown[] = [];
      for (let index = 0; index < sent.length; index++) got.push((await inbox.receive(5_000))?.body);
      if (fifo) expect(got).toEqual(sent);
      else expect(got).toEqual(expect.arrayContaining(sent));
      expect(await inbox.receive(200)).toBeUndefined();
    });

    it("delivers a duplicate send twice: receivers dedupe, the bus does not", async () => {
      const { bus } = await harness();
      const id = agent();
      const inbox = bus.openAgentInbox(id);
      const sent = result(id);
      await bus.sendToAgent(id, sent);
      await bus.sendToAgent(id, sent);
      expect((await inbox.receive(5_000))?.body).toEqual(sent);
      expect((await inbox.receive(5_000))?.body).toEqual(sent);
      expect(await inbox.receive(200)).toBeUndefined();
    });

    it("refuses a body over the transport's limit when sending, and carries one at the limit", async () => {
      const { bus, maxBodyBytes } = await harness();
      const receiver = bus.openRequestReceiver();
      const atLimit = requestOfSize(agent(), maxBodyBytes);
      expect(Buffer.byteLength(JSON.stringify(atLimit))).toBeGreaterThan(maxBodyBytes - 2);
      expect(Buffer.byteLength(JSON.stringify(atLimit))).toBeLessThanOrEqual(maxBodyBytes);
      await bus.sendRequest(atLimit);
      const got = await receiver.receive(5_000);
      expect(got?.body).toEqual(atLimit);
      await got?.complete();

      const over = requestOfSize(agent(), maxBodyBytes + 8);
      await expectCode(bus.sendRequest(over), "ERR_INPUT_TOO_LARGE");
      const id = agent();
      const overResult = makeAttestationResult({
        agentId: id,
        requestId: randomUUID(),
        verdict: "denied",
        denial: {
          code: "ERR_POLICY_DENIED",
          message: "denied",
          violations: Array.from({ length: 64 }, (_, index) => ({
            field: `claim-${index}`,
            expected: "x".repeat(1024),
            actual: "y".repeat(1024),
          })),
        },
        sentAt: SENT_AT,
      });
      expect(Buffer.byteLength(JSON.stringify(overResult))).toBeGreaterThan(maxBodyBytes);
      await expectCode(bus.sendToAgent(id, overResult), "ERR_INPUT_TOO_LARGE");
      expect(await receiver.receive(200)).toBeUndefined();
      expect(await bus.openAgentInbox(id).receive(200)).toBeUndefined();
    });

    it("hands on a request body that is not JSON as its raw text, and lets it be settled", async () => {
      const harnessed = await harness();
      const receiver = harnessed.bus.openRequestReceiver();
      const text = "not json { at all";
      await harnessed.putRawRequest(text);
      const got = await receiver.receive(5_000);
      expect(got?.body).toBe(text);
      expect(got?.deliveryCount).toBe(1);
      await got?.deadLetter("ERR_MESSAGE_SCHEMA", "body is not JSON");
      const deadLetters = await receiver.readDeadLetters();
      expect(deadLetters).toHaveLength(1);
      expect(deadLetters[0]).toMatchObject({ body: text, reason: "ERR_MESSAGE_SCHEMA" });
    });

    it("hands on JSON that is not an object as its raw text", async () => {
      const harnessed = await harness();
      const receiver = harnessed.bus.openRequestReceiver();
      await harnessed.putRawRequest("[1,2,3]");
      const got = await receiver.receive(5_000);
      expect(got?.body).toBe("[1,2,3]");
      await got?.complete();
    });

    it("hands on an agent message that is not JSON as its raw text", async () => {
      const harnessed = await harness();
      const id = agent();
      const inbox = harnessed.bus.openAgentInbox(id);
      await harnessed.putRawAgentMessage(id, "<<garbage>>");
      const got = await inbox.receive(5_000);
      expect(got?.body).toBe("<<garbage>>");
      expect(await inbox.receive(200)).toBeUndefined();
    });

    it("refuses bad arguments as caller errors", async () => {
      const { bus } = await harness();
      const inbox = bus.openAgentInbox(agent());
      await expect(inbox.receive(-1)).rejects.toThrow(TypeError);
      await expect(inbox.receive(Number.NaN)).rejects.toThrow(TypeError);
      expect(() => bus.openAgentInbox("")).toThrow(TypeError);
      const receiver = bus.openRequestReceiver();
      await bus.sendRequest(request(agent()));
      const got = await receiver.receive(5_000);
      await expect(got!.deadLetter(42 as unknown as string, "x")).rejects.toThrow(TypeError);
      await got?.complete();
    });
  });
}
