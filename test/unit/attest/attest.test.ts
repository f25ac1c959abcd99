/**
 * The attest use case with in-process adapters (the local attestation engine, the local Key
 * Vault engine, the memory state store and bus), where faults can be injected precisely: replays,
 * revoked agents, spoofed agent ids, lost leases, failures after keys were released.
 */
import { randomBytes } from "node:crypto";
import { beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createAttestHandler, type AttestOutcome } from "../../../core/attest/attest.js";
import { ShieldError } from "../../../core/errors.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../../core/evidence/simulated/sevsnp.js";
import {
  makeAttestationRequest,
  type AttestationRequest,
  type AttestationResult,
} from "../../../core/messages/index.js";
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

function handler() {
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
      agents: bus,
      clock,
      logger: () => undefined,
    },
    {
      issuer: ISSUER,
      appraisal: parseAppraisalPolicy({ sevsnpvm: { hostData: [HOST_DATA] } }),
      attestationPeriodSeconds: 3600,
      maxDeliveryCount: 3,
      maxResultBytes: 40_000,
    },
  );
}

let n = 0;
function request(
  fields: { agentId?: string; challenge?: string; keys?: string[]; nonceInRuntime?: boolean } = {},
): AttestationRequest {
  n++;
  const runtime =
    fields.challenge !== undefined && fields.nonceInRuntime !== false
      ? runtimeKey.bindToNonce(fields.challenge)
      : runtimeKey.runtimeData;
  const report = platform.signReport({
    reportData: runtime.reportData.subarray(0, 32),
    hostData: Buffer.from(HOST_DATA, "hex"),
  });
  return makeAttestationRequest({
    agentId: fields.agentId ?? `agent-${n}`,
    requestId: `req-${n}`,
    workload: "w",
    tee: "sevsnp",
    evidence: {
      tee: "sevsnp",
      format: "raw",
      report: report.toString("base64url"),
      vcekChain: platform.leafPem + platform.chainPem,
    },
    runtimeData: runtime.base64url,
    keys: fields.keys ?? ["k1"],
    sentAt: clock.now(),
    ...(fields.challenge === undefined ? {} : { challenge: fields.challenge }),
  });
}

async function answer(agentId: string): Promise<AttestationResult> {
  const inbox = bus.openAgentInbox(agentId);
  const received = await inbox.receive(1000);
  await inbox.close();
  if (received === undefined) throw new Error("no answer");
  return received.body as AttestationResult;
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

beforeEach(() => {
  state = createMemoryStateStore();
  bus = createMemoryBus();
  failOnce = new Set();
});

describe("challenges and standing", () => {
  it("refuses a challenge answer whose runtime data does not carry the nonce (replayed old evidence)", async () => {
    const handle = handler();
    const first = request();
    await handle(first, { messageId: "m1", deliveryCount: 1 });
    expect(code(await answer(first.agentId))).toBe("trusted");
    const challenge = nonce();
    await setChallenge(first.agentId, challenge);
    const before = releases();
    const stale = request({ agentId: first.agentId, challenge, nonceInRuntime: false });
    await handle(stale, { messageId: "m2", deliveryCount: 1 });
    expect(code(await answer(first.agentId))).toBe("ERR_TOKEN_NONCE");
    expect(releases()).toBe(before);
  });

  it("refuses an unchallenged request while a challenge is pending", async () => {
    const handle = handler();
    const agentId = "agent-pending";
    await setChallenge(agentId, nonce());
    await handle(request({ agentId }), { messageId: "m", deliveryCount: 1 });
    expect(code(await answer(agentId))).toBe("ERR_TOKEN_NONCE");
  });

  it("releases nothing to a revoked agent, even for evidence that once passed", async () => {
    const handle = handler();
    const first = request();
    await handle(first, { messageId: "m1", deliveryCount: 1 });
    expect(code(await answer(first.agentId))).toBe("trusted");
    await changeAgent(state, first.agentId, (current) => ({
      ...current!,
      status: "revoked",
      statusReason: "ERR_POLICY_DENIED",
      updatedAt: clock.now(),
    }));
    const before = releases();
    await handle({ ...first, requestId: "replay-1" }, { messageId: "m2", deliveryCount: 1 });
    expect(code(await answer(first.agentId))).toBe("ERR_AGENT_REVOKED");
    expect(releases()).toBe(before);
    expect((await state.getAgent(first.agentId))?.status).toBe("revoked");
  });

  it("does not let a request naming someone else's agent id change that agent's standing", async () => {
    const handle = handler();
    const victim = request();
    await handle(victim, { messageId: "m1", deliveryCount: 1 });
    expect(code(await answer(victim.agentId))).toBe("trusted");
    const spoof = request({ agentId: victim.agentId, challenge: nonce() });
    await handle(spoof, { messageId: "m2", deliveryCount: 1 });
    expect(code(await answer(victim.agentId))).toBe("ERR_TOKEN_NONCE");
    expect((await state.getAgent(victim.agentId))?.status).toBe("trusted");
  });

  it("uses a challenge once, but lets the same request finish after a transient failure", async () => {
    const handle = handler();
    const first = request();
    await handle(first, { messageId: "m1", deliveryCount: 1 });
    await answer(first.agentId);
    const challenge = nonce();
    await setChallenge(first.agentId, challenge);
    const reply = request({ agentId: first.agentId, challenge, keys: ["k1"] });
    failOnce.add("recordAttestation"); // after the nonce is consumed and the key released
    const retried = await handle(reply, { messageId: "m2", deliveryCount: 1 });
    expect(retried.settlement.action).toBe("retry");
    await handle(reply, { messageId: "m2", deliveryCount: 2 });
    expect(code(await answer(first.agentId))).toBe("trusted");
    const other = request({ agentId: first.agentId, challenge, keys: ["k1"] });
    await handle(other, { messageId: "m3", deliveryCount: 1 });
    expect(code(await answer(first.agentId))).toBe("ERR_TOKEN_NONCE");
  });
});

describe("settlement and idempotency", () => {
  it("does not release again when the records fail after the answer was stored", async () => {
    const handle = handler();
    const message = request({ keys: ["k1", "k2"] });
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
    const message = request();
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

  it("treats a missing key as the operator's error: no denial of the agent, the released key on record", async () => {
    const handle = handler();
    const message = request({ keys: ["k1", "no-such-key"] });
    const before = releases();
    await handle(message, { messageId: "m", deliveryCount: 1 });
    const result = await answer(message.agentId);
    expect(result.verdict).toBe("error");
    expect(code(result)).toBe("ERR_CONFIG");
    expect(releases() - before).toBe(2);
    expect((await state.getAgent(message.agentId))?.status).toBeUndefined();
    const audit = await state.listAudit("key-k1");
    expect(audit.map((e) => e.kind)).toContain("key-release-discarded");
  });

  it("refuses more keys than one answer can carry before releasing any", async () => {
    const handle = handler();
    const message = request({ keys: ["k1", "k2", "k3", "k4", "k5", "k6"] });
    const before = releases();
    await handle(message, { messageId: "m", deliveryCount: 1 });
    expect(code(await answer(message.agentId))).toBe("ERR_INPUT_TOO_LARGE");
    expect(releases()).toBe(before);
  });
});
