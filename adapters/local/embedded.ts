/**
 * `npm start`: Shield on one machine, no Azure account. It starts Azurite (Table Storage and
 * Storage Queues), a local MAA-compatible attestation server that trusts only a freshly made
 * simulated SEV-SNP platform, and a local Key Vault-compatible server; creates a demo key whose
 * release policy names the demo workload's measurement; runs the `attest` function under a local
 * host fed from the requests queue; and then plays an agent in a simulated confidential
 * container: evidence bound to its in-memory runtime key goes over the queue, and the key comes
 * back wrapped to that key and is unwrapped in memory. Every step uses the same adapters as
 * Azure — the MAA client, the Key Vault SDK, the Table and Queue clients — against local ends.
 *
 * `--once` stops after the round trip (used by the tests); otherwise it keeps serving until
 * Ctrl-C.
 */
import { createHash } from "node:crypto";
import { startAzurite } from "./azurite.js";
import { startLocalStack } from "./stack.js";
import { startLocalFunctionsHost } from "./functions-host.js";
import { localKeyVaultCredential } from "./keyvault/credential.js";
import { createKeyVaultKeyStore } from "../keyvault/key-store.js";
import { createStorageQueueBus } from "../storage-queue/bus.js";
import { createSimulatedSnpPlatform } from "../../core/evidence/simulated/sevsnp.js";
import { renderReleasePolicy, serializeReleasePolicy } from "../../core/policy/index.js";
import { makeAttestationRequest, parseAttestationResult } from "../../core/messages/index.js";
import type { Logger } from "../../core/ports/logger.js";
import { attest } from "../../functions/attest.js";
import { composition, resetComposition } from "../../functions/composition/root.js";
import { createRuntimeKey } from "../../agent/runtime-key.js";
import { createSimulatedProvider } from "../../agent/evidence/simulated.js";
import { collectEvidence } from "../../agent/evidence/provider.js";

export interface EmbeddedOptions {
  readonly once?: boolean;
  readonly print?: (line: string) => void;
  readonly verbose?: boolean;
}

/** The demo workload's confidential-container policy; its sha256 is the measurement (hostData). */
const DEMO_CONTAINER_POLICY =
  'package policy\n\nimport future.keywords.every\n\ndefault allow_all := false\n# demo workload "orders"\n';
const DEMO_KEY = "demo-orders-key";

export interface EmbeddedRun {
  readonly released: { name: string; version: string; bytes: number }[];
  stop(): Promise<void>;
}

export async function runEmbedded(options: EmbeddedOptions = {}): Promise<EmbeddedRun> {
  const print = options.print ?? ((line: string) => process.stdout.write(line + "\n"));
  const logger: Logger = options.verbose
    ? (level, message, fields) =>
        print(`  [${level}] ${message}${fields ? " " + JSON.stringify(fields) : ""}`)
    : (level, message, fields) => {
        if (level === "warn" || level === "error")
          print(`  [${level}] ${message}${fields ? " " + JSON.stringify(fields) : ""}`);
      };
  const stops: (() => Promise<void>)[] = [];
  const stop = async () => {
    for (const s of stops.splice(0).reverse()) await s().catch(() => undefined);
  };
  try {
    print("Shield embedded default: everything local, nothing in Azure.");
    const azurite = await startAzurite();
    stops.push(() => azurite.stop());
    print(`  Azurite ${azurite.version}: tables ${azurite.tableEndpoint}, queues ${azurite.queueEndpoint}`);

    const platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
    const hostData = createHash("sha256").update(DEMO_CONTAINER_POLICY).digest("hex");
    print(
      `  simulated SEV-SNP platform: root "${platform.ark.subject.replace(/\n/g, ", ")}" (trusted here only)`,
    );

    const stack = await startLocalStack({
      storageConnectionString: azurite.connectionString,
      platform,
      complianceStatus: "azure-compliant-uvm",
      appraisalPolicy: JSON.stringify({
        sevsnpvm: { hostData: [hostData], complianceStatus: ["azure-compliant-uvm"] },
      }),
      logger,
    });
    stops.push(() => stack.close());
    print(`  attestation (MAA-compatible): ${stack.maa.url}`);
    print(`  key vault (Key Vault-compatible): ${stack.keyVault.url}`);

    const keyStore = createKeyVaultKeyStore({
      vaultUrl: stack.keyVault.url,
      credential: localKeyVaultCredential(stack.keyVault.accessToken),
    });
    const releasePolicy = renderReleasePolicy({
      authority: stack.maa.url,
      measurements: { sevsnpvm: { hostData: [hostData], complianceStatus: "azure-compliant-uvm" } },
    });
    const created = await keyStore.createKey(DEMO_KEY, { keyType: "oct-HSM", keySize: 256, releasePolicy });
    print(`  key ${DEMO_KEY} version ${created.version}, release policy:`);
    print(`    ${serializeReleasePolicy(releasePolicy)}`);

    Object.assign(process.env, stack.settings);
    await resetComposition();
    await composition(); // settings are checked now, not at the first message
    stops.push(() => resetComposition());
    const bus = createStorageQueueBus({ connectionString: azurite.connectionString });
    stops.push(() => bus.close());
    const host = startLocalFunctionsHost({
      functionName: "attest",
      handler: attest,
      receiver: bus.openRequestReceiver(),
      logger,
    });
    stops.push(() => host.stop());
    print("  functions: attest (queue attestation-requests) running under the local host");

    // The agent's side, inside the simulated confidential container.
    const runtimeKey = await createRuntimeKey();
    const provider = createSimulatedProvider({
      platform,
      reportFields: { hostData: Buffer.from(hostData, "hex") },
    });
    const agentId = "demo-agent";
    const evidence = await collectEvidence(provider, {
      runtimeData: Buffer.from(runtimeKey.runtimeData.bytes),
      reportData: Buffer.from(runtimeKey.runtimeData.reportData),
    });
    const requestId = `demo-${Date.now()}`;
    await bus.sendRequest(
      makeAttestationRequest({
        agentId,
        requestId,
        workload: "orders",
        tee: "sevsnp",
        evidence,
        runtimeData: runtimeKey.runtimeData.base64url,
        keys: [DEMO_KEY],
        sentAt: new Date(),
      }),
    );
    print(`  agent ${agentId}: evidence sent (runtime key ${runtimeKey.kid}), waiting for the result…`);
    const inbox = bus.openAgentInbox(agentId);
    stops.push(() => inbox.close());
    const received = await inbox.receive(30_000);
    if (received === undefined) throw new Error("no attestation result within 30 s");
    const result = parseAttestationResult(received.body, { maxBytes: 256 * 1024 });
    if (result.verdict !== "trusted") {
      throw new Error(`attestation ${result.verdict}: ${result.denial.code} ${result.denial.message}`);
    }
    const released = result.keys.map((key) => {
      const unwrapped = runtimeKey.unwrapReleased(key.releaseResponse, {
        trustedSigners: [...stack.vault.signerCertificates],
      });
      const bytes = "bytes" in unwrapped ? unwrapped.bytes.length : 0;
      if ("bytes" in unwrapped) unwrapped.bytes.fill(0);
      return { name: key.name, version: key.version, bytes };
    });
    for (const key of released) {
      print(
        `  agent ${agentId}: trusted until ${result.attestedUntil}; ${key.name} v${key.version} unwrapped in memory (${key.bytes} bytes)`,
      );
    }
    print(
      "Round trip complete: evidence → MAA-compatible token → release policy → key wrapped to the enclave key.",
    );
    if (!options.once) print("Serving; press Ctrl-C to stop.");
    return { released, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

const entry = process.argv[1];
if (entry !== undefined && /adapters[\\/]local[\\/]embedded\.(ts|js)$/.test(entry)) {
  const once = process.argv.includes("--once");
  runEmbedded({ once, verbose: process.argv.includes("--verbose") }).then(
    async (run) => {
      if (once) {
        await run.stop();
        return;
      }
      const shutdown = () => {
        void run.stop().then(() => process.exit(0));
      };
      process.once("SIGINT", shutdown);
      process.once("SIGTERM", shutdown);
      setInterval(() => undefined, 1 << 30); // keep serving until a signal
    },
    (error: unknown) => {
      process.stderr.write(`error: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exitCode = 1;
    },
  );
}
