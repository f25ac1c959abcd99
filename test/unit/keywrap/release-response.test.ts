import type { X509Certificate } from "node:crypto";
import { constants, createHash, generateKeyPairSync, sign } from "node:crypto";
import { describe, expect, it } from "vitest";
import { ShieldError } from "../../../core/errors.js";
import {
  MAX_RELEASE_RESPONSE_BYTES,
  RELEASE_ENCRYPTIONS,
  buildReleaseResponse,
  exportForRelease,
  parseReleaseResponse,
  unwrapReleasedKey,
  type ReleasableKey,
  type RsaPublicJwk,
} from "../../../core/keywrap/index.js";
import { buildCertificate } from "../../../core/x509/certificate.js";
import {
  AT,
  KEY_ID,
  b64url,
  decodeJws,
  releaseOptions,
  rsaKeyPair,
  signRs256,
  thrown,
  vaultSigner,
  x5tS256,
} from "./fixtures.js";

const vault = vaultSigner("Contoso");
const stranger = vaultSigner("Fabrikam");
const runtime = rsaKeyPair(2048);
const runtime3072 = rsaKeyPair(3072);

const octKey = Buffer.alloc(32, 0x5a);
const base = await buildReleaseResponse(releaseOptions(vault, runtime.publicKey));
const decoded = decodeJws(base);

function codeOf(fn: () => unknown): string | undefined {
  const error = thrown(fn);
  expect(error).toBeInstanceOf(ShieldError);
  return (error as ShieldError).code;
}

/** Re-signs the base response with one change to header or payload; everything else stays valid. */
function resigned(
  edit: (parts: { header: Record<string, unknown>; payload: Record<string, unknown> }) => void,
  key = vault.leafKey,
): string {
  const parts = structuredClone(decoded);
  edit(parts);
  return signRs256(parts.header, parts.payload, key);
}

function keyOf(payload: Record<string, unknown>): Record<string, unknown> {
  const response = payload.response as { key: { key: Record<string, unknown> } };
  return response.key.key;
}

function keyHsmOf(payload: Record<string, unknown>): Record<string, unknown> {
  return JSON.parse(Buffer.from(keyOf(payload).key_hsm as string, "base64url").toString("utf8")) as Record<
    string,
    unknown
  >;
}

function setKeyHsm(payload: Record<string, unknown>, keyHsm: unknown): void {
  keyOf(payload).key_hsm = b64url(JSON.stringify(keyHsm));
}

describe("buildReleaseResponse", () => {
  it("produces Key Vault's header: RS256, SHA-1 thumbprint kid and x5t, x5t#S256, std-base64 x5c", () => {
    const sha1 = createHash("sha1").update(vault.leaf.raw).digest();
    expect(decoded.header).toEqual({
      alg: "RS256",
      kid: sha1.toString("hex").toUpperCase(),
      x5t: sha1.toString("base64url"),
      typ: "JWT",
      "x5t#S256": x5tS256(vault.leaf),
      x5c: vault.chain.map((c) => c.raw.toString("base64")),
    });
  });

  it("produces Key Vault's payload field names and nesting", () => {
    const { payload } = decoded;
    expect(payload.request).toEqual({
      "api-version": "7.4",
      enc: "RSA_AES_KEY_WRAP_256",
      kid: "https://shield-test.vault.azure.net/keys/orders",
    });
    const key = (payload.response as { key: Record<string, unknown> }).key;
    expect(Object.keys(key)).toEqual(["key", "attributes", "release_policy"]);
    expect(Object.keys(keyOf(payload))).toEqual(["kid", "kty", "key_ops", "key_hsm"]);
    expect(keyOf(payload)).toMatchObject({ kid: KEY_ID, kty: "oct-HSM", key_ops: ["encrypt", "decrypt"] });
    expect(key.attributes).toMatchObject({ enabled: true, exportable: true });
    expect(key.release_policy).toEqual({
      contentType: "application/json; charset=utf-8",
      data: Buffer.from('{"version":"1.0.0","anyOf":[]}').toString("base64url"),
    });
    expect(keyOf(payload).key_hsm).toMatch(/^[A-Za-z0-9_-]+$/);
    const keyHsm = keyHsmOf(payload);
    expect(Object.keys(keyHsm)).toEqual(["schema_version", "header", "ciphertext"]);
    expect(keyHsm.schema_version).toBe("1.0");
    expect(keyHsm.header).toMatchObject({ alg: "dir", enc: "RSA_AES_KEY_WRAP_256" });
    expect(keyHsm.ciphertext).toMatch(/^[A-Za-z0-9_-]+$/);
    expect(Buffer.from(keyHsm.ciphertext as string, "base64url").length).toBe(256 + 40);
  });

  it("names the target by its JWK kid, else by its RFC 7638 thumbprint, and echoes the nonce", async () => {
    const jwk = runtime.publicKey.export({ format: "jwk" });
    const runtimeKey: RsaPublicJwk = { kty: "RSA", n: jwk.n!, e: jwk.e!, kid: "runtime-key-1" };
    const named = await buildReleaseResponse(
      releaseOptions(vault, runtime.publicKey, { targetKey: runtimeKey, nonce: "n-123" }),
    );
    expect(keyHsmOf(decodeJws(named).payload).header).toMatchObject({ kid: "runtime-key-1" });
    expect(decodeJws(named).payload.request).toMatchObject({ nonce: "n-123" });
    const thumbprint = createHash("sha256")
      .update(JSON.stringify({ e: jwk.e, kty: "RSA", n: jwk.n }))
      .digest("base64url");
    expect(keyHsmOf(decoded.payload).header).toMatchObject({ kid: thumbprint });
  });

  it("includes the public members of RSA and EC keys next to key_hsm", async () => {
    const rsa = rsaKeyPair(2048).privateKey;
    const ec = generateKeyPairSync("ec", { namedCurve: "P-384" }).privateKey;
    const rsaResponse = await buildReleaseResponse(
      releaseOptions(vault, runtime.publicKey, {
        kty: "RSA-HSM",
        plaintext: exportForRelease({ kty: "RSA-HSM", privateKey: rsa }),
      }),
    );
    expect(Object.keys(keyOf(decodeJws(rsaResponse).payload))).toEqual([
      "kid",
      "kty",
      "key_ops",
      "n",
      "e",
      "key_hsm",
    ]);
    const ecResponse = await buildReleaseResponse(
      releaseOptions(vault, runtime.publicKey, {
        kty: "EC-HSM",
        plaintext: exportForRelease({ kty: "EC", privateKey: ec }),
      }),
    );
    expect(keyOf(decodeJws(ecResponse).payload)).toMatchObject({ crv: "P-384" });
  });

  it("refuses misuse: unversioned keyId, plaintext not of kty, signer key not in the leaf", async () => {
    await expect(
      buildReleaseResponse(
        releaseOptions(vault, runtime.publicKey, { keyId: "https://v.vault.azure.net/keys/orders" }),
      ),
    ).rejects.toThrow(TypeError);
    await expect(
      buildReleaseResponse(
        releaseOptions(vault, runtime.publicKey, { kty: "RSA", plaintext: Buffer.alloc(32) }),
      ),
    ).rejects.toThrow(TypeError);
    await expect(
      buildReleaseResponse(
        releaseOptions(vault, runtime.publicKey, {
          signer: { privateKey: stranger.leafKey, certificateChain: vault.chain },
        }),
      ),
    ).rejects.toThrow(TypeError);
  });

  it("refuses to sign outside the signing certificate's validity", async () => {
    const error = await buildReleaseResponse(
      releaseOptions(vault, runtime.publicKey, { at: new Date("2030-01-01T00:00:00Z") }),
    ).catch((e: unknown) => e);
    expect((error as ShieldError).code).toBe("ERR_CONFIG");
  });
});

describe("build → parse → unwrap round trip", () => {
  const cases: readonly ReleasableKey[] = [
    { kty: "oct-HSM", bytes: octKey },
    { kty: "RSA-HSM", privateKey: rsaKeyPair(2048).privateKey },
    { kty: "EC-HSM", privateKey: generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey },
  ];
  for (const enc of RELEASE_ENCRYPTIONS) {
    for (const [targetName, target] of [
      ["RSA-2048", runtime],
      ["RSA-3072", runtime3072],
    ] as const) {
      it.each(cases.map((c) => [c.kty, c] as const))(`%s, ${enc}, ${targetName}`, async (_, key) => {
        const plaintext = exportForRelease(key);
        const value = await buildReleaseResponse(
          releaseOptions(vault, target.publicKey, { kty: key.kty, plaintext, enc, nonce: "abc" }),
        );
        const envelope = parseReleaseResponse(value, { trustedSigners: [vault.root], at: AT });
        expect(envelope).toMatchObject({
          enc,
          kid: KEY_ID,
          kty: key.kty,
          keyOps: ["encrypt", "decrypt"],
          nonce: "abc",
          signerTrusted: true,
        });
        expect(envelope.releasePolicy?.contentType).toBe("application/json; charset=utf-8");
        const released = unwrapReleasedKey(value, target.privateKey, { trustedSigners: [vault.root] });
        expect(released.kty).toBe(key.kty);
        expect(released.signerTrusted).toBe(true);
        expect(exportForRelease(released).equals(plaintext)).toBe(true);
      });
    }
  }

  it("marks the signer untrusted when no trustedSigners are given, but still checks the signature", () => {
    expect(parseReleaseResponse(base).signerTrusted).toBe(false);
    const released = unwrapReleasedKey(base, runtime.privateKey);
    expect(released.signerTrusted).toBe(false);
    expect("bytes" in released && released.bytes.equals(octKey)).toBe(true);
  });

  it("accepts a predicate over the chain, or an anchor that is the leaf or an intermediate", () => {
    let seen = 0;
    const envelope = parseReleaseResponse(base, {
      trustedSigners: (chain) => {
        seen = chain.length;
        return chain[0]!.subject.includes("contoso.vault.azure.net");
      },
    });
    expect(envelope.signerTrusted).toBe(true);
    expect(seen).toBe(3);
    expect(parseReleaseResponse(base, { trustedSigners: [vault.leaf] }).signerTrusted).toBe(true);
    expect(
      parseReleaseResponse(base, { trustedSigners: [stranger.root, vault.intermediate] }).signerTrusted,
    ).toBe(true);
  });

  it("reads a release policy without contentType, as in a real response", () => {
    const value = resigned(({ payload }) => {
      (payload.response as { key: Record<string, unknown> }).key.release_policy = {
        data: "e30",
        immutable: false,
      };
    });
    expect(parseReleaseResponse(value).releasePolicy).toEqual({ data: "e30", immutable: false });
  });
});

describe("parseReleaseResponse: each check fails alone", () => {
  const parse = (value: string, trusted = true) =>
    parseReleaseResponse(value, trusted ? { trustedSigners: [vault.root], at: AT } : {});

  it("the unmodified response passes", () => {
    expect(parse(base).signerTrusted).toBe(true);
  });

  it("1. oversized, truncated, wrong segment count or alphabet → ERR_RELEASE_RESPONSE_MALFORMED", () => {
    expect(codeOf(() => parse("a".repeat(MAX_RELEASE_RESPONSE_BYTES + 1)))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
    expect(codeOf(() => parseReleaseResponse(base, { maxBytes: base.length - 1 }))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
    expect(codeOf(() => parse(base.slice(0, base.lastIndexOf("."))))).toBe("ERR_RELEASE_RESPONSE_MALFORMED");
    expect(codeOf(() => parse(`${base}.x`))).toBe("ERR_RELEASE_RESPONSE_MALFORMED");
    expect(codeOf(() => parse(base.replace(".", ".+")))).toBe("ERR_RELEASE_RESPONSE_MALFORMED");
    expect(codeOf(() => parse(""))).toBe("ERR_RELEASE_RESPONSE_MALFORMED");
  });

  it("2. header without x5c, with a non-JSON header, with crit, or with too many certificates → MALFORMED", () => {
    expect(codeOf(() => parse(resigned(({ header }) => delete header.x5c)))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
    expect(codeOf(() => parse(resigned(({ header }) => (header.x5c = []))))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
    expect(codeOf(() => parse(resigned(({ header }) => (header.crit = ["b64"]))))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
    const nine = Array.from({ length: 9 }, () => vault.leaf.raw.toString("base64"));
    expect(codeOf(() => parse(resigned(({ header }) => (header.x5c = nine))))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
    const [, p, s] = base.split(".");
    expect(codeOf(() => parse(`${b64url("{not json")}.${p}.${s}`))).toBe("ERR_RELEASE_RESPONSE_MALFORMED");
  });

  it("3. alg other than RS256 → ERR_RELEASE_RESPONSE_SIGNATURE", () => {
    for (const alg of ["none", "HS256", "RS384", "PS256", "ES256", "rs256"]) {
      expect(codeOf(() => parse(resigned(({ header }) => (header.alg = alg))))).toBe(
        "ERR_RELEASE_RESPONSE_SIGNATURE",
      );
    }
    // A genuine PS256 signature by the vault key is still refused.
    const header = { ...decoded.header, alg: "PS256" };
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(decoded.payload))}`;
    const pss = sign("sha256", Buffer.from(input), {
      key: vault.leafKey,
      padding: constants.RSA_PKCS1_PSS_PADDING,
      saltLength: 32,
    });
    expect(codeOf(() => parse(`${input}.${pss.toString("base64url")}`))).toBe(
      "ERR_RELEASE_RESPONSE_SIGNATURE",
    );
    expect(
      codeOf(() =>
        parse(`${b64url(JSON.stringify({ ...decoded.header, alg: "none" }))}.${base.split(".")[1]}.`),
      ),
    ).toBe("ERR_RELEASE_RESPONSE_MALFORMED");
  });

  it("4. x5c entries that are not base64 DER certificates → MALFORMED; a non-RSA or small leaf → SIGNATURE", () => {
    expect(codeOf(() => parse(resigned(({ header }) => (header.x5c = ["bm90IGEgY2VydA=="]))))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
    const urlAlphabet = vault.leaf.raw.toString("base64url");
    expect(codeOf(() => parse(resigned(({ header }) => (header.x5c = [urlAlphabet, "AAAA"]))))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
    const ecKeys = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const ecLeaf = buildCertificate({
      subject: [["CN", "ec"]],
      issuer: [["CN", "ec"]],
      serialNumber: 9n,
      notBefore: new Date("2026-01-01T00:00:00Z"),
      notAfter: new Date("2027-01-01T00:00:00Z"),
      publicKey: ecKeys.publicKey,
      signingKey: ecKeys.privateKey,
      signatureAlgorithm: "ecdsa-sha256",
    });
    expect(
      codeOf(() =>
        parse(
          resigned(({ header }) => (header.x5c = [ecLeaf.raw.toString("base64")]), ecKeys.privateKey),
          false,
        ),
      ),
    ).toBe("ERR_RELEASE_RESPONSE_SIGNATURE");
    const small = rsaKeyPair(1024);
    const smallLeaf = buildCertificate({
      subject: [["CN", "small"]],
      issuer: [["CN", "small"]],
      serialNumber: 10n,
      notBefore: new Date("2026-01-01T00:00:00Z"),
      notAfter: new Date("2027-01-01T00:00:00Z"),
      publicKey: small.publicKey,
      signingKey: small.privateKey,
      signatureAlgorithm: "rsa-sha256",
    });
    const smallSigned = resigned(({ header }) => {
      header.x5c = [smallLeaf.raw.toString("base64")];
      delete header["x5t#S256"];
    }, small.privateKey);
    expect(codeOf(() => parse(smallSigned, false))).toBe("ERR_RELEASE_RESPONSE_SIGNATURE");
  });

  it("5. a tampered payload, a flipped signature or a different signer key → ERR_RELEASE_RESPONSE_SIGNATURE", () => {
    const [h, p, s] = base.split(".") as [string, string, string];
    const payload = structuredClone(decoded.payload);
    keyOf(payload).kty = "RSA-HSM";
    expect(codeOf(() => parse(`${h}.${b64url(JSON.stringify(payload))}.${s}`))).toBe(
      "ERR_RELEASE_RESPONSE_SIGNATURE",
    );
    const request = structuredClone(decoded.payload);
    (request.request as Record<string, unknown>).enc = "CKM_RSA_AES_KEY_WRAP";
    expect(codeOf(() => parse(`${h}.${b64url(JSON.stringify(request))}.${s}`))).toBe(
      "ERR_RELEASE_RESPONSE_SIGNATURE",
    );
    const sig = Buffer.from(s, "base64url");
    sig[10]! ^= 0x01;
    expect(codeOf(() => parse(`${h}.${p}.${sig.toString("base64url")}`))).toBe(
      "ERR_RELEASE_RESPONSE_SIGNATURE",
    );
    expect(codeOf(() => parse(`${h}.${p}.${s.slice(0, 20)}`))).toBe("ERR_RELEASE_RESPONSE_SIGNATURE");
    expect(
      codeOf(() =>
        parse(
          resigned(() => undefined, stranger.leafKey),
          false,
        ),
      ),
    ).toBe("ERR_RELEASE_RESPONSE_SIGNATURE");
  });

  it("6. x5t#S256 that does not match x5c[0] → ERR_RELEASE_RESPONSE_SIGNATURE", () => {
    expect(codeOf(() => parse(resigned(({ header }) => (header["x5t#S256"] = x5tS256(vault.root)))))).toBe(
      "ERR_RELEASE_RESPONSE_SIGNATURE",
    );
  });

  it("7. untrusted signer, broken chain, refusing predicate or expired certificate → SIGNATURE", () => {
    const foreign = resigned(({ header }) => {
      header.x5c = stranger.chain.map((c) => c.raw.toString("base64"));
      header["x5t#S256"] = x5tS256(stranger.leaf);
    }, stranger.leafKey);
    expect(parseReleaseResponse(foreign).signerTrusted).toBe(false);
    expect(codeOf(() => parse(foreign))).toBe("ERR_RELEASE_RESPONSE_SIGNATURE");
    expect(codeOf(() => parseReleaseResponse(base, { trustedSigners: [stranger.root] }))).toBe(
      "ERR_RELEASE_RESPONSE_SIGNATURE",
    );
    expect(codeOf(() => parseReleaseResponse(base, { trustedSigners: [] }))).toBe(
      "ERR_RELEASE_RESPONSE_SIGNATURE",
    );
    const broken = resigned(({ header }) => {
      header.x5c = [vault.leaf, stranger.intermediate, vault.root].map((c) => c.raw.toString("base64"));
    });
    expect(codeOf(() => parse(broken))).toBe("ERR_RELEASE_RESPONSE_SIGNATURE");
    expect(codeOf(() => parseReleaseResponse(base, { trustedSigners: () => false }))).toBe(
      "ERR_RELEASE_RESPONSE_SIGNATURE",
    );
    const throwing = thrown(() =>
      parseReleaseResponse(base, {
        trustedSigners: () => {
          throw new Error("lookup failed");
        },
      }),
    );
    expect((throwing as ShieldError).code).toBe("ERR_RELEASE_RESPONSE_SIGNATURE");
    expect(
      codeOf(() =>
        parseReleaseResponse(base, { trustedSigners: [vault.root], at: new Date("2028-01-01T00:00:00Z") }),
      ),
    ).toBe("ERR_RELEASE_RESPONSE_SIGNATURE");
    expect(
      codeOf(() =>
        parseReleaseResponse(base, { trustedSigners: () => true, at: new Date("2025-06-01T00:00:00Z") }),
      ),
    ).toBe("ERR_RELEASE_RESPONSE_SIGNATURE");
  });

  it("7. a signer certificate naming the trusted CA as issuer but signed by another key → SIGNATURE", async () => {
    // Same subject, same issuer name, no key identifiers: only the signature tells them apart.
    const impostorKeys = rsaKeyPair(2048);
    const forgedKeys = rsaKeyPair(2048);
    const forgedLeaf = buildCertificate({
      subject: [["CN", "contoso.vault.azure.net"]],
      issuer: [["CN", "Contoso Issuing CA"]],
      serialNumber: 3n,
      notBefore: new Date("2026-01-01T00:00:00Z"),
      notAfter: new Date("2027-01-01T00:00:00Z"),
      publicKey: forgedKeys.publicKey,
      signingKey: impostorKeys.privateKey,
      signatureAlgorithm: "rsa-sha256",
    });
    expect(forgedLeaf.checkIssued(vault.intermediate)).toBe(true);
    const signedBy = async (chain: X509Certificate[]) =>
      buildReleaseResponse(
        releaseOptions(vault, runtime.publicKey, {
          signer: { privateKey: forgedKeys.privateKey, certificateChain: chain },
        }),
      );
    // The anchor is the CA whose name the leaf carries (the leaf alone in x5c) ...
    const alone = await signedBy([forgedLeaf]);
    expect(parseReleaseResponse(alone).signerTrusted).toBe(false);
    expect(codeOf(() => parseReleaseResponse(alone, { trustedSigners: [vault.intermediate], at: AT }))).toBe(
      "ERR_RELEASE_RESPONSE_SIGNATURE",
    );
    // ... or the leaf rides on the genuine CA certificates, which chain to the trusted root.
    const onGenuine = await signedBy([forgedLeaf, vault.intermediate, vault.root]);
    for (const anchor of [vault.root, vault.intermediate]) {
      expect(codeOf(() => parseReleaseResponse(onGenuine, { trustedSigners: [anchor], at: AT }))).toBe(
        "ERR_RELEASE_RESPONSE_SIGNATURE",
      );
    }
    expect(
      codeOf(() => unwrapReleasedKey(onGenuine, runtime.privateKey, { trustedSigners: [vault.root] })),
    ).toBe("ERR_RELEASE_RESPONSE_SIGNATURE");
  });

  it("7. an expired signer leaf under a trust anchor that is its issuing CA → SIGNATURE", async () => {
    const caKeys = rsaKeyPair(2048);
    const leafKeys = rsaKeyPair(2048);
    const issuingCa = buildCertificate({
      subject: [["CN", "Contoso Issuing CA 2"]],
      issuer: [["CN", "Contoso Issuing CA 2"]],
      serialNumber: 10n,
      notBefore: new Date("2026-01-01T00:00:00Z"),
      notAfter: new Date("2027-01-01T00:00:00Z"),
      publicKey: caKeys.publicKey,
      signingKey: caKeys.privateKey,
      signatureAlgorithm: "rsa-sha256",
      isCa: true,
    });
    // Valid through January only: AT (March) is after it; the CA is valid all year.
    const leaf = buildCertificate({
      subject: [["CN", "contoso.vault.azure.net"]],
      issuer: [["CN", "Contoso Issuing CA 2"]],
      serialNumber: 11n,
      notBefore: new Date("2026-01-01T00:00:00Z"),
      notAfter: new Date("2026-02-01T00:00:00Z"),
      publicKey: leafKeys.publicKey,
      signingKey: caKeys.privateKey,
      signatureAlgorithm: "rsa-sha256",
    });
    const signedWhileValid = new Date("2026-01-15T00:00:00Z");
    for (const chain of [[leaf], [leaf, issuingCa]]) {
      const value = await buildReleaseResponse(
        releaseOptions(vault, runtime.publicKey, {
          signer: { privateKey: leafKeys.privateKey, certificateChain: chain },
          at: signedWhileValid,
        }),
      );
      const trust = { trustedSigners: [issuingCa] };
      expect(parseReleaseResponse(value, { ...trust, at: signedWhileValid }).signerTrusted).toBe(true);
      expect(codeOf(() => parseReleaseResponse(value, { ...trust, at: AT }))).toBe(
        "ERR_RELEASE_RESPONSE_SIGNATURE",
      );
      expect(codeOf(() => unwrapReleasedKey(value, runtime.privateKey, { ...trust, at: AT }))).toBe(
        "ERR_RELEASE_RESPONSE_SIGNATURE",
      );
    }
  });

  it("8. payload shape, unknown enc, unknown kty", () => {
    expect(codeOf(() => parse(resigned(({ payload }) => delete payload.request)))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
    expect(codeOf(() => parse(resigned(({ payload }) => delete keyOf(payload).key_hsm)))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
    expect(codeOf(() => parse(resigned(({ payload }) => (keyOf(payload).key_ops = "encrypt"))))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
    expect(
      codeOf(() =>
        parse(resigned(({ payload }) => ((payload.request as Record<string, unknown>).enc = "A256KW"))),
      ),
    ).toBe("ERR_WRAP_ALGORITHM");
    expect(codeOf(() => parse(resigned(({ payload }) => (keyOf(payload).kty = "AES"))))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
    expect(codeOf(() => parse(signRs256(decoded.header, "a JSON string", vault.leafKey)))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
    const input = `${base.split(".")[0]!}.${b64url("{not json")}`;
    const notJson = `${input}.${sign("sha256", Buffer.from(input), vault.leafKey).toString("base64url")}`;
    expect(codeOf(() => parse(notJson))).toBe("ERR_RELEASE_RESPONSE_MALFORMED");
  });

  it("9. key_hsm: not base64url JSON, unknown schema_version, alg not dir, enc mismatch, bad ciphertext", () => {
    const keyHsm = keyHsmOf(decoded.payload);
    const withKeyHsm = (value: unknown) => resigned(({ payload }) => setKeyHsm(payload, value));
    expect(codeOf(() => parse(resigned(({ payload }) => (keyOf(payload).key_hsm = "not base64url!"))))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
    expect(codeOf(() => parse(resigned(({ payload }) => (keyOf(payload).key_hsm = b64url("[1,2")))))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
    expect(codeOf(() => parse(withKeyHsm({ ...keyHsm, schema_version: "2.0" })))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
    expect(codeOf(() => parse(withKeyHsm({ ...keyHsm, header: { alg: "RSA-OAEP" } })))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
    expect(
      codeOf(() => parse(withKeyHsm({ ...keyHsm, header: { alg: "dir", enc: "CKM_RSA_AES_KEY_WRAP" } }))),
    ).toBe("ERR_RELEASE_RESPONSE_MALFORMED");
    expect(codeOf(() => parse(withKeyHsm({ ...keyHsm, ciphertext: "a+b/" })))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
    expect(codeOf(() => parse(withKeyHsm({ schema_version: "1.0", header: {} })))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
    // Minimal and padded forms are accepted.
    expect(
      parse(
        withKeyHsm({ schema_version: "1.0.0", header: {}, ciphertext: `${keyHsm.ciphertext as string}=` }),
      ),
    ).toMatchObject({ enc: "RSA_AES_KEY_WRAP_256" });
  });

  it("misuse is a TypeError", () => {
    expect(() => parseReleaseResponse(42 as unknown as string)).toThrow(TypeError);
    expect(() =>
      parseReleaseResponse(base, { trustedSigners: ["pem"] as unknown as X509Certificate[] }),
    ).toThrow(TypeError);
    expect(() => parseReleaseResponse(base, { maxBytes: -1 })).toThrow(TypeError);
    expect(() => parseReleaseResponse(base, { at: new Date(Number.NaN) })).toThrow(TypeError);
  });
});

describe("unwrapReleasedKey", () => {
  it("fails closed with a typed error for the wrong runtime key or a tampered ciphertext", () => {
    expect(codeOf(() => unwrapReleasedKey(base, rsaKeyPair(2048).privateKey))).toBe("ERR_WRAP_INTEGRITY");
    const tampered = resigned(({ payload }) => {
      const keyHsm = keyHsmOf(payload);
      const ciphertext = Buffer.from(keyHsm.ciphertext as string, "base64url");
      ciphertext[ciphertext.length - 5]! ^= 0x04;
      setKeyHsm(payload, { ...keyHsm, ciphertext: ciphertext.toString("base64url") });
    });
    expect(codeOf(() => unwrapReleasedKey(tampered, runtime.privateKey))).toBe("ERR_WRAP_INTEGRITY");
    const mislabelled = resigned(({ payload }) => (keyOf(payload).kty = "RSA-HSM"));
    expect(codeOf(() => unwrapReleasedKey(mislabelled, runtime.privateKey))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
  });
});
