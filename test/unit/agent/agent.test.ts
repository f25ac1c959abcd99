import { createHash, createHmac, generateKeyPairSync, randomBytes, randomUUID } from "node:crypto";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { MemoryBus } from "../../../adapters/local/bus/memory.js";
import { createAgent, type Agent, type AgentOptions, type AgentTiming } from "../../../agent/agent.js";
import { createSimulatedProvider } from "../../../agent/evidence/simulated.js";
import type { EvidenceProvider } from "../../../agent/evidence/provider.js";
import { createRuntimeKey, type RuntimeKey } from "../../../agent/runtime-key.js";
import { CONTROL_JWS_TYPE, signControlMessage } from "../../../core/control/signed.js";
import { ShieldError } from "../../../core/errors.js";
import { parseSnpReport } from "../../../core/evidence/sevsnp/index.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../../core/evidence/simulated/sevsnp.js";
import { parseReleaseResponse, type ReleaseResponseSigner } from "../../../core/keywrap/index.js";
import {
  makeChallenge,
  makeKeyEvent,
  type AttestationRequest,
  type Challenge,
  type KeyEvent,
  requestBinding,
  type ChallengeRequest,
} from "../../../core/messages/index.js";
import type { RequestChannel } from "../../../core/ports/bus.js";
import type { LogFields, LogLevel } from "../../../core/ports/logger.js";
import { createTestControlPlane, type TestControlPlane } from "../../support/control.js";
import {
  FAKE_VAULT,
  FakeVault,
  makeSigner,
  startFakeResponder,
  type FakeResponder,
  type Script,
} from "./responder.js";

let platform: SimulatedSnpPlatform;
let runtimeKey: RuntimeKey;
let signer: ReleaseResponseSigner;
let rogue: ReleaseResponseSigner;
/** The control plane the agents pin. */
let control: TestControlPlane;
/** Another key under the pinned key id, and a key under a key id nobody pins. */
let impostor: TestControlPlane;
let unpinned: TestControlPlane;

beforeAll(async () => {
  platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  runtimeKey = await createRuntimeKey();
  signer = makeSigner();
  rogue = makeSigner("someone else");
  control = createTestControlPlane();
  impostor = createTestControlPlane(control.signer.keyId);
  unpinned = createTestControlPlane("https://attacker.vault.azure.net/keys/control/fedcba9876543210");
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
  /** Signs a key event for this agent with the pinned control plane and sends it. */
  keyEvent(event: KeyEvent["event"], keyName: string, keyVersion: string): Promise<void>;
  /** Puts text on this agent's queue as is, as anyone who can write to it could. */
  raw(text: string): void;
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
    answerChallenge?: (request: ChallengeRequest, index: number) => boolean;
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
    control,
    ...(options.script ? { script: options.script } : {}),
    ...(options.answerChallenge ? { answerChallenge: options.answerChallenge } : {}),
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
    controlKeys: control.keys,
    keyVaultUrl: FAKE_VAULT,
    timing: options.timing ?? FAST,
    logger: (level, message, fields) => logs.push({ level, message, ...(fields ? { fields } : {}) }),
  };
  const agent = createAgent(agentOptions);
  running.push(async () => {
    await agent.stop();
    await responder.stop();
    await bus.close();
  });
  return {
    agent,
    bus,
    vault,
    responder,
    logs,
    agentId,
    async keyEvent(event, keyName, keyVersion) {
      await responder.send(makeKeyEvent({ agentId, event, keyName, keyVersion, sentAt: new Date() }));
    },
    raw: (text) => bus.enqueueRawAgentMessage(agentId, text),
  };
}

async function until(condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const inState = (agent: Agent, name: string) => () => agent.state().name === name;
const zeroed = (buffer: Buffer) => buffer.every((byte) => byte === 0);

function logText(logs: Harness["logs"]): string {
  return logs.map((line) => JSON.stringify(line)).join("\n");
}

/** The runtime data a request carries, decoded: the JSON the hardware report is bound to. */
function runtimeDataOf(request: AttestationRequest): unknown {
  return JSON.parse(Buffer.from(request.runtimeData, "base64url").toString("utf8"));
}

function droppedTotal(agent: Agent): number {
  return Object.values(agent.status().inbox.dropped).reduce((sum, count) => sum + count, 0);
}

function challengeFor(agentId: string, nonce = randomBytes(24).toString("base64url")): Challenge {
  return makeChallenge({ agentId, nonce, deadline: new Date(Date.now() + 60_000), sentAt: new Date() });
}

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value), "utf8").toString("base64url");

/** A protected header as the control plane writes it, for `agentId`, changed by `changes`. */
function controlHeader(agentId: string, changes: Record<string, unknown> = {}): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000);
  return {
    alg: "RS256",
    kid: control.signer.keyId,
    typ: CONTROL_JWS_TYPE,
    sub: agentId,
    jti: randomUUID(),
    iat: now,
    exp: now + 300,
    ...changes,
  };
}

/** A compact JWS over header and payload with whatever signature `sign` makes of the input. */
async function craftJws(
  header: Record<string, unknown>,
  payload: unknown,
  sign: (input: string) => Buffer | Promise<Buffer>,
): Promise<string> {
  const input = `${b64(header)}.${b64(payload)}`;
  return `${input}.${(await sign(input)).toString("base64url")}`;
}

/** The pinned control plane's own signature (Key Vault signs the SHA-256 digest). */
const pinnedSignature = (input: string) =>
  control.signer.sign(createHash("sha256").update(input, "ascii").digest());

/** A signed message with another payload put in, its header and signature kept. */
function withPayload(jws: string, payload: unknown): string {
  const [header, , signature] = jws.split(".");
  return `${header}.${b64(payload)}.${signature}`;
}

describe("agent: first attestation", () => {
  it("asks for a challenge, sends evidence bound to runtime data carrying its nonce, unwraps the released keys and holds them in memory", async () => {
    const h = harness();
    await h.agent.start();
    expect(h.agent.state().name).toBe("attesting");
    await until(inState(h.agent, "trusted"));
    expect(h.responder.challengeRequests).toEqual([
      expect.objectContaining({
        type: "challenge-request",
        agentId: h.agentId,
        workload: "orders",
        tee: "sevsnp",
      }),
    ]);
    const [challenge] = h.responder.challenges as [Challenge];
    const [request] = h.responder.requests as [AttestationRequest];
    const bound = runtimeKey.bindToNonce(challenge.nonce, requestBinding(request));
    expect(request).toMatchObject({
      agentId: h.agentId,
      workload: "orders",
      tee: "sevsnp",
      keys: ["orders", "ledger"],
      challenge: challenge.nonce,
      runtimeData: bound.base64url,
    });
    expect(runtimeDataOf(request)).toEqual({
      keys: [runtimeKey.publicJwk],
      nonce: challenge.nonce,
      request: requestBinding(request),
    });
    if (request.evidence.tee !== "sevsnp") throw new Error("sevsnp evidence expected");
    const report = parseSnpReport(Buffer.from(request.evidence.report, "base64url"));
    expect(report.reportData.equals(bound.reportData)).toBe(true);
    expect(h.responder.refused).toEqual([]);

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
      // The challenge and the result, both verified.
      inbox: { accepted: 2, dropped: {} },
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
    // The same request answers the same challenge: no new one is asked for.
    expect(h.responder.challengeRequests.length).toBe(1);
    expect(
      h.logs.some((l) => l.message === "attestation round retrying" && l.fields?.["code"] === "ERR_TIMEOUT"),
    ).toBe(true);
  });

  it("asks again with a new challenge, a new request and fresh evidence after an `error` result, whatever its code", async () => {
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
    expect(h.responder.challengeRequests.length).toBe(3);
    expect(h.responder.requests.map((request) => request.challenge)).toEqual(
      h.responder.challenges.map((challenge) => challenge.nonce),
    );
  });

  it("ignores results for other request ids and duplicates of its own", async () => {
    const self: { harness?: Harness } = {};
    const script: Script = async (request) => {
      // First a signed denial for another request id, then the real answer; a duplicate follows below.
      const { responder } = self.harness!;
      const other = await responder.resultFor(
        { ...request, requestId: "someone-else" },
        { kind: "denied", code: "ERR_APPRAISAL_DENIED" },
      );
      await responder.send(other!);
      return { kind: "trusted" };
    };
    const h = (self.harness = harness({ script }));
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const held = h.agent.keys.get("orders")!;
    // The same result signed again, as the functions send a stored answer to a repeated request.
    await h.responder.send(h.responder.results[0]!);
    await until(() => h.agent.status().inbox.accepted === 4);
    await sleep(100);
    expect(h.agent.state().name).toBe("trusted");
    expect(h.agent.keys.get("orders")).toBe(held);
    expect(h.logs.filter((l) => l.message === "key installed").length).toBe(2);
    expect(h.logs.filter((l) => l.message === "attestation result for no running round dropped").length).toBe(
      2,
    );
    expect(h.agent.status().inbox.dropped).toEqual({});
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
    expect(h.responder.challengeRequests.length).toBe(1);
  });
});

describe("agent: re-attestation", () => {
  it("answers a challenge with fresh evidence bound to the nonce, once per nonce, and stays trusted", async () => {
    const h = harness();
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const nonce = randomBytes(24).toString("base64url");
    const challenge = await h.responder.challenge(h.agentId, { nonce });
    // The same challenge delivered again, signed again (as the functions resend an open one).
    await h.responder.send(challenge);
    await until(() => h.responder.requests.length >= 2);
    await until(inState(h.agent, "trusted"));
    await until(() => h.logs.some((l) => l.message === "challenge already answered"));
    await sleep(150);
    expect(h.responder.requests.length).toBe(2);
    // A challenge that came is answered as it is: nothing is asked for.
    expect(h.responder.challengeRequests.length).toBe(1);
    const answer = h.responder.requests[1]!;
    expect(answer.challenge).toBe(nonce);
    const bound = runtimeKey.bindToNonce(nonce, requestBinding(answer));
    expect(answer.runtimeData).toBe(bound.base64url);
    expect(JSON.parse(bound.bytes.toString("utf8"))).toMatchObject({ nonce, keys: [runtimeKey.publicJwk] });
    if (answer.evidence.tee !== "sevsnp") throw new Error("sevsnp evidence expected");
    const report = parseSnpReport(Buffer.from(answer.evidence.report, "base64url"));
    expect(report.reportData.subarray(0, 32).equals(createHash("sha256").update(bound.bytes).digest())).toBe(
      true,
    );
  });

  it("drops a challenge signed for another agent", async () => {
    const h = harness();
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const other = await control.sign(challengeFor("another-agent"));
    h.raw(other.jws);
    await until(() => h.agent.status().inbox.dropped["ERR_CONTROL_AUDIENCE"] === 1);
    await sleep(100);
    expect(h.responder.requests.length).toBe(1);
    expect(h.agent.state().name).toBe("trusted");
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
    await h.keyEvent("rotated", "orders", "v2");
    await until(() => release !== undefined);
    expect(h.agent.state().name).toBe("re-attesting");
    expect(h.agent.keys.currentVersion("orders")).toBe("v1");
    release!();
    await until(() => h.agent.keys.currentVersion("orders") === "v2");
    await until(inState(h.agent, "trusted"));
    expect(h.agent.keys.get("orders")!.material.equals(v2.plaintext)).toBe(true);
    expect(h.agent.keys.get("orders", "v1")).toBeDefined();
    // A rotation to a version already held starts nothing.
    await h.keyEvent("rotated", "orders", "v2");
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
    await h.keyEvent("rotated", "orders", "v2");
    await until(() => h.logs.some((l) => l.message === "key rotated; fetching the new version"));
    release!();
    await until(() => h.agent.keys.currentVersion("orders") === "v2" && h.agent.state().name === "trusted");
    expect(h.responder.requests.length).toBe(2);
  });

  it("re-attests periodically while trusted, each time answering a fresh challenge it asked for", async () => {
    const h = harness({ timing: { ...FAST, reattestIntervalMs: 150 } });
    await h.agent.start();
    await until(() => h.responder.requests.length >= 3);
    const requests = h.responder.requests.slice(0, 3);
    expect(requests.map((request) => request.challenge)).toEqual(
      h.responder.challenges.slice(0, 3).map((challenge) => challenge.nonce),
    );
    expect(new Set(requests.map((request) => request.challenge)).size).toBe(3);
    for (const request of requests) {
      expect(runtimeDataOf(request)).toEqual({
        keys: [runtimeKey.publicJwk],
        nonce: request.challenge,
        request: requestBinding(request),
      });
    }
    expect(h.responder.refused).toEqual([]);
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
    await h.responder.challenge(h.agentId);
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
    await sleep(300);
    // One request per answer, each with fresh evidence for a fresh challenge; no trusted ↔ attesting loop.
    expect(h.responder.requests.length).toBe(3);
    expect(new Set(h.responder.requests.map((request) => request.requestId)).size).toBe(3);
    expect(new Set(h.responder.requests.map((request) => request.challenge)).size).toBe(3);
    expect(h.responder.refused).toEqual([]);
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
    const pushed = await h.responder.challenge(h.agentId);
    await until(() => collects >= 4 && h.agent.state().name === "trusted");
    expect(states).not.toContain("failed");
    expect(h.agent.keys.get("orders")).toBe(held);
    expect(zeroed(held.material)).toBe(false);
    expect(h.logs.filter((l) => l.message === "attestation round will be run again").length).toBe(2);
    // Each retried round answers a fresh challenge it asks for (the pushed one may have lapsed meanwhile):
    // the request carries exactly the nonce of the last signed challenge, and so does its runtime data.
    expect(h.responder.challengeRequests.length).toBe(3);
    const last = h.responder.challenges.at(-1)!;
    expect(last.nonce).not.toBe(pushed.nonce);
    const answer = h.responder.requests.at(-1)!;
    expect(h.responder.requests.length).toBe(2);
    expect(answer.challenge).toBe(last.nonce);
    expect(runtimeDataOf(answer)).toEqual({
      keys: [runtimeKey.publicJwk],
      nonce: last.nonce,
      request: requestBinding(answer),
    });
  });
});

describe("agent: key versions it must not install", () => {
  it("remembers a revocation of a version it does not hold and refuses a result that brings it", async () => {
    const h = harness({ keys: ["orders"] });
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    h.vault.addOct("orders", "v2", randomBytes(32));
    await h.keyEvent("revoked", "orders", "v2");
    await until(() => h.agent.keys.wasRevoked("orders", "v2"));
    await h.keyEvent("rotated", "orders", "v2");
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
      await h.keyEvent("rotated", "orders", version);
      await until(
        () => h.agent.keys.currentVersion("orders") === version && h.agent.state().name === "trusted",
      );
    }
    // Key Vault (or a replay) now hands out v1 again.
    h.vault.keys.get("orders")!.push(v1);
    await h.responder.challenge(h.agentId);
    await until(() => h.logs.some((l) => l.message === "attestation round will be run again"));
    expect(h.agent.keys.currentVersion("orders")).toBe("v3");
    expect(h.agent.keys.get("orders", "v1")).toBeUndefined();
  });

  it("refuses a result releasing a key that was not requested", async () => {
    // Signed by the control plane and bound to the agent's own request, yet listing a key the
    // agent never asked for.
    const h = harness({ keys: ["orders"], script: () => ({ kind: "trusted", extraKeys: ["ledger"] }) });
    await h.agent.start();
    await until(inState(h.agent, "failed"));
    expect(h.agent.state().reason).toBe("ERR_RELEASE_RESPONSE_MALFORMED");
    expect(h.agent.keys.size).toBe(0);
  });
});

describe("agent: results are bound to the request they answer", () => {
  it("drops a signed denial of a doctored copy sent under its request id, and stays unjudged", async () => {
    // Whoever can write to the requests queue copies the agent's request id onto other
    // evidence; the control plane signs a denial for that copy. It is not about this agent.
    const h = harness({
      keys: ["orders"],
      requests: (bus) => ({
        sendRequest: (request) =>
          bus.sendRequest(
            request.type === "attestation-request" ? { ...request, workload: "doctored" } : request,
          ),
      }),
      script: () => ({ kind: "denied", code: "ERR_APPRAISAL_DENIED" }),
    });
    await h.agent.start();
    await until(() => (h.agent.status().inbox.dropped["ERR_CONTROL_UNBOUND"] ?? 0) >= 1);
    expect(h.agent.state().name).toBe("attesting");
    expect(h.agent.state().reason).toBeUndefined();
  });
});

describe("agent: release responses must name the vault, the version and the challenge", () => {
  it("refuses a release response whose key id names another vault", async () => {
    const others = [
      "https://other-vault.vault.azure.net",
      "https://fake-vault.vault.azure.net.attacker.example",
      "https://fake-vault.vault.azure.net:8443",
      "http://fake-vault.vault.azure.net",
    ];
    for (const origin of others) {
      const h = harness({
        keys: ["orders"],
        script: () => ({ kind: "trusted", keyId: (name, version) => `${origin}/keys/${name}/${version}` }),
      });
      await h.agent.start();
      await until(inState(h.agent, "failed"));
      expect(h.agent.state().reason).toBe("ERR_RELEASE_RESPONSE_MALFORMED");
      expect(h.agent.keys.size).toBe(0);
      expect(h.logs.some((l) => l.message === "key installed")).toBe(false);
      // The key, version and signer were all right: only the vault was not.
      const [result] = h.responder.results;
      if (result?.verdict !== "trusted") throw new Error("a trusted result was expected");
      expect(result.keys[0]).toMatchObject({ name: "orders", version: "v1" });
      expect(parseReleaseResponse(result.keys[0]!.releaseResponse).kid).toBe(`${origin}/keys/orders/v1`);
    }
  });

  it("refuses a release response whose key id names another version than the result lists", async () => {
    const h = harness({
      keys: ["orders"],
      // The vault's current version is v1 and the result lists v1; the signed key id says v2.
      script: () => ({ kind: "trusted", keyId: (name) => `${FAKE_VAULT}/keys/${name}/v2` }),
    });
    await h.agent.start();
    await until(inState(h.agent, "failed"));
    expect(h.agent.state().reason).toBe("ERR_RELEASE_RESPONSE_MALFORMED");
    expect(h.agent.keys.size).toBe(0);
    expect(h.agent.keys.get("orders", "v1")).toBeUndefined();
    expect(h.agent.keys.get("orders", "v2")).toBeUndefined();
    const [result] = h.responder.results;
    if (result?.verdict !== "trusted") throw new Error("a trusted result was expected");
    expect(result.keys[0]).toMatchObject({ name: "orders", version: "v1" });
  });

  it("refuses a release response Key Vault made for another nonce; takes one echoing the challenge, or none", async () => {
    const wrong = harness({
      keys: ["orders"],
      script: () => ({ kind: "trusted", releaseNonce: randomBytes(32).toString("base64url") }),
    });
    await wrong.agent.start();
    await until(inState(wrong.agent, "failed"));
    expect(wrong.agent.state().reason).toBe("ERR_RELEASE_RESPONSE_NONCE");
    expect(wrong.agent.keys.size).toBe(0);

    const echoed = harness({ keys: ["orders"] });
    const none = harness({ keys: ["orders"], script: () => ({ kind: "trusted", releaseNonce: null }) });
    await echoed.agent.start();
    await none.agent.start();
    await until(inState(echoed.agent, "trusted"));
    await until(inState(none.agent, "trusted"));
    const nonceIn = (h: Harness) => {
      const [result] = h.responder.results;
      if (result?.verdict !== "trusted") throw new Error("a trusted result was expected");
      return parseReleaseResponse(result.keys[0]!.releaseResponse).nonce;
    };
    expect(nonceIn(echoed)).toBe(echoed.responder.requests[0]!.challenge);
    expect(nonceIn(none)).toBeUndefined();
    for (const h of [echoed, none]) {
      expect(h.agent.keys.get("orders")!.material.equals(h.vault.current("orders").plaintext)).toBe(true);
    }
  });

  it("refuses, in a re-attestation, a release response made for the previous challenge", async () => {
    const self: { harness?: Harness } = {};
    const h = (self.harness = harness({
      keys: ["orders"],
      script: (_request, index) =>
        index === 1
          ? { kind: "trusted", releaseNonce: self.harness!.responder.requests[0]!.challenge }
          : { kind: "trusted" },
    }));
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    h.vault.addOct("orders", "v2", randomBytes(32));
    await h.keyEvent("rotated", "orders", "v2");
    await until(() =>
      h.logs.some(
        (l) =>
          l.message === "attestation round failed" && l.fields?.["code"] === "ERR_RELEASE_RESPONSE_NONCE",
      ),
    );
    expect(h.agent.keys.get("orders", "v2")).toBeUndefined();
    // Run again with a fresh challenge, it gets v2 with the right nonce.
    await until(() => h.agent.keys.currentVersion("orders") === "v2" && h.agent.state().name === "trusted");
    expect(h.agent.keys.get("orders")!.material.equals(h.vault.current("orders").plaintext)).toBe(true);
  });
});

describe("agent: freshness denials", () => {
  it("a freshness denial of the first attestation asks for a new challenge instead of failing, and ends trusted", async () => {
    const codes = [
      "ERR_CHALLENGE_EXPIRED",
      "ERR_CHALLENGE_UNKNOWN",
      "ERR_CHALLENGE_USED",
      "ERR_CHALLENGE_MISMATCH",
      "ERR_REQUEST_REPLAYED",
    ];
    const h = harness({
      keys: ["orders"],
      script: (_request, index) =>
        index < codes.length ? { kind: "denied", code: codes[index]! } : { kind: "trusted" },
    });
    const states: string[] = [];
    h.agent.subscribe((state) => states.push(state.name));
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    expect(states).not.toContain("failed");
    expect(states).not.toContain("revoked");
    expect(h.responder.challengeRequests.length).toBe(codes.length + 1);
    const challenges = h.responder.requests.map((request) => request.challenge);
    expect(challenges).toEqual(h.responder.challenges.map((challenge) => challenge.nonce));
    expect(new Set(challenges).size).toBe(codes.length + 1);
    expect(h.logs.some((l) => l.message === "attestation denied")).toBe(false);
    expect(h.agent.keys.get("orders")!.material.equals(h.vault.current("orders").plaintext)).toBe(true);
  });

  it("a freshness denial of a re-attestation asks for a new challenge, keeps the keys and does not revoke", async () => {
    const h = harness({
      script: (_request, index) =>
        index === 1 ? { kind: "denied", code: "ERR_CHALLENGE_EXPIRED" } : { kind: "trusted" },
    });
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const held = h.agent.keys.get("orders")!;
    const states: string[] = [];
    h.agent.subscribe((state) => states.push(state.name));
    const pushed = await h.responder.challenge(h.agentId);
    await until(() => h.responder.requests.length >= 3 && h.agent.state().name === "trusted");
    expect(states).not.toContain("revoked");
    expect(h.agent.keys.get("orders")).toBe(held);
    expect(zeroed(held.material)).toBe(false);
    expect(h.responder.requests[1]!.challenge).toBe(pushed.nonce);
    expect(h.responder.challengeRequests.length).toBe(2);
    expect(h.responder.requests[2]!.challenge).toBe(h.responder.challenges.at(-1)!.nonce);
    expect(h.responder.requests[2]!.challenge).not.toBe(pushed.nonce);
  });
});

describe("agent: control messages it cannot verify change nothing", () => {
  /** Trusted, with what must stay as it is. */
  async function trustedAgent(): Promise<{ h: Harness; unchanged: () => void }> {
    const h = harness();
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const held = h.agent.keys.get("orders")!;
    const before = {
      challengeRequests: h.responder.challengeRequests.length,
      requests: h.responder.requests.length,
      accepted: h.agent.status().inbox.accepted,
    };
    const unchanged = () => {
      expect(h.agent.state().name).toBe("trusted");
      expect(h.agent.keys.get("orders")).toBe(held);
      expect(h.agent.keys.currentVersion("orders")).toBe("v1");
      expect(zeroed(held.material)).toBe(false);
      expect(h.agent.keys.wasRevoked("orders", "v1")).toBe(false);
      expect(h.responder.challengeRequests.length).toBe(before.challengeRequests);
      expect(h.responder.requests.length).toBe(before.requests);
      expect(h.agent.status().inbox.accepted).toBe(before.accepted);
    };
    return { h, unchanged };
  }

  it("drops an unsigned challenge and an unsigned revocation of the version in use", async () => {
    const { h, unchanged } = await trustedAgent();
    const logged = h.logs.length;
    const revoke = makeKeyEvent({
      agentId: h.agentId,
      event: "revoked",
      keyName: "orders",
      keyVersion: "v1",
      sentAt: new Date(),
    });
    const publicPem = control.keys.keys[0]!.key.export({ type: "spki", format: "pem" });
    // Plain JSON, as messages travelled before they were signed.
    h.raw(JSON.stringify(challengeFor(h.agentId)));
    h.raw(JSON.stringify(revoke));
    // A JWS that claims no signature, and one "signed" with the public key as an HMAC secret.
    h.raw(await craftJws(controlHeader(h.agentId, { alg: "none" }), revoke, () => Buffer.from("x")));
    h.raw(
      await craftJws(controlHeader(h.agentId, { alg: "HS256" }), challengeFor(h.agentId), (input) =>
        createHmac("sha256", publicPem).update(input).digest(),
      ),
    );
    await until(() => droppedTotal(h.agent) === 4);
    await sleep(150);
    expect(h.agent.status().inbox.dropped).toEqual({ ERR_CONTROL_MALFORMED: 2, ERR_CONTROL_ALG: 2 });
    unchanged();
    const after = h.logs.slice(logged).map((l) => l.message);
    expect(
      after.filter((message) => message !== "inbox message dropped: not a valid control message"),
    ).toEqual([]);
  });

  it("drops messages signed by a key it does not pin, signed for another agent, expired, not yet valid, or altered", async () => {
    const { h, unchanged } = await trustedAgent();
    const revoke = (agentId = h.agentId, keyVersion = "v1") =>
      makeKeyEvent({ agentId, event: "revoked", keyName: "orders", keyVersion, sentAt: new Date() });
    const now = Date.now();
    // Another key under the pinned key id; a key under a key id nobody pins.
    h.raw((await impostor.sign(revoke())).jws);
    h.raw((await unpinned.sign(challengeFor(h.agentId))).jws);
    // The real control-plane key, but for another agent: in the header and payload, or in the payload only.
    h.raw((await control.sign(revoke("another-agent"))).jws);
    h.raw(await craftJws(controlHeader(h.agentId), revoke("another-agent"), pinnedSignature));
    // The real key, the right agent, but expired, or issued ten minutes from now.
    h.raw((await control.sign(revoke(), { at: new Date(now - 600_000), ttlMs: 60_000 })).jws);
    h.raw((await control.sign(challengeFor(h.agentId), { at: new Date(now + 600_000) })).jws);
    // A genuine revocation of a version nobody holds, turned into one of the version in use.
    const genuine = await control.sign(revoke(h.agentId, "v0"));
    h.raw(withPayload(genuine.jws, revoke()));
    await until(() => droppedTotal(h.agent) === 7);
    await sleep(150);
    expect(h.agent.status().inbox.dropped).toEqual({
      ERR_CONTROL_SIGNATURE: 2,
      ERR_CONTROL_KID: 1,
      ERR_CONTROL_AUDIENCE: 2,
      ERR_CONTROL_EXPIRED: 2,
    });
    unchanged();
  });

  it("drops a second copy of a genuine signed challenge or key event (ERR_CONTROL_REPLAYED)", async () => {
    const h = harness({ keys: ["orders"] });
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    // A genuine challenge: answered once.
    await h.responder.challenge(h.agentId);
    const challenge = h.responder.sent.at(-1)!;
    await until(() => h.responder.requests.length === 2 && h.agent.state().name === "trusted");
    await h.bus.sendToAgent(h.agentId, challenge);
    await until(() => h.agent.status().inbox.dropped["ERR_CONTROL_REPLAYED"] === 1);
    // A genuine rotation the vault does not serve yet: every copy acted on would be another round.
    const rotated = await h.responder.send(
      makeKeyEvent({
        agentId: h.agentId,
        event: "rotated",
        keyName: "orders",
        keyVersion: "v2",
        sentAt: new Date(),
      }),
    );
    await until(() => h.responder.requests.length === 3 && h.agent.state().name === "trusted");
    await h.bus.sendToAgent(h.agentId, rotated);
    await until(() => h.agent.status().inbox.dropped["ERR_CONTROL_REPLAYED"] === 2);
    await sleep(150);
    expect(h.agent.status().inbox.dropped).toEqual({ ERR_CONTROL_REPLAYED: 2 });
    expect(h.responder.requests.length).toBe(3);
    expect(h.responder.challengeRequests.length).toBe(2);
    expect(h.logs.filter((l) => l.message === "key rotated; fetching the new version").length).toBe(1);
    expect(h.logs.filter((l) => l.message === "challenge received").length).toBe(3);
    expect(h.agent.state().name).toBe("trusted");
  });
});

describe("agent: challenges nobody may push at it", () => {
  it("answers an open challenge sent again after its first answer was refused before using it", async () => {
    // The control plane sends the same open challenge again to whoever asks while it is unused.
    const h = harness({
      keys: ["orders"],
      answerChallenge: (_request, index) => index === 0,
      script: (_request, index) =>
        index === 0 ? { kind: "error", code: "ERR_UPSTREAM_UNAVAILABLE" } : { kind: "trusted" },
    });
    await h.agent.start();
    await until(() => h.responder.challengeRequests.length === 2);
    const first = h.responder.challenges[0]!;
    await h.responder.challenge(h.agentId, { nonce: first.nonce, reason: "requested" });
    await until(inState(h.agent, "trusted"));
    expect(h.responder.requests.map((r) => r.challenge)).toEqual([first.nonce, first.nonce]);
  });

  it("ignores a signed answer to a challenge-request it did not send (anyone may ask in its name)", async () => {
    const h = harness({ keys: ["orders"] });
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const requestsBefore = h.responder.requests.length;
    const askedBefore = h.responder.challengeRequests.length;
    await h.responder.challenge(h.agentId, { reason: "requested" });
    await until(() => h.agent.status().inbox.dropped["unsolicited-challenge"] === 1);
    await sleep(150);
    expect(h.responder.requests.length).toBe(requestsBefore);
    expect(h.responder.challengeRequests.length).toBe(askedBefore);
    expect(h.agent.state().name).toBe("trusted");
    // A re-attestation challenge is answered as before.
    const reattest = await h.responder.challenge(h.agentId, { reason: "reattest" });
    await until(() => h.responder.requests.length === requestsBefore + 1);
    expect(h.responder.requests.at(-1)?.challenge).toBe(reattest.nonce);
  });

  it("does not let a re-attestation challenge abort the round whose answer is on its way; answers it after", async () => {
    let hold: (() => void) | undefined;
    const h = harness({
      keys: ["orders"],
      script: async (_request, index) => {
        // The second attestation's answer is held back while another challenge arrives.
        if (index === 1) await new Promise<void>((resolve) => (hold = resolve));
        return { kind: "trusted" };
      },
    });
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const first = await h.responder.challenge(h.agentId, { reason: "reattest" });
    await until(() => h.responder.requests.length === 2 && hold !== undefined);
    const second = await h.responder.challenge(h.agentId, { reason: "reattest" });
    await until(() => h.logs.some((l) => l.message === "challenge deferred until the running round ends"));
    hold!();
    // The held answer is taken (not thrown away), then the deferred challenge is answered.
    await until(() => h.responder.requests.length === 3);
    expect(h.responder.requests[1]?.challenge).toBe(first.nonce);
    expect(h.responder.requests[2]?.challenge).toBe(second.nonce);
    await until(inState(h.agent, "trusted"));
    const accepted = h.logs.filter((l) => l.message === "attestation trusted").length;
    expect(accepted).toBe(3);
  });
});

describe("agent: a replayed result after a revocation on the control plane's side", () => {
  /**
   * Trusted by result R1 (for request Q1), then challenged: request Q2 is sent, and its genuine
   * answer does not come (the functions side stays silent, as if an attacker consumed it). The
   * attacker answers Q2 with R1: the very copy, R1's signature over a body naming Q2, and R1 as
   * the control plane would sign it again for a redelivered Q1.
   */
  async function replayed(attestedUntil: Date) {
    const h = harness({
      timing: { ...FAST, minAttestedMs: 100 },
      script: (_request, index) => (index === 0 ? { kind: "trusted", attestedUntil } : { kind: "drop" }),
    });
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const q1 = h.responder.requests[0]!;
    const r1 = h.responder.results[0]!;
    const r1Signed = h.responder.signedResults[0]!;
    const held = [h.agent.keys.get("orders")!, h.agent.keys.get("ledger")!];
    await h.responder.challenge(h.agentId);
    await until(() => h.responder.requests.length >= 2);
    const q2 = h.responder.requests[1]!;
    expect(q2.requestId).not.toBe(q1.requestId);
    const accepted = h.agent.status().inbox.accepted;

    await h.bus.sendToAgent(h.agentId, r1Signed);
    h.raw(withPayload(r1Signed.jws, { ...r1, requestId: q2.requestId }));
    await h.responder.send(r1);
    await until(() => h.agent.status().inbox.accepted === accepted + 1 && droppedTotal(h.agent) === 2);
    await sleep(100);
    expect(h.agent.status().inbox.dropped).toEqual({ ERR_CONTROL_REPLAYED: 1, ERR_CONTROL_SIGNATURE: 1 });
    // The copy signed again verifies, but it answers Q1, not the round's request.
    expect(
      h.logs.some(
        (l) =>
          l.message === "attestation result for no running round dropped" &&
          l.fields?.["requestId"] === q1.requestId,
      ),
    ).toBe(true);
    return { h, q2, held };
  }

  /** Nothing answered Q2: the round still waits for it (the same request again, no new challenge). */
  function stillWaitingFor(h: Harness, q2: AttestationRequest): void {
    expect(h.responder.challengeRequests.length).toBe(1);
    expect(h.responder.requests.slice(1).every((request) => request.requestId === q2.requestId)).toBe(true);
    expect(h.logs.filter((l) => l.message === "attestation trusted").length).toBe(1);
    expect(h.logs.some((l) => l.message === "attestation round failed")).toBe(false);
  }

  it("cannot answer the re-attestation: the keys are served only until R1's attestedUntil, then wiped", async () => {
    const attestedUntil = new Date(Date.now() + 2_000);
    const { h, q2, held } = await replayed(attestedUntil);
    let lapsedAt: number | undefined;
    h.agent.subscribe((state) => {
      if (state.name !== "re-attesting" && lapsedAt === undefined) lapsedAt = Date.now();
    });
    expect(h.agent.state().name).toBe("re-attesting");
    expect(h.agent.status().attestedUntil).toBe(attestedUntil.toISOString());
    for (const key of held) expect(zeroed(key.material)).toBe(false);
    stillWaitingFor(h, q2);

    await until(() => h.agent.keys.size === 0, 5_000);
    expect(lapsedAt).toBeGreaterThanOrEqual(attestedUntil.getTime() - 20);
    expect(h.agent.state().name).toBe("attesting");
    for (const key of held) expect(zeroed(key.material)).toBe(true);
    expect(h.logs.some((l) => l.message === "keys wiped" && l.fields?.["reason"] === "lapsed")).toBe(true);
    stillWaitingFor(h, q2);
    expect(h.agent.status().inbox.dropped).toEqual({ ERR_CONTROL_REPLAYED: 1, ERR_CONTROL_SIGNATURE: 1 });
  });

  it("and when the genuine signed denial of Q2 arrives, the agent is revoked and its keys wiped", async () => {
    const { h, q2, held } = await replayed(new Date(Date.now() + 3_600_000));
    expect(h.agent.state().name).toBe("re-attesting");
    stillWaitingFor(h, q2);
    const denial = await h.responder.resultFor(q2, { kind: "denied", code: "ERR_APPRAISAL_DENIED" });
    await h.responder.send(denial!);
    await until(inState(h.agent, "revoked"));
    expect(h.agent.state().reason).toBe("ERR_APPRAISAL_DENIED");
    expect(h.agent.keys.size).toBe(0);
    for (const key of held) expect(zeroed(key.material)).toBe(true);
  });
});

describe("agent: revocation and shutdown", () => {
  it("a revocation of the version being served revokes the agent: every key wiped, nothing answered after", async () => {
    const h = harness();
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const held = [h.agent.keys.get("orders")!, h.agent.keys.get("ledger")!];
    await h.keyEvent("revoked", "orders", "v1");
    await until(inState(h.agent, "revoked"));
    expect(h.agent.keys.size).toBe(0);
    expect(h.agent.keys.summary()).toEqual([]);
    for (const key of held) expect(zeroed(key.material)).toBe(true);
    expect(h.agent.keys.wasRevoked("orders", "v1")).toBe(true);
    // Terminal: a challenge now starts nothing.
    await h.responder.challenge(h.agentId);
    await until(() => h.logs.some((l) => l.message === "challenge received"));
    await sleep(100);
    expect(h.responder.requests.length).toBe(1);
    expect(h.responder.challengeRequests.length).toBe(1);
    expect(h.agent.state().name).toBe("revoked");
  });

  it("a revocation of an older held version wipes only that version", async () => {
    const h = harness();
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    h.vault.addOct("orders", "v2", randomBytes(32));
    await h.keyEvent("rotated", "orders", "v2");
    await until(() => h.agent.keys.currentVersion("orders") === "v2");
    const old = h.agent.keys.get("orders", "v1")!;
    await h.keyEvent("revoked", "orders", "v1");
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
      await h.keyEvent("revoked", keyName, keyVersion);
    }
    await until(() => h.logs.some((l) => l.message === "key event for a key this agent does not use"));
    expect(h.agent.state().name).toBe("trusted");
    expect(h.agent.keys.size).toBe(2);
  });

  it("refuses malformed inbox messages without acting on them", async () => {
    const h = harness();
    await h.agent.start();
    await until(inState(h.agent, "trusted"));
    const revoke = makeKeyEvent({
      agentId: h.agentId,
      event: "revoked",
      keyName: "orders",
      keyVersion: "v1",
      sentAt: new Date(),
    });
    const signed = (message: unknown) =>
      signControlMessage(message as KeyEvent, {
        signer: control.signer,
        messageId: randomUUID(),
        issuedAt: new Date(),
        expiresAt: new Date(Date.now() + 60_000),
      });
    h.raw("{not json");
    // Validly signed, but of a version this agent does not speak, and with a field the schema does not know.
    h.raw((await signed({ ...revoke, version: 2 })).jws);
    h.raw((await signed({ ...revoke, reason: "because" })).jws);
    const refused = () =>
      h.logs.filter((l) => l.message === "inbox message dropped: not a valid control message");
    await until(() => refused().length === 3);
    expect(refused().map((l) => l.fields?.["code"])).toEqual([
      "ERR_CONTROL_MALFORMED",
      "ERR_MESSAGE_VERSION",
      "ERR_MESSAGE_SCHEMA",
    ]);
    expect(h.agent.status().inbox.dropped).toEqual({
      ERR_CONTROL_MALFORMED: 1,
      ERR_MESSAGE_VERSION: 1,
      ERR_MESSAGE_SCHEMA: 1,
    });
    expect(h.agent.state().name).toBe("trusted");
    expect(h.agent.keys.wasRevoked("orders", "v1")).toBe(false);
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
  it("refuses missing signer trust, control-plane keys, vault URL, keys or ports", () => {
    const bus = new MemoryBus();
    const base: AgentOptions = {
      agentId: "a",
      workload: "w",
      keys: ["k"],
      provider: createSimulatedProvider({ platform }),
      runtimeKey,
      requests: bus,
      inbox: bus.openAgentInbox("a"),
      releaseSigners: [...signer.certificateChain],
      controlKeys: control.keys,
      keyVaultUrl: FAKE_VAULT,
    };
    expect(() => createAgent({ ...base, releaseSigners: undefined as never })).toThrow(/releaseSigners/);
    expect(() => createAgent({ ...base, controlKeys: undefined as never })).toThrow(/controlKeys/);
    expect(() => createAgent({ ...base, keyVaultUrl: undefined as never })).toThrow(/keyVaultUrl/);
    expect(() => createAgent({ ...base, keyVaultUrl: "fake-vault.vault.azure.net" })).toThrow(/keyVaultUrl/);
    expect(() => createAgent({ ...base, keyVaultUrl: "ftp://fake-vault.vault.azure.net" })).toThrow(
      /keyVaultUrl/,
    );
    expect(() => createAgent({ ...base, keys: [] })).toThrow(TypeError);
    expect(() => createAgent({ ...base, timing: { resultTimeoutMs: 0 } })).toThrow(TypeError);
    expect(() => createAgent(base)).not.toThrow();
  });
});
