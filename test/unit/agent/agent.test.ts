import { createHash, generateKeyPairSync, randomBytes } from "node:crypto";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { MemoryBus } from "../../../adapters/local/bus/memory.js";
import { createAgent, type Agent, type AgentOptions, type AgentTiming } from "../../../agent/agent.js";
import { createSimulatedProvider } from "../../../agent/evidence/simulated.js";
import type { EvidenceProvider } from "../../../agent/evidence/provider.js";
import { createRuntimeKey, type RuntimeKey } from "../../../agent/runtime-key.js";
import { ShieldError } from "../../../core/errors.js";
import { parseSnpReport } from "../../../core/evidence/sevsnp/index.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../../core/evidence/simulated/sevsnp.js";
import type { ReleaseResponseSigner } from "../../../core/keywrap/index.js";
import { makeChallenge, makeKeyEvent, type AttestationRequest } from "../../../core/messages/index.js";
import type { RequestChannel } from "../../../core/ports/bus.js";
import type { LogFields, LogLevel } from "../../../core/ports/logger.js";
import { FakeVault, makeSigner, startFakeResponder, type FakeResponder, type Script } from "./responder.js";

let platform: SimulatedSnpPlatform;
let runtimeKey: RuntimeKey;
let signer: ReleaseResponseSigner;
let rogue: ReleaseResponseSigner;

beforeAll(async () => {
  platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  runtimeKey = await createRuntimeKey();
  signer = makeSigner();
  rogue = makeSigner("someone else");
});

const FAST: AgentTiming = {
  resultTimeoutMs: 400,
  reattestIntervalMs: 0,
  retryBaseDelayMs: 10,
  retryMaxDelayMs: 50,
  receiveWaitMs: 100,
};

interface Harness {
  readonly agent: Agent;
  readonly bus: MemoryBus;
  readonly vault: FakeVault;
  readonly responder: FakeResponder;
  readonly logs: { level: LogLevel; message: string; fields?: LogFields }[];
  readonly agentId: string;
}

const running: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const close of running.splice(0)) await close();
});

let sequence = 0;
function harness(
  options: {
    script?: Script;
    timing?: AgentTiming;
    keys?: string[];
    provider?: EvidenceProvider;
    requests?: (bus: MemoryBus) => RequestChannel;
  } = {},
): Harness {
  const bus = new MemoryBus();
  const vault = new FakeVault();
  vault.addOct("orders", "v1", randomBytes(32));
  vault.addRsa("ledger", "r1", generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey);
  const responder = startFakeResponder({
    bus,
    vault,
    signer,
    ...(options.script ? { script: options.script } : {}),
  });
  const logs: Harness["logs"] = [];
  const agentId = `agent-${process.pid}-${++sequence}`;
  const agentOptions: AgentOptions = {
    agentId,
    workload: "orders",
    keys: options.keys ?? ["orders", "ledger"],
    provider: options.provider ?? createSimulatedProvider({ platform }),
    runtimeKey,
    requests: options.requests?.(bus) ?? bus,
    inbox: bus.openAgentInbox(agentId),
    releaseSigners: [...signer.certificateChain],
    timing: options.timing ?? FAST,
    logger: (level, message, fields) => logs.push({ level, message, ...(fields ? { fields } : {}) }),
  };
  const agent = createAgent(agentOptions);
  running.push(async () => {
    await agent.stop();
    await responder.stop();
    await bus.close();
  });
  return { agent, bus, vault, responder, logs, agentId };
}

async function until(condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const inState = (agent: Agent, name: string) => () => agent.state().name === name;
const zeroed = (buffer: Buffer) => buffer.every((byte) => byte === 0);

function logText(logs: Harness["logs"]): string {
  return logs.map((line) => JSON.stringify(line)).join("\n");
}

describe("agent: first attestation", () => {
  it("sends evidence bound to its runtime data, unwraps the released keys and holds them in memory", async () => {
    const h = harness();
    await h.agent.start();
    expect(h.agent.state().name).toBe("attesting");
    await until(inState(h.agent, "trusted"));
    const [request] = h.responder.requests as [AttestationRequest];
    expect(request).toMatchObject({
      agentId: h.agentId,
      workload: "orders",
      tee: "sevsnp",
      keys: ["orders", "ledger"],
      runtimeData: runtimeKey.runtimeData.base64url,
    });
    expect(request.challenge).toBeUndefined();
    if (request.evidence.tee !== "sevsnp") throw new Error("sevsnp evidence expected");
    const report = parseSnpReport(Buffer.from(request.evidence.report, "base64url"));
    expect(report.reportData.equals(runtimeKey.runtimeData.reportData)).toBe(true);

    const orders = h.agent.keys.get("orders")!;
    expect(orders).toMatchObject({ version: "v1", kty: "oct-HSM" });
    expect(orders.material.equals(h.vault.current("orders").plaintext)).toBe(true);
    const ledger = h.agent.keys.get("ledger")!;
    expect(ledger).toMatchObject({ version: "r1", kty: "RSA-HSM" });
    expect(ledger.material.equals(h.vault.current("ledger").plaintext)).toBe(true);
    expect(h.agent.status()).toMatchObject({
      state: "trusted",
      runtimeKeyId: runtimeKey.kid,
      keys: [
        { name: "orders", current: "v1", versions: ["v1"] },
        { name: "ledger", current: "r1", versions: ["r1"] },
      ],
    });
    expect(h.agent.status().attestedUntil).toMatch(/^\d{4}-/);
    expect(JSON.stringify(h.agent.status())).not.toContain(orders.material.toString("base64url"));
  });

  it("sends the same request again when no result comes in time, and takes the late answer", async () => {
    const h = harness({
      script: (_request, index) => (index === 0 ? { kind: "drop" } : { kind: "trusted" }),
    });
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    expect(h.responder.requests.length).toBe(2);
    expect(h.responder.requests[1]!.requestId).toBe(h.responder.requests[0]!.requestId);
    expect(
      h.logs.some((l) => l.message === "attestation round retrying" && l.fields?.["code"] === "ERR_TIMEOUT"),
    ).toBe(true);
  });

  it("asks again with a new request and fresh evidence after an `error` result, whatever its code", async () => {
    const codes = ["ERR_UPSTREAM_UNAVAILABLE", "ERR_CONFIG"];
    const h = harness({
      script: (_request, index) =>
        index < codes.length ? { kind: "error", code: codes[index]! } : { kind: "trusted" },
    });
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const ids = h.responder.requests.map((request) => request.requestId);
    expect(ids.length).toBe(3);
    expect(new Set(ids).size).toBe(3);
    expect(h.responder.requests[1]!.evidence).not.toEqual(h.responder.requests[0]!.evidence);
  });

  it("ignores results for other request ids and duplicates of its own", async () => {
    const self: { harness?: Harness } = {};
    const script: Script = async (request) => {
      // First a denial for another request id, then the real answer; a duplicate follows below.
      const { responder, bus } = self.harness!;
      const other = await responder.resultFor(
        { ...request, requestId: "someone-else" },
        { kind: "denied", code: "ERR_APPRAISAL_DENIED" },
      );
      await bus.sendToAgent(request.agentId, other!);
      return { kind: "trusted" };
    };
    const h = (self.harness = harness({ script }));
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const held = h.agent.keys.get("orders")!;
    await h.bus.sendToAgent(h.agentId, h.responder.results[0]!);
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(h.agent.state().name).toBe("trusted");
    expect(h.agent.keys.get("orders")).toBe(held);
    expect(h.logs.filter((l) => l.message === "key installed").length).toBe(2);
  });

  it("retries a transient send failure", async () => {
    let failures = 1;
    const h = harness({
      requests: (bus) => ({
        sendRequest: (request) => {
          if (failures-- > 0) return Promise.reject(new ShieldError("ERR_NETWORK", "connection reset"));
          return bus.sendRequest(request);
        },
      }),
    });
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    expect(h.logs.some((l) => l.fields?.["code"] === "ERR_NETWORK")).toBe(true);
  });

  it("a denial is final: `failed`, nothing held, the code and violations logged", async () => {
    const violations = [{ field: "x-ms-sevsnpvm-hostdata", expected: "aa", actual: "bb" }];
    const h = harness({ script: () => ({ kind: "denied", code: "ERR_APPRAISAL_DENIED", violations }) });
    await h.agent.start();
    await until(inState(h.agent, "failed"));
    expect(h.agent.state().reason).toBe("ERR_APPRAISAL_DENIED");
    expect(h.agent.keys.size).toBe(0);
    const denial = h.logs.find((l) => l.message === "attestation denied")!;
    expect(denial.fields).toMatchObject({ code: "ERR_APPRAISAL_DENIED" });
    expect(JSON.parse(String(denial.fields!["violations"]))).toEqual(violations);
  });

  it("fails closed on a release response from an untrusted signer", async () => {
    const h = harness({ script: () => ({ kind: "trusted", signer: rogue }) });
    await h.agent.start();
    await until(inState(h.agent, "failed"));
    expect(h.agent.state().reason).toBe("ERR_RELEASE_RESPONSE_SIGNATURE");
    expect(h.agent.keys.size).toBe(0);
  });

  it("fails closed when a release response is for another key than the result says", async () => {
    const h = harness({ keys: ["orders"], script: () => ({ kind: "trusted", mislabel: true }) });
    await h.agent.start();
    await until(inState(h.agent, "failed"));
    expect(h.agent.state().reason).toBe("ERR_RELEASE_RESPONSE_MALFORMED");
    expect(h.agent.keys.size).toBe(0);
  });

  it("a permanent evidence failure ends in `failed`", async () => {
    const provider: EvidenceProvider = {
      name: "sevsnp-configfs",
      tee: "sevsnp",
      binding: "report-data",
      probe: () => Promise.resolve({ usable: true }),
      collect: () => Promise.reject(new ShieldError("ERR_EVIDENCE_UNSUPPORTED", "device gone")),
    };
    const h = harness({ provider });
    await h.agent.start();
    await until(inState(h.agent, "failed"));
    expect(h.agent.state().reason).toBe("ERR_EVIDENCE_UNSUPPORTED");
    expect(h.responder.requests).toEqual([]);
  });
});

describe("agent: re-attestation", () => {
  it("answers a challenge with fresh evidence bound to the nonce, once per nonce, and stays trusted", async () => {
    const h = harness();
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const nonce = randomBytes(24).toString("base64url");
    const challenge = makeChallenge({
      agentId: h.agentId,
      nonce,
      deadline: new Date(Date.now() + 60_000),
      sentAt: new Date(),
    });
    await h.bus.sendToAgent(h.agentId, challenge);
    await h.bus.sendToAgent(h.agentId, challenge);
    await until(() => h.responder.requests.length >= 2);
    await until(inState(h.agent, "trusted"));
    await new Promise((resolve) => setTimeout(resolve, 150));
    expect(h.responder.requests.length).toBe(2);
    const answer = h.responder.requests[1]!;
    expect(answer.challenge).toBe(nonce);
    const bound = runtimeKey.bindToNonce(nonce);
    expect(answer.runtimeData).toBe(bound.base64url);
    expect(JSON.parse(bound.bytes.toString("utf8"))).toMatchObject({ nonce, keys: [runtimeKey.publicJwk] });
    if (answer.evidence.tee !== "sevsnp") throw new Error("sevsnp evidence expected");
    const report = parseSnpReport(Buffer.from(answer.evidence.report, "base64url"));
    expect(report.reportData.subarray(0, 32).equals(createHash("sha256").update(bound.bytes).digest())).toBe(
      true,
    );
  });

  it("drops a challenge addressed to another agent", async () => {
    const h = harness();
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const other = makeChallenge({
      agentId: "another-agent",
      nonce: randomBytes(24).toString("base64url"),
      deadline: new Date(Date.now() + 60_000),
      sentAt: new Date(),
    });
    h.bus.enqueueRawAgentMessage(h.agentId, JSON.stringify(other));
    await until(() => h.logs.some((l) => l.message === "challenge for another agent dropped"));
    expect(h.responder.requests.length).toBe(1);
  });

  it("on rotation fetches the new version and serves the previous one until it arrives", async () => {
    let release: (() => void) | undefined;
    const h = harness({
      script: async (_request, index) => {
        if (index === 1) await new Promise<void>((resolve) => (release = resolve));
        return { kind: "trusted" };
      },
    });
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const v2 = h.vault.addOct("orders", "v2", randomBytes(32));
    await h.bus.sendToAgent(
      h.agentId,
      makeKeyEvent({ event: "rotated", keyName: "orders", keyVersion: "v2", sentAt: new Date() }),
    );
    await until(() => release !== undefined);
    expect(h.agent.state().name).toBe("re-attesting");
    expect(h.agent.keys.currentVersion("orders")).toBe("v1");
    release!();
    await until(() => h.agent.keys.currentVersion("orders") === "v2");
    await until(inState(h.agent, "trusted"));
    expect(h.agent.keys.get("orders")!.material.equals(v2.plaintext)).toBe(true);
    expect(h.agent.keys.get("orders", "v1")).toBeDefined();
    // A rotation to a version already held starts nothing.
    await h.bus.sendToAgent(
      h.agentId,
      makeKeyEvent({
        event: "rotated",
        keyName: "orders",
        keyVersion: "v2",
        sentAt: new Date(Date.now() + 1),
      }),
    );
    await until(() => h.logs.some((l) => l.message === "rotation to a version already held"));
    expect(h.responder.requests.length).toBe(2);
  });

  it("a rotation announced during a round is fetched by one more round", async () => {
    let release: (() => void) | undefined;
    const h = harness({
      script: async (_request, index) => {
        if (index === 0) await new Promise<void>((resolve) => (release = resolve));
        return { kind: "trusted" };
      },
    });
    await h.agent.start();
    await until(() => release !== undefined);
    h.vault.addOct("orders", "v2", randomBytes(32));
    await h.bus.sendToAgent(
      h.agentId,
      makeKeyEvent({ event: "rotated", keyName: "orders", keyVersion: "v2", sentAt: new Date() }),
    );
    await until(() => h.logs.some((l) => l.message === "key rotated; fetching the new version"));
    release!();
    await until(() => h.agent.keys.currentVersion("orders") === "v2" && h.agent.state().name === "trusted");
    expect(h.responder.requests.length).toBe(2);
  });

  it("re-attests periodically while trusted", async () => {
    const h = harness({ timing: { ...FAST, reattestIntervalMs: 150 } });
    await h.agent.start();
    await until(() => h.responder.requests.length >= 3);
    expect(h.responder.requests.every((request) => request.challenge === undefined)).toBe(true);
    expect(h.logs.some((l) => l.fields?.["purpose"] === "periodic")).toBe(true);
  });

  it("wipes the keys when its attestation lapses, and attests again from scratch", async () => {
    const h = harness({
      timing: { ...FAST, minAttestedMs: 100 },
      script: (_request, index) =>
        index === 0 ? { kind: "trusted", attestedUntil: new Date(Date.now() + 300) } : { kind: "trusted" },
    });
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const held = h.agent.keys.get("orders")!;
    await until(() => h.responder.requests.length >= 2);
    await until(inState(h.agent, "trusted"));
    expect(zeroed(held.material)).toBe(true);
    expect(h.logs.some((l) => l.message === "keys wiped" && l.fields?.["reason"] === "lapsed")).toBe(true);
    expect(h.agent.keys.get("orders")!.material.equals(h.vault.current("orders").plaintext)).toBe(true);
  });

  it("a denied re-attestation revokes the agent and wipes its keys", async () => {
    const h = harness({
      script: (_request, index) =>
        index === 0 ? { kind: "trusted" } : { kind: "denied", code: "ERR_TOKEN_NONCE" },
    });
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const held = [h.agent.keys.get("orders")!, h.agent.keys.get("ledger")!];
    await h.bus.sendToAgent(
      h.agentId,
      makeChallenge({
        agentId: h.agentId,
        nonce: randomBytes(24).toString("base64url"),
        deadline: new Date(Date.now() + 60_000),
        sentAt: new Date(),
      }),
    );
    await until(inState(h.agent, "revoked"));
    expect(h.agent.state().reason).toBe("ERR_TOKEN_NONCE");
    expect(h.agent.keys.size).toBe(0);
    for (const key of held) expect(zeroed(key.material)).toBe(true);
  });
});

describe("agent: attestedUntil", () => {
  it("asks again, with backoff, when a result vouches for a time already past or about to pass", async () => {
    const h = harness({
      script: (_request, index) =>
        index < 2 ? { kind: "trusted", attestedUntil: new Date(Date.now() - 1_000) } : { kind: "trusted" },
    });
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    await new Promise((resolve) => setTimeout(resolve, 300));
    // One request per answer, each with fresh evidence; no trusted ↔ attesting loop.
    expect(h.responder.requests.length).toBe(3);
    expect(new Set(h.responder.requests.map((request) => request.requestId)).size).toBe(3);
    expect(h.agent.state().name).toBe("trusted");
    expect(h.logs.filter((l) => l.message === "keys wiped").length).toBe(0);
    expect(h.logs.filter((l) => l.message === "attestation round retrying").length).toBe(2);
    expect(new Date(h.agent.status().attestedUntil!).getTime()).toBeGreaterThan(Date.now());
  });

  it("believes attestedUntil for at most maxAttestedMs", async () => {
    const h = harness({
      timing: { ...FAST, maxAttestedMs: 60_000 },
      script: () => ({ kind: "trusted", attestedUntil: new Date(Date.now() + 365 * 86_400_000) }),
    });
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    expect(new Date(h.agent.status().attestedUntil!).getTime()).toBeLessThanOrEqual(Date.now() + 60_000);
  });
});

describe("agent: re-attestation failures", () => {
  it("keeps serving after a failed re-attestation and runs the round again until it succeeds", async () => {
    let collects = 0;
    const simulated = createSimulatedProvider({ platform });
    const provider: EvidenceProvider = {
      ...simulated,
      collect: (input: Buffer) => {
        collects++;
        // The second and third collections fail as after a host TCB update with stale certificates.
        if (collects === 2 || collects === 3) {
          return Promise.reject(new ShieldError("ERR_EVIDENCE_TCB_MISMATCH", "stale endorsements"));
        }
        return simulated.collect(input);
      },
    };
    const h = harness({ provider });
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const held = h.agent.keys.get("orders")!;
    const states: string[] = [];
    h.agent.subscribe((state) => states.push(state.name));
    await h.bus.sendToAgent(
      h.agentId,
      makeChallenge({
        agentId: h.agentId,
        nonce: randomBytes(24).toString("base64url"),
        deadline: new Date(Date.now() + 60_000),
        sentAt: new Date(),
      }),
    );
    await until(() => collects >= 4 && h.agent.state().name === "trusted");
    expect(states).not.toContain("failed");
    expect(h.agent.keys.get("orders")).toBe(held);
    expect(zeroed(held.material)).toBe(false);
    expect(h.logs.filter((l) => l.message === "attestation round will be run again").length).toBe(2);
    // The retried round still answers the challenge.
    expect(h.responder.requests.at(-1)!.challenge).toBeDefined();
  });
});

describe("agent: key versions it must not install", () => {
  it("remembers a revocation of a version it does not hold and refuses a result that brings it", async () => {
    const h = harness({ keys: ["orders"] });
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    h.vault.addOct("orders", "v2", randomBytes(32));
    await h.bus.sendToAgent(
      h.agentId,
      makeKeyEvent({ event: "revoked", keyName: "orders", keyVersion: "v2", sentAt: new Date() }),
    );
    await until(() => h.agent.keys.wasRevoked("orders", "v2"));
    await h.bus.sendToAgent(
      h.agentId,
      makeKeyEvent({
        event: "rotated",
        keyName: "orders",
        keyVersion: "v2",
        sentAt: new Date(Date.now() + 1),
      }),
    );
    await until(() => h.logs.some((l) => l.message === "attestation round will be run again"));
    expect(
      h.logs.some(
        (l) =>
          l.message === "attestation round failed" && l.fields?.["code"] === "ERR_RELEASE_RESPONSE_MALFORMED",
      ),
    ).toBe(true);
    expect(h.agent.keys.currentVersion("orders")).toBe("v1");
    expect(h.agent.keys.get("orders", "v2")).toBeUndefined();
    expect(h.agent.state().name).toBe("re-attesting");
  });

  it("refuses a validly signed result that would move a key back to an older version", async () => {
    const h = harness({ keys: ["orders"] });
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const v1 = h.vault.current("orders");
    for (const version of ["v2", "v3"]) {
      h.vault.addOct("orders", version, randomBytes(32));
      await h.bus.sendToAgent(
        h.agentId,
        makeKeyEvent({ event: "rotated", keyName: "orders", keyVersion: version, sentAt: new Date() }),
      );
      await until(
        () => h.agent.keys.currentVersion("orders") === version && h.agent.state().name === "trusted",
      );
    }
    // Key Vault (or a replay) now hands out v1 again.
    h.vault.keys.get("orders")!.push(v1);
    await h.bus.sendToAgent(
      h.agentId,
      makeChallenge({
        agentId: h.agentId,
        nonce: randomBytes(24).toString("base64url"),
        deadline: new Date(Date.now() + 60_000),
        sentAt: new Date(),
      }),
    );
    await until(() => h.logs.some((l) => l.message === "attestation round will be run again"));
    expect(h.agent.keys.currentVersion("orders")).toBe("v3");
    expect(h.agent.keys.get("orders", "v1")).toBeUndefined();
  });

  it("refuses a result releasing a key that was not requested", async () => {
    const h = harness({
      keys: ["orders"],
      requests: (bus) => ({
        sendRequest: (request) => bus.sendRequest({ ...request, keys: [...request.keys, "ledger"] }),
      }),
    });
    await h.agent.start();
    await until(inState(h.agent, "failed"));
    expect(h.agent.state().reason).toBe("ERR_RELEASE_RESPONSE_MALFORMED");
    expect(h.agent.keys.size).toBe(0);
  });
});

describe("agent: revocation and shutdown", () => {
  it("a revocation of the version being served revokes the agent: every key wiped, nothing answered after", async () => {
    const h = harness();
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const held = [h.agent.keys.get("orders")!, h.agent.keys.get("ledger")!];
    await h.bus.sendToAgent(
      h.agentId,
      makeKeyEvent({ event: "revoked", keyName: "orders", keyVersion: "v1", sentAt: new Date() }),
    );
    await until(inState(h.agent, "revoked"));
    expect(h.agent.keys.size).toBe(0);
    expect(h.agent.keys.summary()).toEqual([]);
    for (const key of held) expect(zeroed(key.material)).toBe(true);
    expect(h.agent.keys.wasRevoked("orders", "v1")).toBe(true);
    // Terminal: a challenge now starts nothing.
    await h.bus.sendToAgent(
      h.agentId,
      makeChallenge({
        agentId: h.agentId,
        nonce: randomBytes(24).toString("base64url"),
        deadline: new Date(Date.now() + 60_000),
        sentAt: new Date(),
      }),
    );
    await until(() => h.logs.some((l) => l.message === "challenge received"));
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(h.responder.requests.length).toBe(1);
    expect(h.agent.state().name).toBe("revoked");
  });

  it("a revocation of an older held version wipes only that version", async () => {
    const h = harness();
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    h.vault.addOct("orders", "v2", randomBytes(32));
    await h.bus.sendToAgent(
      h.agentId,
      makeKeyEvent({ event: "rotated", keyName: "orders", keyVersion: "v2", sentAt: new Date() }),
    );
    await until(() => h.agent.keys.currentVersion("orders") === "v2");
    const old = h.agent.keys.get("orders", "v1")!;
    await h.bus.sendToAgent(
      h.agentId,
      makeKeyEvent({ event: "revoked", keyName: "orders", keyVersion: "v1", sentAt: new Date() }),
    );
    await until(() => h.agent.keys.get("orders", "v1") === undefined);
    expect(zeroed(old.material)).toBe(true);
    expect(h.agent.keys.wasRevoked("orders", "v1")).toBe(true);
    expect(h.agent.state().name).toBe("trusted");
    expect(h.agent.keys.currentVersion("orders")).toBe("v2");
  });

  it("ignores revocations of versions and keys it does not hold", async () => {
    const h = harness();
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    for (const [keyName, keyVersion] of [
      ["orders", "v0"],
      ["payroll", "p1"],
    ] as const) {
      await h.bus.sendToAgent(
        h.agentId,
        makeKeyEvent({ event: "revoked", keyName, keyVersion, sentAt: new Date() }),
      );
    }
    await until(() => h.logs.some((l) => l.message === "key event for a key this agent does not use"));
    expect(h.agent.state().name).toBe("trusted");
    expect(h.agent.keys.size).toBe(2);
  });

  it("refuses malformed inbox messages without acting on them", async () => {
    const h = harness();
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    h.bus.enqueueRawAgentMessage(h.agentId, "{not json");
    h.bus.enqueueRawAgentMessage(h.agentId, JSON.stringify({ type: "key-event", version: 2 }));
    await until(() => h.logs.filter((l) => l.message === "inbox message refused").length === 2);
    const codes = h.logs.filter((l) => l.message === "inbox message refused").map((l) => l.fields?.["code"]);
    expect(codes).toEqual(["ERR_MESSAGE_SCHEMA", "ERR_MESSAGE_VERSION"]);
    expect(h.agent.state().name).toBe("trusted");
  });

  it("stop wipes every key, zeroes the buffers handed out, and ends the inbox loop", async () => {
    const h = harness();
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const held = [h.agent.keys.get("orders")!, h.agent.keys.get("ledger")!];
    const started = Date.now();
    await h.agent.stop();
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(h.agent.state().name).toBe("stopped");
    expect(h.agent.keys.size).toBe(0);
    for (const key of held) expect(zeroed(key.material)).toBe(true);
    await h.agent.stop();
  });

  it("never logs key material, release responses or evidence", async () => {
    const h = harness();
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    await h.agent.stop();
    const text = logText(h.logs);
    for (const [, versions] of h.vault.keys) {
      for (const version of versions) {
        for (const form of ["hex", "base64", "base64url"] as const) {
          expect(text).not.toContain(version.plaintext.toString(form));
        }
      }
    }
    const [request] = h.responder.requests as [AttestationRequest];
    if (request.evidence.tee === "sevsnp") expect(text).not.toContain(request.evidence.report.slice(0, 64));
    for (const result of h.responder.results) {
      if (result.verdict !== "trusted") continue;
      for (const key of result.keys) expect(text).not.toContain(key.releaseResponse.split(".")[2]!);
    }
  });
});

describe("createAgent: misuse", () => {
  it("refuses missing signer trust, keys or ports", () => {
    const bus = new MemoryBus();
    const base = {
      agentId: "a",
      workload: "w",
      keys: ["k"],
      provider: createSimulatedProvider({ platform }),
      runtimeKey,
      requests: bus,
      inbox: bus.openAgentInbox("a"),
      releaseSigners: [...signer.certificateChain],
    };
    expect(() => createAgent({ ...base, releaseSigners: undefined as never })).toThrow(/releaseSigners/);
    expect(() => createAgent({ ...base, keys: [] })).toThrow(TypeError);
    expect(() => createAgent({ ...base, timing: { resultTimeoutMs: 0 } })).toThrow(TypeError);
    expect(() => createAgent(base)).not.toThrow();
  });
});
