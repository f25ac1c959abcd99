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
import { ShieldError } from "../../../core/errors.js";
import { makeAttestationResult, makeChallenge, makeKeyEvent } from "../../../core/messages/index.js";
import {
  DEAD_LETTER_LIMITS,
  agentMessageId,
  bodyFromText,
  checkAgentMessage,
  clampDeadLetterText,
  serializeBody,
  textFromBytes,
} from "../../../core/ports/bus.js";

const SENT_AT = new Date("2026-03-01T12:00:00Z");
const result = (agentId: string, requestId: string) =>
  makeAttestationResult({ agentId, requestId, keys: [], attestedUntil: SENT_AT, sentAt: SENT_AT });

describe("message ids for agent messages", () => {
  it("are stable per message and agent, at most 128 characters", () => {
    const id = agentMessageId("a", result("a", "r1"));
    expect(id).toBe(agentMessageId("a", result("a", "r1")));
    expect(id).toMatch(/^attestation-result-[0-9a-f]{40}$/);
    const longest = agentMessageId("x".repeat(128), result("x".repeat(128), "y".repeat(128)));
    expect(longest.length).toBeLessThanOrEqual(128);
  });

  it("differ between requests, between agents, and between kinds of message", () => {
    const event = makeKeyEvent({ event: "rotated", keyName: "k", keyVersion: "v1", sentAt: SENT_AT });
    const ids = [
      agentMessageId("a", result("a", "r1")),
      agentMessageId("a", result("a", "r2")),
      agentMessageId("b", result("b", "r1")),
      agentMessageId("a", event),
      agentMessageId("b", event),
      agentMessageId("a", { ...event, event: "revoked" }),
      agentMessageId("a", { ...event, keyVersion: "v2" }),
      agentMessageId(
        "a",
        makeChallenge({ agentId: "a", nonce: "n".repeat(16), deadline: SENT_AT, sentAt: SENT_AT }),
      ),
      agentMessageId(
        "a",
        makeChallenge({ agentId: "a", nonce: "m".repeat(16), deadline: SENT_AT, sentAt: SENT_AT }),
      ),
    ];
    expect(new Set(ids).size).toBe(ids.length);
  });

  it("ignore what does not identify the message (a resend of one result keeps its id)", () => {
    const first = result("a", "r1");
    expect(agentMessageId("a", { ...first, sentAt: "2027-01-01T00:00:00Z" })).toBe(
      agentMessageId("a", first),
    );
  });
});

describe("bodies", () => {
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
  it("refuse a message addressed to another agent, or an agent id that cannot be a session id", () => {
    expect(() => checkAgentMessage("a", result("b", "r"))).toThrow(TypeError);
    expect(() => checkAgentMessage("has space", result("has space", "r"))).toThrow(TypeError);
    expect(() => checkAgentMessage("a", result("a", "r"))).not.toThrow();
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
