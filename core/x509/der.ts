/**
 * Minimal DER reader and writer.
 *
 * Node's `crypto.X509Certificate` verifies signatures and chains but neither exposes arbitrary
 * extensions (AMD's VCEK carries its TCB and chip ID in private ones; Intel's PCK carries its
 * FMSPC) nor builds certificates (the simulated TEE and the test issuers need their own chains).
 * This module does just enough ASN.1 for both: definite-length TLVs, no BER forms.
 */
import { ShieldError } from "../errors.js";

export const Tag = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  ENUMERATED: 0x0a,
  UTF8_STRING: 0x0c,
  SEQUENCE: 0x30,
  SET: 0x31,
  PRINTABLE_STRING: 0x13,
  IA5_STRING: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
} as const;

/** A decoded TLV: its tag byte, its value bytes, and where the whole element ends. */
export interface DerElement {
  readonly tag: number;
  readonly value: Buffer;
  /** The complete encoding (tag, length, value). */
  readonly raw: Buffer;
}

const MAX_DEPTH_BYTES = 4;

/** Reads one element at `offset`; throws ERR_INPUT_MALFORMED on truncation or non-DER lengths. */
export function readElement(buf: Buffer, offset = 0): DerElement {
  if (offset + 2 > buf.length) throw malformed("truncated element");
  const tag = buf[offset]!;
  if ((tag & 0x1f) === 0x1f) throw malformed("multi-byte tags are not supported");
  let len = buf[offset + 1]!;
  let header = 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > MAX_DEPTH_BYTES) throw malformed("unsupported length form");
    if (offset + 2 + n > buf.length) throw malformed("truncated length");
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[offset + 2 + i]!;
    header += n;
  }
  const end = offset + header + len;
  if (end > buf.length) throw malformed("element overruns its container");
  return { tag, value: buf.subarray(offset + header, end), raw: buf.subarray(offset, end) };
}

/** All elements directly inside a constructed value. */
export function readChildren(value: Buffer): DerElement[] {
  const out: DerElement[] = [];
  let offset = 0;
  while (offset < value.length) {
    const el = readElement(value, offset);
    out.push(el);
    offset += el.raw.length;
  }
  return out;
}

export function expectTag(el: DerElement | undefined, tag: number, what: string): DerElement {
  if (el === undefined || el.tag !== tag) throw malformed(`expected ${what}`);
  return el;
}

export function decodeOid(value: Buffer): string {
  if (value.length === 0) throw malformed("empty OID");
  const first = value[0]!;
  const parts: number[] = [Math.floor(first / 40) > 2 ? 2 : Math.floor(first / 40)];
  parts.push(first - parts[0]! * 40);
  let acc = 0;
  for (let i = 1; i < value.length; i++) {
    const b = value[i]!;
    acc = acc * 128 + (b & 0x7f);
    if ((b & 0x80) === 0) {
      parts.push(acc);
      acc = 0;
    }
  }
  return parts.join(".");
}

/** Unsigned big-endian integer value of an INTEGER (leading sign byte dropped). */
export function decodeUnsignedInteger(value: Buffer): bigint {
  if (value.length === 0) throw malformed("empty INTEGER");
  return BigInt("0x" + value.toString("hex"));
}

function malformed(detail: string): ShieldError {
  return new ShieldError("ERR_INPUT_MALFORMED", `malformed DER: ${detail}`);
}

// ---------------------------------------------------------------------------------------------
// Writer

function encodeLength(len: number): Buffer {
  if (len < 0x80) return Buffer.from([len]);
  const bytes: number[] = [];
  let n = len;
  while (n > 0) {
    bytes.unshift(n & 0xff);
    n = Math.floor(n / 256);
  }
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

export function tlv(tag: number, value: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from([tag]), encodeLength(value.length), value]);
}

export const seq = (...items: Uint8Array[]): Buffer => tlv(Tag.SEQUENCE, Buffer.concat(items));
export const set = (...items: Uint8Array[]): Buffer => tlv(Tag.SET, Buffer.concat(items));
export const octetString = (v: Uint8Array): Buffer => tlv(Tag.OCTET_STRING, v);
export const bitString = (v: Uint8Array): Buffer => tlv(Tag.BIT_STRING, Buffer.concat([Buffer.from([0]), v]));
export const derNull = (): Buffer => Buffer.from([Tag.NULL, 0]);
export const utf8String = (s: string): Buffer => tlv(Tag.UTF8_STRING, Buffer.from(s, "utf8"));
export const ia5String = (s: string): Buffer => tlv(Tag.IA5_STRING, Buffer.from(s, "ascii"));
export const boolean = (b: boolean): Buffer => tlv(Tag.BOOLEAN, Buffer.from([b ? 0xff : 0]));
/** `[n] EXPLICIT` context-specific constructed tag. */
export const explicit = (n: number, inner: Uint8Array): Buffer => tlv(0xa0 | n, inner);
/** `[n] IMPLICIT` context-specific primitive tag. */
export const implicitPrimitive = (n: number, inner: Uint8Array): Buffer => tlv(0x80 | n, inner);

export function integer(v: bigint | number | Uint8Array): Buffer {
  let bytes: Buffer;
  if (typeof v === "bigint" || typeof v === "number") {
    let hex = BigInt(v).toString(16);
    if (hex.length % 2) hex = "0" + hex;
    bytes = Buffer.from(hex, "hex");
  } else {
    bytes = Buffer.from(v);
  }
  let start = 0;
  while (start < bytes.length - 1 && bytes[start] === 0 && (bytes[start + 1]! & 0x80) === 0) start++;
  bytes = bytes.subarray(start);
  if (bytes.length === 0) bytes = Buffer.from([0]);
  if (bytes[0]! & 0x80) bytes = Buffer.concat([Buffer.from([0]), bytes]);
  return tlv(Tag.INTEGER, bytes);
}

export function oid(dotted: string): Buffer {
  const parts = dotted.split(".").map((p) => Number(p));
  if (parts.length < 2 || parts.some((p) => !Number.isInteger(p) || p < 0)) {
    throw new TypeError(`invalid OID ${dotted}`);
  }
  const out: number[] = [parts[0]! * 40 + parts[1]!];
  for (const part of parts.slice(2)) {
    const stack: number[] = [part & 0x7f];
    let n = Math.floor(part / 128);
    while (n > 0) {
      stack.unshift((n & 0x7f) | 0x80);
      n = Math.floor(n / 128);
    }
    out.push(...stack);
  }
  return tlv(Tag.OID, Buffer.from(out));
}

/** UTCTime for years 1950–2049, GeneralizedTime otherwise (RFC 5280 §4.1.2.5). */
export function time(date: Date): Buffer {
  const iso = date.toISOString(); // YYYY-MM-DDTHH:MM:SS.sssZ
  const y = date.getUTCFullYear();
  const body =
    iso.slice(5, 7) + iso.slice(8, 10) + iso.slice(11, 13) + iso.slice(14, 16) + iso.slice(17, 19) + "Z";
  if (y >= 1950 && y < 2050) return tlv(Tag.UTC_TIME, Buffer.from(iso.slice(2, 4) + body, "ascii"));
  return tlv(Tag.GENERALIZED_TIME, Buffer.from(iso.slice(0, 4) + body, "ascii"));
}
