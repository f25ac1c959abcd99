/**
 * The bus contract: every local transport (the in-process one and Storage Queues) must pass
 * these tests unchanged. Each test gets a fresh bus with queues no other test uses, so files can
 * run in parallel against one Azurite. Requests travel as JSON; messages to agents travel signed
 * by the test control plane, and arrive as their JWS text, byte for byte, still verifying.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { verifyControlMessage } from "../../core/control/signed.js";
import { ShieldError } from "../../core/errors.js";
import {
  makeAttestationRequest,
  makeAttestationResult,
  makeChallenge,
  makeChallengeRequest,
  makeKeyEvent,
  type AttestationRequest,
  type ChallengeRequest,
} from "../../core/messages/index.js";
import {
  MAX_DELIVERY_COUNT_EXCEEDED,
  type AgentMessage,
  type LocalBus,
  type SignedAgentMessage,
} from "../../core/ports/bus.js";
import { derToPem } from "../../core/x509/certificate.js";
import { createTestControlPlane } from "../support/control.js";

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
/** Signs every message to an agent in these tests; agents pin its keys. */
export const control = createTestControlPlane();
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
    challenge: b64url(32),
    keys: ["payments-db"],
    sentAt: SENT_AT,
  });
}

export function challengeRequest(agentId: string, sentAt = SENT_AT): ChallengeRequest {
  return makeChallengeRequest({ agentId, workload: "payments", tee: "sevsnp", sentAt });
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

/** A result signed for its agent by the test control plane. */
export function signedResult(agentId: string): Promise<SignedAgentMessage> {
  return control.sign(result(agentId));
}

/**
 * A body received by an agent is the signed message's JWS text, byte for byte, and it still
 * verifies, as the agent it was signed for, to the message that was signed.
 */
export async function expectSignedBody(
  body: unknown,
  signed: SignedAgentMessage,
  message?: AgentMessage,
): Promise<void> {
  expect(typeof body).toBe("string");
  expect(Buffer.from(body as string, "utf8").equals(Buffer.from(signed.jws, "utf8"))).toBe(true);
  const verified = await verifyControlMessage(body, {
    keys: control.keys,
    agentId: signed.agentId,
    at: new Date(),
  });
  expect(verified.messageId).toBe(signed.messageId);
  expect(verified.message.type).toBe(signed.type);
  if (message !== undefined) expect(verified.message).toEqual(message);
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

    it("carries a challenge request from the agent to the functions unchanged, once", async () => {
      const { bus } = await harness();
      const receiver = bus.openRequestReceiver();
      const sent = challengeRequest(agent());
      await bus.sendRequest(sent);
      const got = await receiver.receive(5_000);
      expect(got?.body).toEqual(sent);
      expect(got?.deliveryCount).toBe(1);
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
      const messageA = result(a);
      const messageB = makeChallenge({ agentId: b, nonce: b64url(24), deadline: SENT_AT, sentAt: SENT_AT });
      const forA = await control.sign(messageA);
      const forB = await control.sign(messageB);
      await bus.sendToAgent(a, forA);
      await bus.sendToAgent(b, forB);
      await expectSignedBody((await inboxA.receive(5_000))?.body, forA, messageA);
      expect(await inboxA.receive(200)).toBeUndefined();
      await expectSignedBody((await inboxB.receive(5_000))?.body, forB, messageB);
      expect(await inboxB.receive(200)).toBeUndefined();
    });

    it("refuses to post a message addressed to one agent to another", async () => {
      const { bus } = await harness();
      const [a, b] = [agent(), agent()];
      const forA = await signedResult(a);
      await expect(bus.sendToAgent(b, forA)).rejects.toThrow(/addressed to another agent/);
      await expect(bus.sendToAgent("not an id!", forA)).rejects.toThrow(TypeError);
      // A key event is signed for one agent, like every other message, and goes only to it.
      const event = makeKeyEvent({
        agentId: b,
        event: "rotated",
        keyName: "payments-db",
        keyVersion: "abc123",
        sentAt: SENT_AT,
      });
      const signedEvent = await control.sign(event);
      await expect(bus.sendToAgent(a, signedEvent)).rejects.toThrow(/addressed to another agent/);
      await bus.sendToAgent(b, signedEvent);
      await expectSignedBody((await bus.openAgentInbox(b).receive(5_000))?.body, signedEvent, event);
      expect(await bus.openAgentInbox(a).receive(200)).toBeUndefined();
    });

    it("refuses to carry an unsigned message to an agent", async () => {
      const { bus } = await harness();
      const id = agent();
      const unsigned = result(id);
      await expect(bus.sendToAgent(id, unsigned as unknown as SignedAgentMessage)).rejects.toThrow(
        /must be signed/,
      );
      const signed = await signedResult(id);
      const notCompact = { ...signed, jws: JSON.stringify(unsigned) };
      await expect(bus.sendToAgent(id, notCompact)).rejects.toThrow(/must be signed/);
      expect(await bus.openAgentInbox(id).receive(200)).toBeUndefined();
    });

    it("carries a relabelled signed message only as what it is: the agent it reaches refuses it", async () => {
      const { bus } = await harness();
      const [a, b] = [agent(), agent()];
      const forA = await signedResult(a);
      // The wrapper names b, so the transport takes it; the signature still names a.
      await bus.sendToAgent(b, { ...forA, agentId: b });
      const got = await bus.openAgentInbox(b).receive(5_000);
      expect(got?.body).toBe(forA.jws);
      await expect(
        verifyControlMessage(got?.body, { keys: control.keys, agentId: b, at: new Date() }),
      ).rejects.toMatchObject({ code: "ERR_CONTROL_AUDIENCE" });
    });

    it("hands on an unsigned JSON message put on an agent's queue as the object, which no agent accepts", async () => {
      const harnessed = await harness();
      const id = agent();
      const forged = result(id);
      await harnessed.putRawAgentMessage(id, JSON.stringify(forged));
      const got = await harnessed.bus.openAgentInbox(id).receive(5_000);
      expect(got?.body).toEqual(forged);
      await expect(
        verifyControlMessage(got?.body, { keys: control.keys, agentId: id, at: new Date() }),
      ).rejects.toMatchObject({ code: "ERR_CONTROL_MALFORMED" });
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
      const sent = await signedResult(id);
      await bus.sendToAgent(id, sent);
      await expectSignedBody((await waiting)?.body, sent);
    });

    it("delivers each agent's messages (in order where the transport promises it)", async () => {
      const { bus, fifo } = await harness();
      const id = agent();
      const inbox = bus.openAgentInbox(id);
      const sent = await Promise.all(Array.from({ length: 5 }, () => signedResult(id)));
      for (const message of sent) await bus.sendToAgent(id, message);
      const got: unknown[] = [];
      for (let index = 0; index < sent.length; index++) got.push((await inbox.receive(5_000))?.body);
      const texts = sent.map((message) => message.jws);
      if (fifo) expect(got).toEqual(texts);
      else expect([...(got as string[])].sort()).toEqual([...texts].sort());
      for (const body of got) await expectSignedBody(body, sent[texts.indexOf(body as string)]!);
      expect(await inbox.receive(200)).toBeUndefined();
    });

    it("delivers a duplicate send twice: receivers dedupe, the bus does not", async () => {
      const { bus } = await harness();
      const id = agent();
      const inbox = bus.openAgentInbox(id);
      const sent = await signedResult(id);
      await bus.sendToAgent(id, sent);
      await bus.sendToAgent(id, sent);
      await expectSignedBody((await inbox.receive(5_000))?.body, sent);
      await expectSignedBody((await inbox.receive(5_000))?.body, sent);
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
      const signedOver = await control.sign(overResult);
      expect(Buffer.byteLength(signedOver.jws)).toBeGreaterThan(maxBodyBytes);
      await expectCode(bus.sendToAgent(id, signedOver), "ERR_INPUT_TOO_LARGE");
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
