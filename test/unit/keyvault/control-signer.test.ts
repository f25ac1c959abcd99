/**
 * The control-plane signer: the real `CryptographyClient` against the local Key Vault server's
 * `sign` operation, with a non-exportable RSA-HSM key. Signatures verify with the key's public
 * half as JWS RS256 does; every refusal is typed and signs nothing.
 */
import { createHash, createPublicKey, randomBytes, verify } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createKeyVaultControlSigner, parseControlKeyId } from "../../../adapters/keyvault/control-signer.js";
import { localKeyVaultCredential } from "../../../adapters/local/keyvault/credential.js";
import {
  cachedIssuerKeys,
  createLocalKeyVault,
  type LocalKeyVault,
  type LocalKeyVersion,
} from "../../../adapters/local/keyvault/engine.js";
import {
  startLocalKeyVaultServer,
  type LocalKeyVaultServer,
} from "../../../adapters/local/keyvault/server.js";
import { systemClock } from "../../../core/ports/clock.js";
import { controlKeySet, signControlMessage, verifyControlMessage } from "../../../core/control/signed.js";
import { makeKeyEvent } from "../../../core/messages/index.js";

let vault: LocalKeyVault;
let server: LocalKeyVaultServer;
let control: LocalKeyVersion;

beforeAll(async () => {
  vault = await createLocalKeyVault({
    vaultUrl: "https://control.vault.azure.net",
    masterKey: randomBytes(32),
    clock: systemClock,
    tokenKeys: cachedIssuerKeys({ clock: systemClock, fetchJson: () => Promise.resolve({ keys: [] }) }),
  });
  server = await startLocalKeyVaultServer({ engine: vault });
  control = await vault.createKey("control", { kty: "RSA-HSM", keySize: 2048, keyOps: ["sign", "verify"] });
});

afterAll(async () => {
  await server.close();
});

const signerFor = (keyId: string, algorithm: "RS256" | "ES256" | "PS256" = "RS256") =>
  createKeyVaultControlSigner({ keyId, algorithm, credential: localKeyVaultCredential(server.accessToken) });

describe("Key Vault control-plane signer", () => {
  it("signs a digest through the SDK; the signature verifies as RS256 with the public key", async () => {
    const signer = signerFor(`${server.url}/keys/control/${control.version}`);
    const data = Buffer.from("signing input");
    const signature = await signer.sign(createHash("sha256").update(data).digest());
    const publicKey = createPublicKey({
      key: { kty: "RSA", n: control.publicKey["n"], e: control.publicKey["e"] },
      format: "jwk",
    });
    expect(verify("sha256", data, publicKey, signature)).toBe(true);
    expect(vault.stats().signatures).toBeGreaterThanOrEqual(1);
  });

  it("signs control messages an agent pinning the key accepts", async () => {
    const keyId = `${server.url}/keys/control/${control.version}`;
    const signer = signerFor(keyId);
    const signed = await signControlMessage(
      makeKeyEvent({ agentId: "a1", event: "rotated", keyName: "k", keyVersion: "v2", sentAt: new Date() }),
      { signer, messageId: "m-1", issuedAt: new Date(), expiresAt: new Date(Date.now() + 60_000) },
    );
    const keys = controlKeySet({ keys: [{ kty: "RSA", ...control.publicKey, kid: keyId }] });
    const verified = await verifyControlMessage(signed.jws, { keys, agentId: "a1", at: new Date() });
    expect(verified.message).toMatchObject({ type: "key-event", keyVersion: "v2" });
  });

  it("refuses an unknown key version (ERR_CONFIG) and an algorithm the key cannot sign with", async () => {
    await expect(
      signerFor(`${server.url}/keys/control/00000000000000000000000000000000`).sign(Buffer.alloc(32)),
    ).rejects.toMatchObject({
      code: "ERR_CONFIG",
    });
    await expect(
      signerFor(`${server.url}/keys/control/${control.version}`, "ES256").sign(Buffer.alloc(32)),
    ).rejects.toMatchObject({
      code: "ERR_CONFIG",
    });
  });

  it("refuses a key that does not permit sign", async () => {
    const encryptOnly = await vault.createKey("encrypt-only", { kty: "RSA-HSM", keyOps: ["encrypt"] });
    await expect(
      signerFor(`${server.url}/keys/encrypt-only/${encryptOnly.version}`).sign(Buffer.alloc(32)),
    ).rejects.toMatchObject({
      code: "ERR_CONFIG",
    });
  });

  it("needs a versioned key id: the version is the kid agents pin", () => {
    expect(() => parseControlKeyId("https://v.vault.azure.net/keys/control")).toThrow(
      expect.objectContaining({ code: "ERR_CONFIG" }),
    );
    expect(() => parseControlKeyId("http://v.vault.azure.net/keys/control/abc")).toThrow(
      expect.objectContaining({ code: "ERR_CONFIG" }),
    );
    expect(parseControlKeyId("https://v.vault.azure.net/keys/control/abc123")).toMatchObject({
      name: "control",
      version: "abc123",
      local: false,
    });
  });

  it("refuses a digest that is not 32 bytes (caller misuse)", async () => {
    await expect(
      signerFor(`${server.url}/keys/control/${control.version}`).sign(Buffer.alloc(31)),
    ).rejects.toThrow(TypeError);
  });
});
