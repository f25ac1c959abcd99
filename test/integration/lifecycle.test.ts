/**
 * The lifecycle functions end to end in one process, on a clock the test moves: `reattest`
 * (timer), `rotate` (queue), `rotation-schedule` (timer), the Key Vault event functions (Event
 * Grid trigger and webhook) and the operator endpoints, each called through its exported handler
 * with a real InvocationContext, over the adapters the composition root builds — the MAA client
 * against the local MAA-compatible server, the Key Vault SDK against the local Key Vault
 * server, Table Storage and Storage Queues on Azurite. Agents are played with the agent's own
 * runtime-key module and a simulated SEV-SNP platform; what they receive is verified against the
 * pinned control-plane key as the agent does.
 */
import { InvocationContext, HttpRequest } from "@azure/functions";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { attest } from "../../functions/attest.js";
import { reattest } from "../../functions/reattest.js";
import { rotate } from "../../functions/rotate.js";
import { rotationScheduleTick } from "../../functions/rotation-schedule.js";
import { keyVaultEvent, keyVaultEventsWebhook } from "../../functions/keyvault-events.js";
import { reinstateAgent, revokeAgent } from "../../functions/agents-admin.js";
import { rotateKeyNow } from "../../functions/keys-admin.js";
import { startLocalHttpHost } from "../../adapters/local/http-host.js";
import { runCli } from "../../cli/main.js";
import { configureComposition, resetComposition } from "../../functions/composition/root.js";
import { startLocalStack, type LocalStack } from "../../local/stack.js";
import { createStorageQueueBus, type StorageQueueBus } from "../../adapters/storage-queue/bus.js";
import { createKeyVaultKeyStore } from "../../adapters/keyvault/key-store.js";
import { localKeyVaultCredential } from "../../adapters/local/keyvault/credential.js";
import { createTableStateStore, type TableStateStore } from "../../adapters/state/table.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../core/evidence/simulated/sevsnp.js";
import { fixedClock } from "../../core/ports/clock.js";
import type { KeyStore } from "../../core/ports/key-store.js";
import { renderReleasePolicy, samePolicyMeaning, type ReleasePolicy } from "../../core/policy/index.js";
import {
  makeAttestationRequest,
  makeChallengeRequest,
  requestBinding,
  type AttestationResult,
} from "../../core/messages/index.js";
import { controlKeySet, verifyControlMessage } from "../../core/control/signed.js";
import type { AgentMessage } from "../../core/ports/bus.js";
import { createRuntimeKey, type RuntimeKey } from "../../agent/runtime-key.js";
import { azuriteConnectionString, uniqueTableName } from "../support/storage.js";

const HOST_DATA = "5a".repeat(32);
const OTHER_HOST_DATA = "6b".repeat(32);
const PERIOD_SECONDS = 3600;
const CHALLENGE_SECONDS = 300;
const MARGIN_SECONDS = 360;
const run = `${process.pid}-${Date.now().toString(36)}`;
const KEY = `orders-${run}`;

const clock = fixedClock(new Date("2026-12-07T08:00:00.000Z"));
let stack: LocalStack;
let platform: SimulatedSnpPlatform;
let bus: StorageQueueBus;
let rotationInbox: StorageQueueBus;
let state: TableStateStore;
let keyStore: KeyStore;
let policy: ReleasePolicy;
const logLines: string[] = [];
const bodies: string[] = [];
const keyMaterial: Buffer[] = [];
const issuedTokens: string[] = [];
let tableName: string;
const rotateQueue = `rotate-${run.replace(/[^a-z0-9]/g, "")}`.slice(0, 60);

function context(name: string, metadata: Record<string, unknown> = {}): InvocationContext {
  return new InvocationContext({
    functionName: name,
    invocationId: `inv-${name}-${Math.random().toString(36).slice(2)}`,
    triggerMetadata: metadata,
    logHandler: (_level, ...args) => logLines.push(args.map(String).join(" ")),
  });
}

const timer = (isPastDue = false) => ({
  isPastDue,
  schedule: { adjustForDST: false },
  scheduleStatus: { last: "", next: "", lastUpdated: "" },
});

/** One agent played by the test: its runtime key, and what it sends and receives. */
class TestAgent {
  readonly agentId: string;
  readonly held = new Map<string, Buffer>();
  /** Messages that came while the agent waited for a result, in order. */
  readonly #stash: AgentMessage[] = [];
  #sequence = 0;
  private constructor(
    agentId: string,
    readonly runtimeKey: RuntimeKey,
  ) {
    this.agentId = agentId;
  }
  static async create(name: string): Promise<TestAgent> {
    return new TestAgent(`${name}-${run}`, await createRuntimeKey());
  }

  /** The next message to this agent, verified as the agent verifies it; undefined when none comes. */
  async next(timeoutMs = 5_000): Promise<AgentMessage | undefined> {
    const stashed = this.#stash.shift();
    if (stashed !== undefined) return stashed;
    return this.#receive(timeoutMs);
  }

  async #receive(timeoutMs: number): Promise<AgentMessage | undefined> {
    const inbox = bus.openAgentInbox(this.agentId);
    try {
      const received = await inbox.receive(timeoutMs);
      if (received === undefined) return undefined;
      bodies.push(String(received.body));
      const verified = await verifyControlMessage(received.body, {
        keys: controlKeySet(stack.controlKeys),
        agentId: this.agentId,
        at: clock.now(),
      });
      return verified.message;
    } finally {
      await inbox.close();
    }
  }

  async expectNext(): Promise<AgentMessage> {
    const message = await this.next();
    if (message === undefined) throw new Error(`no message for ${this.agentId}`);
    return message;
  }

  async requestChallenge(): Promise<string> {
    await attest(
      makeChallengeRequest({ agentId: this.agentId, workload: "orders", tee: "sevsnp", sentAt: clock.now() }),
      context("attest", { messageId: `c-${this.agentId}-${++this.#sequence}`, deliveryCount: 1 }),
    );
    const message = await this.expectNext();
    if (message.type !== "challenge") throw new Error(`expected a challenge, got ${message.type}`);
    return message.nonce;
  }

  /** Answers `nonce` with evidence of `hostData`, and returns the result (keys unwrapped into `held`). */
  async answer(nonce: string, hostData = HOST_DATA): Promise<AttestationResult> {
    const requestId = `req-${++this.#sequence}-${this.agentId}`;
    const keys = [KEY];
    const runtimeData = this.runtimeKey.bindToNonce(
      nonce,
      requestBinding({ agentId: this.agentId, requestId, workload: "orders", tee: "sevsnp", keys }),
    );
    const report = platform.signReport({
      reportData: runtimeData.reportData.subarray(0, 32),
      hostData: Buffer.from(hostData, "hex"),
    });
    const message = makeAttestationRequest({
      agentId: this.agentId,
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
      challenge: nonce,
      sentAt: clock.now(),
    });
    await attest(message, context("attest", { messageId: requestId, deliveryCount: 1 }));
    // A denial that revokes sends the key events first; they wait in the stash.
    let result = await this.#receive(5_000);
    while (result?.type !== "attestation-result") {
      if (result === undefined) throw new Error(`no result for ${this.agentId}`);
      this.#stash.push(result);
      result = await this.#receive(5_000);
    }
    if (result.verdict === "trusted") {
      for (const key of result.keys) {
        const unwrapped = this.runtimeKey.unwrapReleased(key.releaseResponse);
        if (unwrapped.kty === "oct" || unwrapped.kty === "oct-HSM")
          this.held.set(key.version, unwrapped.bytes);
      }
    }
    return result;
  }

  async attest(hostData = HOST_DATA): Promise<AttestationResult> {
    return this.answer(await this.requestChallenge(), hostData);
  }
}

/** Runs every queued `rotate-key` message through the exported `rotate` handler. */
async function drainRotations(): Promise<number> {
  const receiver = rotationInbox.openRequestReceiver();
  let handled = 0;
  try {
    for (;;) {
      const message = await receiver.receive(300);
      if (message === undefined) return handled;
      await rotate(
        message.body,
        context("rotate", { messageId: message.messageId, deliveryCount: message.deliveryCount }),
      );
      await message.complete();
      handled += 1;
    }
  } finally {
    await receiver.close();
  }
}

/** `shield …` in-process; the last stdout line parsed when `--json` is given. */
async function shield(...argv: string[]): Promise<{ code: number; json: Record<string, unknown> }> {
  const stdout: string[] = [];
  const code = await runCli(argv, { stdout: (l) => stdout.push(l), stderr: () => undefined });
  const json = argv.includes("--json") ? (JSON.parse(stdout.at(-1) ?? "{}") as Record<string, unknown>) : {};
  return { code, json };
}

async function versions(): Promise<string[]> {
  return (await keyStore.listVersions(KEY)).map((v) => v.version);
}

async function auditKinds(partition: string): Promise<string[]> {
  return (await state.listAudit(partition)).map((e) => e.kind);
}

beforeAll(async () => {
  platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  const connectionString = azuriteConnectionString();
  tableName = uniqueTableName("lifecycle");
  stack = await startLocalStack({
    storageConnectionString: connectionString,
    platform,
    clock,
    complianceStatus: "azure-compliant-uvm",
    appraisalPolicy: JSON.stringify({
      sevsnpvm: { hostData: [HOST_DATA], complianceStatus: ["azure-compliant-uvm"] },
    }),
    tableName,
    attestationPeriodSeconds: PERIOD_SECONDS,
    decorateMaaEngine: (engine) => ({
      ...engine,
      issuer: engine.issuer,
      attestSevSnp: async (request) => {
        const token = await engine.attestSevSnp(request);
        issuedTokens.push(token);
        return token;
      },
      attestSgx: (request) => engine.attestSgx(request),
      getSigningCertificates: () => engine.getSigningCertificates(),
      openIdConfiguration: () => engine.openIdConfiguration(),
    }),
    exposeKeyMaterialForTests: true,
    logger: (level, message, fields) => logLines.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`),
  });
  Object.assign(process.env, stack.settings, {
    SHIELD_CHALLENGE_SECONDS: String(CHALLENGE_SECONDS),
    SHIELD_REATTEST_MARGIN_SECONDS: String(MARGIN_SECONDS),
    SHIELD_ROTATE_KEY_QUEUE: rotateQueue,
    SHIELD_KEYVAULT_NAME: "shield-local",
    SHIELD_KEY_LIFECYCLE: JSON.stringify({ [KEY]: { revokeByRotation: true, retireAfterSeconds: 86_400 } }),
  });
  configureComposition({ clock });
  await resetComposition();
  bus = createStorageQueueBus({ connectionString });
  rotationInbox = createStorageQueueBus({ connectionString, requestsQueue: rotateQueue });
  state = await createTableStateStore({ tableName, connectionString });
  keyStore = createKeyVaultKeyStore({
    vaultUrl: stack.keyVault.url,
    credential: localKeyVaultCredential(stack.keyVault.accessToken),
  });
  policy = renderReleasePolicy({
    authority: stack.maa.url,
    measurements: { sevsnpvm: { hostData: [HOST_DATA], complianceStatus: "azure-compliant-uvm" } },
  });
  await keyStore.createKey(KEY, { keyType: "oct-HSM", keySize: 256, releasePolicy: policy });
  keyMaterial.push(await stack.vault.keyMaterialForTests(KEY));
}, 60_000);

afterAll(async () => {
  configureComposition({});
  await resetComposition();
  await bus?.close();
  await rotationInbox?.close();
  await stack?.close();
});

describe("re-attestation, revocation by rotation, reinstatement", () => {
  const agents: Record<string, TestAgent> = {};

  it("an agent that stops answering is revoked at its deadline and not one tick before", async () => {
    agents["silent"] = await TestAgent.create("silent");
    agents["steady"] = await TestAgent.create("steady");
    const attestedAt = clock.now();
    for (const agent of Object.values(agents)) expect((await agent.attest()).verdict).toBe("trusted");
    const [v1] = await versions();

    // Not due yet: the tick sends nothing.
    clock.set(new Date(attestedAt.getTime() + (PERIOD_SECONDS - MARGIN_SECONDS - 5) * 1000));
    await reattest(timer(), context("reattest"));
    expect(await agents["silent"].next(300)).toBeUndefined();

    // Due: each gets a re-attestation challenge, written first, then sent.
    clock.set(new Date(attestedAt.getTime() + (PERIOD_SECONDS - MARGIN_SECONDS + 1) * 1000));
    await reattest(timer(), context("reattest"));
    const challenges = new Map<string, { nonce: string; deadline: string }>();
    for (const [name, agent] of Object.entries(agents)) {
      const message = await agent.expectNext();
      expect(message).toMatchObject({ type: "challenge", reason: "reattest" });
      if (message.type === "challenge") challenges.set(name, message);
      expect((await state.getAgent(agent.agentId))?.challenge?.reason).toBe("reattest");
    }
    // The steady agent answers; the silent one does not.
    const steady = await agents["steady"].answer(challenges.get("steady")!.nonce);
    expect(steady.verdict).toBe("trusted");
    const deadline = new Date(challenges.get("silent")!.deadline);

    // At the deadline itself: not yet missed.
    clock.set(deadline);
    await reattest(timer(), context("reattest"));
    expect((await state.getAgent(agents["silent"].agentId))?.status).toBe("trusted");
    expect(await agents["silent"].next(300)).toBeUndefined();

    // One tick later: revoked, told that the version it holds is revoked.
    clock.set(new Date(deadline.getTime() + 60_000));
    await reattest(timer(), context("reattest"));
    const silent = await state.getAgent(agents["silent"].agentId);
    expect(silent).toMatchObject({ status: "revoked", statusReason: "ERR_CHALLENGE_MISSED" });
    expect(await agents["silent"].expectNext()).toMatchObject({
      type: "key-event",
      event: "revoked",
      keyName: KEY,
      keyVersion: v1,
    });
    expect((await state.getAgent(agents["steady"].agentId))?.status).toBe("trusted");
    expect(await auditKinds(`agent-${agents["silent"].agentId}`)).toContain("agent-revoked");
    expect(await auditKinds(`key-${KEY}`)).toContain("key-revoked");
    // A second tick changes nothing and logs nothing twice.
    const entries = (await state.listAudit(`agent-${agents["silent"].agentId}`)).length;
    await reattest(timer(), context("reattest"));
    expect((await state.listAudit(`agent-${agents["silent"].agentId}`)).length).toBe(entries);
  });

  it("revokes by rotation: a new version the revoked agent cannot obtain and a trusted agent can", async () => {
    const before = await versions();
    expect(await drainRotations()).toBe(1);
    const after = await versions();
    expect(after.length).toBe(before.length + 1);
    const v2 = after.at(-1)!;
    // Read back through the SDK: exportable, and carrying the managed policy.
    const info = await keyStore.getKey(KEY, v2);
    expect(info.exportable).toBe(true);
    expect(samePolicyMeaning(info.releasePolicy!, policy)).toBe(true);
    // The trusted holder is told, re-attests and gets v2; the bytes are the vault's v2.
    const told = await agents["steady"]!.expectNext();
    expect(told).toMatchObject({ type: "key-event", event: "rotated", keyName: KEY, keyVersion: v2 });
    expect((await agents["steady"]!.attest()).verdict).toBe("trusted");
    const v2Material = await stack.vault.keyMaterialForTests(KEY, v2);
    expect(agents["steady"]!.held.get(v2)?.equals(v2Material)).toBe(true);
    expect(v2Material.equals(keyMaterial[0]!)).toBe(false);
    // The revoked agent is told nothing and refused.
    expect(await agents["silent"]!.next(300)).toBeUndefined();
    const refused = await agents["silent"]!.attest();
    expect(refused.verdict).toBe("denied");
    if (refused.verdict !== "trusted") expect(refused.denial.code).toBe("ERR_AGENT_REVOKED");
    expect(agents["silent"]!.held.has(v2)).toBe(false);
    expect(await auditKinds(`key-${KEY}`)).toContain("key-rotated");
  });

  it("reinstating is an operator act, audited, after which the agent attests again", async () => {
    const agentId = agents["silent"]!.agentId;
    const response = await reinstateAgent(
      new HttpRequest({
        method: "POST",
        url: `http://localhost/api/agents/${agentId}/reinstate`,
        params: { agentId },
        headers: { "x-ms-client-principal-name": "ops@example.com" },
      }),
      context("agent-reinstate"),
    );
    expect(response.status).toBe(200);
    expect((await state.getAgent(agentId))?.status).toBe("untrusted");
    const audit = await state.listAudit(`agent-${agentId}`);
    expect(audit.at(-1)).toMatchObject({
      kind: "agent-reinstated",
      details: { operator: "ops@example.com" },
    });
    const result = await agents["silent"]!.attest();
    expect(result.verdict).toBe("trusted");
    const v2 = (await versions()).at(-1)!;
    expect(agents["silent"]!.held.has(v2)).toBe(true);
    const unknown = await reinstateAgent(
      new HttpRequest({
        method: "POST",
        url: "http://localhost/api/agents/nobody/reinstate",
        params: { agentId: "nobody" },
      }),
      context("agent-reinstate"),
    );
    expect(unknown.status).toBe(404);
  });

  it("a denied answer to a re-attestation challenge revokes at once", async () => {
    const agent = await TestAgent.create("drifted");
    expect((await agent.attest()).verdict).toBe("trusted");
    const attestedAt = clock.now();
    clock.set(new Date(attestedAt.getTime() + (PERIOD_SECONDS - MARGIN_SECONDS + 1) * 1000));
    await reattest(timer(), context("reattest"));
    // Every agent due gets its challenge; this one answers with another measurement.
    for (const other of Object.values(agents)) {
      const message = await other.next(500);
      if (message?.type === "challenge") await other.answer(message.nonce);
    }
    const challenge = await agent.expectNext();
    expect(challenge.type).toBe("challenge");
    if (challenge.type !== "challenge") return;
    const result = await agent.answer(challenge.nonce, OTHER_HOST_DATA);
    expect(result.verdict).toBe("denied");
    expect(await state.getAgent(agent.agentId)).toMatchObject({
      status: "revoked",
      statusReason: "ERR_APPRAISAL_DENIED",
    });
    const told = await agent.expectNext();
    expect(told).toMatchObject({ type: "key-event", event: "revoked", keyName: KEY });
    await drainRotations(); // its key is rotated too
  });

  it("an operator can revoke an agent directly", async () => {
    const agentId = agents["steady"]!.agentId;
    const response = await revokeAgent(
      new HttpRequest({
        method: "POST",
        url: `http://localhost/api/agents/${agentId}/revoke`,
        params: { agentId },
      }),
      context("agent-revoke"),
    );
    expect(response.status).toBe(200);
    expect(await state.getAgent(agentId)).toMatchObject({
      status: "revoked",
      statusReason: "ERR_AGENT_REVOKED_BY_OPERATOR",
    });
    await drainRotations();
  });

  it("an operator can rotate a key now: queued, audited with the operator's name, rotated by `rotate`", async () => {
    const before = await versions();
    const rotateNow = (keyName: string) =>
      rotateKeyNow(
        new HttpRequest({
          method: "POST",
          url: `http://localhost/api/keys/${keyName}/rotate`,
          params: { keyName },
          headers: { "x-ms-client-principal-name": "ops@contoso.example" },
        }),
        context("key-rotate"),
      );
    const response = await rotateNow(KEY);
    expect(response.status).toBe(202);
    expect(response.jsonBody).toMatchObject({ keyName: KEY, currentVersion: before.at(-1), queued: true });
    const requested = (await state.listAudit(`key-${KEY}`)).filter(
      (e) => e.kind === "key-rotation-requested",
    );
    expect(requested.at(-1)?.details).toMatchObject({ operator: "ops@contoso.example", reason: "manual" });
    expect(await versions()).toEqual(before); // queued, not yet made: `rotate` makes it
    expect(await drainRotations()).toBe(1);
    const after = await versions();
    expect(after).toHaveLength(before.length + 1);
    expect(samePolicyMeaning((await keyStore.getKey(KEY)).releasePolicy!, policy)).toBe(true);
    expect((await state.getManagedKey(KEY))?.versions.at(-1)).toMatchObject({
      version: after.at(-1),
      reason: "manual",
    });

    // An unknown key is 404, a malformed name 400; neither queues anything.
    const unknown = await rotateNow("no-such-key");
    expect(unknown.status).toBe(404);
    expect((unknown.jsonBody as { error: { code: string } }).error.code).toBe("ERR_KEY_UNKNOWN");
    expect((await rotateNow("bad_name!")).status).toBe(400);
    expect(await drainRotations()).toBe(0);
  });

  it("shield key rotate / agent reinstate call the same endpoints, served by their handlers", async () => {
    const host = await startLocalHttpHost([
      { method: "POST", route: "keys/{keyName}/rotate", functionName: "key-rotate", handler: rotateKeyNow },
      {
        method: "POST",
        route: "agents/{agentId}/reinstate",
        functionName: "agent-reinstate",
        handler: reinstateAgent,
      },
    ]);
    try {
      const before = await versions();
      const rotated = await shield("key", "rotate", KEY, "--url", host.url, "--json");
      expect(rotated.code).toBe(0);
      expect(rotated.json).toMatchObject({ ok: true, keyName: KEY, currentVersion: before.at(-1) });
      expect(await drainRotations()).toBe(1);
      expect(await versions()).toHaveLength(before.length + 1);

      const unknown = await shield("agent", "reinstate", "no-such-agent", "--url", host.url, "--json");
      expect(unknown.code).toBe(1);
      expect(unknown.json).toMatchObject({ ok: false, error: { code: "ERR_AGENT_UNKNOWN" } });
      expect((await shield("key", "rotate", "bad_name!", "--url", host.url)).code).toBe(2);
      expect(await drainRotations()).toBe(0);
    } finally {
      await host.close();
    }
  });
});

describe("Key Vault events", () => {
  const eventGrid = (
    id: string,
    type: string,
    version: string,
    nbf: number | string,
    exp: number | string,
  ) => [
    {
      id,
      topic: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/shield-local",
      subject: KEY,
      eventType: `Microsoft.KeyVault.${type}`,
      eventTime: clock.now().toISOString(),
      data: {
        Id: `https://shield-local.vault.azure.net/keys/${KEY}/${version}`,
        VaultName: "shield-local",
        ObjectType: "Key",
        ObjectName: KEY,
        Version: version,
        NBF: nbf,
        EXP: exp,
      },
      dataVersion: "1",
      metadataVersion: "1",
    },
  ];
  const cloudEvent = (id: string, type: string, version: string) => ({
    specversion: "1.0",
    id,
    source: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/shield-local",
    subject: KEY,
    type: `Microsoft.KeyVault.${type}`,
    time: clock.now().toISOString(),
    data: {
      Id: `x/${version}`,
      VaultName: "shield-local",
      ObjectType: "Key",
      ObjectName: KEY,
      Version: version,
      NBF: "1559081980",
      EXP: "1559082102",
    },
  });
  const post = (body: unknown) =>
    keyVaultEventsWebhook(
      new HttpRequest({
        method: "POST",
        url: "http://localhost/api/keyvault-events",
        body: { string: typeof body === "string" ? body : JSON.stringify(body) },
      }),
      context("keyvault-events-webhook"),
    );

  it("answers the Event Grid subscription validation and the CloudEvents handshake", async () => {
    const validation = await post([
      {
        id: "v-1",
        eventType: "Microsoft.EventGrid.SubscriptionValidationEvent",
        subject: "",
        eventTime: clock.now().toISOString(),
        data: { validationCode: "512d38b6-c7b8-40c8-89fe-f46f9e9622b6" },
        dataVersion: "2",
      },
    ]);
    expect(validation.jsonBody).toEqual({ validationResponse: "512d38b6-c7b8-40c8-89fe-f46f9e9622b6" });
    const options = await keyVaultEventsWebhook(
      new HttpRequest({
        method: "OPTIONS",
        url: "http://localhost/api/keyvault-events",
        headers: { "webhook-request-origin": "eventgrid.azure.net" },
      }),
      context("keyvault-events-webhook"),
    );
    expect(options.status).toBe(200);
    expect(options.headers).toMatchObject({ "WebHook-Allowed-Origin": "eventgrid.azure.net" });
  });

  it.each([
    ["the Event Grid schema, NBF/EXP as numbers", "eventgrid-numbers"],
    ["the Event Grid schema, NBF/EXP as strings", "eventgrid-strings"],
    ["the CloudEvents 1.0 schema", "cloudevents"],
  ])(
    "KeyNearExpiry in %s makes exactly one new version with the managed policy, once",
    async (_name, kind) => {
      const current = (await versions()).at(-1)!;
      const id = `${kind}-${run}`;
      const body =
        kind === "cloudevents"
          ? cloudEvent(id, "KeyNearExpiry", current)
          : eventGrid(
              id,
              "KeyNearExpiry",
              current,
              kind === "eventgrid-numbers" ? 1559081980 : "1559081980",
              kind === "eventgrid-numbers" ? 1559082102 : "1559082102",
            );
      const before = await versions();
      // Numbers go through the Event Grid trigger (one event), the rest through the webhook.
      const deliver = async () => {
        if (Array.isArray(body) && kind === "eventgrid-numbers") {
          await keyVaultEvent(body[0], context("keyvault-events"));
        } else expect((await post(body)).status).toBe(200);
      };
      await deliver();
      expect(await drainRotations()).toBe(1);
      // The same event again (Event Grid delivers at least once): no second version.
      await deliver();
      await drainRotations();
      const after = await versions();
      expect(after.length).toBe(before.length + 1);
      const info = await keyStore.getKey(KEY, after.at(-1));
      expect(info.exportable).toBe(true);
      expect(samePolicyMeaning(info.releasePolicy!, policy)).toBe(true);
    },
  );

  it("adopts a version made outside Shield: fixes its release policy and tells holders", async () => {
    const holder = await TestAgent.create("holder");
    expect((await holder.attest()).verdict).toBe("trusted");
    // Someone rotates in the portal and the new version has another (wider, but safe) policy.
    const wider = renderReleasePolicy({
      authority: stack.maa.url,
      measurements: {
        sevsnpvm: { hostData: [HOST_DATA, OTHER_HOST_DATA], complianceStatus: "azure-compliant-uvm" },
      },
    });
    const outside = await keyStore.rotate(KEY);
    await keyStore.updateReleasePolicy(KEY, outside.version, wider);
    const before = await versions();
    expect((await post(eventGrid(`new-${run}`, "KeyNewVersionCreated", outside.version, 1, 2))).status).toBe(
      200,
    );
    expect(await drainRotations()).toBe(1);
    expect(await versions()).toEqual(before); // adopted, not rotated again
    const fixed = await keyStore.getKey(KEY, outside.version);
    expect(samePolicyMeaning(fixed.releasePolicy!, policy)).toBe(true);
    expect(samePolicyMeaning(fixed.releasePolicy!, wider)).toBe(false);
    expect(await holder.expectNext()).toMatchObject({
      type: "key-event",
      event: "rotated",
      keyVersion: outside.version,
    });
    expect(await auditKinds(`key-${KEY}`)).toContain("key-version-adopted");
  });

  it.each([
    ["not JSON", "{"],
    ["an empty batch", "[]"],
    [
      "Key Vault data without a key name",
      JSON.stringify([
        {
          id: "x",
          eventType: "Microsoft.KeyVault.KeyNearExpiry",
          data: { VaultName: "shield-local", ObjectType: "Key" },
        },
      ]),
    ],
    [
      "an unknown CloudEvents version",
      JSON.stringify({ specversion: "0.3", id: "x", type: "t", source: "s" }),
    ],
    ["NBF as a word", JSON.stringify(eventGrid("bad-nbf", "KeyNearExpiry", "v", "soon", 1))],
  ])("refuses %s with ERR_EVENT_MALFORMED, records it, and changes nothing", async (_name, body) => {
    const before = await versions();
    const intake = (await state.listAudit("intake", { limit: 1000 })).length;
    const response = await post(body);
    expect(response.status).toBe(400);
    expect(response.jsonBody).toMatchObject({ error: { code: "ERR_EVENT_MALFORMED" } });
    expect(await drainRotations()).toBe(0);
    expect(await versions()).toEqual(before);
    const recorded = await state.listAudit("intake", { limit: 1000 });
    expect(recorded.length).toBe(intake + 1);
    expect(recorded.at(-1)).toMatchObject({
      kind: "event-rejected",
      details: { code: "ERR_EVENT_MALFORMED" },
    });
  });

  it("ignores events for other vaults and keys it does not manage", async () => {
    const other = eventGrid(`other-${run}`, "KeyNearExpiry", "v1", 1, 2);
    other[0]!.data.VaultName = "someone-else";
    const foreign = eventGrid(`foreign-${run}`, "KeyNearExpiry", "v1", 1, 2);
    foreign[0]!.data.ObjectName = "not-managed-key";
    const response = await post([...other, ...foreign]);
    expect(response.jsonBody).toEqual({ queued: 0, ignored: 2 });
    expect(await drainRotations()).toBe(0);
  });
});

describe("scheduled rotation", () => {
  it("rotates a key older than its period once, however often the timer runs", async () => {
    process.env["SHIELD_KEY_LIFECYCLE"] = JSON.stringify({
      [KEY]: { revokeByRotation: true, rotationPeriodSeconds: 7 * 86_400, retireAfterSeconds: 86_400 },
    });
    await resetComposition();
    const before = await versions();
    await rotationScheduleTick(timer(), context("rotation-schedule"));
    expect(await drainRotations()).toBe(0); // the current version is young
    clock.advance(8 * 86_400 * 1000);
    await rotationScheduleTick(timer(), context("rotation-schedule"));
    await rotationScheduleTick(timer(), context("rotation-schedule"));
    await drainRotations();
    expect((await versions()).length).toBe(before.length + 1);
  });
});

describe("nothing secret leaves the functions", () => {
  it("no key material, token or evidence in any log line, table row or message", async () => {
    const all = await versions();
    const material = await Promise.all(all.map((v) => stack.vault.keyMaterialForTests(KEY, v)));
    const haystack = [logLines.join("\n"), bodies.join("\n"), await dumpTable()].join("\n");
    expect(material.length).toBeGreaterThan(3);
    for (const bytes of material) {
      for (const form of [bytes.toString("hex"), bytes.toString("base64"), bytes.toString("base64url")]) {
        expect(haystack.includes(form)).toBe(false);
      }
    }
    expect(issuedTokens.length).toBeGreaterThan(3);
    for (const token of issuedTokens) {
      expect(haystack.includes(token)).toBe(false);
      expect(haystack.includes(token.split(".")[1]!)).toBe(false);
    }
    expect(haystack.includes(platform.leafPem.split("\n")[1]!)).toBe(false); // evidence: the VCEK chain
  });
});

async function dumpTable(): Promise<string> {
  const { TableClient } = await import("@azure/data-tables");
  const client = TableClient.fromConnectionString(azuriteConnectionString(), tableName, {
    allowInsecureConnection: true,
  });
  const rows: string[] = [];
  for await (const entity of client.listEntities()) rows.push(JSON.stringify(entity));
  expect(rows.length).toBeGreaterThan(10);
  return rows.join("\n");
}
