/**
 * What the deployment tests share: a local Key Vault-compatible server (keys and secrets) driven
 * through the real `@azure/keyvault-keys` and `@azure/keyvault-secrets` clients, a test OIDC
 * issuer made with `jose` that serves its JWKS on loopback (it stands in for GitHub Actions'),
 * in-memory state, and the webhook, rollout and retirement use cases wired over them with a
 * clock the test moves.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { randomBytes, randomUUID } from "node:crypto";
import { createRemoteJWKSet, exportJWK, generateKeyPair, SignJWT, type JWTPayload } from "jose";
import { createKeyVaultKeyStore } from "../../adapters/keyvault/key-store.js";
import { createKeyVaultSecretReader } from "../../adapters/keyvault/secrets.js";
import { localKeyVaultCredential } from "../../adapters/local/keyvault/credential.js";
import { startLocalKeyVaultServer, type LocalKeyVaultServer } from "../../adapters/local/keyvault/server.js";
import type { LocalKeyVault } from "../../adapters/local/keyvault/engine.js";
import { createMemoryPolicyStateStore } from "../../adapters/state/policy-memory.js";
import { createMemoryStateStore } from "../../adapters/state/memory.js";
import { parseAppraisalPolicy, type AppraisalPolicy } from "../../core/appraisal/index.js";
import {
  createAuthenticator,
  DELIVERY_HEADER,
  SIGNATURE_HEADER,
  TIMESTAMP_HEADER,
  webhookSignature,
  type OidcConfig,
} from "../../core/deploy/authenticate.js";
import { createDeploymentsHandler } from "../../core/deploy/deployments.js";
import type { PolicyUpdate } from "../../core/messages/index.js";
import { encodeReleasePolicy, renderReleasePolicy, type ReleasePolicy } from "../../core/policy/index.js";
import { fixedClock, systemRandom } from "../../core/ports/clock.js";
import type { KeyStore } from "../../core/ports/key-store.js";
import type { PolicyStateStore } from "../../core/ports/policy-state.js";
import type { StateStore } from "../../core/ports/state.js";
import { createRollout } from "../../core/rollout/rollout.js";
import { createKeyVaultFixture, type KeyVaultFixture } from "../contract/key-store.fixtures.js";

export const OLD_HOST_DATA = "0a".repeat(32);
export const NEW_HOST_DATA = "1b".repeat(32);
export const HMAC_SECRET_NAME = "deploy-webhook-key";
export const AUDIENCE = "shield-deployments";
export const REPOSITORY = "contoso/orders";

export interface DeployHarness {
  readonly fixture: KeyVaultFixture;
  readonly engine: LocalKeyVault;
  readonly server: LocalKeyVaultServer;
  /** Through the real SDK, as the functions reach Key Vault. */
  readonly keys: KeyStore;
  readonly policyState: PolicyStateStore;
  /** The state store the rollout writes its audit, the key lease and managed keys to. */
  readonly state: StateStore;
  readonly clock: ReturnType<typeof fixedClock>;
  readonly seed: AppraisalPolicy;
  readonly hmacSecret: string;
  readonly oidcIssuer: string;
  readonly queued: PolicyUpdate[];
  readonly handler: ReturnType<typeof createDeploymentsHandler>;
  readonly rollout: ReturnType<typeof createRollout>;
  /** The release policy allowing `hostData`, as keys are created with. */
  policy(hostData: readonly string[]): ReleasePolicy;
  /** A key with `versions` releasable versions allowing the old measurement. */
  createKey(versions?: number): Promise<string>;
  /** A version whose policy Key Vault will never change. */
  addImmutableVersion(keyName: string): Promise<string>;
  signed(
    body: string | Buffer,
    options?: { at?: Date; deliveryId?: string; secret?: string },
  ): Record<string, string>;
  token(
    claims?: JWTPayload,
    options?: { expiresInSeconds?: number; audience?: string; foreignKey?: boolean },
  ): Promise<string>;
  close(): Promise<void>;
}

async function listen(server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

export async function startDeployHarness(
  options: { allow?: OidcConfig["allow"]; leaseWaitMs?: number } = {},
): Promise<DeployHarness> {
  const fixture = await createKeyVaultFixture();
  const engine = await fixture.engine();
  const server = await startLocalKeyVaultServer({ engine });
  const credential = localKeyVaultCredential(server.accessToken);
  const keys = createKeyVaultKeyStore({ vaultUrl: server.url, credential });
  const hmacSecret = randomBytes(32).toString("base64url");
  server.secrets.set(HMAC_SECRET_NAME, hmacSecret);
  const clock = fixedClock(new Date(Math.floor(Date.now() / 1000) * 1000));

  // The test OIDC issuer: a key pair of its own and its JWKS on loopback, like GitHub's.
  const signing = await generateKeyPair("RS256");
  const foreign = await generateKeyPair("RS256");
  const jwk = { ...(await exportJWK(signing.publicKey)), kid: "test-key-1", alg: "RS256", use: "sig" };
  const jwksServer = createServer((request, response) => {
    if (request.url === "/.well-known/jwks") {
      response.writeHead(200, { "content-type": "application/json" });
      response.end(JSON.stringify({ keys: [jwk] }));
    } else response.writeHead(404).end();
  });
  const oidcIssuer = await listen(jwksServer);

  const policyState = createMemoryPolicyStateStore();
  const state = createMemoryStateStore();
  const seed = parseAppraisalPolicy({ sevsnpvm: { hostData: [OLD_HOST_DATA] } });
  const rollout = createRollout(
    {
      keys,
      policyState,
      state,
      clock,
      random: systemRandom,
      logger: () => undefined,
      sleep: (ms) => new Promise((r) => setTimeout(r, Math.min(ms, 20))),
    },
    { seed, ...(options.leaseWaitMs === undefined ? {} : { leaseWaitMs: options.leaseWaitMs }) },
  );
  const authenticator = createAuthenticator(
    {
      policyState,
      secrets: createKeyVaultSecretReader({ vaultUrl: server.url, credential, clock }),
      oidcKeys: createRemoteJWKSet(new URL(`${oidcIssuer}/.well-known/jwks`)),
      clock,
    },
    {
      hmac: { secretName: HMAC_SECRET_NAME },
      oidc: { issuer: oidcIssuer, audience: AUDIENCE, allow: options.allow ?? {} },
    },
  );
  const queued: PolicyUpdate[] = [];
  const handler = createDeploymentsHandler({
    authenticator,
    rollout,
    keys,
    policyState,
    enqueue: (message) => {
      queued.push(message);
      return Promise.resolve();
    },
    clock,
    random: systemRandom,
    logger: () => undefined,
  });
  const policy = (hostData: readonly string[]) =>
    renderReleasePolicy({
      authority: fixture.trusted.issuer,
      measurements: { sevsnpvm: { complianceStatus: "azure-compliant-uvm", hostData, vmpl: 0 } },
    });

  return {
    fixture,
    engine,
    server,
    keys,
    policyState,
    state,
    clock,
    seed,
    hmacSecret,
    oidcIssuer,
    queued,
    handler,
    rollout,
    policy,
    async createKey(versions = 2) {
      const name = fixture.uniqueName("orders");
      for (let i = 0; i < versions; i++) {
        await keys.createKey(name, { keyType: "oct-HSM", releasePolicy: policy([OLD_HOST_DATA]) });
      }
      return name;
    },
    async addImmutableVersion(keyName) {
      const created = await engine.createKey(keyName, {
        kty: "oct-HSM",
        exportable: true,
        releasePolicy: encodeReleasePolicy(policy([OLD_HOST_DATA]), { immutable: true }),
      });
      return created.version;
    },
    signed(body, signOptions = {}) {
      const timestamp = String(Math.floor((signOptions.at ?? clock.now()).getTime() / 1000));
      const raw = typeof body === "string" ? Buffer.from(body, "utf8") : body;
      return {
        [SIGNATURE_HEADER]: webhookSignature(signOptions.secret ?? hmacSecret, timestamp, raw),
        [TIMESTAMP_HEADER]: timestamp,
        [DELIVERY_HEADER]: signOptions.deliveryId ?? randomUUID(),
        "content-type": "application/json",
      };
    },
    async token(claims = {}, tokenOptions = {}) {
      const now = Math.floor(clock.now().getTime() / 1000);
      return new SignJWT({ repository: REPOSITORY, ref: "refs/heads/main", ...claims })
        .setProtectedHeader({ alg: "RS256", kid: "test-key-1", typ: "JWT" })
        .setIssuer(oidcIssuer)
        .setAudience(tokenOptions.audience ?? AUDIENCE)
        .setSubject(`repo:${REPOSITORY}:ref:refs/heads/main`)
        .setIssuedAt(now - 10)
        .setExpirationTime(now + (tokenOptions.expiresInSeconds ?? 300))
        .sign(tokenOptions.foreignKey === true ? foreign.privateKey : signing.privateKey);
    },
    async close() {
      await server.close();
      await new Promise<void>((resolve) => jwksServer.close(() => resolve()));
      jwksServer.closeAllConnections();
      await fixture.close();
    },
  };
}
