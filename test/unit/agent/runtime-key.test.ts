import { createHash, createPublicKey, KeyObject } from "node:crypto";
import { readFile } from "node:fs/promises";
import { inspect } from "node:util";
import { calculateJwkThumbprint } from "jose";
import { beforeAll, describe, expect, it } from "vitest";
import { buildReleaseResponse } from "../../../core/keywrap/index.js";
import * as runtimeKeyModule from "../../../agent/runtime-key.js";
import { createRuntimeKey, rsaJwkThumbprint, type RuntimeKey } from "../../../agent/runtime-key.js";
import { releaseOptions, vaultSigner } from "../keywrap/fixtures.js";

let key: RuntimeKey;
beforeAll(async () => {
  key = await createRuntimeKey();
});

const NONCE = "q3l5b0xQa2V5TGVmdEhlcmU";

describe("runtime key", () => {
  it("is a 2048-bit RSA key whose kid is its RFC 7638 thumbprint", async () => {
    expect(key.bits).toBe(2048);
    expect(Buffer.from(key.publicJwk.n, "base64url").length).toBe(256);
    expect(key.publicJwk.e).toBe("AQAB");
    const jose = await calculateJwkThumbprint(
      { kty: "RSA", n: key.publicJwk.n, e: key.publicJwk.e },
      "sha256",
    );
    expect(key.kid).toBe(jose);
    expect(key.publicJwk.kid).toBe(jose);
    expect(rsaJwkThumbprint(key.publicJwk)).toBe(jose);
  });

  it("serialises runtime data once as {keys:[JWK]} with key_ops [encrypt]", () => {
    const document = JSON.parse(key.runtimeData.bytes.toString("utf8")) as unknown;
    expect(document).toEqual({
      keys: [{ kty: "RSA", n: key.publicJwk.n, e: "AQAB", kid: key.kid, key_ops: ["encrypt"] }],
    });
    expect(key.runtimeData.nonce).toBeUndefined();
    expect(Buffer.from(key.runtimeData.base64url, "base64url")).toEqual(key.runtimeData.bytes);
    expect(key.runtimeData.base64url).not.toContain("=");
  });

  it("binds REPORT_DATA to exactly those bytes: sha256 then 32 zero bytes", () => {
    const expected = Buffer.concat([
      createHash("sha256").update(key.runtimeData.bytes).digest(),
      Buffer.alloc(32),
    ]);
    expect(key.runtimeData.reportData).toEqual(expected);
    expect(key.runtimeData.reportData.length).toBe(64);
  });

  it("hands out copies, so no caller can change the bound bytes", () => {
    const bytes = key.runtimeData.bytes;
    bytes.fill(0);
    const reportData = key.runtimeData.reportData;
    reportData.fill(0);
    expect(key.runtimeData.bytes.equals(bytes)).toBe(false);
    expect(key.runtimeData.reportData).toEqual(
      Buffer.concat([createHash("sha256").update(key.runtimeData.bytes).digest(), Buffer.alloc(32)]),
    );
  });

  it("makes fresh runtime data for a challenge nonce with the same key", () => {
    const answer = key.bindToNonce(NONCE);
    expect(answer.nonce).toBe(NONCE);
    expect(JSON.parse(answer.bytes.toString("utf8"))).toEqual({
      keys: [{ kty: "RSA", n: key.publicJwk.n, e: "AQAB", kid: key.kid, key_ops: ["encrypt"] }],
      nonce: NONCE,
    });
    expect(answer.reportData).toEqual(
      Buffer.concat([createHash("sha256").update(answer.bytes).digest(), Buffer.alloc(32)]),
    );
    expect(answer.reportData.equals(key.runtimeData.reportData)).toBe(false);
    expect(() => key.bindToNonce("short")).toThrow(TypeError);
    expect(() => key.bindToNonce("not base64url!!!!!!!!")).toThrow(TypeError);
  });

  it("binds the request's fields as the runtime data's request member, and refuses a malformed binding", () => {
    const binding = createHash("sha256").update("fields").digest("base64url");
    const bound = key.bindToNonce(NONCE, binding);
    expect(JSON.parse(bound.bytes.toString("utf8"))).toEqual({
      keys: [key.publicJwk],
      nonce: NONCE,
      request: binding,
    });
    expect(bound.reportData.subarray(0, 32)).toEqual(createHash("sha256").update(bound.bytes).digest());
    expect(bound.base64url).not.toBe(key.bindToNonce(NONCE).base64url);
    expect(() => key.bindToNonce(NONCE, "too-short")).toThrow(TypeError);
    expect(() => key.bindToNonce(NONCE, `${binding.slice(0, 42)}!`)).toThrow(TypeError);
  });

  it("unwraps a release response wrapped to it, without the private key leaving the module", async () => {
    const signer = vaultSigner("Runtime");
    const response = await buildReleaseResponse(
      releaseOptions(signer, createPublicKey({ key: { ...key.publicJwk }, format: "jwk" }), {
        targetKey: key.publicJwk,
      }),
    );
    const released = key.unwrapReleased(response);
    expect(released.kty).toBe("oct-HSM");
    if (!("bytes" in released)) throw new Error("unreachable");
    expect(released.bytes).toEqual(Buffer.alloc(32, 0x5a));
  });

  it("exposes no private key: not as a property, not in JSON, not in inspect output", () => {
    const values = Object.values(key as unknown as Record<string, unknown>);
    expect(values.some((value) => value instanceof KeyObject)).toBe(false);
    const json = JSON.stringify(key);
    for (const member of ['"d"', '"p"', '"q"', '"dp"', '"dq"', '"qi"', "PRIVATE KEY"])
      expect(json).not.toContain(member);
    expect(inspect(key, { showHidden: true, depth: 5 })).not.toMatch(/PRIVATE|KeyObject/);
    expect(Object.isFrozen(key)).toBe(true);
    expect(Object.keys(runtimeKeyModule).sort()).toEqual([
      "RUNTIME_KEY_BITS",
      "createRuntimeKey",
      "rsaJwkThumbprint",
    ]);
  });

  it("never exports the private key anywhere in its source", async () => {
    const source = await readFile(new URL("../../../agent/runtime-key.ts", import.meta.url), "utf8");
    expect(source).not.toMatch(/privateKey\s*\.\s*export|pkcs8|pkcs1|"pem"|type:\s*"private"/);
  });

  it("supports 3072-bit keys and refuses other sizes", async () => {
    const big = await createRuntimeKey({ bits: 3072 });
    expect(Buffer.from(big.publicJwk.n, "base64url").length).toBe(384);
    await expect(createRuntimeKey({ bits: 1024 as 2048 })).rejects.toThrow(TypeError);
  });
});
