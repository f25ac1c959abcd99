/**
 * The embedded default's back end on one machine: a local MAA-compatible attestation server
 * that trusts only the simulated TEE's root, a local Key Vault-compatible server whose release
 * checks tokens from that attestation server, and the settings that point the Functions app at
 * both and at Azurite. Used by `npm start` and by the integration tests, so both exercise the
 * same wiring the app uses in Azure — the real MAA client, the real Key Vault SDK, real Table
 * Storage and Storage Queue clients — with only the far ends replaced.
 *
 * The stack also makes the control-plane key: a non-exportable RSA-HSM key in the local vault
 * that the functions sign agent messages with (through the real SDK's `CryptographyClient`), and
 * whose public half agents pin (`controlKeys`).
 */
import { randomBytes, type KeyObject, type X509Certificate } from "node:crypto";
import type { ReleaseResponseSigner } from "../core/keywrap/index.js";
import type { SimulatedSnpPlatform } from "../core/evidence/simulated/sevsnp.js";
import { systemClock, type Clock } from "../core/ports/clock.js";
import { silentLogger, type Logger } from "../core/ports/logger.js";
import { createMaaTokenIssuer } from "../core/token/index.js";
import { createLocalAttestationEngine, type LocalAttestationEngine } from "../adapters/local/maa/engine.js";
import { startLocalMaaServer, type LocalMaaServer } from "../adapters/local/maa/server.js";
import {
  cachedIssuerKeys,
  createLocalKeyVault,
  type LocalKeyVault,
} from "../adapters/local/keyvault/engine.js";
import { startLocalKeyVaultServer, type LocalKeyVaultServer } from "../adapters/local/keyvault/server.js";
import type { LocalSecrets } from "../adapters/local/keyvault/secrets.js";

/** The control-plane signing key's name in the local vault. */
export const CONTROL_KEY_NAME = "shield-control";

export interface LocalStackOptions {
  /** Azurite (or any Storage account) for Table state and Storage Queues. */
  readonly storageConnectionString: string;
  /** The simulated TEE whose root the attestation server trusts; nothing else is trusted. */
  readonly platform: SimulatedSnpPlatform;
  /** Simulated SGX roots the attestation server also trusts (none by default). */
  readonly sgxTrustedRoots?: readonly X509Certificate[];
  /** The appraisal policy the functions apply (JSON text; see core/appraisal). */
  readonly appraisalPolicy: string;
  /** `x-ms-compliance-status` the attestation server reports (as MAA does for ACI). */
  readonly complianceStatus?: string;
  /** Clock of the attestation server and the key vault (tests and the scenario move it). */
  readonly clock?: Clock;
  /** Clock of the attestation server alone (tests move it to mint expired tokens); default `clock`. */
  readonly maaClock?: Clock;
  /** Decorates the attestation engine (tests use it to tamper with what MAA returns). */
  readonly decorateMaaEngine?: (engine: LocalAttestationEngine) => LocalAttestationEngine;
  /** Directory for the local Key Vault's sealed key records; memory when absent. */
  readonly keyVaultStorage?: string;
  /** The local Key Vault's master key (32 bytes; default a fresh one, fit only for memory). */
  readonly keyVaultMasterKey?: Buffer;
  /** The vault's release-response signer (default a fresh one). */
  readonly releaseSigner?: ReleaseResponseSigner;
  /** The vault's secrets (default an empty store in memory). */
  readonly secrets?: LocalSecrets;
  /** The local MAA's token signing key (default a fresh one); see `createMaaTokenIssuer`. */
  readonly maaSigningKey?: { readonly privateKey: KeyObject; readonly certificate?: X509Certificate };
  /** Loopback ports of the local MAA and Key Vault servers (default: any free port). */
  readonly maaPort?: number;
  readonly keyVaultPort?: number;
  readonly tableName?: string;
  readonly maxDeliveryCount?: number;
  readonly attestationPeriodSeconds?: number;
  /** Exposes key material through the local Key Vault for tests; never set by `npm start`. */
  readonly exposeKeyMaterialForTests?: boolean;
  readonly logger?: Logger;
}

export interface LocalStack {
  readonly maa: LocalMaaServer;
  readonly keyVault: LocalKeyVaultServer;
  readonly vault: LocalKeyVault;
  /** The Functions app settings for this stack (what `local.settings.json` would hold). */
  readonly settings: Readonly<Record<string, string>>;
  /** The control-plane public key as agents pin it: a JWK set (`SHIELD_CONTROL_KEYS_FILE`). */
  readonly controlKeys: { readonly keys: readonly Readonly<Record<string, string>>[] };
  /** The vault origin released keys name (`SHIELD_KEYVAULT_URL` of agents). */
  readonly vaultUrl: string;
  close(): Promise<void>;
}

export async function startLocalStack(options: LocalStackOptions): Promise<LocalStack> {
  const logger = options.logger ?? silentLogger;
  const clock = options.clock ?? systemClock;
  const maaClock = options.maaClock ?? clock;
  const maa = await startLocalMaaServer({
    logger,
    engine: async (url) => {
      const engine = createLocalAttestationEngine({
        issuer: await createMaaTokenIssuer({
          issuer: url,
          ...(options.maaSigningKey === undefined ? {} : { signingKey: options.maaSigningKey }),
        }),
        snpTrustedRoots: [options.platform.ark],
        sgxTrustedRoots: options.sgxTrustedRoots ?? [],
        clock: maaClock,
        ...(options.complianceStatus === undefined ? {} : { complianceStatus: options.complianceStatus }),
      });
      return options.decorateMaaEngine ? options.decorateMaaEngine(engine) : engine;
    },
    ...(options.maaPort === undefined ? {} : { port: options.maaPort }),
  });
  const vaultUrl = "https://shield-local.vault.azure.net";
  const vault = await createLocalKeyVault({
    vaultUrl,
    masterKey: options.keyVaultMasterKey ?? randomBytes(32),
    ...(options.releaseSigner === undefined ? {} : { releaseSigner: options.releaseSigner }),
    clock,
    tokenKeys: cachedIssuerKeys({
      clock,
      fetchJson: async (url) => {
        const response = await fetch(url, { signal: AbortSignal.timeout(5_000) });
        if (!response.ok) throw new Error(`GET ${url}: HTTP ${response.status}`);
        return await response.json();
      },
    }),
    ...(options.keyVaultStorage === undefined ? {} : { storage: options.keyVaultStorage }),
    ...(options.exposeKeyMaterialForTests ? { exposeKeyMaterialForTests: true } : {}),
  }).catch(async (error: unknown) => {
    await maa.close();
    throw error;
  });
  const keyVault = await startLocalKeyVaultServer({
    engine: vault,
    logger,
    ...(options.secrets === undefined ? {} : { secrets: options.secrets }),
    ...(options.keyVaultPort === undefined ? {} : { port: options.keyVaultPort }),
  }).catch(async (error: unknown) => {
    await maa.close();
    throw error;
  });
  // A vault kept from an earlier run already has the key: its current version goes on signing.
  const control = vault.keyNames().includes(CONTROL_KEY_NAME)
    ? await vault.getKey(CONTROL_KEY_NAME)
    : await vault.createKey(CONTROL_KEY_NAME, {
        kty: "RSA-HSM",
        keySize: 2048,
        keyOps: ["sign", "verify"],
        exportable: false,
      });
  // The id the functions sign under: the server's address, so the SDK can reach it.
  const controlKeyId = `${keyVault.url}/keys/${CONTROL_KEY_NAME}/${control.version}`;
  const controlKeys = {
    keys: [
      {
        kty: "RSA",
        n: control.publicKey["n"] ?? "",
        e: control.publicKey["e"] ?? "",
        alg: "RS256",
        kid: controlKeyId,
      },
    ],
  };
  const settings: Record<string, string> = {
    SHIELD_MAA_ENDPOINT: maa.url,
    SHIELD_KEYVAULT_URL: keyVault.url,
    SHIELD_KEYVAULT_LOCAL_TOKEN: keyVault.accessToken,
    SHIELD_STATE_CONNECTION: options.storageConnectionString,
    SHIELD_STATE_TABLE: options.tableName ?? "shield",
    SHIELD_STATE_CREATE_TABLE: "true",
    SHIELD_BUS: "storage-queue",
    SHIELD_BUS_CONNECTION: options.storageConnectionString,
    SHIELD_APPRAISAL_POLICY: options.appraisalPolicy,
    SHIELD_ATTESTATION_PERIOD_SECONDS: String(options.attestationPeriodSeconds ?? 3600),
    SHIELD_MAX_DELIVERY_COUNT: String(options.maxDeliveryCount ?? 10),
    SHIELD_CONTROL_KEY_ID: controlKeyId,
    SHIELD_CONTROL_KEY_ALGORITHM: "RS256",
  };
  return {
    maa,
    keyVault,
    vault,
    settings,
    controlKeys,
    vaultUrl,
    async close() {
      await keyVault.close();
      await maa.close();
    },
  };
}
