import { generateKeyPairSync, randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { ShieldError } from "../../../core/errors.js";
import {
  buildReleaseResponse,
  exportForRelease,
  importReleased,
  parseReleaseResponse,
  unwrapFromTarget,
  unwrapReleasedKey,
  wrapForTarget,
} from "../../../core/keywrap/index.js";
import { decodeJws, releaseOptions, rsaKeyPair, signRs256, thrown, vaultSigner } from "./fixtures.js";

/**
 * Every encoding a log reader might recognise, of the whole value and of its first 15 bytes
 * (a multiple of 3, so the prefix's base64 is a prefix of the whole value's base64).
 */
function encodings(bytes: Buffer): string[] {
  return [bytes, bytes.subarray(0, 15)].flatMap((b) => [
    b.toString("hex"),
    b.toString("hex").toUpperCase(),
    b.toString("base64"),
    b.toString("base64url"),
  ]);
}

/** All text an error exposes: message, toJSON, string form, and the messages of its causes. */
function exposedText(error: unknown): string {
  const parts: string[] = [];
  let current: unknown = error;
  for (let depth = 0; current instanceof Error && depth < 5; depth++) {
    parts.push(current.message, String(current));
    if (current instanceof ShieldError) parts.push(JSON.stringify(current.toJSON()));
    current = current.cause;
  }
  return parts.join("\n");
}

describe("error messages never carry key material", () => {
  it("holds for every failure on the wrap, unwrap and release-response paths", async () => {
    const vault = vaultSigner("Contoso");
    const runtime = rsaKeyPair(2048);
    const otherRuntime = rsaKeyPair(2048);
    const octPlaintext = randomBytes(32);
    const ecPlaintext = exportForRelease({
      kty: "EC-HSM",
      privateKey: generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey,
    });

    const ciphertext = wrapForTarget({
      targetKey: runtime.publicKey,
      plaintext: octPlaintext,
      enc: "RSA_AES_KEY_WRAP_256",
    });
    const ecCiphertext = wrapForTarget({
      targetKey: runtime.publicKey,
      plaintext: ecPlaintext,
      enc: "CKM_RSA_AES_KEY_WRAP",
    });
    const value = await buildReleaseResponse(
      releaseOptions(vault, runtime.publicKey, { plaintext: octPlaintext }),
    );
    const { header, payload } = decodeJws(value);
    const key = (payload.response as { key: { key: Record<string, unknown> } }).key.key;
    const keyHsm = JSON.parse(Buffer.from(key.key_hsm as string, "base64url").toString("utf8")) as {
      ciphertext: string;
    };
    const releasedCiphertext = Buffer.from(keyHsm.ciphertext, "base64url");
    const flipped = Buffer.from(ciphertext);
    flipped[ciphertext.length - 1]! ^= 1;
    const mislabelled = signRs256(
      header,
      {
        ...payload,
        response: { key: { ...(payload.response as { key: object }).key, key: { ...key, kty: "RSA-HSM" } } },
      },
      vault.leafKey,
    );

    const errors = [
      thrown(() =>
        unwrapFromTarget({ privateKey: otherRuntime.privateKey, ciphertext, enc: "RSA_AES_KEY_WRAP_256" }),
      ),
      thrown(() =>
        unwrapFromTarget({ privateKey: runtime.privateKey, ciphertext, enc: "RSA_AES_KEY_WRAP_384" }),
      ),
      thrown(() =>
        unwrapFromTarget({
          privateKey: runtime.privateKey,
          ciphertext: flipped,
          enc: "RSA_AES_KEY_WRAP_256",
        }),
      ),
      thrown(() =>
        unwrapFromTarget({
          privateKey: runtime.privateKey,
          ciphertext: ciphertext.subarray(0, 270),
          enc: "RSA_AES_KEY_WRAP_256",
        }),
      ),
      thrown(() => unwrapFromTarget({ privateKey: runtime.privateKey, ciphertext, enc: "bogus" })),
      thrown(() => importReleased("RSA", octPlaintext)),
      thrown(() => importReleased("RSA-HSM", ecPlaintext)),
      thrown(() => unwrapReleasedKey(value, otherRuntime.privateKey)),
      thrown(() => unwrapReleasedKey(mislabelled, runtime.privateKey)),
      thrown(() =>
        parseReleaseResponse(value.slice(0, -10) + (value.at(-10) === "A" ? "B" : "A") + value.slice(-9)),
      ),
      thrown(() => parseReleaseResponse(value, { trustedSigners: [] })),
      thrown(() => parseReleaseResponse(value, { maxBytes: 100 })),
      thrown(() =>
        wrapForTarget({
          targetKey: rsaKeyPair(1024).publicKey,
          plaintext: octPlaintext,
          enc: "RSA_AES_KEY_WRAP_256",
        }),
      ),
      thrown(() =>
        unwrapFromTarget({
          privateKey: otherRuntime.privateKey,
          ciphertext: ecCiphertext,
          enc: "CKM_RSA_AES_KEY_WRAP",
        }),
      ),
    ];
    const secrets = [
      octPlaintext,
      ecPlaintext,
      ciphertext,
      ciphertext.subarray(256),
      ecCiphertext,
      releasedCiphertext,
    ].flatMap(encodings);
    for (const error of errors) {
      expect(error).toBeInstanceOf(ShieldError);
      const text = exposedText(error);
      for (const secret of secrets) expect(text).not.toContain(secret);
      expect(text).not.toContain(value.split(".")[1]!.slice(0, 32));
    }
  });
});
