import { createHmac, createPrivateKey, generateKeyPairSync, hkdfSync, randomBytes } from "node:crypto";
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  LocalKeyVaultError,
  addIsoDuration,
  createLocalKeyVault,
  type LocalKeyVault,
  type ReleasePolicyInput,
} from "../../../adapters/local/keyvault/engine.js";
import { ShieldError } from "../../../core/errors.js";
import { parseReleaseResponse, unwrapReleasedKey } from "../../../core/keywrap/index.js";
import { encodeReleasePolicy, type ReleasePolicy } from "../../../core/policy/index.js";
import type { SigningKeyResolver } from "../../../core/token/index.js";
import {
  createKeyVaultFixture,
  encodingsOf,
  VAULT_URL,
  type KeyVaultFixture,
} from "../../contract/key-store.fixtures.js";

let fixture: KeyVaultFixture;
let engine: LocalKeyVault;
let policy: ReleasePolicy;
let wirePolicy: ReleasePolicyInput;
const temporaryDirectories: string[] = [];

beforeAll(async () => {
  fixture = await createKeyVaultFixture();
  engine = await fixture.engine();
  policy = fixture.policy();
  wirePolicy = encodeReleasePolicy(policy);
});

afterAll(async () => {
  await fixture.close();
  await Promise.all(temporaryDirectories.map((dir) => rm(dir, { recursive: true, force: true })));
});

async function rejection(promise: Promise<unknown>): Promise<LocalKeyVaultError> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  expect(error).toBeInstanceOf(LocalKeyVaultError);
  return error as LocalKeyVaultError;
}

const exportable = (kty = "oct-HSM") => ({ kty, exportable: true, releasePolicy: wirePolicy });

describe("creating keys", () => {
  it("creates the documented types and sizes", async () => {
    const rsa = await engine.createKey(fixture.uniqueName("rsa3072"), {
      ...exportable("RSA-HSM"),
      keySize: 3072,
    });
    expect(rsa).toMatchObject({ kty: "RSA-HSM", keySize: 3072 });
    expect(Buffer.from(rsa.publicKey["n"]!, "base64url").length).toBe(384);
    const ec = await engine.createKey(fixture.uniqueName("p384"), {
      ...exportable("EC-HSM"),
      curve: "P-384",
    });
    expect(ec).toMatchObject({ kty: "EC-HSM", curve: "P-384", publicKey: { crv: "P-384" } });
    const oct = await engine.createKey(fixture.uniqueName("oct128"), { ...exportable(), keySize: 128 });
    expect((await engine.keyMaterialForTests(oct.name)).length).toBe(16);
    expect(oct.version).toMatch(/^[0-9a-f]{32}$/);
    expect(oct.keyOps).toEqual(["encrypt", "decrypt", "wrapKey", "unwrapKey"]);
  });

  it("creates an RSA-4096 key", async () => {
    const rsa = await engine.createKey(fixture.uniqueName("rsa4096"), {
      ...exportable("RSA-HSM"),
      keySize: 4096,
    });
    const material = await engine.keyMaterialForTests(rsa.name);
    expect(
      createPrivateKey({ key: material, format: "der", type: "pkcs8" }).asymmetricKeyDetails?.modulusLength,
    ).toBe(4096);
  });

  it.each([
    ["an unknown key type", { kty: "RSA", exportable: true, releasePolicy: {} }],
    ["an RSA size Key Vault lacks", { kty: "RSA-HSM", keySize: 1024 }],
    ["an oct size Key Vault lacks", { kty: "oct-HSM", keySize: 512 }],
    ["an unknown curve", { kty: "EC-HSM", curve: "P-256K" }],
    ["a public exponent other than 65537", { kty: "RSA-HSM", publicExponent: 3 }],
    ["an unknown key operation", { kty: "oct-HSM", keyOps: ["launch"] }],
    [
      "too many tags",
      { kty: "oct-HSM", tags: Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`t${i}`, "v"])) },
    ],
  ])("refuses %s with 400", async (_label, parameters) => {
    const error = await rejection(engine.createKey(fixture.uniqueName("bad"), parameters as never));
    expect(error).toMatchObject({ status: 400, vaultCode: "BadParameter", code: "ERR_CONFIG" });
  });

  it("refuses a bad key name", async () => {
    const error = await rejection(engine.createKey("no_underscores", exportable()));
    expect(error.status).toBe(400);
  });

  it("requires a release policy on the first version of an exportable key (AKV.SKR.1004)", async () => {
    const error = await rejection(
      engine.createKey(fixture.uniqueName("nopolicy"), { kty: "oct-HSM", exportable: true }),
    );
    expect(error).toMatchObject({ status: 400, code: "ERR_CONFIG" });
    expect(error.message).toContain("AKV.SKR.1004");
  });

  it("refuses a release policy on a non-exportable key (AKV.SKR.1005)", async () => {
    const error = await rejection(
      engine.createKey(fixture.uniqueName("nonexp"), { kty: "oct-HSM", releasePolicy: wirePolicy }),
    );
    expect(error.message).toContain("AKV.SKR.1005");
  });

  it("lets a later version of an exportable key inherit the current policy", async () => {
    const name = fixture.uniqueName("inherit");
    await engine.createKey(name, exportable());
    const second = await engine.createKey(name, { kty: "oct-HSM", exportable: true });
    expect(second.releasePolicy?.policy).toEqual(policy);
  });

  it("refuses a malformed release policy with the policy parser's code", async () => {
    const bad = {
      data: Buffer.from('{"version":"1.0.0","anyOf":[{"authority":"x"}]}').toString("base64url"),
    };
    const error = await rejection(
      engine.createKey(fixture.uniqueName("malformed"), { ...exportable(), releasePolicy: bad }),
    );
    expect(error).toMatchObject({ status: 400, code: "ERR_POLICY_MALFORMED" });
    const version = { data: Buffer.from('{"version":"9","anyOf":[]}').toString("base64url") };
    expect(
      await rejection(
        engine.createKey(fixture.uniqueName("version"), { ...exportable(), releasePolicy: version }),
      ),
    ).toMatchObject({ status: 400, code: "ERR_POLICY_VERSION" });
  });

  it("creates a non-exportable key without a policy and never releases it", async () => {
    const name = fixture.uniqueName("plain");
    const key = await engine.createKey(name, { kty: "oct-HSM" });
    expect(key.attributes.exportable).toBe(false);
    const error = await rejection(engine.release(name, undefined, { target: await fixture.token() }));
    expect(error).toMatchObject({ status: 400, code: "ERR_CONFIG" });
  });
});

describe("updating a version", () => {
  it("refuses to change an immutable release policy, and accepts re-sending it unchanged", async () => {
    const name = fixture.uniqueName("immutable");
    const key = await engine.createKey(name, {
      ...exportable(),
      releasePolicy: { ...wirePolicy, immutable: true },
    });
    const other = encodeReleasePolicy(fixture.policy(["ef".repeat(32)]));
    const error = await rejection(engine.updateKey(name, key.version, { releasePolicy: other }));
    expect(error).toMatchObject({ status: 400, code: "ERR_CONFIG" });
    expect(error.message).toContain("immutable");
    await rejection(
      engine.updateKey(name, key.version, { releasePolicy: { ...wirePolicy, immutable: false } }),
    );
    const same = await engine.updateKey(name, key.version, {
      releasePolicy: { ...wirePolicy, immutable: true },
    });
    expect(same.releasePolicy?.immutable).toBe(true);
    // Rotation carries the immutable policy over.
    const rotated = await engine.rotateKey(name);
    expect(rotated.releasePolicy).toMatchObject({ immutable: true, policy });
  });

  it("changes a mutable policy, enabled and tags of one version, and refuses a change of exportable", async () => {
    const name = fixture.uniqueName("mutable");
    const first = await engine.createKey(name, exportable());
    await engine.rotateKey(name);
    fixture.clock.advance(1000);
    const updated = await engine.updateKey(name, first.version, { enabled: false, tags: { owner: "ops" } });
    expect(updated.attributes).toMatchObject({ enabled: false });
    expect(updated.attributes.updated.getTime()).toBeGreaterThan(updated.attributes.created.getTime());
    expect(updated.tags).toEqual({ owner: "ops" });
    expect((await engine.getKey(name)).attributes.enabled).toBe(true);
    await expect(engine.updateKey(name, first.version, { exportable: false })).rejects.toMatchObject({
      status: 400,
    });
    await expect(engine.updateKey(name, "f".repeat(32), { enabled: true })).rejects.toMatchObject({
      status: 404,
    });
  });
});

describe("rotation policy", () => {
  it("serves Key Vault's default, stores a valid policy and applies its expiry to rotated versions", async () => {
    const name = fixture.uniqueName("rotation");
    await engine.createKey(name, exportable());
    expect(await engine.getRotationPolicy(name)).toEqual({
      lifetimeActions: [{ action: "Notify", timeBeforeExpiry: "P30D" }],
    });
    const stored = await engine.setRotationPolicy(name, {
      lifetimeActions: [{ action: "rotate", timeAfterCreate: "P1Y" }],
      expiryTime: "P2Y",
    });
    expect(stored.lifetimeActions).toEqual([{ action: "Rotate", timeAfterCreate: "P1Y" }]);
    const rotated = await engine.rotateKey(name);
    expect(rotated.attributes.expires).toEqual(addIsoDuration(fixture.clock.now(), "P2Y"));
  });

  it.each([
    ["an unknown action", { lifetimeActions: [{ action: "Delete", timeAfterCreate: "P1D" }] }],
    [
      "two triggers",
      { lifetimeActions: [{ action: "Rotate", timeAfterCreate: "P1D", timeBeforeExpiry: "P1D" }] },
    ],
    ["no trigger", { lifetimeActions: [{ action: "Rotate" }] }],
    [
      "a duplicate action",
      {
        lifetimeActions: [
          { action: "Rotate", timeAfterCreate: "P1D" },
          { action: "rotate", timeAfterCreate: "P2D" },
        ],
      },
    ],
    ["a malformed duration", { lifetimeActions: [{ action: "Rotate", timeAfterCreate: "90 days" }] }],
    ["an expiry under 28 days", { expiryTime: "P27D" }],
  ])("refuses %s", async (_label, input) => {
    const name = fixture.uniqueName("badrotation");
    await engine.createKey(name, exportable());
    expect(await rejection(engine.setRotationPolicy(name, input))).toMatchObject({ status: 400 });
  });

  it("adds ISO 8601 durations in UTC calendar terms", () => {
    const at = new Date("2026-01-31T00:00:00Z");
    expect(addIsoDuration(at, "P1M")?.toISOString()).toBe("2026-03-03T00:00:00.000Z");
    expect(addIsoDuration(at, "P1Y2W3DT4H5M6S")?.toISOString()).toBe("2027-02-17T04:05:06.000Z");
    expect(addIsoDuration(at, "P")).toBeUndefined();
    expect(addIsoDuration(at, "PT")).toBeUndefined();
  });
});

describe("release", () => {
  let name: string;
  beforeAll(async () => {
    name = fixture.uniqueName("release");
    await engine.createKey(name, exportable());
  });

  it("asks for signing keys only for the policy's authority, never for the token's jku", async () => {
    const requests: string[] = [];
    const spy = await fixture.engine({
      tokenKeys: (issuer) => {
        requests.push(issuer);
        return fixture.tokenKeys(issuer);
      },
    });
    const keyName = fixture.uniqueName("spy");
    await spy.createKey(keyName, exportable());
    await spy.release(keyName, undefined, { target: await fixture.token() });
    await rejection(
      spy.release(keyName, undefined, { target: await fixture.token({}, { issuer: fixture.stranger }) }),
    );
    expect(requests).toEqual([fixture.trusted.issuer]);
  });

  it("matches the authority the way Key Vault matches iss (trailing slash, host case)", async () => {
    const keyName = fixture.uniqueName("slash");
    const withSlash = {
      ...policy,
      authorities: policy.authorities.map((a) => ({ ...a, authority: `${a.authority.toUpperCase()}/` })),
    };
    await engine.createKey(keyName, { ...exportable(), releasePolicy: encodeReleasePolicy(withSlash) });
    const { value } = await engine.release(keyName, undefined, { target: await fixture.token() });
    expect(unwrapReleasedKey(value, fixture.agentPrivateKey).kty).toBe("oct-HSM");
  });

  it("wraps with CKM_RSA_AES_KEY_WRAP when enc is omitted and names versionless requests as such", async () => {
    const { value } = await engine.release(name, undefined, {
      target: await fixture.token(),
      apiVersion: "7.4",
    });
    const envelope = parseReleaseResponse(value);
    expect(envelope.enc).toBe("CKM_RSA_AES_KEY_WRAP");
    const payload = JSON.parse(Buffer.from(value.split(".")[1]!, "base64url").toString("utf8")) as {
      request: Record<string, unknown>;
      response: { key: { attributes: Record<string, unknown>; release_policy: Record<string, unknown> } };
    };
    expect(payload.request).toEqual({
      "api-version": "7.4",
      enc: "CKM_RSA_AES_KEY_WRAP",
      kid: `${VAULT_URL}/keys/${name}`,
    });
    expect(payload.response.key.attributes).toMatchObject({
      exportable: true,
      enabled: true,
      recoveryLevel: "Recoverable+Purgeable",
    });
    expect(payload.response.key.release_policy).toMatchObject({ data: wirePolicy.data, immutable: false });
  });

  it("picks the first suitable runtime key: RSA, with kid, for encryption", async () => {
    const { publicKey: signing } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const signingJwk = signing.export({ format: "jwk" });
    const keys = [
      { kty: "RSA", kid: "signing", key_ops: ["sign"], n: signingJwk.n, e: signingJwk.e },
      { kty: "EC", kid: "ec", key_ops: ["encrypt"], crv: "P-256", x: "AA", y: "AA" },
      { kty: "RSA", key_ops: ["encrypt"], n: signingJwk.n, e: signingJwk.e },
      { ...fixture.agentJwk, key_ops: undefined, key_use: "enc" },
    ];
    const { value } = await engine.release(name, undefined, {
      target: await fixture.token({ "x-ms-runtime": { keys } }),
      enc: "RSA_AES_KEY_WRAP_256",
    });
    expect(unwrapReleasedKey(value, fixture.agentPrivateKey).kty).toBe("oct-HSM");
  });

  it("ignores the runtime key nested under x-ms-isolation-tee", async () => {
    const error = await rejection(
      engine.release(name, undefined, {
        target: await fixture.token({
          "x-ms-runtime": undefined,
          "x-ms-isolation-tee": {
            "x-ms-attestation-type": "sevsnpvm",
            "x-ms-runtime": { keys: [fixture.agentJwk] },
          },
        }),
      }),
    );
    expect(error).toMatchObject({ status: 403, code: "ERR_POLICY_DENIED" });
    expect(error.violations[0]?.field).toBe("x-ms-runtime.keys");
  });

  it("refuses a runtime key too small to wrap to", async () => {
    const { publicKey } = generateKeyPairSync("rsa", { modulusLength: 1024 });
    const jwk = publicKey.export({ format: "jwk" });
    const error = await rejection(
      engine.release(name, undefined, {
        target: await fixture.token({
          "x-ms-runtime": { keys: [{ kty: "RSA", kid: "small", key_ops: ["encrypt"], n: jwk.n, e: jwk.e }] },
        }),
      }),
    );
    expect(error).toMatchObject({ status: 403, code: "ERR_POLICY_DENIED" });
  });

  it.each([
    ["an unknown enc", { enc: "RSA_OAEP" }],
    ["an oversized nonce", { nonce: "n".repeat(300) }],
    ["an empty target", { target: "" }],
  ])("refuses %s with 400", async (_label, request) => {
    const error = await rejection(
      engine.release(name, undefined, { target: await fixture.token(), ...request }),
    );
    expect(error).toMatchObject({ status: 400, code: "ERR_CONFIG" });
  });

  it("does not release a disabled version or one past its expiry", async () => {
    const keyName = fixture.uniqueName("disabled");
    const key = await engine.createKey(keyName, exportable());
    await engine.updateKey(keyName, key.version, { enabled: false });
    expect(
      await rejection(engine.release(keyName, undefined, { target: await fixture.token() })),
    ).toMatchObject({ status: 403 });
    const expiring = fixture.uniqueName("expiring");
    await engine.createKey(expiring, {
      ...exportable(),
      expires: new Date(fixture.clock.now().getTime() - 1000),
    });
    expect(
      await rejection(engine.release(expiring, undefined, { target: await fixture.token() })),
    ).toMatchObject({ status: 403 });
  });

  it("answers 503 (transient) when the issuer's signing keys cannot be had", async () => {
    const unavailable: SigningKeyResolver = {
      getKey: () =>
        Promise.reject(new ShieldError("ERR_JWKS_UNAVAILABLE", "signing keys could not be fetched")),
    };
    const offline = await fixture.engine({ tokenKeys: () => unavailable });
    const keyName = fixture.uniqueName("offline");
    await offline.createKey(keyName, exportable());
    const error = await rejection(offline.release(keyName, undefined, { target: await fixture.token() }));
    expect(error).toMatchObject({ status: 503, code: "ERR_JWKS_UNAVAILABLE", transient: true });
  });

  it("reports a token not yet valid and a wrong-key token as denials with the token check's reason", async () => {
    const future = await fixture.token({}, { at: new Date(fixture.clock.now().getTime() + 3600_000) });
    const early = await rejection(engine.release(name, undefined, { target: future }));
    expect(early).toMatchObject({ status: 403, code: "ERR_POLICY_DENIED" });
    expect(early.message).toContain("ERR_TOKEN_NOT_YET_VALID");
    const forged = await fixture.token({ iss: fixture.trusted.issuer }, { issuer: fixture.stranger });
    expect((await rejection(engine.release(name, undefined, { target: forged }))).message).toContain(
      "ERR_TOKEN_KID",
    );
  });

  it("counts calls, releases and refusals", async () => {
    const counted = await fixture.engine();
    const keyName = fixture.uniqueName("stats");
    await counted.createKey(keyName, exportable());
    await counted.release(keyName, undefined, { target: await fixture.token() });
    await rejection(
      counted.release(keyName, undefined, { target: await fixture.token({ "x-ms-sevsnpvm-vmpl": 2 }) }),
    );
    await rejection(counted.release(keyName, undefined, { target: "x", enc: "nope" }));
    await rejection(counted.release("missing-key", undefined, { target: "x" }));
    expect(counted.stats()).toEqual({
      calls: 4,
      released: 1,
      refused: 1,
      signatures: 0,
      byKey: {
        [keyName]: { calls: 3, released: 1, refused: 1 },
        "missing-key": { calls: 1, released: 0, refused: 0 },
      },
    });
  });

  it("exposes key material only when asked to at creation", async () => {
    const closed = await fixture.engine({ exposeKeyMaterialForTests: false });
    const keyName = fixture.uniqueName("closed");
    await closed.createKey(keyName, exportable());
    await expect(closed.keyMaterialForTests(keyName)).rejects.toBeInstanceOf(TypeError);
  });
});

describe("key material at rest", () => {
  /** The material of every key in `vault`, plus each RSA/EC JWK's private members. */
  async function secretsOf(vault: LocalKeyVault, names: readonly string[]): Promise<string[]> {
    const out: string[] = [];
    for (const name of names) {
      for (const version of await vault.listVersions(name)) {
        const material = await vault.keyMaterialForTests(name, version.version);
        out.push(...encodingsOf(material));
        if (version.kty !== "oct-HSM") {
          const jwk = createPrivateKey({ key: material, format: "der", type: "pkcs8" }).export({
            format: "jwk",
          });
          out.push(jwk.d ?? "");
          out.push(...encodingsOf(Buffer.from(jwk.d ?? "", "base64url")));
        }
      }
    }
    return out;
  }

  async function populate(vault: LocalKeyVault): Promise<string[]> {
    const names = [fixture.uniqueName("oct"), fixture.uniqueName("rsa"), fixture.uniqueName("ec")];
    await vault.createKey(names[0]!, exportable());
    await vault.rotateKey(names[0]!);
    await vault.createKey(names[1]!, exportable("RSA-HSM"));
    await vault.createKey(names[2]!, exportable("EC-HSM"));
    return names;
  }

  it("keeps no key material in the memory store, in any encoding", async () => {
    const vault = await fixture.engine();
    const names = await populate(vault);
    const dump = await vault.dumpStorage();
    expect(dump.length).toBeGreaterThan(1000);
    for (const secret of await secretsOf(vault, names)) expect(dump).not.toContain(secret);
  });

  it("keeps no key material in the storage directory, reopens it with the master key, and refuses another key", async () => {
    const directory = await mkdtemp(join(tmpdir(), "shield-kv-"));
    temporaryDirectories.push(directory);
    const masterKey = randomBytes(32);
    const vault = await fixture.engine({ storage: directory, masterKey });
    const names = await populate(vault);
    const files = (await readdir(join(directory, "keys"))).map((file) => join(directory, "keys", file));
    expect(files).toHaveLength(3);
    const text = (
      await Promise.all([join(directory, "vault.json"), ...files].map((f) => readFile(f, "latin1")))
    ).join("\n");
    for (const secret of await secretsOf(vault, names)) expect(text).not.toContain(secret);
    expect((await stat(files[0]!)).mode & 0o077).toBe(0);

    const reopened = await fixture.engine({ storage: directory, masterKey });
    for (const name of names) {
      expect(await reopened.listVersions(name)).toEqual(await vault.listVersions(name));
      expect(
        Buffer.compare(await reopened.keyMaterialForTests(name), await vault.keyMaterialForTests(name)),
      ).toBe(0);
    }
    const { value } = await reopened.release(names[1]!, undefined, { target: await fixture.token() });
    expect(unwrapReleasedKey(value, fixture.agentPrivateKey).kty).toBe("RSA-HSM");

    await expect(fixture.engine({ storage: directory, masterKey: randomBytes(32) })).rejects.toMatchObject({
      code: "ERR_CONFIG",
    });
    await expect(
      createLocalKeyVault({
        vaultUrl: "https://other.vault.azure.net",
        masterKey,
        clock: fixture.clock,
        tokenKeys: fixture.tokenKeys,
        storage: directory,
      }),
    ).rejects.toMatchObject({ code: "ERR_CONFIG" });
  });

  it("binds each sealed record to its key id: a record moved to another version does not open", async () => {
    const directory = await mkdtemp(join(tmpdir(), "shield-kv-"));
    temporaryDirectories.push(directory);
    const masterKey = randomBytes(32);
    const vault = await fixture.engine({ storage: directory, masterKey });
    const name = fixture.uniqueName("moved");
    await vault.createKey(name, exportable());
    await vault.rotateKey(name);
    const file = join(directory, "keys", `${name}.json`);
    const original = await readFile(file, "utf8");
    const { mac: _mac, ...stored } = JSON.parse(original) as {
      mac: string;
      versions: { sealed: unknown }[];
    };
    stored.versions[1]!.sealed = stored.versions[0]!.sealed;
    // Moved as it is: the record's MAC no longer matches, and the vault does not open.
    await writeFile(file, JSON.stringify({ ...stored, mac: _mac }));
    await expect(fixture.engine({ storage: directory, masterKey })).rejects.toMatchObject({
      code: "ERR_CONFIG",
      message: expect.stringMatching(/fails its MAC check/) as unknown,
    });
    // Moved with a valid MAC (made with the master key): the sealed key itself is bound to its id.
    const macKey = Buffer.from(
      hkdfSync("sha256", masterKey, Buffer.alloc(0), "shield local key vault record mac", 32),
    );
    const text = JSON.stringify(stored);
    const mac = createHmac("sha256", macKey)
      .update(`${VAULT_URL}/keys/${name}\n`)
      .update(text)
      .digest("base64");
    await writeFile(file, JSON.stringify({ ...stored, mac }));
    await expect(fixture.engine({ storage: directory, masterKey })).rejects.toMatchObject({
      code: "ERR_CONFIG",
      message: expect.stringMatching(/does not open under the master key/) as unknown,
    });
    await writeFile(file, original);
    expect((await (await fixture.engine({ storage: directory, masterKey })).listVersions(name)).length).toBe(
      2,
    );
  });

  it("refuses storage whose attributes or release policy were edited, or whose vault record is gone", async () => {
    const directory = await mkdtemp(join(tmpdir(), "shield-kv-"));
    temporaryDirectories.push(directory);
    const masterKey = randomBytes(32);
    const vault = await fixture.engine({ storage: directory, masterKey });
    const name = fixture.uniqueName("edited");
    await vault.createKey(name, exportable());
    const file = join(directory, "keys", `${name}.json`);
    const original = await readFile(file, "utf8");
    const edited = JSON.parse(original) as {
      versions: { attributes: { enabled: boolean }; releasePolicy: { data: string } }[];
    };
    edited.versions[0]!.releasePolicy.data = Buffer.from('{"version":"1.0.0","anyOf":[]}').toString(
      "base64url",
    );
    await writeFile(file, JSON.stringify(edited));
    await expect(fixture.engine({ storage: directory, masterKey })).rejects.toMatchObject({
      code: "ERR_CONFIG",
    });
    await writeFile(file, original.replace('"enabled":true', '"enabled":false'));
    await expect(fixture.engine({ storage: directory, masterKey })).rejects.toMatchObject({
      code: "ERR_CONFIG",
    });
    await writeFile(file, original.slice(0, -10));
    await expect(fixture.engine({ storage: directory, masterKey })).rejects.toMatchObject({
      code: "ERR_CONFIG",
      message: expect.stringMatching(/not JSON/) as unknown,
    });
    await writeFile(file, original);
    await rm(join(directory, "vault.json"));
    await expect(fixture.engine({ storage: directory, masterKey })).rejects.toMatchObject({
      code: "ERR_CONFIG",
      message: expect.stringMatching(/no vault record/) as unknown,
    });
  });

  it("refuses a master key that is not 32 bytes and a vault URL with a path", async () => {
    await expect(fixture.engine({ masterKey: randomBytes(16) })).rejects.toBeInstanceOf(TypeError);
    await expect(fixture.engine({ vaultUrl: "https://v.vault.azure.net/keys" })).rejects.toBeInstanceOf(
      TypeError,
    );
  });
});
