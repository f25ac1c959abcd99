/**
 * The attest use case with in-process adapters (the local attestation engine, the local Key
 * Vault engine, the memory state store and bus), where faults can be injected precisely: replays,
 * revoked agents, spoofed agent ids, lost leases, failures after keys were released.
 */
import { randomBytes } from "node:crypto";
import { beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createAttestHandler, type AttestOutcome } from "../../../core/attest/attest.js";
import { createChallengeIssuer } from "../../../core/attest/challenge.js";
import { ShieldError } from "../../../core/errors.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../../core/evidence/simulated/sevsnp.js";
import {
  makeAttestationRequest,
  makeChallengeRequest,
  requestBinding,
  requestDigest,
  type AttestationRequest,
  type AttestationResult,
} from "../../../core/messages/index.js";
import { verifyControlMessage } from "../../../core/control/signed.js";
import { parseReleaseResponse } from "../../../core/keywrap/index.js";
import { systemRandom } from "../../../core/ports/clock.js";
import type { AgentMessage } from "../../../core/ports/bus.js";
import { createTestControlPlane, type TestControlPlane } from "../../support/control.js";
import { fixedClock } from "../../../core/ports/clock.js";
import type { StateStore } from "../../../core/ports/state.js";
import { parseAppraisalPolicy } from "../../../core/appraisal/index.js";
import { renderReleasePolicy } from "../../../core/policy/index.js";
import { changeAgent } from "../../../core/state/agents.js";
import { createMaaTokenIssuer, staticSigningKeys, type MaaTokenIssuer } from "../../../core/token/index.js";
import { createLocalAttestationEngine } from "../../../adapters/local/maa/engine.js";
import { createLocalKeyVault, type LocalKeyVault } from "../../../adapters/local/keyvault/engine.js";
import { createLocalKeyStore } from "../../../adapters/local/keyvault/key-store.js";
import { createMemoryStateStore } from "../../../adapters/state/memory.js";
import { createMemoryBus, type MemoryBus } from "../../../adapters/local/bus/memory.js";
import { createRuntimeKey, type RuntimeKey } from "../../../agent/runtime-key.js";

const ISSUER = "https://maa.test";
const HOST_DATA = "3c".repeat(32);
const clock = fixedClock(new Date("2026-06-01T00:00:00Z"));

let platform: SimulatedSnpPlatform;
let issuer: MaaTokenIssuer;
let runtimeKey: RuntimeKey;
let vault: LocalKeyVault;
let state: StateStore;
let bus: MemoryBus;
let control: TestControlPlane;
/** Calls to these state methods fail once with a transient error, in order. */
let failOnce: Set<string>;

beforeAll(async () => {
  platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  issuer = await createMaaTokenIssuer({ issuer: ISSUER });
  runtimeKey = await createRuntimeKey();
  vault = await createLocalKeyVault({
    vaultUrl: "https://vault.test",
    masterKey: randomBytes(32),
    clock,
    tokenKeys: (iss) => {
      if (iss !== ISSUER) throw new ShieldError("ERR_TOKEN_ISSUER", "unknown issuer");
      return staticSigningKeys(issuer.certsDocument());
    },
  });
  const releasePolicy = renderReleasePolicy({
    authority: ISSUER,
    measurements: { sevsnpvm: { hostData: [HOST_DATA] } },
  });
  for (const name of ["k1", "k2"]) {
    await createLocalKeyStore(vault).createKey(name, { keyType: "oct-HSM", keySize: 256, releasePolicy });
  }
});

function handler(options: { replayWindowSeconds?: number } = {}) {
  const engine = createLocalAttestationEngine({
    issuer,
    snpTrustedRoots: [platform.ark],
    sgxTrustedRoots: [],
    clock,
  });
  const faulty = new Proxy(state, {
    get(target, property, receiver) {
      const value: unknown = Reflect.get(target, property, receiver);
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        if (failOnce.delete(String(property))) {
          return Promise.reject(
            new ShieldError("ERR_UPSTREAM_UNAVAILABLE", `injected ${String(property)} failure`),
          );
        }
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  return createAttestHandler(
    {
      attestation: engine,
      keys: createLocalKeyStore(vault),
      tokenKeys: staticSigningKeys(issuer.certsDocument()),
      state: faulty,
      agents: control.channel(bus, clock),
      clock,
      random: systemRandom,
      logger: () => undefined,
    },
    {
      issuer: ISSUER,
      appraisal: parseAppraisalPolicy({ sevsnpvm: { hostData: [HOST_DATA] } }),
      attestationPeriodSeconds: 3600,
      maxDeliveryCount: 3,
      maxResultBytes: 40_000,
      ...(options.replayWindowSeconds === undefined
        ? {}
        : { replayWindowSeconds: options.replayWindowSeconds }),
    },
  );
}

type Handle = ReturnType<typeof handler>;

let n = 0;
/** An attestation request answering `challenge`, with evidence bound to it (or, to attack, not). */
function request(fields: {
  agentId: string;
  challenge: string;
  keys?: string[];
  /** The nonce the runtime data (and so the hardware report) carries; default `challenge`. */
  boundNonce?: string | null;
}): AttestationRequest {
  n++;
  const requestId = `req-${n}`;
  const keys = fields.keys ?? ["k1"];
  const bound = fields.boundNonce === undefined ? fields.challenge : fields.boundNonce;
  const binding = requestBinding({ agentId: fields.agentId, requestId, workload: "w", tee: "sevsnp", keys });
  const runtime = bound === null ? runtimeKey.runtimeData : runtimeKey.bindToNonce(bound, binding);
  const report = platform.signReport({
    reportData: runtime.reportData.subarray(0, 32),
    hostData: Buffer.from(HOST_DATA, "hex"),
  });
  return makeAttestationRequest({
    agentId: fields.agentId,
    requestId,
    workload: "w",
    tee: "sevsnp",
    evidence: {
      tee: "sevsnp",
      format: "raw",
      report: report.toString("base64url"),
      vcekChain: platform.leafPem + platform.chainPem,
    },
    runtimeData: runtime.base64url,
    keys,
    sentAt: clock.now(),
    challenge: fields.challenge,
  });
}

/** The next message to the agent, verified as the agent verifies it (undefined: none came). */
async function next(agentId: string): Promise<AgentMessage | undefined> {
  const inbox = bus.openAgentInbox(agentId);
  const received = await inbox.receive(200);
  await inbox.close();
  if (received === undefined) return undefined;
  const verified = await verifyControlMessage(received.body, {
    keys: control.keys,
    agentId,
    at: clock.now(),
  });
  return verified.message;
}

async function answer(agentId: string): Promise<AttestationResult> {
  const message = await next(agentId);
  if (message?.type !== "attestation-result") throw new Error(`no result for ${agentId}`);
  return message;
}

/** The protocol's first half: a challenge-request, answered with a signed challenge. */
async function challengeFor(handle: Handle, agentId: string): Promise<string> {
  const outcome = await handle(
    makeChallengeRequest({ agentId, workload: "w", tee: "sevsnp", sentAt: clock.now() }),
    {
      messageId: `c-${agentId}-${n}`,
      deliveryCount: 1,
    },
  );
  expect(outcome).toMatchObject({ challenged: true, settlement: { action: "complete" } });
  const message = await next(agentId);
  if (message?.type !== "challenge") throw new Error(`no challenge for ${agentId}`);
  return message.nonce;
}

/** A whole attestation: challenge, then evidence bound to it. */
async function attestFully(handle: Handle, agentId: string, keys = ["k1"]): Promise<AttestationResult> {
  const challenge = await challengeFor(handle, agentId);
  await handle(request({ agentId, challenge, keys }), { messageId: `m-${n}`, deliveryCount: 1 });
  return answer(agentId);
}

async function setChallenge(agentId: string, nonce: string, deadlineMs = 60_000): Promise<void> {
  await changeAgent(state, agentId, (current) => ({
    ...(current ?? { agentId, workload: "w", tee: "sevsnp" as const, status: "trusted" as const }),
    challenge: { nonce, issuedAt: clock.now(), deadline: new Date(clock.now().getTime() + deadlineMs) },
    updatedAt: clock.now(),
  }));
}

const releases = () => vault.stats().calls;
const nonce = () => randomBytes(24).toString("base64url");
const code = (r: AttestationResult) => (r.verdict === "trusted" ? "trusted" : r.denial.code);

beforeAll(() => {
  control = createTestControlPlane();
});

beforeEach(() => {
  state = createMemoryStateStore();
  bus = createMemoryBus();
  failOnce = new Set();
});

describe("challenges: every release answers a fresh nonce issued to that agent", () => {
  it("answers a challenge-request with a signed challenge of 32 random bytes, recorded before it is sent", async () => {
    const handle = handler();
    const challenge = await challengeFor(handle, "agent-new");
    expect(Buffer.from(challenge, "base64url")).toHaveLength(32);
    const agent = await state.getAgent("agent-new");
    expect(agent).toMatchObject({ status: "new", challenge: { nonce: challenge } });
    expect(agent?.challenge?.deadline.getTime()).toBe(clock.now().getTime() + 300_000);
  });

  it("sends the open challenge again instead of replacing it, and a new one once it is used", async () => {
    const handle = handler();
    const first = await challengeFor(handle, "agent-a");
    // Asked again at once: nothing is signed or sent (an agent asks again only after a timeout).
    const signatures = control.signer.signatures;
    await handle(
      makeChallengeRequest({ agentId: "agent-a", workload: "w", tee: "sevsnp", sentAt: clock.now() }),
      {
        messageId: "again",
        deliveryCount: 1,
      },
    );
    expect(await next("agent-a")).toBeUndefined();
    expect(control.signer.signatures).toBe(signatures);
    // Later: the same open challenge again, not a new one.
    clock.advance(11_000);
    expect(await challengeFor(handle, "agent-a")).toBe(first);
    await handle(request({ agentId: "agent-a", challenge: first }), { messageId: "m", deliveryCount: 1 });
    expect(code(await answer("agent-a"))).toBe("trusted");
    const second = await challengeFor(handle, "agent-a");
    expect(second).not.toBe(first);
  });

  it("sends the challenge whose write landed though its answer was lost (the resent write met it as a conflict)", async () => {
    const handle = handler();
    // The table store's view of a create sent twice: the first landed, the second got a 409.
    const create = state.createAgent.bind(state);
    let lost = 0;
    state.createAgent = async (agent) => {
      const written = await create(agent);
      if (lost++ === 0)
        throw new ShieldError("ERR_CONFLICT", `agent ${agent.agentId} was changed concurrently`);
      return written;
    };
    const nonceSent = await challengeFor(handle, "agent-lost-answer");
    expect(lost).toBe(1);
    expect((await state.getAgent("agent-lost-answer"))?.challenge?.nonce).toBe(nonceSent);
  });

  it("marks a challenge-request's answer as requested, and sends none while the open one is being answered", async () => {
    const handle = handler();
    await handle(
      makeChallengeRequest({ agentId: "agent-s", workload: "w", tee: "sevsnp", sentAt: clock.now() }),
      {
        messageId: "c1",
        deliveryCount: 1,
      },
    );
    const sent = await next("agent-s");
    expect(sent).toMatchObject({ type: "challenge", reason: "requested" });
    // Its nonce consumed, the answer not yet recorded: someone asks in the agent's name.
    const challenge = sent?.type === "challenge" ? sent.nonce : "";
    await changeAgent(state, "agent-s", (current) => ({
      ...current!,
      challenge: { ...current!.challenge!, answeredBy: "req-in-flight" },
      updatedAt: clock.now(),
    }));
    const signaturesBefore = control.signer.signatures;
    const outcome = await handle(
      makeChallengeRequest({ agentId: "agent-s", workload: "w", tee: "sevsnp", sentAt: clock.now() }),
      { messageId: "c2", deliveryCount: 1 },
    );
    expect(outcome.settlement.action).toBe("complete");
    expect(await next("agent-s")).toBeUndefined();
    expect(control.signer.signatures).toBe(signaturesBefore);
    expect((await state.getAgent("agent-s"))?.challenge?.nonce).toBe(challenge);
  });

  it("signs two messages per attestation (challenge, result), and Key Vault sees the nonce", async () => {
    const handle = handler();
    const before = control.signer.signatures;
    const releasesBefore = releases();
    const challenge = await challengeFor(handle, "agent-count");
    await handle(request({ agentId: "agent-count", challenge, keys: ["k1", "k2"] }), {
      messageId: "m",
      deliveryCount: 1,
    });
    const result = await answer("agent-count");
    expect(control.signer.signatures - before).toBe(2);
    expect(releases() - releasesBefore).toBe(2);
    if (result.verdict !== "trusted") throw new Error("not trusted");
    for (const key of result.keys) {
      // The challenge nonce went to Key Vault as the release nonce, and Key Vault signed it back.
      expect(parseReleaseResponse(key.releaseResponse).nonce).toBe(challenge);
    }
  });

  it("refuses a request captured once and replayed under a new agent id, at any time, with no release", async () => {
    const handle = handler();
    const challenge = await challengeFor(handle, "agent-victim");
    const captured = request({ agentId: "agent-victim", challenge });
    await handle(captured, { messageId: "m1", deliveryCount: 1 });
    expect(code(await answer("agent-victim"))).toBe("trusted");
    for (const laterMs of [0, 45 * 24 * 3600_000]) {
      clock.advance(laterMs);
      const before = releases();
      const thief = `agent-thief-${laterMs}`;
      // Without a challenge of its own, and with one: neither is the nonce the evidence binds.
      await handle(
        { ...captured, agentId: thief, requestId: `copy-${laterMs}` },
        { messageId: "m2", deliveryCount: 1 },
      );
      expect(code(await answer(thief))).toBe("ERR_CHALLENGE_UNKNOWN");
      const own = await challengeFor(handle, thief);
      await handle(
        { ...captured, agentId: thief, requestId: `copy2-${laterMs}`, challenge: own },
        {
          messageId: "m3",
          deliveryCount: 1,
        },
      );
      expect(code(await answer(thief))).toBe("ERR_CHALLENGE_MISMATCH");
      expect(releases()).toBe(before);
      expect((await state.getAgent(thief))?.status).toBe("new");
    }
  });

  it("refuses a replay of an answered request under the same agent id once the replay window passed, sending nothing", async () => {
    const handle = handler({ replayWindowSeconds: 600 });
    const challenge = await challengeFor(handle, "agent-r");
    const original = request({ agentId: "agent-r", challenge });
    await handle(original, { messageId: "m1", deliveryCount: 1 });
    expect(code(await answer("agent-r"))).toBe("trusted");
    // Within the window: a redelivery, answered again from the record without a release.
    const before = releases();
    expect(await handle(original, { messageId: "m1", deliveryCount: 2 })).toMatchObject({ replayed: true });
    expect(code(await answer("agent-r"))).toBe("trusted");
    clock.advance(601_000);
    const late = await handle(original, { messageId: "m9", deliveryCount: 1 });
    expect(late).toMatchObject({ verdict: "denied", settlement: { action: "complete" } });
    expect(await next("agent-r")).toBeUndefined();
    expect(releases()).toBe(before);
    const audit = await state.listAudit("agent-agent-r");
    expect(audit.map((e) => e.kind)).toContain("request-replayed");
  });

  it("binds every answer to the request's digest, so a doctored copy under the agent's request id steers nothing", async () => {
    const handle = handler();
    expect(code(await attestFully(handle, "agent-d"))).toBe("trusted");
    const challenge = await challengeFor(handle, "agent-d");
    const genuine = request({ agentId: "agent-d", challenge });
    // Seen on the bus and copied first, with evidence the attacker made up (another report).
    const other = platform.signReport({
      reportData: Buffer.alloc(32, 9),
      hostData: Buffer.from(HOST_DATA, "hex"),
    });
    const doctored: AttestationRequest = {
      ...genuine,
      evidence: {
        ...genuine.evidence,
        report: other.toString("base64url"),
      } as AttestationRequest["evidence"],
    };
    const before = releases();
    await handle(doctored, { messageId: "evil", deliveryCount: 1 });
    const denial = await answer("agent-d");
    expect(denial.verdict).toBe("denied");
    // The control plane signed a denial, but for the doctored request: the agent's digest differs.
    expect(denial.requestDigest).toBe(requestDigest(doctored));
    expect(denial.requestDigest).not.toBe(requestDigest(genuine));
    // The genuine request under the now-used id: a freshness refusal bound to it, not a verdict.
    await handle(genuine, { messageId: "good", deliveryCount: 1 });
    const refused = await answer("agent-d");
    expect(refused).toMatchObject({ verdict: "denied", requestDigest: requestDigest(genuine) });
    expect(code(refused)).toBe("ERR_REQUEST_REPLAYED");
    expect(releases()).toBe(before);
    expect((await state.getAgent("agent-d"))?.status).toBe("trusted");
  });

  it("refuses the agent's own evidence sent with other fields (workload, keys, request id) before anything is attested", async () => {
    const handle = handler();
    expect(code(await attestFully(handle, "agent-f"))).toBe("trusted");
    const challenge = await challengeFor(handle, "agent-f");
    const before = releases();
    const standing = await state.getAgent("agent-f");
    const doctor: ((r: AttestationRequest) => AttestationRequest)[] = [
      (r) => ({ ...r, workload: "attacker-chosen" }),
      (r) => ({ ...r, keys: ["k1", "k2"] }),
      (r) => ({ ...r, requestId: `${r.requestId}-copy` }),
      (r) => ({ ...r, keys: ["k2"] }),
    ];
    for (const [i, change] of doctor.entries()) {
      // Each copy takes the evidence of a request the agent really made (seen on the bus).
      await handle(change(request({ agentId: "agent-f", challenge })), {
        messageId: `copy-${i}`,
        deliveryCount: 1,
      });
      expect(code(await answer("agent-f"))).toBe("ERR_EVIDENCE_BINDING");
    }
    expect(releases()).toBe(before);
    // Nothing was consumed or rewritten: the agent's own request still goes through.
    const after = await state.getAgent("agent-f");
    expect(after?.workload).toBe(standing?.workload);
    expect(after?.challenge).toEqual(standing?.challenge);
    await handle(request({ agentId: "agent-f", challenge }), { messageId: "genuine", deliveryCount: 1 });
    expect(code(await answer("agent-f"))).toBe("trusted");
  });

  it("refuses a request without a challenge field: the schema requires one", async () => {
    const handle = handler();
    const challenge = await challengeFor(handle, "agent-x");
    const { challenge: _dropped, ...unchallenged } = request({ agentId: "agent-x", challenge });
    const before = releases();
    const outcome = await handle(unchallenged, { messageId: "m", deliveryCount: 1 });
    expect(outcome.verdict).toBe("denied");
    expect(code(await answer("agent-x"))).toBe("ERR_MESSAGE_SCHEMA");
    expect(releases()).toBe(before);
  });

  it("refuses a request whose challenge field is bogus while its runtime data carries the real nonce", async () => {
    const handle = handler();
    const real = await challengeFor(handle, "agent-b");
    const before = releases();
    await handle(request({ agentId: "agent-b", challenge: nonce(), boundNonce: real }), {
      messageId: "m",
      deliveryCount: 1,
    });
    expect(code(await answer("agent-b"))).toBe("ERR_CHALLENGE_UNKNOWN");
    expect(releases()).toBe(before);
    // The real nonce is still open: the agent's own answer goes through.
    await handle(request({ agentId: "agent-b", challenge: real }), { messageId: "m2", deliveryCount: 1 });
    expect(code(await answer("agent-b"))).toBe("trusted");
  });

  it("refuses a challenge answer whose runtime data does not carry the nonce (replayed old evidence)", async () => {
    const handle = handler();
    const challenge = await challengeFor(handle, "agent-c");
    const before = releases();
    await handle(request({ agentId: "agent-c", challenge, boundNonce: null }), {
      messageId: "m",
      deliveryCount: 1,
    });
    expect(code(await answer("agent-c"))).toBe("ERR_CHALLENGE_MISMATCH");
    expect(releases()).toBe(before);
  });

  it("refuses an answer after the deadline", async () => {
    const handle = handler();
    const challenge = await challengeFor(handle, "agent-late");
    clock.advance(301_000);
    const before = releases();
    await handle(request({ agentId: "agent-late", challenge }), { messageId: "m", deliveryCount: 1 });
    expect(code(await answer("agent-late"))).toBe("ERR_CHALLENGE_EXPIRED");
    expect(releases()).toBe(before);
  });

  it("releases nothing to a revoked agent, even for evidence that once passed", async () => {
    const handle = handler();
    expect(code(await attestFully(handle, "agent-rev"))).toBe("trusted");
    await changeAgent(state, "agent-rev", (current) => ({
      ...current!,
      status: "revoked",
      statusReason: "ERR_POLICY_DENIED",
      updatedAt: clock.now(),
    }));
    const before = releases();
    expect(code(await attestFully(handle, "agent-rev"))).toBe("ERR_AGENT_REVOKED");
    expect(releases()).toBe(before);
    expect((await state.getAgent("agent-rev"))?.status).toBe("revoked");
  });

  it("does not let a request naming someone else's agent id change that agent's standing", async () => {
    const handle = handler();
    expect(code(await attestFully(handle, "agent-v"))).toBe("trusted");
    const spoof = request({ agentId: "agent-v", challenge: nonce() });
    await handle(spoof, { messageId: "m2", deliveryCount: 1 });
    expect(code(await answer("agent-v"))).toBe("ERR_CHALLENGE_UNKNOWN");
    expect((await state.getAgent("agent-v"))?.status).toBe("trusted");
  });

  it("uses a challenge once, but lets the same request finish after a transient failure", async () => {
    const handle = handler();
    const challenge = await challengeFor(handle, "agent-once");
    const reply = request({ agentId: "agent-once", challenge, keys: ["k1"] });
    failOnce.add("recordAttestation"); // after the nonce is consumed and the key released
    const retried = await handle(reply, { messageId: "m2", deliveryCount: 1 });
    expect(retried.settlement.action).toBe("retry");
    // Another request answering the consumed nonce, before the first finished.
    const other = request({ agentId: "agent-once", challenge, keys: ["k1"] });
    await handle(other, { messageId: "m3", deliveryCount: 1 });
    expect(code(await answer("agent-once"))).toBe("ERR_CHALLENGE_USED");
    await handle(reply, { messageId: "m2", deliveryCount: 2 });
    expect(code(await answer("agent-once"))).toBe("trusted");
    // Once answered, the nonce is gone from the record altogether.
    const third = request({ agentId: "agent-once", challenge, keys: ["k1"] });
    await handle(third, { messageId: "m4", deliveryCount: 1 });
    expect(code(await answer("agent-once"))).toBe("ERR_CHALLENGE_UNKNOWN");
  });

  it("uses setChallenge's record as the re-attestation timer writes it", async () => {
    const handle = handler();
    const challenge = nonce();
    await setChallenge("agent-timer", challenge);
    await handle(request({ agentId: "agent-timer", challenge }), { messageId: "m", deliveryCount: 1 });
    expect(code(await answer("agent-timer"))).toBe("trusted");
  });
});

describe("challenges the re-attestation timer issues", () => {
  it("records why a challenge was issued, and turns an open requested one into a reattest at once", async () => {
    const handle = handler();
    const issuer = createChallengeIssuer(
      { state, agents: control.channel(bus, clock), clock, random: systemRandom, logger: () => undefined },
      {},
    );
    const asked = await challengeFor(handle, "agent-t");
    expect((await state.getAgent("agent-t"))?.challenge).toMatchObject({ nonce: asked, reason: "requested" });
    // Within the resend interval, yet a reason upgrade is sent: the agent must know to answer it.
    const reattest = await issuer.issue({ agentId: "agent-t", workload: "w", tee: "sevsnp" }, "reattest");
    expect(reattest).toMatchObject({ nonce: asked, reused: true });
    expect(await next("agent-t")).toMatchObject({ type: "challenge", nonce: asked, reason: "reattest" });
    expect((await state.getAgent("agent-t"))?.challenge).toMatchObject({ reason: "reattest" });
  });
});

describe("settlement and idempotency", () => {
  it("does not release again when the records fail after the answer was stored", async () => {
    const handle = handler();
    const message = request({
      agentId: "agent-i1",
      challenge: await challengeFor(handler(), "agent-i1"),
      keys: ["k1", "k2"],
    });
    const before = releases();
    failOnce.add("appendAudit");
    const first = await handle(message, { messageId: "m", deliveryCount: 1 });
    expect(first.settlement.action).toBe("retry");
    const second = await handle(message, { messageId: "m", deliveryCount: 2 });
    expect(second).toMatchObject({ replayed: true, verdict: "trusted" });
    expect(releases() - before).toBe(2);
    const holdings = await state.listHoldingsByAgent(message.agentId);
    expect(holdings.map((h) => h.keyName).sort()).toEqual(["k1", "k2"]);
    expect((await state.getAgent(message.agentId))?.status).toBe("trusted");
  });

  it("answers and dead-letters on the last delivery when another invocation holds the request", async () => {
    const handle = handler();
    const message = request({ agentId: "agent-i2", challenge: await challengeFor(handler(), "agent-i2") });
    await state.claimRequest(
      { scope: message.agentId, requestId: message.requestId },
      { at: clock.now(), leaseUntil: new Date(clock.now().getTime() + 600_000) },
    );
    const early: AttestOutcome = await handle(message, { messageId: "m", deliveryCount: 1 });
    expect(early.settlement.action).toBe("retry");
    const last = await handle(message, { messageId: "m", deliveryCount: 3 });
    expect(last.settlement.action).toBe("dead-letter");
    expect(code(await answer(message.agentId))).toBe("ERR_CONFLICT");
  });

  it("closes a challenge whose answer was refused after its nonce was used, so the agent can ask at once", async () => {
    const handle = handler();
    const challenge = await challengeFor(handle, "agent-late-refusal");
    // Past freshness, MAA and appraisal (nonce consumed), then Key Vault has no such key.
    await handle(request({ agentId: "agent-late-refusal", challenge, keys: ["k1", "no-such-key"] }), {
      messageId: "m",
      deliveryCount: 1,
    });
    expect(code(await answer("agent-late-refusal"))).toBe("ERR_CONFIG");
    expect((await state.getAgent("agent-late-refusal"))?.challenge).toBeUndefined();
    const next = await challengeFor(handle, "agent-late-refusal");
    expect(next).not.toBe(challenge);
  });

  it("treats a missing key as the operator's error: no denial of the agent, the released key on record", async () => {
    const handle = handler();
    const message = request({
      agentId: "agent-i3",
      challenge: await challengeFor(handler(), "agent-i3"),
      keys: ["k1", "no-such-key"],
    });
    const before = releases();
    await handle(message, { messageId: "m", deliveryCount: 1 });
    const result = await answer(message.agentId);
    expect(result.verdict).toBe("error");
    expect(code(result)).toBe("ERR_CONFIG");
    expect(releases() - before).toBe(2);
    expect((await state.getAgent(message.agentId))?.status).toBe("new");
    const audit = await state.listAudit("key-k1");
    expect(audit.map((e) => e.kind)).toContain("key-release-discarded");
  });

  it("refuses more keys than one answer can carry before releasing any", async () => {
    const handle = handler();
    const message = request({
      agentId: "agent-i4",
      challenge: await challengeFor(handler(), "agent-i4"),
      keys: ["k1", "k2", "k3", "k4", "k5", "k6"],
    });
    const before = releases();
    await handle(message, { messageId: "m", deliveryCount: 1 });
    expect(code(await answer(message.agentId))).toBe("ERR_INPUT_TOO_LARGE");
    expect(releases()).toBe(before);
  });
});
