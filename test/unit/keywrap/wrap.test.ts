import {
  constants,
  createCipheriv,
  createDecipheriv,
  createHash,
  generateKeyPairSync,
  privateDecrypt,
  publicEncrypt,
  type KeyObject,
} from "node:crypto";
import { describe, expect, it } from "vitest";
import { ShieldError } from "../../../core/errors.js";
import {
  RELEASE_ENCRYPTIONS,
  exportForRelease,
  importReleased,
  unwrapFromTarget,
  wrapForTarget,
  type ReleasableKey,
  type ReleaseEncryption,
  type RsaPublicJwk,
} from "../../../core/keywrap/index.js";
import { rsaKeyPair, thrown } from "./fixtures.js";

const AIV = Buffer.from("a65959a6", "hex");

const target2048 = rsaKeyPair(2048);
const target3072 = rsaKeyPair(3072);
const otherTarget = rsaKeyPair(2048);

const releasedRsa = rsaKeyPair(2048).privateKey;
const releasedEc = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;

const keys: readonly ReleasableKey[] = [
  { kty: "oct-HSM", bytes: Buffer.alloc(32, 0x42) },
  { kty: "RSA-HSM", privateKey: releasedRsa },
  { kty: "EC-HSM", privateKey: releasedEc },
];

function codeOf(fn: () => unknown): string | undefined {
  const error = thrown(fn);
  expect(error).toBeInstanceOf(ShieldError);
  return (error as ShieldError).code;
}

/** RSAES-OAEP decoding per RFC 8017 §7.1.2 with separate label and MGF1 hashes. */
function oaepDecode(hash: string, mgfHash: string, em: Buffer): Buffer | undefined {
  const hLen = createHash(hash).digest().length;
  const mgf1 = (seed: Buffer, length: number): Buffer => {
    const blocks: Buffer[] = [];
    for (let counter = 0; blocks.length * createHash(mgfHash).digest().length < length; counter++) {
      const c = Buffer.alloc(4);
      c.writeUInt32BE(counter);
      blocks.push(createHash(mgfHash).update(seed).update(c).digest());
    }
    return Buffer.concat(blocks).subarray(0, length);
  };
  const xor = (a: Buffer, b: Buffer): Buffer => Buffer.from(a.map((v, i) => v ^ b[i]!));
  const maskedSeed = em.subarray(1, 1 + hLen);
  const maskedDb = em.subarray(1 + hLen);
  const seed = xor(maskedSeed, mgf1(maskedDb, hLen));
  const db = xor(maskedDb, mgf1(seed, maskedDb.length));
  if (em[0] !== 0 || !db.subarray(0, hLen).equals(createHash(hash).digest())) return undefined;
  let i = hLen;
  while (db[i] === 0) i++;
  return db[i] === 1 ? db.subarray(i + 1) : undefined;
}

describe("RFC 5649 AES key wrap with padding through Node's cipher", () => {
  // RFC 5649 §6: 192-bit KEK, 20-octet and 7-octet keys.
  const kek = Buffer.from("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8", "hex");
  const vectors = [
    [
      "c37b7e6492584340bed12207808941155068f738",
      "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a",
    ],
    ["466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"],
  ] as const;

  it.each(vectors)("wraps %s to the published output and back", (key, wrapped) => {
    const cipher = createCipheriv("id-aes192-wrap-pad", kek, AIV);
    expect(Buffer.concat([cipher.update(Buffer.from(key, "hex")), cipher.final()]).toString("hex")).toBe(
      wrapped,
    );
    const decipher = createDecipheriv("id-aes192-wrap-pad", kek, AIV);
    expect(
      Buffer.concat([decipher.update(Buffer.from(wrapped, "hex")), decipher.final()]).toString("hex"),
    ).toBe(key);
  });

  it("the project's unwrap takes the published wrapped key, and refuses it with one bit flipped anywhere", () => {
    // The RFC's KEK as the transient key, RSA-OAEP-wrapped as Key Vault does; the AES part is the
    // published output (unwrapping accepts 192-bit transient keys).
    const encryptedKey = publicEncrypt(
      { key: target2048.publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" },
      kek,
    );
    const wrapped = Buffer.from(vectors[0][1], "hex");
    const unwrap = (aesPart: Buffer) =>
      unwrapFromTarget({
        privateKey: target2048.privateKey,
        ciphertext: Buffer.concat([encryptedKey, aesPart]),
        enc: "RSA_AES_KEY_WRAP_256",
      });
    expect(unwrap(wrapped).toString("hex")).toBe(vectors[0][0]);
    for (let bit = 0; bit < wrapped.length * 8; bit++) {
      const flipped = Buffer.from(wrapped);
      flipped[bit >> 3]! ^= 0x80 >> (bit & 7);
      expect([bit, codeOf(() => unwrap(flipped))]).toEqual([bit, "ERR_WRAP_INTEGRITY"]);
    }
  });
});

describe("wrapForTarget / unwrapFromTarget", () => {
  const targets = [
    ["RSA-2048", target2048],
    ["RSA-3072", target3072],
  ] as const;

  for (const [targetName, target] of targets) {
    for (const enc of RELEASE_ENCRYPTIONS) {
      it.each(keys.map((k) => [k.kty, k] as const))(
        `round-trips %s with ${enc} to ${targetName}`,
        (_, key) => {
          const plaintext = exportForRelease(key);
          const ciphertext = wrapForTarget({ targetKey: target.publicKey, plaintext, enc });
          const modulusBytes = target.publicKey.asymmetricKeyDetails!.modulusLength! / 8;
          expect(ciphertext.length).toBe(modulusBytes + Math.ceil(plaintext.length / 8) * 8 + 8);
          const unwrapped = unwrapFromTarget({ privateKey: target.privateKey, ciphertext, enc });
          expect(unwrapped.equals(plaintext)).toBe(true);
          const imported = importReleased(key.kty, unwrapped);
          expect(imported.kty).toBe(key.kty);
          if ("bytes" in imported) expect(imported.bytes.equals(plaintext)).toBe(true);
          else expect(exportForRelease(imported).equals(plaintext)).toBe(true);
        },
      );
    }
  }

  it("uses a 256-bit transient key, RSA-OAEP with MGF1 over the same hash, and RFC 5649 for the rest", () => {
    const transient = Buffer.alloc(32, 0x17);
    const plaintext = Buffer.from("0123456789abcdef0123456789abcdef");
    const hashes: Record<ReleaseEncryption, string> = {
      CKM_RSA_AES_KEY_WRAP: "sha1",
      RSA_AES_KEY_WRAP_256: "sha256",
      RSA_AES_KEY_WRAP_384: "sha384",
    };
    for (const enc of RELEASE_ENCRYPTIONS) {
      const hash = hashes[enc];
      const ciphertext = wrapForTarget({
        targetKey: target2048.publicKey,
        plaintext,
        enc,
        random: () => transient,
      });
      const em = privateDecrypt(
        { key: target2048.privateKey, padding: constants.RSA_NO_PADDING },
        ciphertext.subarray(0, 256),
      );
      expect(oaepDecode(hash, hash, em)?.equals(transient)).toBe(true);
      if (hash !== "sha1") expect(oaepDecode(hash, "sha1", em)).toBeUndefined();
      const kwp = createCipheriv("id-aes256-wrap-pad", transient, AIV);
      expect(ciphertext.subarray(256).equals(Buffer.concat([kwp.update(plaintext), kwp.final()]))).toBe(true);
    }
    expect(transient.equals(Buffer.alloc(32, 0x17))).toBe(true);
  });

  it("unwraps a transient AES-128 key too (PKCS #11 allows 128, 192 and 256 bits)", () => {
    const transient = Buffer.alloc(16, 0x33);
    const plaintext = Buffer.from("a released key");
    const encryptedKey = publicEncrypt(
      { key: target2048.publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" },
      transient,
    );
    const kwp = createCipheriv("id-aes128-wrap-pad", transient, AIV);
    const ciphertext = Buffer.concat([encryptedKey, kwp.update(plaintext), kwp.final()]);
    expect(
      unwrapFromTarget({ privateKey: target2048.privateKey, ciphertext, enc: "RSA_AES_KEY_WRAP_256" }).equals(
        plaintext,
      ),
    ).toBe(true);
  });

  it("refuses a transient key that is not an AES key size", () => {
    const encryptedKey = publicEncrypt(
      { key: target2048.publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" },
      Buffer.alloc(20, 1),
    );
    const ciphertext = Buffer.concat([encryptedKey, Buffer.alloc(24, 2)]);
    expect(
      codeOf(() =>
        unwrapFromTarget({ privateKey: target2048.privateKey, ciphertext, enc: "RSA_AES_KEY_WRAP_256" }),
      ),
    ).toBe("ERR_WRAP_INTEGRITY");
  });

  it("accepts the runtime key as an RSA public JWK from x-ms-runtime", () => {
    const jwk = target2048.publicKey.export({ format: "jwk" });
    const runtimeKey: RsaPublicJwk = {
      kty: "RSA",
      n: jwk.n!,
      e: jwk.e!,
      kid: "runtime-1",
      key_ops: ["encrypt"],
    };
    const plaintext = Buffer.alloc(32, 9);
    const ciphertext = wrapForTarget({ targetKey: runtimeKey, plaintext, enc: "CKM_RSA_AES_KEY_WRAP" });
    expect(
      unwrapFromTarget({ privateKey: target2048.privateKey, ciphertext, enc: "CKM_RSA_AES_KEY_WRAP" }).equals(
        plaintext,
      ),
    ).toBe(true);
  });

  describe("each check fails alone", () => {
    const plaintext = Buffer.alloc(32, 0x61);
    const ciphertext = wrapForTarget({
      targetKey: target2048.publicKey,
      plaintext,
      enc: "RSA_AES_KEY_WRAP_256",
    });
    const unwrap = (
      bytes: Uint8Array,
      enc: string = "RSA_AES_KEY_WRAP_256",
      key: KeyObject = target2048.privateKey,
    ) => unwrapFromTarget({ privateKey: key, ciphertext: bytes, enc });

    it("unknown enc → ERR_WRAP_ALGORITHM", () => {
      expect(codeOf(() => unwrap(ciphertext, "RSA-OAEP-256"))).toBe("ERR_WRAP_ALGORITHM");
      expect(codeOf(() => unwrap(ciphertext, ""))).toBe("ERR_WRAP_ALGORITHM");
    });

    it("OAEP hash mismatch (wrapped with 256, unwrapped as 384 or SHA-1) → ERR_WRAP_INTEGRITY", () => {
      expect(codeOf(() => unwrap(ciphertext, "RSA_AES_KEY_WRAP_384"))).toBe("ERR_WRAP_INTEGRITY");
      expect(codeOf(() => unwrap(ciphertext, "CKM_RSA_AES_KEY_WRAP"))).toBe("ERR_WRAP_INTEGRITY");
    });

    it("a flipped byte in the AES part → ERR_WRAP_INTEGRITY", () => {
      for (const offset of [256, 256 + 8, ciphertext.length - 1]) {
        const bad = Buffer.from(ciphertext);
        bad[offset]! ^= 0x80;
        expect(codeOf(() => unwrap(bad))).toBe("ERR_WRAP_INTEGRITY");
      }
    });

    it("a flipped byte in the RSA part → ERR_WRAP_INTEGRITY", () => {
      const bad = Buffer.from(ciphertext);
      bad[100]! ^= 0x01;
      expect(codeOf(() => unwrap(bad))).toBe("ERR_WRAP_INTEGRITY");
    });

    it("the wrong private key (same size, or a different size) → typed error", () => {
      expect(codeOf(() => unwrap(ciphertext, "RSA_AES_KEY_WRAP_256", otherTarget.privateKey))).toBe(
        "ERR_WRAP_INTEGRITY",
      );
      const code = codeOf(() => unwrap(ciphertext, "RSA_AES_KEY_WRAP_256", target3072.privateKey));
      expect(["ERR_WRAP_INTEGRITY", "ERR_RELEASE_RESPONSE_MALFORMED"]).toContain(code);
    });

    it("truncated → ERR_RELEASE_RESPONSE_MALFORMED", () => {
      expect(codeOf(() => unwrap(ciphertext.subarray(0, 256 + 8)))).toBe("ERR_RELEASE_RESPONSE_MALFORMED");
      expect(codeOf(() => unwrap(ciphertext.subarray(0, 100)))).toBe("ERR_RELEASE_RESPONSE_MALFORMED");
      expect(codeOf(() => unwrap(new Uint8Array(0)))).toBe("ERR_RELEASE_RESPONSE_MALFORMED");
    });

    it("an AES part that is not whole 64-bit blocks → ERR_RELEASE_RESPONSE_MALFORMED", () => {
      expect(codeOf(() => unwrap(ciphertext.subarray(0, ciphertext.length - 3)))).toBe(
        "ERR_RELEASE_RESPONSE_MALFORMED",
      );
    });

    it("a truncated AES part of whole blocks → ERR_WRAP_INTEGRITY", () => {
      expect(codeOf(() => unwrap(ciphertext.subarray(0, ciphertext.length - 8)))).toBe("ERR_WRAP_INTEGRITY");
    });
  });

  describe("target key", () => {
    it("refuses RSA keys under 2048 bits and non-RSA keys", () => {
      const small = rsaKeyPair(1024);
      expect(
        codeOf(() =>
          wrapForTarget({
            targetKey: small.publicKey,
            plaintext: Buffer.alloc(32),
            enc: "RSA_AES_KEY_WRAP_256",
          }),
        ),
      ).toBe("ERR_WRAP_ALGORITHM");
      const ec = generateKeyPairSync("ec", { namedCurve: "P-256" });
      expect(
        codeOf(() =>
          wrapForTarget({
            targetKey: ec.publicKey,
            plaintext: Buffer.alloc(32),
            enc: "RSA_AES_KEY_WRAP_256",
          }),
        ),
      ).toBe("ERR_WRAP_ALGORITHM");
      const notRsa = { kty: "EC", n: "x", e: "y" } as unknown as RsaPublicJwk;
      expect(
        codeOf(() =>
          wrapForTarget({ targetKey: notRsa, plaintext: Buffer.alloc(32), enc: "RSA_AES_KEY_WRAP_256" }),
        ),
      ).toBe("ERR_WRAP_ALGORITHM");
      const broken: RsaPublicJwk = { kty: "RSA", n: "!!", e: "AQAB" };
      expect(
        codeOf(() =>
          wrapForTarget({ targetKey: broken, plaintext: Buffer.alloc(32), enc: "RSA_AES_KEY_WRAP_256" }),
        ),
      ).toBe("ERR_INPUT_MALFORMED");
      const n = target2048.publicKey.export({ format: "jwk" }).n!;
      for (const e of ["AA", "AQ", "Ag"]) {
        const badExponent: RsaPublicJwk = { kty: "RSA", n, e };
        expect(
          codeOf(() =>
            wrapForTarget({
              targetKey: badExponent,
              plaintext: Buffer.alloc(32),
              enc: "RSA_AES_KEY_WRAP_256",
            }),
          ),
        ).toBe("ERR_INPUT_MALFORMED");
      }
      const tiny: RsaPublicJwk = { kty: "RSA", n: "AA", e: "AQAB" };
      expect(
        codeOf(() =>
          wrapForTarget({ targetKey: tiny, plaintext: Buffer.alloc(32), enc: "RSA_AES_KEY_WRAP_256" }),
        ),
      ).toBe("ERR_WRAP_ALGORITHM");
    });

    it("refuses an unknown enc when wrapping", () => {
      const enc = "A256KW" as ReleaseEncryption;
      expect(
        codeOf(() => wrapForTarget({ targetKey: target2048.publicKey, plaintext: Buffer.alloc(32), enc })),
      ).toBe("ERR_WRAP_ALGORITHM");
    });

    it("treats misuse as TypeError", () => {
      const enc = "RSA_AES_KEY_WRAP_256";
      expect(() =>
        wrapForTarget({ targetKey: target2048.publicKey, plaintext: new Uint8Array(0), enc }),
      ).toThrow(TypeError);
      expect(() =>
        wrapForTarget({
          targetKey: target2048.publicKey,
          plaintext: Buffer.alloc(8),
          enc,
          random: () => Buffer.alloc(16),
        }),
      ).toThrow(TypeError);
      expect(() =>
        unwrapFromTarget({ privateKey: target2048.publicKey, ciphertext: Buffer.alloc(300), enc }),
      ).toThrow(TypeError);
      expect(() => unwrapFromTarget({ privateKey: releasedEc, ciphertext: Buffer.alloc(300), enc })).toThrow(
        TypeError,
      );
    });
  });
});

describe("exportForRelease / importReleased", () => {
  it("exports oct keys raw and RSA/EC keys as PKCS #8 DER", () => {
    expect(exportForRelease({ kty: "oct", bytes: Buffer.from([1, 2, 3]) })).toEqual(Buffer.from([1, 2, 3]));
    const rsa = exportForRelease({ kty: "RSA", privateKey: releasedRsa });
    expect(rsa.equals(releasedRsa.export({ type: "pkcs8", format: "der" }))).toBe(true);
    const ec = exportForRelease({ kty: "EC", privateKey: releasedEc });
    expect(ec.equals(releasedEc.export({ type: "pkcs8", format: "der" }))).toBe(true);
    const imported = importReleased("EC", ec);
    expect("privateKey" in imported && imported.privateKey.asymmetricKeyDetails?.namedCurve).toBe(
      "prime256v1",
    );
  });

  it("rejects misuse with TypeError", () => {
    expect(() => exportForRelease({ kty: "RSA", privateKey: releasedEc })).toThrow(TypeError);
    expect(() => exportForRelease({ kty: "oct", bytes: new Uint8Array(0) })).toThrow(TypeError);
    expect(() => exportForRelease({ kty: "EC-HSM", privateKey: target2048.publicKey })).toThrow(TypeError);
    expect(() =>
      exportForRelease({ kty: "AES", bytes: Buffer.alloc(16) } as unknown as ReleasableKey),
    ).toThrow(TypeError);
  });

  it("refuses plaintext that does not match the response's kty", () => {
    const ec = exportForRelease({ kty: "EC", privateKey: releasedEc });
    expect(codeOf(() => importReleased("RSA-HSM", ec))).toBe("ERR_RELEASE_RESPONSE_MALFORMED");
    expect(codeOf(() => importReleased("EC-HSM", Buffer.alloc(32, 1)))).toBe(
      "ERR_RELEASE_RESPONSE_MALFORMED",
    );
    expect(codeOf(() => importReleased("oct", new Uint8Array(0)))).toBe("ERR_RELEASE_RESPONSE_MALFORMED");
  });
});
