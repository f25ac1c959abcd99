// Shared helpers for the SEV-SNP unit tests: error-code assertions and byte surgery.
import { expect } from "vitest";
import { ShieldError, type ShieldErrorCode } from "../../../core/errors.js";

/** Runs `f` and returns the ShieldError it throws, failing the test if it does not throw one. */
export function shieldError(f: () => unknown): ShieldError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(ShieldError);
    return e as ShieldError;
  }
  throw new Error("expected a ShieldError, nothing was thrown");
}

export function expectCode(f: () => unknown, code: ShieldErrorCode): ShieldError {
  const error = shieldError(f);
  expect(error.code).toBe(code);
  return error;
}

/** A copy of `bytes` with the byte at `offset` XORed with `mask`. */
export function flipped(bytes: Uint8Array, offset: number, mask = 0x01): Buffer {
  const out = Buffer.from(bytes);
  out[offset] = out[offset]! ^ mask;
  return out;
}

/** A copy of `bytes` with a little-endian u32 written at `offset`. */
export function withU32(bytes: Uint8Array, offset: number, value: number): Buffer {
  const out = Buffer.from(bytes);
  out.writeUInt32LE(value, offset);
  return out;
}

export const AT = new Date("2030-06-01T00:00:00Z");
