/**
 * What the key-store tests share: a trusted MAA-compatible issuer whose `/certs` is served by a
 * small loopback server (so release fetches signing keys the way the embedded default does), a
 * stranger issuer no policy names, an agent's runtime RSA key, SEV-SNP claims that satisfy the
 * rendered release policy, and a local Key Vault engine wired to all of it. Everything is
 * generated here; nothing is read from disk.
 */
import { generateKeyPairSync, randomBytes, randomUUID, type KeyObject } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { calculateJwkThumbprint } from "jose";
import {
  cachedIssuerKeys,
  createLocalKeyVault,
  type LocalKeyVault,
  type LocalKeyVaultOptions,
} from "../../adapters/local/keyvault/engine.js";
import { renderReleasePolicy, type ReleasePolicy } from "../../core/policy/index.js";
import { fixedClock } from "../../core/ports/clock.js";
import type { SigningKeyResolver } from "../../core/token/index.js";
import { createMaaTokenIssuer, type MaaTokenIssuer } from "../../core/token/index.js";

export const VAULT_URL = "https://shield-test.vault.azure.net";

export interface RuntimeJwk {
  readonly kty: "RSA";
  readonly n: string;
  readonly e: string;
  readonly kid: string;
  readonly key_ops: readonly string[];
}

export interface KeyVaultFixture {
  readonly clock: ReturnType<typeof fixedClock>;
  /** The MAA-compatible issuer release policies name; its `/certs` is served over loopback. */
  readonly trusted: MaaTokenIssuer;
  /** An issuer no policy names. */
  readonly stranger: MaaTokenIssuer;
  /** The agent's runtime key pair and its public JWK as it appears in `x-ms-runtime.keys`. */
  readonly agentPrivateKey: KeyObject;
  readonly agentJwk: RuntimeJwk;
  readonly hostData: string;
  readonly tokenKeys: (issuer: string) => SigningKeyResolver;
  /** Every issuer `tokenKeys` was asked for, in order. */
  readonly tokenKeysRequests: string[];
  /** The release policy allowing `hostData` (or the given list). */
  policy(hostData?: readonly string[]): ReleasePolicy;
  /** SEV-SNP claims that satisfy {@link policy}, with `overrides` applied. */
  claims(overrides?: Readonly<Record<string, unknown>>): Record<string, unknown>;
  /** A token from `issuer` (default: trusted) issued at `at` (default: the clock's now). */
  token(
    overrides?: Readonly<Record<string, unknown>>,
    options?: { issuer?: MaaTokenIssuer; at?: Date },
  ): Promise<string>;
  engine(options?: Partial<LocalKeyVaultOptions>): Promise<LocalKeyVault>;
  uniqueName(prefix: string): string;
  close(): Promise<void>;
}

async function listen(server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

export async function createKeyVaultFixture(): Promise<KeyVaultFixture> {
  const clock = fixedClock(new Date(Math.floor(Date.now() / 1000) * 1000));
  let certsDocument: unknown = { keys: [] };
  const certsServer = createServer((request, response) => {
    if (request.method === "GET" && request.url === "/certs") {
      response.writeHead(200, { "content-type": "application/json" });
      response.end(JSON.stringify(certsDocument));
    } else {
      response.writeHead(404).end();
    }
  });
  const base = await listen(certsServer);
  const trusted = await createMaaTokenIssuer({ issuer: base });
  const stranger = await createMaaTokenIssuer({ issuer: `${base}/stranger` });
  certsDocument = trusted.certsDocument();

  const { privateKey: agentPrivateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const jwk = publicKey.export({ format: "jwk" });
  const agentJwk: RuntimeJwk = {
    kty: "RSA",
    n: jwk.n ?? "",
    e: jwk.e ?? "",
    kid: await calculateJwkThumbprint({ kty: "RSA", n: jwk.n ?? "", e: jwk.e ?? "" }, "sha256"),
    key_ops: ["encrypt"],
  };
  const hostData = randomBytes(32).toString("hex");

  const fetchJson = async (url: string): Promise<unknown> => {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return await response.json();
  };
  const cached = cachedIssuerKeys({ fetchJson, clock });
  const tokenKeysRequests: string[] = [];
  const tokenKeys = (issuer: string): SigningKeyResolver => {
    tokenKeysRequests.push(issuer);
    return cached(issuer);
  };

  const claims = (overrides: Readonly<Record<string, unknown>> = {}): Record<string, unknown> => ({
    "x-ms-attestation-type": "sevsnpvm",
    "x-ms-compliance-status": "azure-compliant-uvm",
    "x-ms-sevsnpvm-hostdata": hostData,
    "x-ms-sevsnpvm-is-debuggable": false,
    "x-ms-sevsnpvm-vmpl": 0,
    "x-ms-runtime": { keys: [agentJwk] },
    ...overrides,
  });

  return {
    clock,
    trusted,
    stranger,
    agentPrivateKey,
    agentJwk,
    hostData,
    tokenKeys,
    tokenKeysRequests,
    policy: (allowed = [hostData]) =>
      renderReleasePolicy({
        authority: trusted.issuer,
        measurements: { sevsnpvm: { complianceStatus: "azure-compliant-uvm", hostData: allowed, vmpl: 0 } },
      }),
    claims,
    token: (overrides = {}, options = {}) =>
      (options.issuer ?? trusted).issue(claims(overrides), { at: options.at ?? clock.now() }),
    engine: (options = {}) =>
      createLocalKeyVault({
        vaultUrl: VAULT_URL,
        masterKey: randomBytes(32),
        clock,
        tokenKeys,
        exposeKeyMaterialForTests: true,
        ...options,
      }),
    uniqueName: (prefix) => `${prefix}-${randomUUID().slice(0, 8)}`,
    close: () =>
      new Promise<void>((resolve) => {
        certsServer.close(() => resolve());
        certsServer.closeAllConnections();
      }),
  };
}

/** Every way a byte string could show up in stored text. */
export function encodingsOf(bytes: Uint8Array): string[] {
  const buffer = Buffer.from(bytes);
  return [
    buffer.toString("hex"),
    buffer.toString("hex").toUpperCase(),
    buffer.toString("base64"),
    buffer.toString("base64url"),
    buffer.toString("latin1"),
  ];
}
