/**
 * The agent end to end: the agent as its entry point composes it (configuration from the
 * environment, the simulated TEE, the runtime key, the storage-queue bus, the key API, the local
 * Key Vault's signer as the one trusted release signer), talking over Storage Queues (Azurite)
 * to the exported `attest` function driven by the local Functions host, which calls the local
 * MAA-compatible server (trusting only the simulated platform's root) and the local Key
 * Vault-compatible server through the real SDK adapters. The application's side is plain HTTP
 * against the key API.
 *
 * Everything the functions side sends the agent is signed with the control-plane key, a
 * non-exportable key in the local Key Vault used through the real SDK's `sign`; the agent pins
 * its public half (SHIELD_CONTROL_KEYS_FILE) and the vault released keys must name
 * (SHIELD_KEYVAULT_URL). Two things this test does by hand that later pieces of the control
 * plane will do, signing them the same way (core/control `createControlChannel` over the
 * Key Vault control signer and the bus adapter):
 * - key events: the rotation function will send `key-event rotated` (after creating the new
 *   version) and `revoked`; here the test sends them;
 * - challenges: the re-attestation timer will issue a challenge (written to the agent's record
 *   in the state store, then sent); here the test does that with the challenge issuer the attest
 *   function uses for `challenge-request`s, over the Table StateStore adapter.
 *
 * Every message the agent sends and every log line of the agent, the Functions host and the
 * local servers is captured, and none may hold key material or anything of the runtime key
 * beyond its public JWK.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { attest } from "../../functions/attest.js";
import { resetComposition } from "../../functions/composition/root.js";
import { startLocalStack, type LocalStack } from "../../local/stack.js";
import { startLocalFunctionsHost, type LocalFunctionsHost } from "../../adapters/local/functions-host.js";
import { createStorageQueueBus, type StorageQueueBus } from "../../adapters/storage-queue/bus.js";
import { createKeyVaultControlSigner } from "../../adapters/keyvault/control-signer.js";
import { createKeyVaultKeyStore } from "../../adapters/keyvault/key-store.js";
import { localKeyVaultCredential } from "../../adapters/local/keyvault/credential.js";
import { createTableStateStore } from "../../adapters/state/table.js";
import type { Agent } from "../../agent/agent.js";
import { openAgentBus } from "../../agent/bus.js";
import { reportDataFor } from "../../agent/evidence/provider.js";
import type { HeldKeyVersion } from "../../agent/held-keys.js";
import { EXIT_CODES, main, type MainIo } from "../../agent/main.js";
import { rsaJwkThumbprint, type RuntimePublicJwk } from "../../agent/runtime-key.js";
import { createChallengeIssuer } from "../../core/attest/challenge.js";
import { createControlChannel, type AgentSender } from "../../core/control/signed.js";
import { parseSnpReport } from "../../core/evidence/sevsnp/index.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../core/evidence/simulated/sevsnp.js";
import {
  makeChallenge,
  makeKeyEvent,
  type AttestationRequest,
  type ChallengeRequest,
  requestBinding,
} from "../../core/messages/index.js";
import type { AgentRequest, RequestChannel } from "../../core/ports/bus.js";
import { systemClock, systemRandom } from "../../core/ports/clock.js";
import type { KeyStore } from "../../core/ports/key-store.js";
import type { Logger } from "../../core/ports/logger.js";
import type { StateStore } from "../../core/ports/state.js";
import { renderReleasePolicy } from "../../core/policy/index.js";
import { createTestControlPlane } from "../support/control.js";
import { azuriteConnectionString, uniqueTableName } from "../support/storage.js";

const HOST_DATA = "5a".repeat(32);
const OCT_KEY = "orders-key";
const RSA_KEY = "ledger-key";
const KEYS = [OCT_KEY, RSA_KEY];

let stack: LocalStack;
let platform: SimulatedSnpPlatform;
let hostBus: StorageQueueBus;
/** The functions' side of the agent channel: signs with the control-plane key, then sends. */
let hostAgents: AgentSender;
let host: LocalFunctionsHost;
let keyStore: KeyStore;
let state: StateStore;
let agent: Agent;
let baseUrl: string | undefined;
let exited: Promise<number>;
let signerDir: string | undefined;
const shutdown = new AbortController();
const agentId = `e2e-agent-${process.pid}-${Date.now().toString(36)}`;

/** Everything that leaves the agent on the bus, and every log line of every part. */
const sent: AgentRequest[] = [];
const attestations = (): AttestationRequest[] =>
  sent.filter((request): request is AttestationRequest => request.type === "attestation-request");
const challengeRequests = (): ChallengeRequest[] =>
  sent.filter((request): request is ChallengeRequest => request.type === "challenge-request");
const logLines: string[] = [];
const capture =
  (source: string): Logger =>
  (level, message, fields) =>
    logLines.push(`${source} ${level} ${message} ${JSON.stringify(fields ?? {})}`);
/** Every version of every key that was ever released, as Key Vault holds it. */
const material = new Map<string, Buffer>();

async function remember(name: string, version: string): Promise<Buffer> {
  const bytes = await stack.vault.keyMaterialForTests(name, version);
  material.set(`${name}/${version}`, bytes);
  return bytes;
}

async function until<T>(probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function getKey(
  name: string,
  version?: string,
): Promise<{ status: number; version: string | null; body: Buffer }> {
  const response = await fetch(
    `${baseUrl}/keys/${name}${version === undefined ? "" : `?version=${version}`}`,
  );
  return {
    status: response.status,
    version: response.headers.get("x-key-version"),
    body: Buffer.from(await response.arrayBuffer()),
  };
}

beforeAll(async () => {
  const connectionString = azuriteConnectionString();
  const tableName = uniqueTableName("e2eagent");
  const requestsQueue = `e2e-requests-${Date.now().toString(36)}`;
  platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  stack = await startLocalStack({
    storageConnectionString: connectionString,
    platform,
    complianceStatus: "azure-compliant-uvm",
    appraisalPolicy: JSON.stringify({
      sevsnpvm: { hostData: [HOST_DATA], complianceStatus: ["azure-compliant-uvm"] },
    }),
    tableName,
    exposeKeyMaterialForTests: true,
    logger: capture("local-servers"),
  });
  Object.assign(process.env, stack.settings);
  await resetComposition();

  // The operator's side: keys created through the real Key Vault SDK with a rendered policy.
  keyStore = createKeyVaultKeyStore({
    vaultUrl: stack.keyVault.url,
    credential: localKeyVaultCredential(stack.keyVault.accessToken),
  });
  const releasePolicy = renderReleasePolicy({
    authority: stack.maa.url,
    measurements: { sevsnpvm: { hostData: [HOST_DATA], complianceStatus: "azure-compliant-uvm" } },
  });
  await keyStore.createKey(OCT_KEY, { keyType: "oct-HSM", keySize: 256, releasePolicy });
  await keyStore.createKey(RSA_KEY, { keyType: "RSA-HSM", keySize: 2048, releasePolicy });
  state = await createTableStateStore({ tableName, connectionString, createTable: true });

  const polling = { connectionString, requestsQueue, minPollMs: 20, maxPollMs: 200 };
  hostBus = createStorageQueueBus(polling);
  hostAgents = createControlChannel({
    transport: hostBus,
    signer: createKeyVaultControlSigner({
      keyId: stack.settings["SHIELD_CONTROL_KEY_ID"]!,
      algorithm: "RS256",
      credential: localKeyVaultCredential(stack.keyVault.accessToken),
    }),
    clock: systemClock,
    random: systemRandom,
  });
  host = startLocalFunctionsHost({
    functionName: "attest",
    handler: attest,
    receiver: hostBus.openRequestReceiver(),
    concurrency: 2,
    logger: capture("functions-host"),
  });

  // The agent as `npm run agent` runs it: configuration from the environment, the simulated
  // TEE, the storage-queue bus, and the local Key Vault's signer as the one trusted release signer.
  signerDir = await mkdtemp(join(tmpdir(), "shield-e2e-"));
  const signerFile = join(signerDir, "release-signer.pem");
  await writeFile(signerFile, stack.vault.signerCertificates.map((cert) => cert.toString()).join(""));
  const controlKeysFile = join(signerDir, "control-keys.json");
  await writeFile(controlKeysFile, JSON.stringify(stack.controlKeys));
  const io: MainIo = { stdout: () => undefined, stderr: (line) => logLines.push(`agent ${line}`) };
  exited = main(
    [],
    {
      SHIELD_AGENT_ID: agentId,
      SHIELD_WORKLOAD: "orders",
      SHIELD_KEYS: KEYS.join(","),
      SHIELD_TEE: "simulated",
      SHIELD_BUS: "storage-queue",
      SHIELD_STORAGE_CONNECTION_STRING: connectionString,
      SHIELD_REQUEST_QUEUE: requestsQueue,
      SHIELD_RELEASE_SIGNER_CA_FILE: signerFile,
      SHIELD_CONTROL_KEYS_FILE: controlKeysFile,
      SHIELD_KEYVAULT_URL: stack.vaultUrl,
      SHIELD_LISTEN: "127.0.0.1:0",
      SHIELD_REATTEST_SECONDS: "0",
      SHIELD_LOG_LEVEL: "debug",
    },
    {
      io,
      select: { simulated: { platform, reportFields: { hostData: Buffer.from(HOST_DATA, "hex") } } },
      runtime: {
        openBus: async (config, logger) => {
          const bus = await openAgentBus(config, logger);
          const requests: RequestChannel = {
            sendRequest: async (request) => {
              sent.push(structuredClone(request));
              await bus.requests.sendRequest(request);
            },
          };
          return { ...bus, requests };
        },
        shutdown: shutdown.signal,
        timing: {
          resultTimeoutMs: 8_000,
          retryBaseDelayMs: 100,
          retryMaxDelayMs: 1_000,
          receiveWaitMs: 1_000,
        },
        onRunning: (running) => {
          agent = running.agent;
          baseUrl = running.api.url;
        },
      },
    },
  );
  await Promise.race([
    until(() => baseUrl),
    exited.then((code) => {
      throw new Error(`the agent ended early with exit code ${code}:\n${logLines.join("\n")}`);
    }),
  ]);
}, 60_000);

afterAll(async () => {
  shutdown.abort();
  expect(await exited).toBe(EXIT_CODES.ok);
  await host?.stop();
  await hostBus?.close();
  await resetComposition();
  await stack?.close();
  if (signerDir !== undefined) await rm(signerDir, { recursive: true, force: true });
});

describe("agent end to end", () => {
  let firstVersion: string;
  let rotatedVersion: string;
  const handedOut: HeldKeyVersion[] = [];

  it("(a) the application gets from the key API exactly the key Key Vault holds", async () => {
    // The first round also pays for the functions' cold start (SDKs loaded, table created).
    await until(async () => ((await fetch(`${baseUrl}/readyz`)).status === 200 ? true : undefined), 30_000);
    const oct = await getKey(OCT_KEY);
    expect(oct.status).toBe(200);
    firstVersion = oct.version!;
    expect(oct.body.equals(await remember(OCT_KEY, firstVersion))).toBe(true);

    const rsa = await fetch(`${baseUrl}/keys/${RSA_KEY}`);
    expect(rsa.headers.get("content-type")).toBe("application/x-pem-file");
    const pem = await rsa.text();
    const der = await remember(RSA_KEY, rsa.headers.get("x-key-version")!);
    expect(pem).toContain(der.toString("base64").slice(0, 64));
    expect(Buffer.from(pem.replace(/-----[A-Z ]+-----|\s/g, ""), "base64").equals(der)).toBe(true);

    const status = (await (await fetch(`${baseUrl}/status`)).json()) as {
      state: string;
      attestedUntil: string;
    };
    expect(status.state).toBe("trusted");
    expect(new Date(status.attestedUntil).getTime()).toBeGreaterThan(Date.now());
    expect(stack.vault.stats().calls).toBeGreaterThanOrEqual(KEYS.length);
    // It asked for a challenge first and answered the one the functions signed and recorded.
    expect(sent[0]).toMatchObject({ type: "challenge-request", agentId, workload: "orders", tee: "sevsnp" });
    const trusted = attestations().at(-1)!;
    expect(JSON.parse(Buffer.from(trusted.runtimeData, "base64url").toString("utf8"))).toMatchObject({
      nonce: trusted.challenge,
    });
    expect((await state.getAttestation(agentId, trusted.requestId))?.verdict).toBe("trusted");
    expect(agent.status().inbox.dropped).toEqual({});
  }, 45_000);

  it("(b) after a rotation and a `rotated` event the application gets the new version; the old one stays available", async () => {
    const rotated = await keyStore.rotate(OCT_KEY);
    rotatedVersion = rotated.version;
    expect(rotatedVersion).not.toBe(firstVersion);
    // Until the event arrives the agent keeps serving what it has.
    expect((await getKey(OCT_KEY)).version).toBe(firstVersion);
    await hostAgents.sendToAgent(
      agentId,
      makeKeyEvent({
        agentId,
        event: "rotated",
        keyName: OCT_KEY,
        keyVersion: rotatedVersion,
        sentAt: new Date(),
      }),
    );
    const current = await until(async () => {
      const got = await getKey(OCT_KEY);
      return got.version === rotatedVersion ? got : undefined;
    });
    expect(current.status).toBe(200);
    expect(current.body.equals(await remember(OCT_KEY, rotatedVersion))).toBe(true);
    // Policy: the previous version stays served by ?version= until a newer one replaces it.
    const old = await getKey(OCT_KEY, firstVersion);
    expect(old.status).toBe(200);
    expect(old.body.equals(material.get(`${OCT_KEY}/${firstVersion}`)!)).toBe(true);
    expect((await getKey(OCT_KEY, "0123456789abcdef")).status).toBe(404);
    await until(() => (agent.state().name === "trusted" ? true : undefined));
  });

  it("(d) answers a challenge with evidence bound to its nonce and stays trusted", async () => {
    const before = sent.length;
    const challengeRequestsBefore = challengeRequests().length;
    // What the re-attestation timer will do: record the pending challenge, then send it signed.
    const issued = await createChallengeIssuer({
      state,
      agents: hostAgents,
      clock: systemClock,
      random: systemRandom,
      logger: capture("challenge-issuer"),
    }).issue({ agentId, workload: "orders", tee: "sevsnp" });
    expect(issued.reused).toBe(false);
    const nonce = issued.nonce;
    expect((await state.getAgent(agentId))?.challenge?.nonce).toBe(nonce);
    const answer = await until(() =>
      sent
        .slice(before)
        .find(
          (request): request is AttestationRequest =>
            request.type === "attestation-request" && request.challenge === nonce,
        ),
    );
    const runtimeData = Buffer.from(answer.runtimeData, "base64url");
    expect(JSON.parse(runtimeData.toString("utf8"))).toEqual({
      keys: [publicJwk()],
      nonce,
      request: requestBinding(answer),
    });
    if (answer.evidence.tee !== "sevsnp") throw new Error("sevsnp evidence expected");
    const report = parseSnpReport(Buffer.from(answer.evidence.report, "base64url"));
    expect(report.reportData.equals(reportDataFor(runtimeData))).toBe(true);

    const record = await until(async () => {
      const attestation = await state.getAttestation(agentId, answer.requestId);
      return attestation?.verdict === "trusted" ? attestation : undefined;
    });
    expect(record.verdict).toBe("trusted");
    await until(async () => ((await state.getAgent(agentId))?.challenge === undefined ? true : undefined));
    await until(() => (agent.state().name === "trusted" ? true : undefined));
    expect((await fetch(`${baseUrl}/readyz`)).status).toBe(200);
    // The challenge that came was answered as it was: nothing was asked for.
    expect(challengeRequests().length).toBe(challengeRequestsBefore);
  });

  it("(e) a revocation or challenge signed by any other key is dropped: still trusted, the key still served", async () => {
    const served = await getKey(OCT_KEY);
    expect(served.status).toBe(200);
    const before = { sent: sent.length, dropped: agent.status().inbox.dropped["ERR_CONTROL_SIGNATURE"] ?? 0 };
    // Whoever can write to the agent's queue, with a key of their own under the pinned key id.
    const attacker = createTestControlPlane(stack.controlKeys.keys[0]!["kid"]).channel(hostBus);
    await attacker.sendToAgent(
      agentId,
      makeKeyEvent({
        agentId,
        event: "revoked",
        keyName: OCT_KEY,
        keyVersion: served.version!,
        sentAt: new Date(),
      }),
    );
    await attacker.sendToAgent(
      agentId,
      makeChallenge({
        agentId,
        nonce: randomBytes(32).toString("base64url"),
        deadline: new Date(Date.now() + 60_000),
        sentAt: new Date(),
      }),
    );
    await until(() =>
      agent.status().inbox.dropped["ERR_CONTROL_SIGNATURE"] === before.dropped + 2 ? true : undefined,
    );
    expect(agent.state().name).toBe("trusted");
    expect(agent.keys.wasRevoked(OCT_KEY, served.version!)).toBe(false);
    const still = await getKey(OCT_KEY);
    expect(still.status).toBe(200);
    expect(still.body.equals(served.body)).toBe(true);
    expect(sent.length).toBe(before.sent);
  });

  it("(c) after a `revoked` event the key API refuses the key and the agent holds no key at all", async () => {
    for (const name of KEYS) handedOut.push(agent.keys.get(name)!);
    handedOut.push(agent.keys.get(OCT_KEY, firstVersion)!);
    expect(handedOut.every((key) => key !== undefined && key.material.some((byte) => byte !== 0))).toBe(true);
    await hostAgents.sendToAgent(
      agentId,
      makeKeyEvent({
        agentId,
        event: "revoked",
        keyName: OCT_KEY,
        keyVersion: rotatedVersion,
        sentAt: new Date(),
      }),
    );
    await until(() => (agent.state().name === "revoked" ? true : undefined));
    expect((await getKey(OCT_KEY)).status).toBe(403);
    expect((await getKey(OCT_KEY, firstVersion)).status).toBe(403);
    expect((await getKey(RSA_KEY)).status).toBe(403);
    expect((await fetch(`${baseUrl}/readyz`)).status).toBe(503);
    // Nothing held, and every buffer handed out earlier reads as zeros.
    expect(agent.keys.size).toBe(0);
    expect(agent.keys.summary()).toEqual([]);
    for (const name of KEYS) expect(agent.keys.get(name)).toBeUndefined();
    for (const key of handedOut) expect(key.material.every((byte) => byte === 0)).toBe(true);
  });

  it("never sent its private key or an unwrapped key anywhere, and no log line holds either", async () => {
    await host.idle();
    expect(attestations().length).toBeGreaterThanOrEqual(3);
    expect(challengeRequests().length).toBeGreaterThanOrEqual(2);
    expect(material.size).toBeGreaterThanOrEqual(3);

    const forms: string[] = [];
    for (const bytes of material.values()) {
      forms.push(
        bytes.toString("hex"),
        bytes.toString("hex").toUpperCase(),
        bytes.toString("base64"),
        bytes.toString("base64url"),
      );
      // PEM lines of the RSA key, past the first (which is mostly the algorithm header).
      forms.push(...(bytes.toString("base64").match(/.{64}/g) ?? []).slice(1));
    }
    const outgoing = sent.map((request) => JSON.stringify(request));
    const everything = [...outgoing, ...logLines].join("\n");
    expect(logLines.length).toBeGreaterThan(20);
    for (const form of forms) expect(everything).not.toContain(form);

    // Of the runtime key only the public JWK leaves: every long string in an outgoing message is
    // the runtime data (whose only key is the public JWK), or evidence bound to it.
    const modulus = publicJwk().n;
    // A challenge request carries its four fields and nothing else.
    for (const request of challengeRequests()) {
      expect(Object.keys(request).sort()).toEqual([
        "agentId",
        "sentAt",
        "tee",
        "type",
        "version",
        "workload",
      ]);
    }
    for (const request of attestations()) {
      const runtime = JSON.parse(Buffer.from(request.runtimeData, "base64url").toString("utf8")) as {
        keys: Record<string, unknown>[];
        nonce?: string;
      };
      // Every attestation answers a challenge, and its runtime data carries that nonce.
      expect(Object.keys(runtime).sort()).toEqual(["keys", "nonce", "request"]);
      expect((runtime as { request?: string }).request).toBe(requestBinding(request));
      expect(runtime.nonce).toBe(request.challenge);
      expect(runtime.keys).toEqual([publicJwk()]);
      expect(Object.keys(runtime.keys[0]!).sort()).toEqual(["e", "key_ops", "kid", "kty", "n"]);
      if (request.evidence.tee !== "sevsnp") throw new Error("sevsnp evidence expected");
      const report = parseSnpReport(Buffer.from(request.evidence.report, "base64url"));
      expect(report.reportData.equals(reportDataFor(Buffer.from(request.runtimeData, "base64url")))).toBe(
        true,
      );
      const allowed = new Set([
        request.runtimeData,
        request.evidence.report,
        platform.leafPem + platform.chainPem,
      ]);
      for (const value of strings(request)) {
        if (value.length >= modulus.length) expect(allowed.has(value)).toBe(true);
      }
    }
    // Nor do logs carry evidence or runtime data.
    for (const request of attestations()) {
      if (request.evidence.tee === "sevsnp")
        expect(everything.replace(outgoing.join("\n"), "")).not.toContain(
          request.evidence.report.slice(0, 80),
        );
    }
    expect(logLines.join("\n")).not.toContain(modulus);
  });
});

/**
 * The runtime key's public JWK as the first request carried it: an RSA-2048 public key whose
 * RFC 7638 thumbprint is its kid and the runtime key id the agent reports.
 */
function publicJwk(): RuntimePublicJwk {
  const first = attestations()[0];
  if (first === undefined) throw new Error("no request sent yet");
  const runtime = JSON.parse(Buffer.from(first.runtimeData, "base64url").toString("utf8")) as {
    keys: [RuntimePublicJwk];
  };
  const jwk = runtime.keys[0];
  expect(jwk).toMatchObject({ kty: "RSA", e: "AQAB", key_ops: ["encrypt"] });
  expect(Buffer.from(jwk.n, "base64url").length).toBe(256);
  expect(jwk.kid).toBe(rsaJwkThumbprint(jwk));
  expect(jwk.kid).toBe(agent.status().runtimeKeyId);
  return jwk;
}

function* strings(value: unknown): Generator<string> {
  if (typeof value === "string") yield value;
  else if (Array.isArray(value)) for (const item of value) yield* strings(item);
  else if (typeof value === "object" && value !== null)
    for (const item of Object.values(value)) yield* strings(item);
}
