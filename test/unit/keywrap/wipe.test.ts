import type * as nodeCrypto from "node:crypto";
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { describe, expect, it, vi } from "vitest";

/** What node:crypto handed out or was handed: every Buffer that held plaintext key bytes. */
const seen = vi.hoisted(() => ({ decrypted: [] as Buffer[], imported: [] as Buffer[] }));

vi.mock("node:crypto", async (importOriginal) => {
  const crypto = await importOriginal<typeof nodeCrypto>();
  return {
    ...crypto,
    createDecipheriv: (...args: Parameters<typeof crypto.createDecipheriv>) => {
      const decipher = crypto.createDecipheriv(...args);
      return {
        update: (data: Buffer) => {
          const out = decipher.update(data);
          seen.decrypted.push(out);
          return out;
        },
        final: () => {
          const out = decipher.final();
          seen.decrypted.push(out);
          return out;
        },
      };
    },
    createPrivateKey: (input: Parameters<typeof crypto.createPrivateKey>[0]) => {
      if (typeof input === "object" && "key" in input && Buffer.isBuffer(input.key))
        seen.imported.push(input.key);
      return crypto.createPrivateKey(input);
    },
  };
});

const { exportForRelease, importReleased, unwrapFromTarget, wrapForTarget } =
  await import("../../../core/keywrap/index.js");

const zeroed = (buffer: Buffer): boolean => buffer.every((byte) => byte === 0);

describe("unwrapping leaves no plaintext copies behind", () => {
  const target = generateKeyPairSync("rsa", { modulusLength: 2048 });

  it("zeroes the decipher's output once the plaintext is assembled", () => {
    const plaintext = Buffer.alloc(48, 7);
    const ciphertext = wrapForTarget({ targetKey: target.publicKey, plaintext, enc: "RSA_AES_KEY_WRAP_256" });
    seen.decrypted.length = 0;
    const unwrapped = unwrapFromTarget({
      privateKey: target.privateKey,
      ciphertext,
      enc: "RSA_AES_KEY_WRAP_256",
    });
    expect(unwrapped.equals(plaintext)).toBe(true);
    expect(seen.decrypted.length).toBeGreaterThan(0);
    for (const part of seen.decrypted) expect(zeroed(part)).toBe(true);
  });

  it("zeroes the copy of the PKCS #8 bytes an RSA or EC key is imported from", () => {
    const released: KeyObject = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;
    const der = exportForRelease({ kty: "EC", privateKey: released });
    seen.imported.length = 0;
    const key = importReleased("EC", der);
    expect(key.kty).toBe("EC");
    expect(seen.imported.length).toBe(1);
    expect(seen.imported[0]).not.toBe(der);
    expect(zeroed(seen.imported[0]!)).toBe(true);
    // The caller's bytes are the caller's to wipe.
    expect(zeroed(der)).toBe(false);
  });
});
