/**
 * Attestations per second through the local stack with the bus on the wire: the `attest`
 * function under the local functions host, light simulated agents (test/support/light-agent.ts)
 * speaking the protocol — challenge request, signed challenge, evidence, signed result — over
 * the local Service Bus endpoint through the unmodified `@azure/service-bus` client, beside the
 * same over Storage Queues on Azurite, in the same run.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import { startAzurite } from "../adapters/local/azurite.js";
import { startLocalStack } from "../local/stack.js";
import { startLocalFunctionsHost } from "../adapters/local/functions-host.js";
import { createKeyVaultKeyStore } from "../adapters/keyvault/key-store.js";
import { localKeyVaultCredential } from "../adapters/local/keyvault/credential.js";
import { createStorageQueueBus } from "../adapters/storage-queue/bus.js";
import { startLocalServiceBus } from "../adapters/local/servicebus/server.js";
import { createServiceBusClientFromConnectionString } from "../adapters/servicebus/client.js";
import { createServiceBusLocalBus } from "../adapters/servicebus/local-bus.js";
import { REQUESTS_QUEUE, RESULTS_QUEUE, type LocalBus } from "../core/ports/bus.js";
import { createSimulatedSnpPlatform } from "../core/evidence/simulated/sevsnp.js";
import { renderReleasePolicy } from "../core/policy/index.js";
import { attest } from "../functions/attest.js";
import { resetComposition } from "../functions/composition/root.js";
import { createRuntimeKey } from "../agent/runtime-key.js";
import { LightAgent } from "../test/support/light-agent.js";

const HOST_DATA = "5e".repeat(32);
const KEY = "bench-bus-key";

export interface BusAttestBenchResult {
  readonly agents: number;
  readonly attestations: number;
  readonly storageQueue: number;
  readonly serviceBus: number;
}

export async function benchBusAttest(
  options: { agents?: number; rounds?: number } = {},
): Promise<BusAttestBenchResult> {
  const agentCount = options.agents ?? 8;
  const rounds = options.rounds ?? 3;
  const azurite = await startAzurite();
  const platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  const stack = await startLocalStack({
    storageConnectionString: azurite.connectionString,
    platform,
    appraisalPolicy: JSON.stringify({ sevsnpvm: { hostData: [HOST_DATA] } }),
    tableName: "benchbus",
  });
  const runtimeKey = await createRuntimeKey();
  try {
    const keyStore = createKeyVaultKeyStore({
      vaultUrl: stack.keyVault.url,
      credential: localKeyVaultCredential(stack.keyVault.accessToken),
    });
    await keyStore.createKey(KEY, {
      keyType: "oct-HSM",
      keySize: 256,
      releasePolicy: renderReleasePolicy({
        authority: stack.maa.url,
        measurements: { sevsnpvm: { hostData: [HOST_DATA] } },
      }),
    });

    /** Attestations per second of `agentCount` agents, `rounds` each, over `bus`. */
    const measure = async (bus: LocalBus, settings: Record<string, string>): Promise<number> => {
      Object.assign(process.env, stack.settings, settings);
      await resetComposition();
      const host = startLocalFunctionsHost({
        functionName: "attest",
        handler: attest,
        receiver: bus.openRequestReceiver(),
        concurrency: 4,
      });
      const agents = Array.from(
        { length: agentCount },
        (_, i) =>
          new LightAgent(
            {
              platform,
              runtimeKey,
              controlKeys: stack.controlKeys,
              requests: bus,
              openInbox: (agentId) => bus.openAgentInbox(agentId),
            },
            `bench-bus-${randomUUID().slice(0, 8)}-${i}`,
            { hostData: HOST_DATA, keys: [KEY] },
          ),
      );
      try {
        await Promise.all(agents.map((a) => a.attest())); // warm: connections, sessions, caches
        const started = performance.now();
        await Promise.all(
          agents.map(async (a) => {
            for (let r = 0; r < rounds; r++) {
              const { result } = await a.attest();
              if (result.verdict !== "trusted") throw new Error(`bench attestation ${result.verdict}`);
            }
          }),
        );
        return (agentCount * rounds * 1000) / (performance.now() - started);
      } finally {
        for (const a of agents) await a.close();
        await host.stop();
        for (const name of Object.keys(settings)) delete process.env[name];
        await resetComposition();
      }
    };

    const storage = createStorageQueueBus({
      connectionString: azurite.connectionString,
      requestsQueue: `benchbus${randomBytes(4).toString("hex")}`,
      minPollMs: 20,
      maxPollMs: 100,
    });
    let storageQueue: number;
    try {
      storageQueue = await measure(storage, {});
    } finally {
      await storage.close();
    }

    const functionsKey = randomBytes(32).toString("base64");
    const endpoint = await startLocalServiceBus({
      queues: [{ name: REQUESTS_QUEUE }, { name: RESULTS_QUEUE, requiresSession: true }],
      rules: [{ keyName: "functions", key: functionsKey, rights: ["Send", "Listen"] }],
    });
    const connection = endpoint.connectionString("functions");
    const client = await createServiceBusClientFromConnectionString(connection);
    let serviceBus: number;
    try {
      serviceBus = await measure(createServiceBusLocalBus({ client }), {
        SHIELD_BUS: "servicebus",
        ServiceBusConnection: connection,
      });
    } finally {
      await client.close();
      await endpoint.close();
    }
    return { agents: agentCount, attestations: agentCount * rounds, storageQueue, serviceBus };
  } finally {
    await resetComposition();
    await stack.close();
    await azurite.stop();
  }
}

export function formatBusAttestBench(r: BusAttestBenchResult): string {
  return [
    `attest under the local host with ${r.agents} light agents on the bus (${r.attestations} timed attestations per transport)`,
    `  over Service Bus (local AMQP endpoint, @azure/service-bus)   ${r.serviceBus.toFixed(1).padStart(7)} /s`,
    `  over Storage Queues (Azurite)                                 ${r.storageQueue.toFixed(1).padStart(7)} /s`,
    `  ratio ${(r.serviceBus / r.storageQueue).toFixed(2)}× the Storage Queue rate`,
  ].join("\n");
}
