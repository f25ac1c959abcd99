import { describe, expect, it } from "vitest";
import { ShieldError } from "../../../core/errors.js";
import {
  denialFromError,
  makeAttestationRequest,
  makeAttestationResult,
  makeChallenge,
  makeChallengeRequest,
  makeKeyEvent,
  makePolicyUpdate,
  makeRotateKey,
  parseMessage,
  type Evidence,
} from "../../../core/messages/index.js";
import { b64url, hex, releaseResponse, sevSnpRawEvidence } from "./fixtures.js";

const LIMIT = { maxBytes: 256 * 1024 };
const SENT = new Date("2026-03-01T12:00:00.000Z");
const UNTIL = new Date("2026-03-01T20:00:00.000Z");

describe("message builders", () => {
  it("builds a challenge request that parses back unchanged", () => {
    const message = makeChallengeRequest({
      agentId: "payments.pod-1",
      workload: "payments",
      tee: "sgx",
      sentAt: SENT,
    });
    expect(message).toEqual({
      type: "challenge-request",
      version: 1,
      agentId: "payments.pod-1",
      workload: "payments",
      tee: "sgx",
      sentAt: "2026-03-01T12:00:00.000Z",
    });
    expect(parseMessage(JSON.stringify(message), LIMIT)).toEqual(message);
  });

  it("refuses a challenge request without an agent id or with a property it does not have", () => {
    const fields = { agentId: "payments.pod-1", workload: "payments", tee: "sevsnp" as const, sentAt: SENT };
    const { agentId: _, ...noAgent } = fields;
    expect(() => makeChallengeRequest(noAgent as typeof fields)).toThrow(
      /^invalid challenge-request message: agentId: /,
    );
    expect(() => makeChallengeRequest({ ...fields, agentId: "a/b" })).toThrow(
      /^invalid challenge-request message: agentId: /,
    );
    expect(() => makeChallengeRequest({ ...fields, keys: ["payments-db"] } as typeof fields)).toThrow(
      TypeError,
    );
  });

  it("builds an attestation request that parses back unchanged", () => {
    const challenge = b64url(32);
    const message = makeAttestationRequest({
      agentId: "payments.pod-1",
      requestId: "req-1",
      workload: "payments",
      tee: "sevsnp",
      evidence: sevSnpRawEvidence() as Evidence,
      runtimeData: b64url(300),
      challenge,
      keys: ["payments-db"],
      sentAt: SENT,
    });
    expect(message).toMatchObject({
      type: "attestation-request",
      version: 1,
      challenge,
      sentAt: "2026-03-01T12:00:00.000Z",
    });
    expect(parseMessage(JSON.stringify(message), LIMIT)).toEqual(message);
  });

  it("refuses to build an attestation request that answers no challenge", () => {
    const fields = {
      agentId: "payments.pod-1",
      requestId: "req-1",
      workload: "payments",
      tee: "sevsnp" as const,
      evidence: sevSnpRawEvidence() as Evidence,
      runtimeData: b64url(300),
      challenge: b64url(32),
      keys: ["payments-db"],
      sentAt: SENT,
    };
    const { challenge: _, ...unanswered } = fields;
    expect(() => makeAttestationRequest(unanswered as typeof fields)).toThrow(
      /^invalid attestation-request message: challenge: /,
    );
    expect(() => makeAttestationRequest({ ...fields, challenge: "short" })).toThrow(TypeError);
  });

  it("builds trusted and denied results", () => {
    const key = { name: "payments-db", version: hex(16), releaseResponse: releaseResponse() };
    const trusted = makeAttestationResult({
      agentId: "a-1",
      requestId: "r-1",
      keys: [key],
      attestedUntil: UNTIL,
      sentAt: SENT,
    });
    expect(trusted).toEqual({
      type: "attestation-result",
      version: 1,
      agentId: "a-1",
      requestId: "r-1",
      sentAt: SENT.toISOString(),
      verdict: "trusted",
      keys: [key],
      attestedUntil: UNTIL.toISOString(),
    });
    const denied = makeAttestationResult({
      agentId: "a-1",
      requestId: "r-1",
      verdict: "denied",
      denial: { code: "ERR_APPRAISAL_DENIED", message: "no", violations: [] },
      sentAt: SENT,
    });
    expect(denied).toMatchObject({ verdict: "denied", keys: [], denial: { code: "ERR_APPRAISAL_DENIED" } });
    expect(denied).not.toHaveProperty("attestedUntil");
    expect(parseMessage(denied, LIMIT)).toEqual(denied);
  });

  it("clamps denial text so a denial quoting long claim values can always be sent", () => {
    const error = new ShieldError("ERR_APPRAISAL_DENIED", `policy said no\n${"m".repeat(600)}`, {
      violations: Array.from({ length: 70 }, (_, i) => ({
        field: `claim-${i}\t`,
        expected: "e".repeat(2000),
        actual: "",
      })),
    });
    const denial = denialFromError(error);
    expect(denial.message).toHaveLength(512);
    expect(denial.message.endsWith("…")).toBe(true);
    expect(denial.message).not.toContain("\n");
    expect(denial.violations).toHaveLength(64);
    expect(denial.violations[0]).toEqual({ field: "claim-0 ", expected: `${"e".repeat(1023)}…`, actual: "" });
    const result = makeAttestationResult({
      agentId: "a",
      requestId: "r",
      verdict: "error",
      denial,
      sentAt: SENT,
    });
    expect(parseMessage(result, LIMIT)).toEqual(result);
  });

  it("builds challenge, key-event, policy-update and rotate-key", () => {
    const messages = [
      makeChallenge({ agentId: "a", nonce: b64url(32), deadline: UNTIL, sentAt: SENT }),
      makeKeyEvent({ agentId: "a", event: "revoked", keyName: "k", keyVersion: hex(16), sentAt: SENT }),
      makePolicyUpdate({
        deploymentId: "d-1",
        keys: ["k"],
        add: [{ tee: "sgx", mrenclave: hex(32) }],
        retire: [],
        graceSeconds: 0,
        dryRun: true,
        sentAt: SENT,
      }),
      makeRotateKey({ keyName: "k", reason: "schedule", sourceEventId: "timer:2026-03-01", sentAt: SENT }),
    ];
    for (const message of messages) expect(parseMessage(JSON.stringify(message), LIMIT)).toEqual(message);
  });

  it("treats an invalid message as a caller bug", () => {
    expect(() => makeChallenge({ agentId: "a/b", nonce: b64url(32), deadline: UNTIL, sentAt: SENT })).toThrow(
      /invalid challenge message: agentId/,
    );
    expect(() =>
      makeKeyEvent({
        agentId: "a",
        event: "rotated",
        keyName: "k",
        keyVersion: "v",
        sentAt: new Date(Number.NaN),
      }),
    ).toThrow(TypeError);
    // A key event goes to one agent and is signed for it: it must say which.
    const event = { agentId: "a", event: "rotated" as const, keyName: "k", keyVersion: "v", sentAt: SENT };
    const { agentId: _, ...unaddressed } = event;
    expect(() => makeKeyEvent(unaddressed as typeof event)).toThrow(/^invalid key-event message: agentId: /);
    expect(() =>
      makeAttestationResult({
        agentId: "a",
        requestId: "r",
        keys: [{ name: "k", version: "v", releaseResponse: "x" }],
        attestedUntil: UNTIL,
        sentAt: SENT,
      }),
    ).toThrow(TypeError);
  });
});
