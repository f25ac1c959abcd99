/**
 * The attest function end to end in one process: the exported `attest` handler called with a
 * real InvocationContext, the composition root building the real adapters (MAA client over
 * HTTP, the Key Vault SDK, Table Storage and Storage Queues) against the local MAA- and Key
 * Vault-compatible servers and Azurite. The agent side is played with the agent's own runtime-key
 * module and a simulated SEV-SNP platform.
 */
import { InvocationContext } from "@azure/functions";
import { createHash, generateKeyPairSync, randomBytes } from "node:crypto";
import { createTableStateStore } from "../../adapters/state/table.js";
import { changeAgent } from "../../core/state/agents.js";
import { TableClient } from "@azure/data-tables";
import { SignJWT, decodeProtectedHeader, decodeJwt } from "jose";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { attest } from "../../functions/attest.js";
import { resetComposition } from "../../functions/composition/root.js";
import { startLocalStack, type LocalStack } from "../../local/stack.js";
import { startLocalFunctionsHost } from "../../adapters/local/functions-host.js";
import { createStorageQueueBus, type StorageQueueBus } from "../../adapters/storage-queue/bus.js";
import { createKeyVaultKeyStore } from "../../adapters/keyvault/key-store.js";
import { localKeyVaultCredential } from "../../adapters/local/keyvault/credential.js";
import type { LocalAttestationEngine } from "../../adapters/local/maa/engine.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../core/evidence/simulated/sevsnp.js";
import { fixedClock } from "../../core/ports/clock.js";
import { renderReleasePolicy } from "../../core/policy/index.js";
import {
  makeAttestationRequest,
  makeChallengeRequest,
  requestBinding,
  type AttestationRequest,
  type AttestationResult,
} from "../../core/messages/index.js";
import { controlKeySet, verifyControlMessage } from "../../core/control/signed.js";
import type { AgentMessage } from "../../core/ports/bus.js";
import { createRuntimeKey, type RuntimeKey } from "../../agent/runtime-key.js";
import { azuriteConnectionString, uniqueTableName } from "../support/storage.js";

const HOST_DATA = "5a".repeat(32);
const OTHER_HOST_DATA = "6b".repeat(32);
const KEYS = ["orders-key", "ledger-key"] as const;

let stack: LocalStack;
let platform: SimulatedSnpPlatform;
let runtimeKey: RuntimeKey;
let bus: StorageQueueBus;
let tableName: string;
const maaClock = fixedClock(new Date());
let tamper: "none" | "forge" = "none";
const rogueKey = generateKeyPairSync("rsa", { modulusLength: 2048 });
const logLines: string[] = [];
const issuedTokens: string[] = [];
const keyMaterial = new Map<string, Buffer>();
/** Every body the agents received (signed JWS text), for the leak check. */
const bodies: string[] = [];

/** Re-signs MAA's token with a key that is not in MAA's /certs, under MAA's kid. */
function forgingEngine(engine: LocalAttestationEngine): LocalAttestationEngine {
  const forge = async (token: string): Promise<string> => {
    issuedTokens.push(token);
    if (tamper !== "forge") return token;
    const header = decodeProtectedHeader(token);
    const claims = decodeJwt(token);
    return new SignJWT({ ...claims, "x-ms-sevsnpvm-hostdata": HOST_DATA })
      .setProtectedHeader({ alg: "RS256", kid: header.kid!, typ: "JWT" })
      .sign(rogueKey.privateKey);
  };
  return {
    ...engine,
    issuer: engine.issuer,
    attestSevSnp: async (request) => forge(await engine.attestSevSnp(request)),
    attestSgx: async (request) => forge(await engine.attestSgx(request)),
    getSigningCertificates: () => engine.getSigningCertificates(),
    openIdConfiguration: () => engine.openIdConfiguration(),
  };
}

let sequence = 0;
/** An attestation request as the agent makes it: a challenge first (unless given), evidence bound to it. */
async function request(
  fields: {
    hostData?: string;
    debug?: boolean;
    reportData?: Buffer;
    keys?: readonly string[];
    agentId?: string;
    challenge?: string;
  } = {},
): Promise<AttestationRequest> {
  sequence++;
  const agentId = fields.agentId ?? `agent-${process.pid}-${sequence}`;
  const challenge = fields.challenge ?? (await challengeFor(agentId));
  const requestId = `req-${sequence}-${Date.now()}`;
  const keys = [...(fields.keys ?? KEYS)];
  const runtimeData = runtimeKey.bindToNonce(
    challenge,
    requestBinding({ agentId, requestId, workload: "orders", tee: "sevsnp", keys }),
  );
  const report = platform.signReport({
    reportData: fields.reportData ?? runtimeData.reportData.subarray(0, 32),
    hostData: Buffer.from(fields.hostData ?? HOST_DATA, "hex"),
    ...(fields.debug ? { debug: true } : {}),
  });
  return makeAttestationRequest({
    agentId,
    requestId,
    workload: "orders",
    tee: "sevsnp",
    evidence: {
      tee: "sevsnp",
      format: "raw",
      report: report.toString("base64url"),
      vcekChain: platform.leafPem + platform.chainPem,
    },
    runtimeData: runtimeData.base64url,
    keys,
    challenge,
    sentAt: new Date(),
  });
}

function context(messageId: string, deliveryCount = 1): InvocationContext {
  return new InvocationContext({
    functionName: "attest",
    invocationId: `inv-${messageId}-${deliveryCount}`,
    triggerMetadata: { messageId, deliveryCount },
    logHandler: (_level, ...args) => logLines.push(args.map(String).join(" ")),
  });
}

/** The next message to the agent, verified against the pinned control-plane key as the agent does. */
async function nextMessage(agentId: string): Promise<{ message: AgentMessage; jws: string }> {
  const inbox = bus.openAgentInbox(agentId);
  try {
    const received = await inbox.receive(10_000);
    if (received === undefined) throw new Error("no message for the agent");
    const verified = await verifyControlMessage(received.body, {
      keys: controlKeySet(stack.controlKeys),
      agentId,
      at: new Date(),
    });
    bodies.push(String(received.body));
    return { message: verified.message, jws: String(received.body) };
  } finally {
    await inbox.close();
  }
}

async function resultFor(agentId: string): Promise<AttestationResult> {
  const { message } = await nextMessage(agentId);
  if (message.type !== "attestation-result") throw new Error(`expected a result, got ${message.type}`);
  return message;
}

/** The first half of the protocol through the real function: a challenge-request, a signed challenge. */
async function challengeFor(agentId: string): Promise<string> {
  await attest(
    makeChallengeRequest({ agentId, workload: "orders", tee: "sevsnp", sentAt: new Date() }),
    context(`c-${agentId}-${Date.now()}`),
  );
  const { message } = await nextMessage(agentId);
  if (message.type !== "challenge") throw new Error(`expected a challenge, got ${message.type}`);
  return message.nonce;
}

const releases = () => stack.vault.stats().calls;

beforeAll(async () => {
  platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  runtimeKey = await createRuntimeKey();
  tableName = uniqueTableName("attest");
  const connectionString = azuriteConnectionString();
  stack = await startLocalStack({
    storageConnectionString: connectionString,
    platform,
    complianceStatus: "azure-compliant-uvm",
    appraisalPolicy: JSON.stringify({
      sevsnpvm: { hostData: [HOST_DATA], complianceStatus: ["azure-compliant-uvm"] },
    }),
    maaClock,
    decorateMaaEngine: forgingEngine,
    tableName,
    maxDeliveryCount: 3,
    exposeKeyMaterialForTests: true,
    logger: (level, message, fields) => logLines.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`),
  });
  Object.assign(process.env, stack.settings);
  await resetComposition();
  bus = createStorageQueueBus({ connectionString });
  // The operator's side: keys created through the real Key Vault SDK with a rendered policy.
  const keyStore = createKeyVaultKeyStore({
    vaultUrl: stack.keyVault.url,
    credential: localKeyVaultCredential(stack.keyVault.accessToken),
  });
  const releasePolicy = renderReleasePolicy({
    authority: stack.maa.url,
    measurements: { sevsnpvm: { hostData: [HOST_DATA], complianceStatus: "azure-compliant-uvm" } },
  });
  for (const name of KEYS) {
    await keyStore.createKey(name, { keyType: "oct-HSM", keySize: 256, releasePolicy });
    keyMaterial.set(name, await stack.vault.keyMaterialForTests(name));
  }
}, 60_000);

afterAll(async () => {
  await resetComposition();
  await bus?.close();
  await stack?.close();
});

beforeEach(() => {
  tamper = "none";
  maaClock.set(new Date());
});

describe("attest: trusted evidence", () => {
  it("releases each requested key wrapped to the agent's runtime key, and records who got which version", async () => {
    const before = releases();
    const message = await request();
    await attest(message, context("m-good"));
    const result = await resultFor(message.agentId);
    expect(result.verdict).toBe("trusted");
    if (result.verdict !== "trusted") return;
    expect(result.keys.map((k) => k.name)).toEqual([...KEYS]);
    for (const key of result.keys) {
      const unwrapped = runtimeKey.unwrapReleased(key.releaseResponse);
      expect(unwrapped.kty).toMatch(/^oct/);
      if (unwrapped.kty === "oct" || unwrapped.kty === "oct-HSM") {
        expect(unwrapped.bytes.equals(keyMaterial.get(key.name)!)).toBe(true);
      }
    }
    expect(releases() - before).toBe(KEYS.length);
    expect(new Date(result.attestedUntil).getTime()).toBeGreaterThan(Date.now());
  });

  it("answers a redelivered request with the same result and no second release", async () => {
    const message = await request();
    const before = releases();
    await attest(message, context("m-redeliver", 1));
    const first = await resultFor(message.agentId);
    await attest(message, context("m-redeliver", 2));
    const second = await resultFor(message.agentId);
    await attest(JSON.stringify(message), context("m-redeliver", 3));
    const third = await resultFor(message.agentId);
    expect(second).toEqual(first);
    expect(third).toEqual(first);
    expect(releases() - before).toBe(KEYS.length);
  });

  it("retries a transient MAA 503 inside the invocation and still releases", async () => {
    stack.maa.failNext(503, 1);
    const before = releases();
    const message = await request({ keys: ["orders-key"] });
    await attest(message, context("m-503-once"));
    const result = await resultFor(message.agentId);
    expect(result.verdict).toBe("trusted");
    expect(releases() - before).toBe(1);
  });
});

describe("attest: denials name the failing check and release nothing", () => {
  const cases: [string, () => Promise<AttestationRequest>, string, string | undefined][] = [
    [
      "a debug-mode report",
      () => request({ debug: true }),
      "ERR_APPRAISAL_DENIED",
      "x-ms-sevsnpvm-is-debuggable",
    ],
    [
      "an unknown measurement",
      () => request({ hostData: OTHER_HOST_DATA }),
      "ERR_APPRAISAL_DENIED",
      "x-ms-sevsnpvm-hostdata",
    ],
    [
      "a wrong runtime-data binding",
      () => request({ reportData: createHash("sha256").update("someone else's key").digest() }),
      "ERR_EVIDENCE_REPORT_DATA",
      undefined,
    ],
  ];
  for (const [name, make, code, field] of cases) {
    it(`denies ${name}`, async () => {
      const before = releases();
      const message = await make();
      await attest(message, context(`m-${name}`));
      const result = await resultFor(message.agentId);
      expect(result.verdict).toBe("denied");
      if (result.verdict === "trusted") return;
      expect(result.denial.code).toBe(code);
      if (field !== undefined) expect(result.denial.violations.map((v) => v.field)).toContain(field);
      expect(result.keys).toEqual([]);
      expect(releases()).toBe(before);
    });
  }

  it("denies a forged token (claims re-signed with a key not in MAA's /certs)", async () => {
    tamper = "forge";
    const before = releases();
    const message = await request({ hostData: OTHER_HOST_DATA });
    await attest(message, context("m-forged"));
    const result = await resultFor(message.agentId);
    expect(result.verdict).toBe("denied");
    if (result.verdict !== "trusted") expect(result.denial.code).toBe("ERR_TOKEN_SIGNATURE");
    expect(releases()).toBe(before);
  });

  it("denies an expired token", async () => {
    maaClock.set(new Date(Date.now() - 9 * 3600 * 1000)); // MAA tokens live 8 hours
    const before = releases();
    const message = await request();
    await attest(message, context("m-expired"));
    const result = await resultFor(message.agentId);
    expect(result.verdict).toBe("denied");
    if (result.verdict !== "trusted") expect(result.denial.code).toBe("ERR_TOKEN_EXPIRED");
    expect(releases()).toBe(before);
  });

  it("records and answers a malformed message instead of dropping it", async () => {
    const bad = { ...(await request()), runtimeData: "not base64url!" };
    await attest(bad, context("m-malformed"));
    const result = await resultFor(bad.agentId);
    expect(result.verdict).toBe("denied");
    if (result.verdict !== "trusted") expect(result.denial.code).toBe("ERR_MESSAGE_SCHEMA");
  });
});

describe("attest: challenges", () => {
  async function pendingChallenge(agentId: string, nonce: string, deadline: Date): Promise<void> {
    // What the re-attestation timer does: record the challenge it sent to the agent.
    const state = await createTableStateStore({ tableName, connectionString: azuriteConnectionString() });
    await changeAgent(state, agentId, (current) => ({
      ...(current ?? { agentId, workload: "orders", tee: "sevsnp" as const, status: "trusted" as const }),
      challenge: { nonce, issuedAt: new Date(), deadline },
      updatedAt: new Date(),
    }));
  }

  it("accepts evidence bound to the pending challenge once, and refuses the same nonce again", async () => {
    const first = await request();
    await attest(first, context("m-ch-initial"));
    expect((await resultFor(first.agentId)).verdict).toBe("trusted");
    const nonce = randomBytes(24).toString("base64url");
    await pendingChallenge(first.agentId, nonce, new Date(Date.now() + 60_000));
    const answer = await request({ agentId: first.agentId, challenge: nonce, keys: ["orders-key"] });
    await attest(answer, context("m-ch-answer"));
    const answered = await resultFor(first.agentId);
    expect(answered.verdict).toBe("trusted");
    const before = releases();
    const replay = await request({ agentId: first.agentId, challenge: nonce, keys: ["orders-key"] });
    await attest(replay, context("m-ch-replay"));
    const replayed = await resultFor(first.agentId);
    expect(replayed.verdict).toBe("denied");
    if (replayed.verdict !== "trusted") expect(replayed.denial.code).toBe("ERR_CHALLENGE_UNKNOWN");
    expect(releases()).toBe(before);
  });

  it("refuses an answer to a challenge that was never sent, and one past its deadline", async () => {
    const first = await request();
    await attest(first, context("m-ch2-initial"));
    expect((await resultFor(first.agentId)).verdict).toBe("trusted");
    const unknown = await request({
      agentId: first.agentId,
      challenge: randomBytes(24).toString("base64url"),
    });
    await attest(unknown, context("m-ch2-unknown"));
    const refused = await resultFor(first.agentId);
    if (refused.verdict !== "trusted") expect(refused.denial.code).toBe("ERR_CHALLENGE_UNKNOWN");
    expect(refused.verdict).toBe("denied");
    const nonce = randomBytes(24).toString("base64url");
    await pendingChallenge(first.agentId, nonce, new Date(Date.now() - 1_000));
    const late = await request({ agentId: first.agentId, challenge: nonce });
    await attest(late, context("m-ch2-late"));
    const lateResult = await resultFor(first.agentId);
    expect(lateResult.verdict).toBe("denied");
    if (lateResult.verdict !== "trusted") expect(lateResult.denial.code).toBe("ERR_CHALLENGE_EXPIRED");
  });

  it("refuses a captured request replayed under a new agent id, with no release call", async () => {
    const captured = await request({ keys: ["orders-key"] });
    await attest(captured, context("m-ch3-original"));
    expect((await resultFor(captured.agentId)).verdict).toBe("trusted");
    const before = releases();
    const thief = `thief-${process.pid}-${Date.now()}`;
    const own = await challengeFor(thief);
    await attest({ ...captured, agentId: thief, challenge: own }, context("m-ch3-copy"));
    const copy = await resultFor(thief);
    expect(copy.verdict).toBe("denied");
    if (copy.verdict !== "trusted") expect(copy.denial.code).toBe("ERR_CHALLENGE_MISMATCH");
    expect(releases()).toBe(before);
  });

  it("signs results over the request id, attestedUntil and every release response", async () => {
    const message = await request({ keys: ["orders-key"] });
    await attest(message, context("m-ch4"));
    const { message: result, jws } = await nextMessage(message.agentId);
    expect(result.type).toBe("attestation-result");
    const [header, payload, signature] = jws.split(".");
    const claims = JSON.parse(Buffer.from(payload!, "base64url").toString("utf8")) as Record<string, unknown>;
    expect(claims).toMatchObject({ requestId: message.requestId, agentId: message.agentId });
    const keys = controlKeySet(stack.controlKeys);
    // Self-declared trust: the same message with a later attestedUntil no longer verifies.
    const extended = Buffer.from(
      JSON.stringify({ ...claims, attestedUntil: new Date(Date.now() + 8 * 3600_000).toISOString() }),
    ).toString("base64url");
    await expect(
      verifyControlMessage(`${header}.${extended}.${signature}`, {
        keys,
        agentId: message.agentId,
        at: new Date(),
      }),
    ).rejects.toMatchObject({ code: "ERR_CONTROL_SIGNATURE" });
    // Rebound to another agent: refused.
    await expect(
      verifyControlMessage(jws, { keys, agentId: "someone-else", at: new Date() }),
    ).rejects.toMatchObject({ code: "ERR_CONTROL_AUDIENCE" });
  });
});

describe("attest: persistent MAA outage", () => {
  it("leaves early deliveries for redelivery, then dead-letters with a reason and tells the agent", async () => {
    const requestsQueue = `req${Date.now().toString(36)}`;
    const hostBus = createStorageQueueBus({
      connectionString: azuriteConnectionString(),
      requestsQueue,
      maxDeliveryCount: 3,
      lockDurationMs: 1_000,
    });
    const host = startLocalFunctionsHost({
      functionName: "attest",
      handler: attest,
      receiver: hostBus.openRequestReceiver(),
      maxDeliveryCount: 3,
      concurrency: 1,
    });
    try {
      stack.maa.failNext(503, 1_000);
      const before = releases();
      const message = await request();
      await hostBus.sendRequest(message);
      const result = await resultFor(message.agentId);
      expect(result.verdict).toBe("error");
      if (result.verdict !== "trusted") expect(result.denial.code).toBe("ERR_UPSTREAM_UNAVAILABLE");
      await host.idle();
      const deadLetters = await hostBus.openRequestReceiver().readDeadLetters();
      const mine = deadLetters.find(
        (d) => (d.body as { requestId?: string }).requestId === message.requestId,
      );
      expect(mine?.reason).toBe("ERR_UPSTREAM_UNAVAILABLE");
      expect(mine?.description).toMatch(/dead-letter/);
      expect(host.stats()).toMatchObject({ abandoned: 2, deadLettered: 1 });
      expect(releases()).toBe(before);
    } finally {
      stack.maa.clearFaults();
      await host.stop();
      await hostBus.close();
    }
  }, 60_000);
});

describe("no plaintext key material anywhere", () => {
  it("appears in no log line, table row or bus message produced by these tests", async () => {
    // One more full round so there is something to look at even if run alone.
    const message = await request();
    await attest(message, context("m-leak"));
    const result = await resultFor(message.agentId);
    expect(result.verdict).toBe("trusted");

    const forms = [...keyMaterial.values()].flatMap((k) => [
      k.toString("hex"),
      k.toString("hex").toUpperCase(),
      k.toString("base64"),
      k.toString("base64url"),
    ]);
    const table = TableClient.fromConnectionString(azuriteConnectionString(), tableName, {
      allowInsecureConnection: true,
    });
    const rows: string[] = [];
    for await (const entity of table.listEntities()) rows.push(JSON.stringify(entity));
    expect(rows.length).toBeGreaterThan(10);
    const messages = [JSON.stringify(message), JSON.stringify(result), ...bodies];
    const everything = [...logLines, ...rows, ...messages].join("\n");
    expect(logLines.length).toBeGreaterThan(5);
    for (const form of forms) expect(everything).not.toContain(form);
    // The stored form of the local Key Vault holds no plaintext either.
    const stored = await stack.vault.dumpStorage();
    for (const form of forms) expect(stored).not.toContain(form);
    // MAA tokens are not logged or stored either: only their hashes.
    expect(issuedTokens.length).toBeGreaterThan(5);
    for (const token of issuedTokens) expect(everything).not.toContain(token.split(".")[2]!);
  });
});
