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
 *
 * With `stateDir` (`npm start -- --state DIR`, see state.ts) a restart finds what the last run
 * left. Kept, each because something stored depends on it:
 * - Azurite's data: agent records, the audit log, deployments, rollouts, queued messages;
 * - the local Key Vault's keys (every version, sealed) and secrets (the webhook's HMAC key);
 * - the local MAA's signing key and certificate: its `/certs` stays the same;
 * - the release-response signer, which agents pin (`SHIELD_RELEASE_SIGNER_CA_FILE`);
 * - the simulated SEV-SNP and SGX platforms: agents restart on the same simulated chips;
 * - the Functions host's function and master keys, so a saved `--function-key-file` still works;
 * - the ports. The local MAA's must be the same (its URL is the `authority` of every stored
 *   release policy and the `iss` its tokens carry), so start fails if it is taken; the others
 *   are reused when free and replaced, with a notice, when not (nothing stored names them: the
 *   vault's key ids use its fixed name, https://shield-local.vault.azure.net).
 * Made afresh each run: the Key Vault server's bearer token and the Event Grid webhook key
 * (internal to the run), the agents' runtime keys (agents are new processes: they attest again).
 * The control-plane key and the demo key are created only when the vault does not have them.
 */
import {
  X509Certificate,
  createHash,
  createPrivateKey,
  generateKeyPair,
  randomBytes,
  type KeyObject,
} from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { isPortFree, startAzurite, type AzuriteServices } from "../adapters/local/azurite.js";
import { generateReleaseSigner } from "../adapters/local/keyvault/engine.js";
import { createLocalSecrets, type LocalSecrets } from "../adapters/local/keyvault/secrets.js";
import { ShieldError } from "../core/errors.js";
import type { ReleaseResponseSigner } from "../core/keywrap/index.js";
import { systemClock, systemRandom } from "../core/ports/clock.js";
import { localKeyVaultCredential } from "../adapters/local/keyvault/credential.js";
import {
  startKeyVaultEventPublisher,
  type KeyVaultEventPublisher,
} from "../adapters/local/keyvault/events.js";
import { startLocalServiceBusNamespace } from "../adapters/local/servicebus/namespace.js";
import { createKeyVaultKeyStore } from "../adapters/keyvault/key-store.js";
import { createTableStateStore } from "../adapters/state/table.js";
import {
  createSimulatedSnpPlatform,
  exportSimulatedSnpPlatform,
  restoreSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
  type SimulatedSnpPlatformState,
} from "../core/evidence/simulated/sevsnp.js";
import {
  createSimulatedSgxPlatform,
  exportSimulatedSgxPlatform,
  restoreSimulatedSgxPlatform,
  type SimulatedSgxPlatform,
  type SimulatedSgxPlatformState,
} from "../core/evidence/simulated/sgx.js";
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
import { openLocalState, type LocalStateDirectory } from "./state.js";
import hostJson from "../host.json" with { type: "json" };

export const DEMO_KEY = "demo-orders-key";
export const DEMO_WORKLOAD = "orders";
export const DEPLOY_SECRET_NAME = "shield-deploy-webhook";
/** The local vault's name (its URL is https://shield-local.vault.azure.net). */
export const VAULT_NAME = "shield-local";
const VAULT_URL = `https://${VAULT_NAME}.vault.azure.net`;

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
  /** Keep the system's state in this directory between runs (see state.ts); memory when absent. */
  readonly stateDir?: string;
  /** Lines for the operator (a port of the last run that is taken, and what replaced it). */
  readonly notice?: (line: string) => void;
}

/** `system.sealed` in the state directory. */
interface SystemDocument {
  readonly format: 1;
  readonly ports: {
    readonly maa?: number;
    readonly keyVault?: number;
    readonly table?: number;
    readonly queue?: number;
    readonly host?: number;
  };
  readonly snpPlatform: SimulatedSnpPlatformState;
  readonly sgxPlatform: SimulatedSgxPlatformState;
  /** PKCS#8 PEM; the certificate (DER, base64) once the MAA server has made it. */
  readonly maaSigningKey: { readonly privateKey: string; readonly certificate?: string };
  readonly releaseSigner: { readonly privateKey: string; readonly chain: readonly string[] };
  readonly functionKeys: { readonly functionKey: string; readonly masterKey: string };
}

interface SecretsDocument {
  readonly versions: readonly {
    name: string;
    version: string;
    value: string;
    contentType?: string;
    created: string;
  }[];
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
  /** The state directory, when one is used, and whether it held an earlier run's state. */
  readonly stateDir?: { readonly directory: string; readonly resumed: boolean };
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
    const persisted = options.stateDir === undefined ? undefined : await openLocalState(options.stateDir);
    if (persisted !== undefined) stops.push(() => persisted.close());
    const kept = persisted === undefined ? undefined : await openKeptState(persisted);
    const notice = options.notice ?? (() => undefined);
    const azurite = await startAzurite(
      persisted === undefined
        ? {}
        : {
            location: persisted.azuriteLocation,
            ports: { ...kept!.document.ports },
            onPortTaken: (service, port) =>
              notice(`port ${port} of Azurite's ${service} service (last run) is taken; another is used`),
          },
    );
    stops.push(() => azurite.stop());
    const snp: SimulatedSnpPlatform = kept?.snp ?? createSimulatedSnpPlatform({ rsaBits: 2048 });
    const sgx: SimulatedSgxPlatform = kept?.sgx ?? createSimulatedSgxPlatform();
    const maaPort = kept?.document.ports.maa;
    if (maaPort !== undefined && !(await isPortFree(maaPort))) {
      throw new ShieldError(
        "ERR_CONFIG",
        `port ${maaPort} of the local MAA is taken: the stored release policies name http://127.0.0.1:${maaPort} as their authority, so the MAA must listen there; free the port and start again`,
      );
    }
    const keyVaultPort = await reusablePort(kept?.document.ports.keyVault, "the local Key Vault", notice);
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
      ...(kept === undefined || persisted === undefined
        ? {}
        : {
            keyVaultStorage: persisted.keyVaultLocation,
            keyVaultMasterKey: persisted.keyVaultMasterKey(),
            releaseSigner: kept.releaseSigner,
            secrets: kept.secrets,
            maaSigningKey: kept.maaSigningKey,
            ...(maaPort === undefined ? {} : { maaPort }),
            ...(keyVaultPort === undefined ? {} : { keyVaultPort }),
          }),
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
    // A kept vault has them already (rotated, re-policied, as the last run left them).
    if (!stack.vault.keyNames().includes(DEMO_KEY)) {
      await keys.createKey(DEMO_KEY, { keyType: "oct-HSM", keySize: 256, releasePolicy });
    }
    let deploySecret = stack.keyVault.secrets.get(DEPLOY_SECRET_NAME)?.value;
    if (deploySecret === undefined) {
      deploySecret = randomBytes(32).toString("base64url");
      stack.keyVault.secrets.set(DEPLOY_SECRET_NAME, deploySecret);
    }

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
    const hostPort =
      options.hostPort ?? (await reusablePort(kept?.document.ports.host, "the Functions host", notice));
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
      ...(kept === undefined ? {} : { keys: kept.document.functionKeys }),
      ...(hostPort === undefined ? {} : { port: hostPort }),
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
    // The ports and the MAA's certificate of this run, for the next one.
    kept?.save(
      {
        maa: Number(new URL(stack.maa.url).port),
        keyVault: Number(new URL(stack.keyVault.url).port),
        table: azurite.ports.table,
        queue: azurite.ports.queue,
        host: Number(new URL(host.url).port),
      },
      (await stack.maa.engine.getSigningCertificates()).keys[0]?.x5c[0],
    );
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
      ...(persisted === undefined
        ? {}
        : { stateDir: { directory: persisted.directory, resumed: persisted.resumed } }),
      startAgent,
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** A port of the last run when it is free; otherwise undefined (any free port), with a notice. */
async function reusablePort(
  port: number | undefined,
  what: string,
  notice: (line: string) => void,
): Promise<number | undefined> {
  if (port === undefined) return undefined;
  if (await isPortFree(port)) return port;
  notice(`port ${port} of ${what} (last run) is taken; another is used`);
  return undefined;
}

interface KeptState {
  readonly document: SystemDocument;
  readonly snp: SimulatedSnpPlatform;
  readonly sgx: SimulatedSgxPlatform;
  readonly maaSigningKey: { readonly privateKey: KeyObject; readonly certificate?: X509Certificate };
  readonly releaseSigner: ReleaseResponseSigner;
  readonly secrets: LocalSecrets;
  /** Records this run's ports and the MAA's certificate (DER, base64) when they changed. */
  save(ports: SystemDocument["ports"], maaCertificate: string | undefined): void;
}

/**
 * Opens what the state directory keeps (or makes it, on a first run, and writes it before
 * anything else is started), and checks that a resumed state is whole: a resumed directory
 * without its vault or its Azurite data is refused, never started over.
 */
async function openKeptState(persisted: LocalStateDirectory): Promise<KeptState> {
  let document = persisted.read<SystemDocument>("system");
  const secretsDocument = persisted.read<SecretsDocument>("secrets");
  if (persisted.resumed) {
    for (const [file, what] of [
      [join(persisted.keyVaultLocation, "vault.json"), "the local Key Vault's records"],
      [join(persisted.azuriteLocation, "table.json"), "Azurite's table data"],
    ] as const) {
      if (!existsSync(file)) {
        throw new ShieldError("ERR_CONFIG", `${persisted.directory} has lost ${what} (${file} is missing)`);
      }
    }
  }
  let snp: SimulatedSnpPlatform;
  let sgx: SimulatedSgxPlatform;
  let maaKey: KeyObject;
  let signer: ReleaseResponseSigner;
  try {
    if (document === undefined) {
      snp = createSimulatedSnpPlatform({ rsaBits: 2048 });
      sgx = createSimulatedSgxPlatform();
      maaKey = (await generateKeyPairAsync("rsa", { modulusLength: 2048 })).privateKey;
      signer = await generateReleaseSigner(VAULT_URL, systemClock, systemRandom);
      document = {
        format: 1,
        ports: {},
        snpPlatform: exportSimulatedSnpPlatform(snp),
        sgxPlatform: exportSimulatedSgxPlatform(sgx),
        maaSigningKey: { privateKey: pkcs8(maaKey) },
        releaseSigner: {
          privateKey: pkcs8(signer.privateKey),
          chain: signer.certificateChain.map((cert) => cert.raw.toString("base64")),
        },
        functionKeys: {
          functionKey: randomBytes(24).toString("base64url"),
          masterKey: randomBytes(24).toString("base64url"),
        },
      };
      persisted.write("system", document);
    } else {
      if (document.format !== 1) throw new Error("unknown format");
      snp = restoreSimulatedSnpPlatform(document.snpPlatform);
      sgx = restoreSimulatedSgxPlatform(document.sgxPlatform);
      maaKey = createPrivateKey(document.maaSigningKey.privateKey);
      signer = {
        privateKey: createPrivateKey(document.releaseSigner.privateKey),
        certificateChain: document.releaseSigner.chain.map(
          (der) => new X509Certificate(Buffer.from(der, "base64")),
        ),
      };
    }
  } catch (cause) {
    if (cause instanceof ShieldError) throw cause;
    throw new ShieldError("ERR_CONFIG", `${persisted.directory}/system.sealed does not hold a usable state`, {
      cause,
    });
  }
  const certificate = document.maaSigningKey.certificate;
  const secrets = createLocalSecrets({
    versions: (secretsDocument?.versions ?? []).map((v) => ({ ...v, created: new Date(v.created) })),
    onChange: (versions) =>
      persisted.write("secrets", {
        versions: versions.map((v) => ({ ...v, created: v.created.toISOString() })),
      } satisfies SecretsDocument),
  });
  let current = document;
  return {
    document,
    snp,
    sgx,
    maaSigningKey: {
      privateKey: maaKey,
      ...(certificate === undefined
        ? {}
        : { certificate: new X509Certificate(Buffer.from(certificate, "base64")) }),
    },
    releaseSigner: signer,
    secrets,
    save(ports, maaCertificate) {
      const next: SystemDocument = {
        ...current,
        ports,
        maaSigningKey: {
          privateKey: current.maaSigningKey.privateKey,
          ...(maaCertificate === undefined ? {} : { certificate: maaCertificate }),
        },
      };
      if (JSON.stringify(next) === JSON.stringify(current)) return;
      persisted.write("system", next);
      current = next;
    },
  };
}

const generateKeyPairAsync = promisify(generateKeyPair);

function pkcs8(key: KeyObject): string {
  return key.export({ type: "pkcs8", format: "pem" }).toString();
}
