import { beforeAll, describe, expect, it } from "vitest";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../../core/evidence/simulated/sevsnp.js";
import { ShieldError } from "../../../core/errors.js";
import {
  MAX_CERT_TABLE_BYTES,
  SNP_CERT_GUIDS,
  encodeSnpCertTable,
  guidToBytes,
  parseSnpCertTable,
} from "../../../agent/evidence/cert-table.js";
import { certTableFor } from "./fakes.js";

let platform: SimulatedSnpPlatform;
beforeAll(() => {
  platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
});

function malformed(bytes: Uint8Array): ShieldError {
  try {
    parseSnpCertTable(bytes);
  } catch (error) {
    expect(error).toBeInstanceOf(ShieldError);
    expect((error as ShieldError).code).toBe("ERR_EVIDENCE_MALFORMED");
    return error as ShieldError;
  }
  throw new Error("expected ERR_EVIDENCE_MALFORMED");
}

describe("SEV-SNP certificate table (auxblob)", () => {
  it("pins the GHCB GUIDs and their RFC 4122 byte order", () => {
    expect(SNP_CERT_GUIDS).toEqual({
      vcek: "63da758d-e664-4564-adc5-f4b93be8accd",
      vlek: "a8074bc2-a25a-483e-aae6-39c045a0b8a1",
      ask: "4ab7b379-bbac-4fe4-a02f-05aef327c782",
      ark: "c0b406a4-a803-4952-9743-3fb6014cd0ae",
    });
    expect(guidToBytes(SNP_CERT_GUIDS.vcek).toString("hex")).toBe("63da758de6644564adc5f4b93be8accd");
    const table = encodeSnpCertTable([{ guid: SNP_CERT_GUIDS.ark, data: platform.ark.raw }]);
    expect(table.subarray(0, 16).toString("hex")).toBe("c0b406a4a803495297433fb6014cd0ae");
    expect(table.readUInt32LE(16)).toBe(48);
    expect(table.readUInt32LE(20)).toBe(platform.ark.raw.length);
    expect(table.subarray(24, 48).every((byte) => byte === 0)).toBe(true);
  });

  it("reads VCEK, ASK and ARK", () => {
    const table = parseSnpCertTable(certTableFor(platform));
    expect(table.certificates.vcek?.raw).toEqual(platform.leaf.raw);
    expect(table.certificates.ask?.raw).toEqual(platform.intermediate.raw);
    expect(table.certificates.ark?.raw).toEqual(platform.ark.raw);
    expect(table.unknownEntries).toBe(0);
  });

  it("is empty for an empty auxblob", () => {
    expect(parseSnpCertTable(Buffer.alloc(0))).toEqual({ certificates: {}, unknownEntries: 0 });
  });

  it("counts entries with other GUIDs and accepts PEM and zero-padded DER", () => {
    const table = parseSnpCertTable(
      encodeSnpCertTable([
        { guid: "92f81bc3-5811-4d3d-97ff-d19f88dc67ea", data: Buffer.from("a CRL") },
        { guid: SNP_CERT_GUIDS.vcek, data: Buffer.from(platform.leafPem) },
        { guid: SNP_CERT_GUIDS.ask, data: Buffer.concat([platform.intermediate.raw, Buffer.alloc(100)]) },
      ]),
    );
    expect(table.unknownEntries).toBe(1);
    expect(table.certificates.vcek?.raw).toEqual(platform.leaf.raw);
    expect(table.certificates.ask?.raw).toEqual(platform.intermediate.raw);
  });

  it("refuses a table without its terminating entry", () => {
    const table = encodeSnpCertTable([{ guid: SNP_CERT_GUIDS.vcek, data: platform.leaf.raw }]);
    malformed(table.subarray(0, 24));
    malformed(table.subarray(0, 40));
  });

  it("refuses entries pointing into the table or past the end", () => {
    const table = encodeSnpCertTable([{ guid: SNP_CERT_GUIDS.vcek, data: platform.leaf.raw }]);
    const intoTable = Buffer.from(table);
    intoTable.writeUInt32LE(8, 16);
    malformed(intoTable);
    const pastEnd = Buffer.from(table);
    pastEnd.writeUInt32LE(platform.leaf.raw.length + 1, 20);
    malformed(pastEnd);
  });

  it("refuses an empty entry and a GUID listed twice", () => {
    const empty = Buffer.from(encodeSnpCertTable([{ guid: SNP_CERT_GUIDS.vcek, data: platform.leaf.raw }]));
    empty.writeUInt32LE(0, 20);
    malformed(empty);
    malformed(
      encodeSnpCertTable([
        { guid: SNP_CERT_GUIDS.vcek, data: platform.leaf.raw },
        { guid: SNP_CERT_GUIDS.vcek, data: platform.leaf.raw },
      ]),
    );
  });

  it("refuses entries that are not certificates, or carry bytes after one", () => {
    malformed(encodeSnpCertTable([{ guid: SNP_CERT_GUIDS.ark, data: Buffer.from("garbage") }]));
    malformed(encodeSnpCertTable([{ guid: SNP_CERT_GUIDS.ark, data: Buffer.from([0x30, 0x82, 0xff]) }]));
    const trailing = Buffer.concat([platform.ark.raw, Buffer.from([1])]);
    expect(malformed(encodeSnpCertTable([{ guid: SNP_CERT_GUIDS.ark, data: trailing }])).message).toContain(
      "after its certificate",
    );
  });

  it("refuses oversized input", () => {
    malformed(Buffer.alloc(MAX_CERT_TABLE_BYTES + 1, 1));
  });

  it("rejects misuse with TypeError", () => {
    expect(() => parseSnpCertTable("table" as unknown as Uint8Array)).toThrow(TypeError);
    expect(() => guidToBytes("not-a-guid")).toThrow(TypeError);
  });
});
