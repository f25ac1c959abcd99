/**
 * The KeyStore contract: every adapter must pass these tests unchanged. Both harnesses sit on a
 * local Key Vault engine (in-process, or behind the HTTP server and the real SDK), which lets the
 * tests compare a released key with the key the vault holds and count release calls. Tests share
 * one store per file and keep apart by using fresh key names.
 */
import { X509Certificate } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalKeyVault } from "../../adapters/local/keyvault/engine.js";
import { ShieldError } from "../../core/errors.js";
import { RELEASE_ENCRYPTIONS, parseReleaseResponse, unwrapReleasedKey } from "../../core/keywrap/index.js";
import type { KeyStore, KeyVersionInfo, ManagedKeyType } from "../../core/ports/key-store.js";
import {
  encodeReleasePolicy,
  evaluateReleasePolicy,
  parseReleasePolicy,
  releasePolicyToJson,
  type ReleasePolicy,
} from "../../core/policy/index.js";
import type { KeyVaultFixture } from "./key-store.fixtures.js";

export interface KeyStoreHarness {
  readonly store: KeyStore;
  readonly engine: LocalKeyVault;
  readonly fixture: KeyVaultFixture;
  /** Whether a policy denial carries per-clause violations (the in-process adapter does). */
  readonly structuredDenials: boolean;
  close(): Promise<void>;
}

async function expectCode(promise: Promise<unknown>, code: string): Promise<ShieldError> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  expect(error).toBeInstanceOf(ShieldError);
  expect((error as ShieldError).code).toBe(code);
  return error as ShieldError;
}

/** The error says nothing of the token it refused. */
function expectNoTokenText(error: ShieldError, token: string): void {
  const text = `${error.message} ${JSON.stringify(error.toJSON())}`;
  for (const part of token.split(".")) {
    if (part.length >= 16) expect(text).not.toContain(part);
  }
}

interface KeyShape {
  readonly keyType: ManagedKeyType;
  readonly keySize?: number;
  readonly curve?: "P-256" | "P-384";
  readonly label: string;
}

const SHAPES: readonly KeyShape[] = [
  { keyType: "oct-HSM", keySize: 256, label: "oct-HSM 256" },
  { keyType: "RSA-HSM", keySize: 2048, label: "RSA-HSM 2048" },
  { keyType: "EC-HSM", curve: "P-256", label: "EC-HSM P-256" },
  { keyType: "EC-HSM", curve: "P-384", label: "EC-HSM P-384" },
];

export function defineKeyStoreContract(name: string, makeHarness: () => Promise<KeyStoreHarness>): void {
  describe(`KeyStore contract: ${name}`, () => {
    let harness: KeyStoreHarness;
    let store: KeyStore;
    let engine: LocalKeyVault;
    let fixture: KeyVaultFixture;
    let policy: ReleasePolicy;
    const created = new Map<string, KeyVersionInfo>();

    const unwrap = (value: string) =>
      unwrapReleasedKey(value, fixture.agentPrivateKey, {
        trustedSigners: [...engine.signerCertificates],
        at: fixture.clock.now(),
      });

    /** The unwrapped key equals what the vault holds for that version. */
    const expectSameKey = async (info: KeyVersionInfo, released: ReturnType<typeof unwrap>) => {
      const held = await engine.keyMaterialForTests(info.name, info.version);
      const got =
        "bytes" in released ? released.bytes : released.privateKey.export({ type: "pkcs8", format: "der" });
      expect(Buffer.compare(got, held)).toBe(0);
    };

    beforeAll(async () => {
      harness = await makeHarness();
      ({ store, engine, fixture } = harness);
      policy = fixture.policy();
      for (const shape of SHAPES) {
        const keyName = fixture.uniqueName(shape.label.replace(/[^A-Za-z0-9]+/g, "-"));
        created.set(
          shape.label,
          await store.createKey(keyName, {
            keyType: shape.keyType,
            releasePolicy: policy,
            ...(shape.keySize === undefined ? {} : { keySize: shape.keySize }),
            ...(shape.curve === undefined ? {} : { curve: shape.curve }),
            tags: { purpose: "contract" },
          }),
        );
      }
    });

    afterAll(async () => {
      await harness?.close();
    });

    describe("create and read", () => {
      it.each(SHAPES.map((s) => [s.label, s] as const))(
        "creates an exportable %s key whose release policy round-trips",
        async (label, shape) => {
          const info = created.get(label)!;
          expect(info).toMatchObject({ keyType: shape.keyType, exportable: true, enabled: true });
          expect(info.releasePolicy).toEqual(policy);
          expect(info.id).toBe(`${engine.vaultUrl}/keys/${info.name}/${info.version}`);
          expect(info.createdOn).toBeInstanceOf(Date);
          const read = await store.getKey(info.name);
          expect(read).toEqual(info);
          expect(await store.getKey(info.name, info.version)).toEqual(info);
        },
      );

      it("refuses an exportable key without a release policy", async () => {
        const missing = undefined as unknown as ReleasePolicy;
        await expectCode(
          store.createKey(fixture.uniqueName("nopolicy"), { keyType: "oct-HSM", releasePolicy: missing }),
          "ERR_CONFIG",
        );
      });

      it("reports a missing key or version as a configuration error", async () => {
        await expectCode(store.getKey(fixture.uniqueName("absent")), "ERR_CONFIG");
        const info = created.get("oct-HSM 256")!;
        await expectCode(store.getKey(info.name, "0".repeat(32)), "ERR_CONFIG");
        await expectCode(store.listVersions(fixture.uniqueName("absent")), "ERR_CONFIG");
      });

      it("refuses a key name Key Vault would refuse", async () => {
        await expectCode(store.getKey("has space"), "ERR_CONFIG");
      });
    });

    describe("versions", () => {
      it("lists every version, oldest first; creating again and rotating add versions", async () => {
        const keyName = fixture.uniqueName("versions");
        const first = await store.createKey(keyName, { keyType: "oct-HSM", releasePolicy: policy });
        const second = await store.createKey(keyName, { keyType: "oct-HSM", releasePolicy: policy });
        const third = await store.rotate(keyName);
        const versions = await store.listVersions(keyName);
        expect(versions.map((v) => v.version)).toEqual([first.version, second.version, third.version]);
        expect(new Set(versions.map((v) => v.version)).size).toBe(3);
        expect((await store.getKey(keyName)).version).toBe(third.version);
      });

      it("rotation makes a new exportable version of the same type that carries the release policy", async () => {
        const info = await store.createKey(fixture.uniqueName("rotate"), {
          keyType: "EC-HSM",
          curve: "P-384",
          releasePolicy: policy,
        });
        const rotated = await store.rotate(info.name);
        expect(rotated.version).not.toBe(info.version);
        expect(rotated).toMatchObject({
          name: info.name,
          keyType: "EC-HSM",
          exportable: true,
          enabled: true,
        });
        expect(rotated.releasePolicy).toEqual(policy);
        expect((await store.getKey(info.name)).version).toBe(rotated.version);
        // The old version is still there and still releasable.
        const value = await store.release(info.name, await fixture.token(), {
          version: info.version,
          encryption: "RSA_AES_KEY_WRAP_256",
        });
        const released = unwrap(value);
        expect(released.kid).toBe(info.id);
        await expectSameKey(info, released);
      });

      it("disables and enables one version; a disabled version is not released", async () => {
        const keyName = fixture.uniqueName("disable");
        const older = await store.createKey(keyName, { keyType: "oct-HSM", releasePolicy: policy });
        const newer = await store.rotate(keyName);
        const disabled = await store.setEnabled(keyName, older.version, false);
        expect(disabled).toMatchObject({ version: older.version, enabled: false });
        expect((await store.getKey(keyName, older.version)).enabled).toBe(false);
        expect((await store.getKey(keyName, newer.version)).enabled).toBe(true);
        const token = await fixture.token();
        await expect(
          store.release(keyName, token, { version: older.version, encryption: "RSA_AES_KEY_WRAP_256" }),
        ).rejects.toBeInstanceOf(ShieldError);
        expect((await store.setEnabled(keyName, older.version, true)).enabled).toBe(true);
        const released = unwrap(
          await store.release(keyName, token, { version: older.version, encryption: "RSA_AES_KEY_WRAP_256" }),
        );
        expect(released.kid).toBe(older.id);
      });

      it("updates the release policy of one version only", async () => {
        const keyName = fixture.uniqueName("update");
        const older = await store.createKey(keyName, { keyType: "oct-HSM", releasePolicy: policy });
        const newer = await store.rotate(keyName);
        const widened = fixture.policy([fixture.hostData, "ab".repeat(32)]);
        const updated = await store.updateReleasePolicy(keyName, older.version, widened);
        expect(updated.version).toBe(older.version);
        expect(updated.releasePolicy).toEqual(widened);
        expect((await store.getKey(keyName, older.version)).releasePolicy).toEqual(widened);
        expect((await store.getKey(keyName, newer.version)).releasePolicy).toEqual(policy);
        // The new measurement is released from the updated version only.
        const token = await fixture.token({ "x-ms-sevsnpvm-hostdata": "ab".repeat(32) });
        const released = unwrap(
          await store.release(keyName, token, { version: older.version, encryption: "RSA_AES_KEY_WRAP_256" }),
        );
        expect(released.kid).toBe(older.id);
        await expectCode(
          store.release(keyName, token, { version: newer.version, encryption: "RSA_AES_KEY_WRAP_256" }),
          "ERR_POLICY_DENIED",
        );
      });
    });

    describe("release-policy guard (DESIGN §6 rule 6)", () => {
      /**
       * The rendered policy with its debug condition moved to a path the workload writes itself
       * (its runtime data): it looks guarded, yet releases to a debuggable VM.
       */
      const spoofed = (): ReleasePolicy =>
        parseReleasePolicy(
          JSON.parse(
            JSON.stringify(releasePolicyToJson(policy)).replaceAll(
              '"x-ms-sevsnpvm-is-debuggable"',
              '"x-ms-runtime.x-ms-sevsnpvm-is-debuggable"',
            ),
          ),
        );

      /** Writes the spoofed policy behind the adapter's back, as a tool other than Shield could. */
      const createSpoofedInVault = (keyName: string) =>
        engine.createKey(keyName, {
          kty: "oct-HSM",
          exportable: true,
          releasePolicy: encodeReleasePolicy(spoofed()),
        });

      it("the spoofed policy really would release to a debuggable VM", () => {
        const claims = fixture.claims({
          "x-ms-sevsnpvm-is-debuggable": true,
          "x-ms-runtime": { keys: [fixture.agentJwk], "x-ms-sevsnpvm-is-debuggable": false },
        });
        expect(evaluateReleasePolicy(spoofed(), { issuer: fixture.trusted.issuer, claims }).released).toBe(
          true,
        );
        expect(evaluateReleasePolicy(policy, { issuer: fixture.trusted.issuer, claims }).released).toBe(
          false,
        );
      });

      it("createKey refuses it with ERR_POLICY_UNSAFE and creates nothing", async () => {
        const keyName = fixture.uniqueName("spoof-create");
        const error = await expectCode(
          store.createKey(keyName, { keyType: "oct-HSM", releasePolicy: spoofed() }),
          "ERR_POLICY_UNSAFE",
        );
        expect(error.transient).toBe(false);
        expect(error.violations.map((v) => v.field)).toEqual([
          `anyOf[0] (${fixture.trusted.issuer}) is-debuggable`,
        ]);
        await expectCode(store.getKey(keyName), "ERR_CONFIG");
        // Nor as a new version of an existing key.
        const first = await store.createKey(keyName, { keyType: "oct-HSM", releasePolicy: policy });
        await expectCode(
          store.createKey(keyName, { keyType: "oct-HSM", releasePolicy: spoofed() }),
          "ERR_POLICY_UNSAFE",
        );
        expect((await store.listVersions(keyName)).map((v) => v.version)).toEqual([first.version]);
      });

      it("updateReleasePolicy refuses it with ERR_POLICY_UNSAFE_CHANGE and leaves the version's policy as it was", async () => {
        const keyName = fixture.uniqueName("spoof-update");
        const info = await store.createKey(keyName, { keyType: "oct-HSM", releasePolicy: policy });
        const error = await expectCode(
          store.updateReleasePolicy(keyName, info.version, spoofed()),
          "ERR_POLICY_UNSAFE_CHANGE",
        );
        expect(error.violations.map((v) => v.field)).toEqual([
          `anyOf[0] (${fixture.trusted.issuer}) is-debuggable`,
        ]);
        expect((await store.getKey(keyName, info.version)).releasePolicy).toEqual(policy);
      });

      it("updateReleasePolicy does not let an unsafe current policy excuse an unsafe new one", async () => {
        const keyName = fixture.uniqueName("spoof-reupdate");
        const version = (await createSpoofedInVault(keyName)).version;
        const widened = parseReleasePolicy(
          JSON.parse(
            JSON.stringify(
              releasePolicyToJson(fixture.policy([fixture.hostData, "ab".repeat(32)])),
            ).replaceAll('"x-ms-sevsnpvm-is-debuggable"', '"x-ms-runtime.x-ms-sevsnpvm-is-debuggable"'),
          ),
        );
        await expectCode(store.updateReleasePolicy(keyName, version, widened), "ERR_POLICY_UNSAFE");
        expect((await store.getKey(keyName, version)).releasePolicy).toEqual(spoofed());
        // Repairing it is allowed.
        const repaired = await store.updateReleasePolicy(keyName, version, policy);
        expect(repaired.releasePolicy).toEqual(policy);
      });

      it("rotate refuses to carry it to a new version with ERR_POLICY_UNSAFE and makes no version", async () => {
        const keyName = fixture.uniqueName("spoof-rotate");
        const only = await createSpoofedInVault(keyName);
        const error = await expectCode(store.rotate(keyName), "ERR_POLICY_UNSAFE");
        expect(error.violations.map((v) => v.field)).toEqual([
          `anyOf[0] (${fixture.trusted.issuer}) is-debuggable`,
        ]);
        expect((await store.listVersions(keyName)).map((v) => v.version)).toEqual([only.version]);
      });
    });

    describe("release", () => {
      const cases = SHAPES.flatMap((shape) => RELEASE_ENCRYPTIONS.map((enc) => [shape.label, enc] as const));
      it.each(cases)("releases %s wrapped with %s to the token's runtime key", async (label, enc) => {
        const info = created.get(label)!;
        const value = await store.release(info.name, await fixture.token(), { encryption: enc });
        const envelope = parseReleaseResponse(value, { trustedSigners: [...engine.signerCertificates] });
        expect(envelope).toMatchObject({ enc, kid: info.id, kty: info.keyType, signerTrusted: true });
        const released = unwrap(value);
        expect(released.kty).toBe(info.keyType);
        expect(released.enc).toBe(enc);
        await expectSameKey(info, released);
      });

      it("echoes the nonce and releases a named older version", async () => {
        const keyName = fixture.uniqueName("older");
        const older = await store.createKey(keyName, {
          keyType: "RSA-HSM",
          keySize: 2048,
          releasePolicy: policy,
        });
        const newer = await store.rotate(keyName);
        const value = await store.release(keyName, await fixture.token(), {
          version: older.version,
          encryption: "RSA_AES_KEY_WRAP_384",
          nonce: "nonce-123",
        });
        const released = unwrap(value);
        expect(released.kid).toBe(older.id);
        expect(released.nonce).toBe("nonce-123");
        await expectSameKey(older, released);
        const current = unwrap(
          await store.release(keyName, await fixture.token(), { encryption: "CKM_RSA_AES_KEY_WRAP" }),
        );
        expect(current.kid).toBe(newer.id);
        await expectSameKey(newer, current);
      });

      const denials: readonly [string, () => Promise<string>, string | undefined][] = [
        [
          "a debug-mode token",
          () => fixture.token({ "x-ms-sevsnpvm-is-debuggable": true }),
          "x-ms-sevsnpvm-is-debuggable",
        ],
        [
          "an unknown hostdata",
          () => fixture.token({ "x-ms-sevsnpvm-hostdata": "cd".repeat(32) }),
          "x-ms-sevsnpvm-hostdata",
        ],
        [
          "a wrong compliance status",
          () => fixture.token({ "x-ms-compliance-status": "none" }),
          "x-ms-compliance-status",
        ],
        [
          "a token from an issuer the policy does not name",
          () => fixture.token({}, { issuer: fixture.stranger }),
          "iss",
        ],
        [
          "a token claiming the trusted issuer but signed by another key",
          () => fixture.token({ iss: fixture.trusted.issuer }, { issuer: fixture.stranger }),
          undefined,
        ],
        [
          "a token whose payload was changed after signing",
          async () => {
            const [header, , signature] = (await fixture.token()).split(".");
            const payload = Buffer.from(
              JSON.stringify({ ...fixture.claims(), iss: fixture.trusted.issuer, exp: 4102444800 }),
            );
            return `${header}.${payload.toString("base64url")}.${signature}`;
          },
          undefined,
        ],
        [
          "an expired token",
          () => fixture.token({}, { at: new Date(fixture.clock.now().getTime() - 9 * 3600 * 1000) }),
          "exp",
        ],
        [
          "a token without a runtime key",
          () => fixture.token({ "x-ms-runtime": { keys: [] } }),
          "x-ms-runtime.keys",
        ],
        ["a string that is not a token", () => Promise.resolve("not-a-token"), undefined],
      ];

      it.each(denials)("refuses %s with ERR_POLICY_DENIED", async (_label, makeToken, field) => {
        const info = created.get("oct-HSM 256")!;
        const token = await makeToken();
        const error = await expectCode(
          store.release(info.name, token, { encryption: "RSA_AES_KEY_WRAP_256" }),
          "ERR_POLICY_DENIED",
        );
        expect(error.transient).toBe(false);
        expectNoTokenText(error, token);
        if (harness.structuredDenials && field !== undefined) {
          expect(error.violations.map((v) => v.field)).toContain(field);
        }
      });

      it("names the failing clause in the denial", async () => {
        const info = created.get("oct-HSM 256")!;
        const error = await expectCode(
          store.release(info.name, await fixture.token({ "x-ms-sevsnpvm-is-debuggable": true }), {
            encryption: "RSA_AES_KEY_WRAP_256",
          }),
          "ERR_POLICY_DENIED",
        );
        expect(error.message).toContain("x-ms-sevsnpvm-is-debuggable");
      });

      it("refuses to release a missing key as a configuration error", async () => {
        await expectCode(
          store.release(fixture.uniqueName("absent"), await fixture.token(), {
            encryption: "RSA_AES_KEY_WRAP_256",
          }),
          "ERR_CONFIG",
        );
      });

      it("counts exactly the release calls made", async () => {
        const keyName = fixture.uniqueName("counted");
        await store.createKey(keyName, { keyType: "oct-HSM", releasePolicy: policy });
        expect(engine.stats().byKey[keyName]).toBeUndefined();
        const good = await fixture.token();
        await store.release(keyName, good, { encryption: "RSA_AES_KEY_WRAP_256" });
        await store.release(keyName, good, { encryption: "CKM_RSA_AES_KEY_WRAP" });
        await expectCode(
          store.release(keyName, await fixture.token({ "x-ms-sevsnpvm-is-debuggable": true }), {
            encryption: "RSA_AES_KEY_WRAP_256",
          }),
          "ERR_POLICY_DENIED",
        );
        expect(engine.stats().byKey[keyName]).toEqual({ calls: 3, released: 2, refused: 1 });
      });

      it("signs responses with the vault's signer certificate", () => {
        expect(engine.signerCertificates[0]).toBeInstanceOf(X509Certificate);
      });
    });
  });
}
