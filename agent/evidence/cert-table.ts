/**
 * The SEV-SNP certificate table a host hands the guest with an extended report request: what
 * configfs-tsm's `auxblob` holds when `provider` is `sev_guest` (Linux
 * Documentation/ABI/testing/configfs-tsm: the "cert_table" of the SEV-ES GHCB specification
 * v2.03, section 4.1.8.1, MSG_REPORT_REQ, AMD publication 56421).
 *
 * Layout: entries of 24 bytes — GUID (16 bytes), offset (u32 little-endian), length (u32
 * little-endian) — ended by an all-zero entry; each offset/length names a certificate in the
 * same buffer, after the table. The kernel trims the buffer to the end of the last certificate
 * and leaves it empty when the host supplies none. GUIDs are stored in RFC 4122 byte order (as
 * go-sev-guest's `abi` and AMD's sev-guest tools write and read them). Certificates are DER as
 * AMD's KDS serves them; PEM text is accepted too, since hosts load whatever files they were
 * given.
 */
import type { X509Certificate } from "node:crypto";
import { ShieldError } from "../../core/errors.js";
import { certificateFromDer, loadCertificate } from "../../core/x509/certificate.js";
import { readElement } from "../../core/x509/der.js";

/**
 * GHCB certificate GUIDs, as go-sev-guest (`abi/abi.go`), virtee/sev (`CertType`) and AMD's
 * sev-guest (`cert-table.c`) define them.
 */
export const SNP_CERT_GUIDS = Object.freeze({
  vcek: "63da758d-e664-4564-adc5-f4b93be8accd",
  vlek: "a8074bc2-a25a-483e-aae6-39c045a0b8a1",
  ask: "4ab7b379-bbac-4fe4-a02f-05aef327c782",
  ark: "c0b406a4-a803-4952-9743-3fb6014cd0ae",
});

export type SnpCertKind = keyof typeof SNP_CERT_GUIDS;

const ENTRY_SIZE = 24;
/** The kernel's buffer is 16 KiB (SEV_FW_BLOB_MAX_SIZE); anything far larger is not a table. */
export const MAX_CERT_TABLE_BYTES = 64 * 1024;
const GUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface SnpCertTable {
  readonly certificates: Readonly<Partial<Record<SnpCertKind, X509Certificate>>>;
  /** Entries with GUIDs this table does not know (the GHCB allows others, e.g. a CRL). */
  readonly unknownEntries: number;
}

export interface SnpCertTableEntry {
  readonly guid: string;
  readonly data: Uint8Array;
}

/**
 * Parses a certificate table. Empty input is an empty table. Throws ERR_EVIDENCE_MALFORMED for
 * a table without its terminating entry, an entry pointing into the table or past the end, an
 * empty entry, a GUID listed twice, or an entry that is not a certificate.
 */
export function parseSnpCertTable(bytes: Uint8Array): SnpCertTable {
  if (!(bytes instanceof Uint8Array)) throw new TypeError("certificate table must be a byte array");
  if (bytes.length === 0) return { certificates: {}, unknownEntries: 0 };
  if (bytes.length > MAX_CERT_TABLE_BYTES) throw malformed(`exceeds ${MAX_CERT_TABLE_BYTES} bytes`);
  const buffer = Buffer.from(bytes);
  const headers = readHeaders(buffer);
  const tableEnd = (headers.length + 1) * ENTRY_SIZE;

  const certificates: Partial<Record<SnpCertKind, X509Certificate>> = {};
  const seen = new Set<string>();
  let unknownEntries = 0;
  headers.forEach((entry, index) => {
    if (entry.length === 0) throw malformed(`entry ${index} is empty`);
    if (entry.offset < tableEnd || entry.offset + entry.length > buffer.length) {
      throw malformed(`entry ${index} points outside the certificate area`);
    }
    if (seen.has(entry.guid)) throw malformed(`GUID ${entry.guid} is listed twice`);
    seen.add(entry.guid);
    const kind = kindOf(entry.guid);
    if (kind === undefined) {
      unknownEntries += 1;
      return;
    }
    certificates[kind] = certificateAt(buffer.subarray(entry.offset, entry.offset + entry.length), kind);
  });
  return { certificates: Object.freeze(certificates), unknownEntries };
}

/** Builds a table (the host's side): for the test kernel and for tools. */
export function encodeSnpCertTable(entries: readonly SnpCertTableEntry[]): Buffer {
  const tableEnd = (entries.length + 1) * ENTRY_SIZE;
  const header = Buffer.alloc(tableEnd);
  const bodies: Buffer[] = [];
  let offset = tableEnd;
  entries.forEach((entry, index) => {
    guidToBytes(entry.guid).copy(header, index * ENTRY_SIZE);
    header.writeUInt32LE(offset, index * ENTRY_SIZE + 16);
    header.writeUInt32LE(entry.data.length, index * ENTRY_SIZE + 20);
    bodies.push(Buffer.from(entry.data));
    offset += entry.data.length;
  });
  return Buffer.concat([header, ...bodies]);
}

/** A GUID's 16 bytes in RFC 4122 order. */
export function guidToBytes(guid: string): Buffer {
  if (typeof guid !== "string" || !GUID_PATTERN.test(guid)) throw new TypeError("not a lower-case GUID");
  return Buffer.from(guid.replace(/-/g, ""), "hex");
}

function guidFromBytes(bytes: Buffer): string {
  const hex = bytes.toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

interface Header {
  readonly guid: string;
  readonly offset: number;
  readonly length: number;
}

function readHeaders(buffer: Buffer): Header[] {
  const headers: Header[] = [];
  for (let at = 0; ; at += ENTRY_SIZE) {
    if (at + ENTRY_SIZE > buffer.length) throw malformed("has no terminating all-zero entry");
    const entry = buffer.subarray(at, at + ENTRY_SIZE);
    if (entry.every((byte) => byte === 0)) return headers;
    headers.push({
      guid: guidFromBytes(entry.subarray(0, 16)),
      offset: entry.readUInt32LE(16),
      length: entry.readUInt32LE(20),
    });
  }
}

function kindOf(guid: string): SnpCertKind | undefined {
  for (const [kind, known] of Object.entries(SNP_CERT_GUIDS)) {
    if (known === guid) return kind as SnpCertKind;
  }
  return undefined;
}

/** DER (with zero padding after it tolerated) or PEM text. */
function certificateAt(bytes: Buffer, kind: SnpCertKind): X509Certificate {
  if (bytes[0] !== 0x30) return loadCertificate(bytes, "ERR_EVIDENCE_MALFORMED");
  try {
    const element = readElement(bytes);
    if (!bytes.subarray(element.raw.length).every((byte) => byte === 0)) {
      throw malformed(`${kind.toUpperCase()} entry has bytes after its certificate`);
    }
    return certificateFromDer(element.raw);
  } catch (cause) {
    if (cause instanceof ShieldError && cause.code === "ERR_EVIDENCE_MALFORMED") throw cause;
    throw new ShieldError(
      "ERR_EVIDENCE_MALFORMED",
      `certificate table: ${kind.toUpperCase()} entry is not a certificate`,
      {
        cause,
      },
    );
  }
}

function malformed(what: string): ShieldError {
  return new ShieldError("ERR_EVIDENCE_MALFORMED", `certificate table ${what}`);
}
