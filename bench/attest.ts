/**
 * Attestations handled per second by one process running the `attest` function against the
 * local MAA- and Key Vault-compatible servers and Azurite (the embedded default's stack), side
 * by side with the bare attestation call to the local MAA server that every attestation must
 * make; and Key Vault calls per attestation, which must be exactly one release per requested
 * key when trusted and zero when denied.
 */
import functionsRuntime from "@azure/functions";
import { performance } from "node:perf_hooks";
import { startAzurite } from "../adapters/local/azurite.js";
import { startLocalStack } from "../adapters/local/stack.js";
import { createKeyVaultKeyStore } from "../adapters/keyvault/key-store.js";
import { localKeyVaultCredential } from "../adapters/local/keyvault/credential.js";
import { createMaaClient } from "../adapters/maa/client.js";
import { attest } from "../functions/attest.js";
import { resetComposition } from "../functions/composition/root.js";
import { createSimulatedSnpPlatform } from "../core/evidence/simulated/sevsnp.js";
import { buildMaaSnpEnvelope } from "../core/evidence/sevsnp/index.js";
import { renderReleasePolicy } from "../core/policy/index.js";
import { makeAttestationRequest, type AttestationRequest } from "../core/messages/index.js";
import { createRuntimeKey } from "../agent/runtime-key.js";

const HOST_DATA = "7c".repeat(32);
const KEYS = ["bench-a", "bench-b"];

export interface AttestBenchResult {
  readonly attestationsPerSecond: number;
  readonly concurrency: number;
  readonly bareMaaCallsPerSecond: number;
  readonly releasesPerTrusted: number;
  readonly releasesPerDenied: number;
  readonly keysPerRequest: number;
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
  options: { count?: number; concurrency?: number } = {},
): Promise<AttestBenchResult> {
  const count = options.count ?? 60;
  const concurrency = options.concurrency ?? 4;
  const azurite = await startAzurite();
  const platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  const stack = await startLocalStack({
    storageConnectionString: azurite.connectionString,
    platform,
    complianceStatus: "azure-compliant-uvm",
    appraisalPolicy: JSON.stringify({ sevsnpvm: { hostData: [HOST_DATA] } }),
    tableName: "benchstate",
  });
  try {
    Object.assign(process.env, stack.settings);
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
    const debug = platform.signReport({ reportData, hostData: Buffer.from(HOST_DATA, "hex"), debug: true });
    const message = (i: number, report: Buffer, tag: string): AttestationRequest =>
      makeAttestationRequest({
        agentId: `bench-${tag}-${i % 16}`,
        requestId: `${tag}-${i}-${Date.now()}`,
        workload: "bench",
        tee: "sevsnp",
        evidence: {
          tee: "sevsnp",
          format: "raw",
          report: report.toString("base64url"),
          vcekChain: platform.leafPem + platform.chainPem,
        },
        runtimeData: runtimeKey.runtimeData.base64url,
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
    for (let i = 0; i < 5; i++) await attest(message(i, good, "warm"), context(i));

    const maa = createMaaClient({ instanceUrl: stack.maa.url });
    const envelope = buildMaaSnpEnvelope({ report: good, vcek: platform.leafPem, chain: platform.chainPem });
    const bareMaa = () =>
      maa
        .attestSevSnp({ report: envelope, runtimeData: Buffer.from(runtimeKey.runtimeData.bytes) })
        .then(() => undefined);
    for (let i = 0; i < 5; i++) await bareMaa();

    const before = stack.vault.stats().calls;
    // Alternate the two workloads in rounds so machine noise hits both alike.
    const rounds = 3;
    const full: number[] = [];
    const bare: number[] = [];
    for (let r = 0; r < rounds; r++) {
      full.push(
        await timed(count, concurrency, (i) => attest(message(r * count + i, good, "ok"), context(i))),
      );
      bare.push(await timed(count, concurrency, () => bareMaa()));
    }
    const releasesPerTrusted = (stack.vault.stats().calls - before) / (rounds * count);
    const beforeDenied = stack.vault.stats().calls;
    for (let i = 0; i < 10; i++) await attest(message(i, debug, "denied"), context(i));
    const releasesPerDenied = (stack.vault.stats().calls - beforeDenied) / 10;
    const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]!;
    return {
      attestationsPerSecond: median(full),
      concurrency,
      bareMaaCallsPerSecond: median(bare),
      releasesPerTrusted,
      releasesPerDenied,
      keysPerRequest: KEYS.length,
    };
  } finally {
    await resetComposition();
    await stack.close();
    await azurite.stop();
  }
}

export function formatAttestBench(r: AttestBenchResult): string {
  return [
    `attest function, one process, local MAA + Key Vault servers + Azurite (${r.concurrency} in flight, ${r.keysPerRequest} keys per request)`,
    `  attestations handled (evidence → token → appraisal → ${r.keysPerRequest} releases → state → result)  ${r.attestationsPerSecond.toFixed(1).padStart(7)} /s`,
    `  bare MAA attest call alone (HTTP to the local attestation server)                  ${r.bareMaaCallsPerSecond.toFixed(1).padStart(7)} /s`,
    `  ratio ${((r.attestationsPerSecond / r.bareMaaCallsPerSecond) * 100).toFixed(1)}% of the bare attestation rate`,
    `  Key Vault release calls per trusted attestation: ${r.releasesPerTrusted.toFixed(2)} (expected ${r.keysPerRequest}); per denied: ${r.releasesPerDenied.toFixed(2)} (expected 0)`,
  ].join("\n");
}
