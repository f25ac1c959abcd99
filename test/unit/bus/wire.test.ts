/**
 * The wire rules every transport shares (core/ports/bus.ts) and the Storage Queue encoding and
 * error mapping (adapters/storage-queue/queues.ts), without a queue service.
 */
import { RestError } from "@azure/storage-queue";
import { describe, expect, it } from "vitest";
import {
  agentQueueName,
  checkAgentQueuePrefix,
  decodeMessageText,
  encodeMessageText,
  isQueueName,
  storageError,
} from "../../../adapters/storage-queue/queues.js";
import { createControlChannel, verifyControlMessage } from "../../../core/control/signed.js";
import { ShieldError } from "../../../core/errors.js";
import {
  makeAttestationRequest,
  makeAttestationResult,
  makeChallenge,
  makeChallengeRequest,
  makeKeyEvent,
} from "../../../core/messages/index.js";
import {
  DEAD_LETTER_LIMITS,
  agentMessageId,
  bodyFromText,
  checkAgentMessage,
  checkRequest,
  clampDeadLetterText,
  requestMessageId,
  serializeBody,
  textFromBytes,
  type AgentRequest,
  type SignedAgentMessage,
} from "../../../core/ports/bus.js";
import { systemRandom } from "../../../core/ports/clock.js";
import { createTestControlPlane } from "../../support/control.js";

const SENT_AT = new Date("2026-03-01T12:00:00Z");
const control = createTestControlPlane();
const result = (agentId: string, requestId: string) =>
  makeAttestationResult({ agentId, requestId, keys: [], attestedUntil: SENT_AT, sentAt: SENT_AT });
const signedResult = (agentId: string, requestId = "r1") => control.sign(result(agentId, requestId));
const challengeRequest = (agentId: string, sentAt = SENT_AT) =>
  makeChallengeRequest({ agentId, workload: "payments", tee: "sevsnp", sentAt });

describe("message ids for agent messages", () => {
  it("are the signed message id prefixed with the type", async () => {
    const signed = await control.sign(result("a", "r1"), {
      messageId: "7d1c6f0e-5a4b-4c3d-9e8f-0a1b2c3d4e5f",
    });
    expect(agentMessageId(signed)).toBe("attestation-result-7d1c6f0e-5a4b-4c3d-9e8f-0a1b2c3d4e5f");
    const challenge = makeChallenge({
      agentId: "a",
      nonce: "n".repeat(16),
      deadline: SENT_AT,
      sentAt: SENT_AT,
    });
    expect(agentMessageId(await control.sign(challenge, { messageId: "m-1" }))).toBe("challenge-m-1");
  });

  it("stay the same when one signed message is sent again", async () => {
    const signed = await signedResult("a");
    expect(agentMessageId({ ...signed })).toBe(agentMessageId(signed));
  });

  it("differ for every signing: the same result or key event signed twice, or for two agents", async () => {
    const event = (agentId: string) =>
      makeKeyEvent({ agentId, event: "rotated", keyName: "k", keyVersion: "v1", sentAt: SENT_AT });
    const signed = [
      await signedResult("a"),
      await signedResult("a"),
      await signedResult("b"),
      await control.sign(event("a")),
      await control.sign(event("a")),
      await control.sign(event("b")),
    ];
    const ids = signed.map(agentMessageId);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it("fit a Service Bus message id (128 characters) for every id the control channel signs with", async () => {
    const sent: SignedAgentMessage[] = [];
    const channel = createControlChannel({
      transport: { sendToAgent: (_agentId, message) => Promise.resolve(void sent.push(message)) },
      signer: control.signer,
      clock: { now: () => new Date() },
      random: systemRandom,
    });
    const agentId = "x".repeat(128);
    await channel.sendToAgent(agentId, result(agentId, "y".repeat(128)));
    await channel.sendToAgent(
      agentId,
      makeKeyEvent({
        agentId,
        event: "revoked",
        keyName: "k".repeat(127),
        keyVersion: "v".repeat(64),
        sentAt: SENT_AT,
      }),
    );
    for (const message of sent) expect(agentMessageId(message).length).toBeLessThanOrEqual(128);
  });
});

describe("message ids for requests", () => {
  it("are the request id of an attestation request", () => {
    const request = makeAttestationRequest({
      agentId: "a",
      requestId: "4b7e6a2c-1f0d-4c52-9a53-0c8f2a6f1d11",
      workload: "payments",
      tee: "sgx",
      evidence: { tee: "sgx", format: "dcap-quote", quote: Buffer.alloc(600, 7).toString("base64url") },
      runtimeData: Buffer.alloc(30, 1).toString("base64url"),
      challenge: Buffer.alloc(32, 2).toString("base64url"),
      keys: ["k"],
      sentAt: SENT_AT,
    });
    expect(requestMessageId(request)).toBe("4b7e6a2c-1f0d-4c52-9a53-0c8f2a6f1d11");
  });

  it("are a digest of agent and time for a challenge request: stable, distinct, at most 128 characters", () => {
    const id = requestMessageId(challengeRequest("a"));
    expect(id).toMatch(/^challenge-request-[0-9a-f]{40}$/);
    expect(requestMessageId(challengeRequest("a"))).toBe(id);
    const ids = [
      id,
      requestMessageId(challengeRequest("b")),
      requestMessageId(challengeRequest("a", new Date(SENT_AT.getTime() + 1))),
    ];
    expect(new Set(ids).size).toBe(ids.length);
    expect(requestMessageId(challengeRequest("x".repeat(128))).length).toBeLessThanOrEqual(128);
  });
});

describe("bodies", () => {
  it("carry a signed message's JWS text as it is, byte for byte, and read it back as that text", async () => {
    const message = result("a", "r1");
    const signed = await control.sign(message);
    const bytes = serializeBody(signed.jws, 256 * 1024);
    expect(bytes.equals(Buffer.from(signed.jws, "utf8"))).toBe(true);
    const text = textFromBytes(bytes);
    expect(text).toBe(signed.jws);
    const body = bodyFromText(text, 256 * 1024);
    expect(body).toBe(signed.jws);
    const verified = await verifyControlMessage(body, { keys: control.keys, agentId: "a", at: new Date() });
    expect(verified).toMatchObject({ message, messageId: signed.messageId });
    let error: unknown;
    try {
      serializeBody(signed.jws, bytes.length - 1);
    } catch (caught) {
      error = caught;
    }
    expect(error).toMatchObject({ code: "ERR_INPUT_TOO_LARGE" });
    expect(serializeBody(signed.jws, bytes.length).length).toBe(bytes.length);
  });

  it("serialize to UTF-8 JSON, refusing more than the limit with every size named", () => {
    const message = { type: "x", text: "é" };
    const bytes = serializeBody(message, 100);
    expect(JSON.parse(bytes.toString("utf8"))).toEqual(message);
    let error: unknown;
    try {
      serializeBody(message, bytes.length - 1);
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(ShieldError);
    expect((error as ShieldError).code).toBe("ERR_INPUT_TOO_LARGE");
    expect(JSON.stringify((error as ShieldError).toJSON())).not.toContain("é");
  });

  it("read back as the JSON object, or else as the raw text, never throwing", () => {
    expect(bodyFromText('{"a":1}', 100)).toEqual({ a: 1 });
    for (const text of ["", "not json", "[1,2]", "42", "null", '"str"', "{", "\u0000"]) {
      expect(bodyFromText(text, 100)).toBe(text);
    }
    // Too large to parse: handed on as text for the receiver's size check.
    const big = JSON.stringify({ a: "x".repeat(200) });
    expect(bodyFromText(big, 100)).toBe(big);
  });

  it("decode bytes as UTF-8, or as base64 when they are not UTF-8", () => {
    expect(textFromBytes(Buffer.from("héllo"))).toBe("héllo");
    expect(textFromBytes(Buffer.from([0xc3]))).toBe("ww==");
  });
});

describe("arguments", () => {
  it("refuse a message addressed to another agent, or an agent id that cannot be a session id", async () => {
    const [forA, forB] = [await signedResult("a"), await signedResult("b")];
    expect(() => checkAgentMessage("a", forA)).not.toThrow();
    expect(() => checkAgentMessage("a", forB)).toThrow(/addressed to another agent/);
    expect(() => checkAgentMessage("has space", { ...forA, agentId: "has space" })).toThrow(
      /agentId must be/,
    );
  });

  it("refuse a message that is not signed, or not one agents are sent", async () => {
    const signed = await signedResult("a");
    const unsigned = result("a", "r");
    expect(() => checkAgentMessage("a", unsigned as unknown as SignedAgentMessage)).toThrow(TypeError);
    expect(() => checkAgentMessage("a", unsigned as unknown as SignedAgentMessage)).toThrow(/must be signed/);
    const [h, p, s] = signed.jws.split(".") as [string, string, string];
    for (const jws of [JSON.stringify(unsigned), `${h}.${p}`, `${h}.${p}.`, `${h}.${p}.${s}=`, ""]) {
      expect(() => checkAgentMessage("a", { ...signed, jws })).toThrow(/must be signed/);
    }
    expect(() =>
      checkAgentMessage("a", { ...signed, jws: Buffer.from(signed.jws) as unknown as string }),
    ).toThrow(/must be signed/);
    for (const messageId of ["", "has space", "x".repeat(129)]) {
      expect(() => checkAgentMessage("a", { ...signed, messageId })).toThrow(/messageId/);
    }
    for (const type of ["attestation-request", "challenge-request", "policy-update"]) {
      expect(() => checkAgentMessage("a", { ...signed, type } as unknown as SignedAgentMessage)).toThrow(
        /must be an attestation-result, challenge or key-event/,
      );
    }
    expect(() => checkAgentMessage("a", null as unknown as SignedAgentMessage)).toThrow(TypeError);
  });

  it("take challenge requests and attestation requests, and nothing else", () => {
    expect(() => checkRequest(challengeRequest("a"))).not.toThrow();
    expect(() => checkRequest({ ...challengeRequest("a"), agentId: "has space" })).toThrow(/agentId must be/);
    expect(() =>
      checkRequest({ type: "attestation-result", requestId: "r" } as unknown as AgentRequest),
    ).toThrow(TypeError);
    expect(() => checkRequest(null as unknown as AgentRequest)).toThrow(TypeError);
  });

  it("cut dead-letter reasons and descriptions to size and strip control characters", () => {
    const { reason, description } = clampDeadLetterText("r\n".repeat(200), "d\u0000".repeat(2_000));
    expect(reason).toHaveLength(DEAD_LETTER_LIMITS.reasonChars);
    expect(description).toHaveLength(DEAD_LETTER_LIMITS.descriptionChars);
    expect(`${reason}${description}`).not.toContain("\n");
    expect(`${reason}${description}`).not.toContain("\u0000");
  });
});

describe("Storage Queue encoding", () => {
  it("stores base64 of the JSON and reads it back; text that is not base64 stays as it is", () => {
    const body = Buffer.from('{"type":"challenge"}');
    expect(decodeMessageText(encodeMessageText(body))).toBe('{"type":"challenge"}');
    for (const text of ['{"type":"challenge"}', "hello world", "abc", "", "ab=c"]) {
      expect(decodeMessageText(text)).toBe(text);
    }
    // Base64 of bytes that are not UTF-8 is not ours either.
    expect(decodeMessageText(Buffer.from([0xff, 0xfe, 0xfd]).toString("base64"))).toBe("//79");
  });

  it("names queues as Azure requires", () => {
    expect(isQueueName("attestation-requests-deadletter")).toBe(true);
    for (const name of ["ab", "a--b", "-ab", "ab-", "Abc", "a_b", "x".repeat(64)])
      expect(isQueueName(name)).toBe(false);
    expect(
      isQueueName(agentQueueName("any:Agent.Id_1", checkAgentQueuePrefix("t0123456789abcdef01234-"))),
    ).toBe(true);
    expect(() => checkAgentQueuePrefix("t0123456789abcdef012345-")).toThrow(ShieldError);
  });

  it("maps service answers to typed errors", () => {
    const answer = (statusCode: number | undefined, code?: string) =>
      storageError("op", new RestError("boom", { statusCode, ...(code === undefined ? {} : { code }) }));
    const cases: [ShieldError, string, boolean][] = [
      [answer(undefined), "ERR_NETWORK", true],
      [answer(503, "ServerBusy"), "ERR_THROTTLED", true],
      [answer(500, "InternalError"), "ERR_UPSTREAM_UNAVAILABLE", true],
      [answer(408), "ERR_TIMEOUT", true],
      [answer(404, "MessageNotFound"), "ERR_CONFLICT", true],
      [answer(400, "PopReceiptMismatch"), "ERR_CONFLICT", true],
      [answer(404, "QueueNotFound"), "ERR_CONFIG", false],
      [answer(403, "AuthorizationFailure"), "ERR_CONFIG", false],
      [answer(413, "RequestBodyTooLarge"), "ERR_INPUT_TOO_LARGE", false],
      [answer(400, "InvalidXmlDocument"), "ERR_IO", false],
    ];
    for (const [error, code, transient] of cases)
      expect([error.code, error.transient]).toEqual([code, transient]);
    expect(storageError("op", new Error("socket hang up")).code).toBe("ERR_NETWORK");
  });
});
