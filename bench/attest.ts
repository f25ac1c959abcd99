/**
 * Attestations handled per second by one process running the `attest` function against the
 * local MAA- and Key Vault-compatible servers and Azurite (the embedded default's stack), side
 * by side with the bare attestation call to the local MAA server that every attestation must
 * make; and Key Vault calls per attestation, which must be exactly one release per requested
 * key when trusted and zero when denied.
 *
 * Every attestation is the whole protocol: a `challenge-request` (answered with a signed
 * challenge), then the attestation request binding that nonce (answered with a signed result).
 * The control plane's signing cost is measured in the same run: Key Vault `sign` calls per
 * attestation (expected 2: the challenge and the result) and the bare `sign` call rate, beside
 * the agent's cost of verifying one signed message.
 */
import functionsRuntime from "@azure/functions";
import { createServer, request as httpRequest, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { performance } from "node:perf_hooks";
import { startAzurite } from "../adapters/local/azurite.js";
import { startLocalStack } from "../local/stack.js";
import { createKeyVaultKeyStore } from "../adapters/keyvault/key-store.js";
import { localKeyVaultCredential } from "../adapters/local/keyvault/credential.js";
import { createMaaClient } from "../adapters/maa/client.js";
import { attest } from "../functions/attest.js";
import { resetComposition } from "../functions/composition/root.js";
import { createSimulatedSnpPlatform } from "../core/evidence/simulated/sevsnp.js";
import { buildMaaSnpEnvelope } from "../core/evidence/sevsnp/index.js";
import { renderReleasePolicy } from "../core/policy/index.js";
import {
  makeAttestationRequest,
  makeChallengeRequest,
  requestBinding,
  type AttestationRequest,
} from "../core/messages/index.js";
import { createRuntimeKey } from "../agent/runtime-key.js";
import { createTableStateStore } from "../adapters/state/table.js";
import { createKeyVaultControlSigner } from "../adapters/keyvault/control-signer.js";
import { controlKeySet, signControlMessage, verifyControlMessage } from "../core/control/signed.js";
import { makeChallenge } from "../core/messages/index.js";
import type { ControlAlgorithm } from "../core/ports/control-signer.js";

const HOST_DATA = "7c".repeat(32);
const KEYS = ["bench-a", "bench-b"];

export interface AttestBenchResult {
  readonly attestationsPerSecond: number;
  readonly concurrency: number;
  readonly bareMaaCallsPerSecond: number;
  readonly releasesPerTrusted: number;
  readonly releasesPerDenied: number;
  readonly keysPerRequest: number;
  /** Key Vault `sign` calls per trusted attestation (the challenge and the result). */
  readonly signaturesPerAttestation: number;
  /** The bare Key Vault `sign` call (SDK → local server), measured beside the above. */
  readonly bareSignsPerSecond: number;
  /** The agent's verification of one signed control message. */
  readonly verifiesPerSecond: number;
  /** Latency injected on every MAA attest call and every Key Vault release and sign, in ms. */
  readonly latencyMs: number;
  /** Table Storage HTTP requests per attestation (challenge request + attestation request). */
  readonly stateRoundTrips: number;
  /** The same split: the challenge-request's share and the attestation-request's. */
  readonly stateRoundTripsByPhase: { readonly challenge: number; readonly attestation: number };
  /** Table requests by method and path kind during the sampled attestations. */
  readonly stateRequestsByKind: Readonly<Record<string, number>>;
}

/**
 * An HTTP proxy in front of Azurite's Table endpoint that counts every request the functions'
 * state store makes: the round trips an attestation costs, whatever the adapter batches.
 */
async function startCountingTableProxy(target: string): Promise<{
  url: string;
  count(): number;
  byKind(): Record<string, number>;
  reset(): void;
  close(): Promise<void>;
}> {
  const upstream = new URL(target);
  let total = 0;
  let kinds: Record<string, number> = {};
  const server: Server = createServer((req, res) => {
    total++;
    const path = (req.url ?? "").split("?")[0] ?? "";
    const kind = `${req.method} ${path.includes("(") ? "entity" : path.endsWith("$batch") ? "batch" : "table"}`;
    kinds[kind] = (kinds[kind] ?? 0) + 1;
    const forward = httpRequest(
      {
        host: upstream.hostname,
        port: upstream.port,
        method: req.method,
        path: req.url,
        headers: req.headers,
      },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    forward.on("error", () => res.destroy());
    req.pipe(forward);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    count: () => total,
    byKind: () => ({ ...kinds }),
    reset: () => {
      total = 0;
      kinds = {};
    },
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

async function timed(count: number, concurrency: number, run: (i: number) => Promise<void>): Promise<number> {
  let next = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) await run(next++);
    }),
  );
  return (count * 1000) / (performance.now() - start);
}

export async function benchAttest(
  options: { count?: number; concurrency?: number; latencyMs?: number } = {},
): Promise<AttestBenchResult> {
  const count = options.count ?? 60;
  const concurrency = options.concurrency ?? 4;
  const latencyMs = options.latencyMs ?? 0;
  const azurite = await startAzurite();
  const tableProxy = await startCountingTableProxy(new URL(azurite.tableEndpoint).origin);
  const proxiedState = azurite.connectionString.replace(
    /TableEndpoint=http:\/\/[^/;]+/,
    `TableEndpoint=${tableProxy.url}`,
  );
  const platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  const stack = await startLocalStack({
    storageConnectionString: azurite.connectionString,
    platform,
    complianceStatus: "azure-compliant-uvm",
    appraisalPolicy: JSON.stringify({ sevsnpvm: { hostData: [HOST_DATA] } }),
    tableName: "benchstate",
  });
  try {
    // The functions' state goes through the counting proxy; the bench reads state directly.
    Object.assign(process.env, stack.settings, { SHIELD_STATE_CONNECTION: proxiedState });
    await resetComposition();
    const keyStore = createKeyVaultKeyStore({
      vaultUrl: stack.keyVault.url,
      credential: localKeyVaultCredential(stack.keyVault.accessToken),
    });
    const releasePolicy = renderReleasePolicy({
      authority: stack.maa.url,
      measurements: { sevsnpvm: { hostData: [HOST_DATA] } },
    });
    for (const name of KEYS)
      await keyStore.createKey(name, { keyType: "oct-HSM", keySize: 256, releasePolicy });
    const runtimeKey = await createRuntimeKey();
    const reportData = runtimeKey.runtimeData.reportData.subarray(0, 32);
    const good = platform.signReport({ reportData, hostData: Buffer.from(HOST_DATA, "hex") });
    const state = await createTableStateStore({
      connectionString: azurite.connectionString,
      tableName: "benchstate",
      createTable: true,
    });
    /** The protocol as an agent runs it: ask for a challenge, then attest with evidence binding it. */
    const attestOnce = async (i: number, tag: string, debug = false): Promise<void> => {
      const agentId = `bench-${tag}-${i}`;
      await attest(
        makeChallengeRequest({ agentId, workload: "bench", tee: "sevsnp", sentAt: new Date() }),
        context(i),
      );
      const nonce = (await state.getAgent(agentId))?.challenge?.nonce;
      if (nonce === undefined) throw new Error("no challenge was issued");
      const requestId = `${tag}-${i}`;
      const bound = runtimeKey.bindToNonce(
        nonce,
        requestBinding({ agentId, requestId, workload: "bench", tee: "sevsnp", keys: KEYS }),
      );
      const report = platform.signReport({
        reportData: bound.reportData.subarray(0, 32),
        hostData: Buffer.from(HOST_DATA, "hex"),
        ...(debug ? { debug: true } : {}),
      });
      await attest(message(agentId, requestId, report, bound.base64url, nonce), context(i));
    };
    const message = (
      agentId: string,
      requestId: string,
      report: Buffer,
      runtimeData: string,
      challenge: string,
    ): AttestationRequest =>
      makeAttestationRequest({
        agentId,
        requestId,
        workload: "bench",
        tee: "sevsnp",
        evidence: {
          tee: "sevsnp",
          format: "raw",
          report: report.toString("base64url"),
          vcekChain: platform.leafPem + platform.chainPem,
        },
        runtimeData,
        challenge,
        keys: KEYS,
        sentAt: new Date(),
      });
    const context = (i: number) =>
      new functionsRuntime.InvocationContext({
        functionName: "attest",
        invocationId: `b${i}`,
        triggerMetadata: { messageId: `m${i}`, deliveryCount: 1 },
        logHandler: () => undefined,
      });

    // Warm up (JIT, connections, caches of signing keys and chains).
    for (let i = 0; i < 5; i++) await attestOnce(i, "warm");

    // State round trips, one attestation at a time, each phase on its own.
    const sampled = 10;
    let challengeTrips = 0;
    let attestationTrips = 0;
    tableProxy.reset();
    for (let i = 0; i < sampled; i++) {
      const agentId = `bench-trips-${i}`;
      const before = tableProxy.count();
      await attest(
        makeChallengeRequest({ agentId, workload: "bench", tee: "sevsnp", sentAt: new Date() }),
        context(i),
      );
      const between = tableProxy.count();
      challengeTrips += between - before;
      const nonce = (await state.getAgent(agentId))?.challenge?.nonce;
      if (nonce === undefined) throw new Error("no challenge was issued");
      const requestId = `trips-${i}`;
      const bound = runtimeKey.bindToNonce(
        nonce,
        requestBinding({ agentId, requestId, workload: "bench", tee: "sevsnp", keys: KEYS }),
      );
      const report = platform.signReport({
        reportData: bound.reportData.subarray(0, 32),
        hostData: Buffer.from(HOST_DATA, "hex"),
      });
      const during = tableProxy.count();
      await attest(message(agentId, requestId, report, bound.base64url, nonce), context(i));
      attestationTrips += tableProxy.count() - during;
    }
    const stateRequestsByKind = Object.fromEntries(
      Object.entries(tableProxy.byKind()).map(([kind, n]) => [kind, n / sampled]),
    );

    // The timed rounds go to Azurite directly, so the proxy's hop is not in the figures.
    process.env["SHIELD_STATE_CONNECTION"] = azurite.connectionString;
    await resetComposition();
    for (let i = 0; i < 3; i++) await attestOnce(i, "rewarm");

    if (latencyMs > 0) {
      stack.maa.faults.inject("attestSevSnpVm", { kind: "latency", ms: latencyMs });
      stack.keyVault.faults.inject("release", { kind: "latency", ms: latencyMs });
      stack.keyVault.faults.inject("sign", { kind: "latency", ms: latencyMs });
    }

    const maa = createMaaClient({ instanceUrl: stack.maa.url });
    const envelope = buildMaaSnpEnvelope({ report: good, vcek: platform.leafPem, chain: platform.chainPem });
    const bareMaa = () =>
      maa
        .attestSevSnp({ report: envelope, runtimeData: Buffer.from(runtimeKey.runtimeData.bytes) })
        .then(() => undefined);
    for (let i = 0; i < 5; i++) await bareMaa();

    // The control-plane key through the same SDK path the functions use, and the agent's check.
    const signer = createKeyVaultControlSigner({
      keyId: stack.settings["SHIELD_CONTROL_KEY_ID"]!,
      algorithm: stack.settings["SHIELD_CONTROL_KEY_ALGORITHM"] as ControlAlgorithm,
      credential: localKeyVaultCredential(stack.keyVault.accessToken),
    });
    const digest = Buffer.alloc(32, 7);
    const bareSign = () => signer.sign(digest).then(() => undefined);
    for (let i = 0; i < 5; i++) await bareSign();
    const controlKeys = controlKeySet(stack.controlKeys);
    const sample = await signControlMessage(
      makeChallenge({
        agentId: "bench-verify",
        nonce: "n".repeat(43),
        deadline: new Date(Date.now() + 300_000),
        sentAt: new Date(),
      }),
      { signer, messageId: "bench-message", issuedAt: new Date(), expiresAt: new Date(Date.now() + 300_000) },
    );
    const verifyOnce = () =>
      verifyControlMessage(sample.jws, { keys: controlKeys, agentId: "bench-verify", at: new Date() }).then(
        () => undefined,
      );

    const before = stack.vault.stats().calls;
    const signaturesBefore = stack.vault.stats().signatures;
    // Alternate the two workloads in rounds so machine noise hits both alike.
    const rounds = 3;
    const full: number[] = [];
    const bare: number[] = [];
    const signs: number[] = [];
    const verifies: number[] = [];
    for (let r = 0; r < rounds; r++) {
      full.push(await timed(count, concurrency, (i) => attestOnce(r * count + i, "ok")));
      bare.push(await timed(count, concurrency, () => bareMaa()));
      signs.push(await timed(count, concurrency, () => bareSign()));
      verifies.push(await timed(count * 10, 1, () => verifyOnce()));
    }
    const releasesPerTrusted = (stack.vault.stats().calls - before) / (rounds * count);
    const signaturesPerAttestation =
      (stack.vault.stats().signatures - signaturesBefore - rounds * count) / (rounds * count);
    const beforeDenied = stack.vault.stats().calls;
    for (let i = 0; i < 10; i++) await attestOnce(i, "denied", true);
    const releasesPerDenied = (stack.vault.stats().calls - beforeDenied) / 10;
    const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]!;
    return {
      attestationsPerSecond: median(full),
      concurrency,
      bareMaaCallsPerSecond: median(bare),
      releasesPerTrusted,
      releasesPerDenied,
      keysPerRequest: KEYS.length,
      signaturesPerAttestation,
      bareSignsPerSecond: median(signs),
      verifiesPerSecond: median(verifies),
      latencyMs,
      stateRoundTrips: (challengeTrips + attestationTrips) / sampled,
      stateRoundTripsByPhase: {
        challenge: challengeTrips / sampled,
        attestation: attestationTrips / sampled,
      },
      stateRequestsByKind,
    };
  } finally {
    await resetComposition();
    await stack.close();
    await tableProxy.close();
    await azurite.stop();
  }
}

export function formatAttestBench(r: AttestBenchResult): string {
  return [
    `attest function, one process, local MAA + Key Vault servers + Azurite (${r.concurrency} in flight, ${r.keysPerRequest} keys per request, ${r.latencyMs} ms injected MAA / Key Vault latency)`,
    `  attestations handled (evidence → token → appraisal → ${r.keysPerRequest} releases → state → result)  ${r.attestationsPerSecond.toFixed(1).padStart(7)} /s`,
    `  bare MAA attest call alone (HTTP to the local attestation server)                  ${r.bareMaaCallsPerSecond.toFixed(1).padStart(7)} /s`,
    `  ratio ${((r.attestationsPerSecond / r.bareMaaCallsPerSecond) * 100).toFixed(1)}% of the bare attestation rate`,
    `  Key Vault release calls per trusted attestation: ${r.releasesPerTrusted.toFixed(2)} (expected ${r.keysPerRequest}); per denied: ${r.releasesPerDenied.toFixed(2)} (expected 0)`,
    `control plane signing (same run)`,
    `  Key Vault sign calls per attestation (challenge + result): ${r.signaturesPerAttestation.toFixed(2)} (expected 2)`,
    `  bare Key Vault sign call (SDK → local server)                                      ${r.bareSignsPerSecond.toFixed(1).padStart(7)} /s`,
    `  agent: verify one signed control message (RS256, pinned key)                        ${r.verifiesPerSecond.toFixed(1).padStart(7)} /s`,
    `  signing share of one attestation: ${(((2 * r.attestationsPerSecond) / r.bareSignsPerSecond) * 100).toFixed(1)}% of its time (2 signs at the bare rate)`,
    `state store (Table Storage HTTP requests, counted at a proxy in front of Azurite)`,
    `  per attestation: ${r.stateRoundTrips.toFixed(1)} (challenge request ${r.stateRoundTripsByPhase.challenge.toFixed(1)}, attestation request ${r.stateRoundTripsByPhase.attestation.toFixed(1)})`,
    `  by kind: ${Object.entries(r.stateRequestsByKind)
      .map(([k, n]) => `${k} ${n.toFixed(1)}`)
      .join(", ")}`,
  ].join("\n");
}
