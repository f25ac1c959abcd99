/**
 * The whole system on one machine: Azurite, the local MAA and Key Vault servers (with Key Vault's
 * Event Grid events), every function of the app under the local Functions host (driven by the
 * app's own registrations, functions/*.ts), and simulated agents — SEV-SNP agents with the
 * simulated SNP platform and SGX agents whose enclave sits behind the Gramine provider's
 * `/dev/attestation` file interface. Agents run as `npm run agent` runs them (agent/main.ts),
 * in this process, each with its own key API on loopback.
 *
 * Timing comes from app settings (`settings`): the scenario passes compressed schedules, the
 * functions read them exactly as in Azure.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { startAzurite, type AzuriteServices } from "../adapters/local/azurite.js";
import { localKeyVaultCredential } from "../adapters/local/keyvault/credential.js";
import {
  startKeyVaultEventPublisher,
  type KeyVaultEventPublisher,
} from "../adapters/local/keyvault/events.js";
import { startLocalServiceBusNamespace } from "../adapters/local/servicebus/namespace.js";
import { createKeyVaultKeyStore } from "../adapters/keyvault/key-store.js";
import { createTableStateStore } from "../adapters/state/table.js";
import { createSimulatedSnpPlatform, type SimulatedSnpPlatform } from "../core/evidence/simulated/sevsnp.js";
import { createSimulatedSgxPlatform, type SimulatedSgxPlatform } from "../core/evidence/simulated/sgx.js";
import { renderReleasePolicy } from "../core/policy/index.js";
import type { KeyStore } from "../core/ports/key-store.js";
import type { Logger } from "../core/ports/logger.js";
import type { StateStore } from "../core/ports/state.js";
import { REQUESTS_QUEUE, RESULTS_QUEUE, ROTATE_KEY_QUEUE } from "../core/ports/bus.js";
import { createGramineProvider } from "../agent/evidence/gramine.js";
import type { DeviceFiles } from "../agent/evidence/device-files.js";
import { main as agentMain } from "../agent/main.js";
import { resetComposition } from "../functions/composition/root.js";
import { loadFunctionApp } from "./host/registrations.js";
import { startFunctionAppHost, type FunctionAppHost, type InvocationEvent } from "./host/host.js";
import { startLocalStack, type LocalStack } from "./stack.js";
import hostJson from "../host.json" with { type: "json" };

export const DEMO_KEY = "demo-orders-key";
export const DEMO_WORKLOAD = "orders";
export const DEPLOY_SECRET_NAME = "shield-deploy-webhook";
/** The local vault's name (its URL is https://shield-local.vault.azure.net). */
export const VAULT_NAME = "shield-local";

/** The demo workload's confidential-container policy; its sha256 is the measurement (hostData). */
const DEMO_CONTAINER_POLICY =
  'package policy\n\nimport future.keywords.every\n\ndefault allow_all := false\n# demo workload "orders"\n';
export const DEMO_HOST_DATA = createHash("sha256").update(DEMO_CONTAINER_POLICY).digest("hex");
export const DEMO_MRENCLAVE = createHash("sha256").update("shield demo enclave orders v1").digest("hex");
export const DEMO_MRSIGNER = createHash("sha256").update("shield demo enclave signer").digest("hex");

export type BusKind = "storage-queue" | "servicebus";

export interface SystemOptions {
  readonly bus?: BusKind;
  /** Extra app settings (compressed schedules and periods). */
  readonly settings?: Readonly<Record<string, string>>;
  /** One line per notable log event of the functions (their structured logs). */
  readonly logger?: Logger;
  readonly onInvocation?: (event: InvocationEvent) => void;
  /** Agent stdout/stderr lines. */
  readonly agentOutput?: (agentId: string, line: string) => void;
  readonly hostPort?: number;
}

export interface AgentSpec {
  readonly agentId: string;
  readonly tee: "sevsnp" | "sgx";
  /** SEV-SNP hostData (default the demo's). */
  readonly hostData?: string;
  readonly listen?: string;
  readonly keys?: readonly string[];
}

export interface AgentHandle {
  readonly spec: AgentSpec;
  /** The key API, once the agent listens. */
  keyApiUrl(): string | undefined;
  /** Resolves with the exit code. */
  readonly exited: Promise<number>;
  stop(): Promise<void>;
}

export interface LocalSystem {
  readonly azurite: AzuriteServices;
  readonly stack: LocalStack;
  readonly host: FunctionAppHost;
  readonly keys: KeyStore;
  readonly state: StateStore;
  readonly bus: BusKind;
  readonly settings: Readonly<Record<string, string>>;
  readonly deploySecret: string;
  readonly events: KeyVaultEventPublisher;
  readonly agents: Map<string, AgentHandle>;
  readonly statusPageUrl: string;
  startAgent(spec: AgentSpec): AgentHandle;
  stop(): Promise<void>;
}

/** An enclave behind Gramine's `/dev/attestation` files, in memory: `quote` is made from `user_report_data`. */
export function simulatedGramineFiles(platform: SimulatedSgxPlatform, root: string): DeviceFiles {
  let userReportData = Buffer.alloc(64);
  const inside = (path: string, name: string) => path === `${root}/${name}`;
  const enoent = (path: string) => Object.assign(new Error(`ENOENT: ${path}`), { code: "ENOENT" });
  return {
    mkdir: (path) => Promise.reject(enoent(path)),
    rmdir: (path) => Promise.reject(enoent(path)),
    isDirectory: (path) => Promise.resolve(path === root),
    readFile(path) {
      if (inside(path, "attestation_type")) return Promise.resolve(Buffer.from("dcap"));
      if (inside(path, "quote")) {
        return Promise.resolve(
          platform.generateQuote({
            reportData: userReportData,
            mrEnclave: DEMO_MRENCLAVE,
            mrSigner: DEMO_MRSIGNER,
          }),
        );
      }
      if (inside(path, "user_report_data")) return Promise.resolve(Buffer.from(userReportData));
      return Promise.reject(enoent(path));
    },
    writeFile(path, data) {
      if (!inside(path, "user_report_data")) return Promise.reject(enoent(path));
      if (data.length !== 64) return Promise.reject(Object.assign(new Error("EINVAL"), { code: "EINVAL" }));
      userReportData = Buffer.from(data);
      return Promise.resolve();
    },
  };
}

export async function startSystem(options: SystemOptions = {}): Promise<LocalSystem> {
  const bus: BusKind = options.bus ?? "storage-queue";
  const stops: (() => Promise<void>)[] = [];
  const stop = async () => {
    for (const s of stops.splice(0).reverse()) await s().catch(() => undefined);
  };
  try {
    const azurite = await startAzurite();
    stops.push(() => azurite.stop());
    const snp: SimulatedSnpPlatform = createSimulatedSnpPlatform({ rsaBits: 2048 });
    const sgx: SimulatedSgxPlatform = createSimulatedSgxPlatform();
    const appraisal = {
      sevsnpvm: { hostData: [DEMO_HOST_DATA], complianceStatus: ["azure-compliant-uvm"] },
      sgx: { mrEnclave: [DEMO_MRENCLAVE], mrSigner: [DEMO_MRSIGNER] },
    };
    const stack = await startLocalStack({
      storageConnectionString: azurite.connectionString,
      platform: snp,
      sgxTrustedRoots: [sgx.rootCertificate],
      complianceStatus: "azure-compliant-uvm",
      appraisalPolicy: JSON.stringify(appraisal),
      ...(options.settings?.["SHIELD_ATTESTATION_PERIOD_SECONDS"] === undefined
        ? {}
        : { attestationPeriodSeconds: Number(options.settings["SHIELD_ATTESTATION_PERIOD_SECONDS"]) }),
    });
    stops.push(() => stack.close());
    const keys = createKeyVaultKeyStore({
      vaultUrl: stack.keyVault.url,
      credential: localKeyVaultCredential(stack.keyVault.accessToken),
    });
    const releasePolicy = renderReleasePolicy({
      authority: stack.maa.url,
      measurements: {
        sevsnpvm: { hostData: [DEMO_HOST_DATA], complianceStatus: "azure-compliant-uvm" },
        sgx: { mrEnclave: [DEMO_MRENCLAVE], mrSigner: [DEMO_MRSIGNER] },
      },
    });
    await keys.createKey(DEMO_KEY, { keyType: "oct-HSM", keySize: 256, releasePolicy });
    const deploySecret = randomBytes(32).toString("base64url");
    stack.keyVault.secrets.set(DEPLOY_SECRET_NAME, deploySecret);

    const settings: Record<string, string> = {
      ...stack.settings,
      AzureWebJobsStorage: azurite.connectionString,
      SHIELD_KEYVAULT_NAME: VAULT_NAME,
      SHIELD_DEPLOY_HMAC_SECRET_NAME: DEPLOY_SECRET_NAME,
      SHIELD_KEY_LIFECYCLE: JSON.stringify({ [DEMO_KEY]: { revokeByRotation: true } }),
      ...options.settings,
    };
    let agentBus: Record<string, string> = {
      SHIELD_BUS: "storage-queue",
      SHIELD_STORAGE_CONNECTION_STRING: azurite.connectionString,
    };
    if (bus === "servicebus") {
      const namespace = await startLocalServiceBusNamespace({
        queues: [
          { name: REQUESTS_QUEUE, maxDeliveryCount: 10 },
          { name: RESULTS_QUEUE, requiresSession: true },
          { name: ROTATE_KEY_QUEUE, requiresSession: true },
          { name: "policy-updates" },
        ],
      });
      stops.push(() => namespace.close());
      settings["SHIELD_BUS"] = "servicebus";
      settings["ServiceBusConnection"] = namespace.functionsConnectionString;
      agentBus = {
        SHIELD_BUS: "servicebus",
        SHIELD_SERVICEBUS_CONNECTION_STRING: namespace.agentConnectionString,
      };
    }
    // The functions read their settings from the environment, as in Azure.
    Object.assign(process.env, settings);
    await resetComposition();
    stops.push(() => resetComposition());
    const registrations = await loadFunctionApp(fileURLToPath(new URL("../functions", import.meta.url)));
    const host = await startFunctionAppHost({
      registrations,
      settings,
      transport:
        bus === "servicebus"
          ? { kind: "servicebus", storageConnectionString: azurite.connectionString }
          : { kind: "storage-queue", connectionString: azurite.connectionString },
      hostJson: hostJson,
      pollMs: { min: 20, max: 200 },
      ...(options.hostPort === undefined ? {} : { port: options.hostPort }),
      ...(options.logger === undefined ? {} : { logger: options.logger }),
      ...(options.onInvocation === undefined ? {} : { onInvocation: options.onInvocation }),
    });
    stops.push(() => host.stop());
    const events = startKeyVaultEventPublisher({
      vault: stack.vault,
      vaultName: VAULT_NAME,
      clock: { now: () => new Date() },
      deliver: host.eventGridWebhookUrl("keyvault-events"),
      scanMs: 500,
    });
    stops.push(() => events.stop());
    const state = await createTableStateStore({
      tableName: settings["SHIELD_STATE_TABLE"] ?? "shield",
      connectionString: azurite.connectionString,
      createTable: true,
    });

    // What agents pin, as files (their configuration takes files): removed on stop.
    const work = await mkdtemp(join(tmpdir(), "shield-local-"));
    stops.push(() => rm(work, { recursive: true, force: true }));
    const signerFile = join(work, "release-signer.pem");
    const controlKeysFile = join(work, "control-keys.json");
    await writeFile(signerFile, stack.vault.signerCertificates.map((cert) => cert.toString()).join(""));
    await writeFile(controlKeysFile, JSON.stringify(stack.controlKeys));
    const agents = new Map<string, AgentHandle>();
    const startAgent = (spec: AgentSpec): AgentHandle => {
      const shutdown = new AbortController();
      let keyApiUrl: string | undefined;
      const gramineRoot = "/dev/attestation";
      const env: Record<string, string> = {
        SHIELD_AGENT_ID: spec.agentId,
        SHIELD_WORKLOAD: DEMO_WORKLOAD,
        SHIELD_KEYS: (spec.keys ?? [DEMO_KEY]).join(","),
        SHIELD_TEE: spec.tee === "sgx" ? "sgx-gramine" : "simulated",
        ...(spec.tee === "sgx" ? { SHIELD_GRAMINE_ROOT: gramineRoot } : {}),
        ...agentBus,
        SHIELD_RELEASE_SIGNER_CA_FILE: signerFile,
        SHIELD_CONTROL_KEYS_FILE: controlKeysFile,
        SHIELD_KEYVAULT_URL: stack.vaultUrl,
        SHIELD_LISTEN: spec.listen ?? "127.0.0.1:0",
        SHIELD_REATTEST_SECONDS: "0",
      };
      const exited = agentMain([], env, {
        io: {
          stdout: (text) => options.agentOutput?.(spec.agentId, text.trimEnd()),
          stderr: (text) => options.agentOutput?.(spec.agentId, text.trimEnd()),
        },
        select:
          spec.tee === "sgx"
            ? {
                factories: {
                  "sgx-gramine": () =>
                    createGramineProvider({
                      root: gramineRoot,
                      files: simulatedGramineFiles(sgx, gramineRoot),
                    }),
                },
              }
            : {
                simulated: {
                  platform: snp,
                  reportFields: { hostData: Buffer.from(spec.hostData ?? DEMO_HOST_DATA, "hex") },
                },
              },
        runtime: {
          shutdown: shutdown.signal,
          timing: {
            resultTimeoutMs: 10_000,
            retryBaseDelayMs: 200,
            retryMaxDelayMs: 2_000,
            receiveWaitMs: 500,
          },
          onRunning: (running) => {
            keyApiUrl = running.api.url;
          },
        },
      });
      const handle: AgentHandle = {
        spec,
        keyApiUrl: () => keyApiUrl,
        exited,
        async stop() {
          shutdown.abort();
          await exited.catch(() => undefined);
          agents.delete(spec.agentId);
        },
      };
      agents.set(spec.agentId, handle);
      return handle;
    };
    stops.push(async () => {
      for (const agent of [...agents.values()]) await agent.stop();
    });

    return {
      azurite,
      stack,
      host,
      keys,
      state,
      bus,
      settings,
      deploySecret,
      events,
      agents,
      statusPageUrl: `${host.url}/api/status/page?code=${host.keys.functionKey}`,
      startAgent,
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}
