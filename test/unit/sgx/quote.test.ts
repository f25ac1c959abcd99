import { X509Certificate, createHash } from "node:crypto";
import fc from "fast-check";
import { beforeAll, describe, expect, it } from "vitest";
import { ShieldError } from "../../../core/errors.js";
import { derToPem } from "../../../core/x509/certificate.js";
import { MAX_SGX_QUOTE_BYTES, parseSgxQuote, sgxClaims } from "../../../core/evidence/sgx/index.js";
import {
  createSimulatedSgxPlatform,
  type SimulatedSgxPlatform,
} from "../../../core/evidence/simulated/sgx.js";

// Offsets in a bare quote (sgx_quote_3.h): signature data starts at 436.
const SIG_DATA_LEN = 432;
const QE_AUTH_LEN = 436 + 64 + 64 + 384 + 64;
const CERT_TYPE = QE_AUTH_LEN + 2 + 32;
const CERT_LEN = CERT_TYPE + 2;

let platform: SimulatedSgxPlatform;
let quote: Buffer;

beforeAll(() => {
  platform = createSimulatedSgxPlatform();
  quote = platform.generateQuote({ mrEnclave: "ab".repeat(32), isvProdId: 7, isvSvn: 3 });
});

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof ShieldError) return e.code;
    throw e;
  }
  return "no error";
}

function patched(bytes: Buffer, patch: (b: Buffer) => void): Buffer {
  const copy = Buffer.from(bytes);
  patch(copy);
  return copy;
}

describe("parseSgxQuote", () => {
  it("parses header, report body and signature data", () => {
    const parsed = parseSgxQuote(quote);
    expect(parsed.header).toMatchObject({ version: 3, attestationKeyType: 2, qeSvn: 8, pceSvn: 13 });
    expect(parsed.header.qeVendorId.toString("hex")).toBe("939a7233f79c4ca9940a0db3957f0607");
    expect(parsed.reportBody.mrEnclave.toString("hex")).toBe("ab".repeat(32));
    expect(parsed.reportBody.isvProdId).toBe(7);
    expect(parsed.signedBytes.length).toBe(432);
    expect(parsed.signatureData.qeAuthData.length).toBe(32);
    expect(parsed.signatureData.certificationData.type).toBe(5);
    expect(parsed.signatureData.certificationData.pckChain?.map((c) => c.fingerprint256)).toEqual(
      platform.pckChain.map((c) => c.fingerprint256),
    );
    expect(parsed.openEnclaveHeader).toBe(false);
  });

  it("strips an Open Enclave remote-report header and checks its size field", () => {
    const withHeader = platform.generateQuote({ isvSvn: 5 }, { openEnclaveHeader: true });
    expect(withHeader.readUInt32LE(0)).toBe(1);
    const parsed = parseSgxQuote(withHeader);
    expect(parsed.openEnclaveHeader).toBe(true);
    expect(parsed.reportBody.isvSvn).toBe(5);
    const wrongSize = patched(withHeader, (b) => b.writeBigUInt64LE(BigInt(b.length), 8));
    expect(codeOf(() => parseSgxQuote(wrongSize))).toBe("ERR_EVIDENCE_MALFORMED");
    const localReport = patched(withHeader, (b) => b.writeUInt32LE(1, 4));
    expect(codeOf(() => parseSgxQuote(localReport))).toBe("ERR_EVIDENCE_UNSUPPORTED");
  });

  it("reads the debug flag from ATTRIBUTES bit 1", () => {
    expect(sgxClaims(parseSgxQuote(platform.generateQuote({ debug: true }))).debug).toBe(true);
    expect(sgxClaims(parseSgxQuote(platform.generateQuote({ debug: false }))).debug).toBe(false);
  });

  it("rejects versions other than 3", () => {
    for (const version of [2, 4, 5]) {
      const bad = patched(quote, (b) => b.writeUInt16LE(version, 0));
      expect(codeOf(() => parseSgxQuote(bad))).toBe("ERR_EVIDENCE_VERSION");
    }
  });

  it("rejects attestation key types other than ECDSA P-256", () => {
    for (const keyType of [0, 3]) {
      const bad = patched(quote, (b) => b.writeUInt16LE(keyType, 2));
      expect(codeOf(() => parseSgxQuote(bad))).toBe("ERR_EVIDENCE_UNSUPPORTED");
    }
  });

  it("rejects certification data other than a PEM chain unless the chain comes from elsewhere", () => {
    const ppid = platform.generateQuote({}, { certificationData: { type: 1, data: Buffer.alloc(36, 1) } });
    expect(codeOf(() => parseSgxQuote(ppid))).toBe("ERR_EVIDENCE_UNSUPPORTED");
    const parsed = parseSgxQuote(ppid, { externalPckChain: true });
    expect(parsed.signatureData.certificationData.type).toBe(1);
    expect(parsed.signatureData.certificationData.pckChain).toBeUndefined();
  });

  it("rejects type 5 data that is not clean PEM", () => {
    const garbage = platform.generateQuote(
      {},
      { certificationData: { type: 5, data: Buffer.from("not a certificate") } },
    );
    expect(codeOf(() => parseSgxQuote(garbage))).toBe("ERR_EVIDENCE_MALFORMED");
    const badBase64 = platform.generateQuote(
      {},
      {
        certificationData: {
          type: 5,
          data: Buffer.from("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n\0"),
        },
      },
    );
    // A PEM block that is no certificate is a chain failure, not a framing one.
    expect(codeOf(() => parseSgxQuote(badBase64))).toBe("ERR_EVIDENCE_CHAIN");
    const empty = platform.generateQuote({}, { certificationData: { type: 5, data: Buffer.from("\0") } });
    expect(codeOf(() => parseSgxQuote(empty))).toBe("ERR_EVIDENCE_MALFORMED");
  });

  it("rejects an embedded certificate whose key does not decode", () => {
    // Node parses such a certificate and only fails when its key is read.
    const der = Buffer.from(platform.rootCertificate.raw);
    const spki = platform.rootCertificate.publicKey.export({ type: "spki", format: "der" });
    const keyStart = der.indexOf(spki);
    der[keyStart + spki.length - 1]! ^= 0x01; // last byte of y: the point leaves the curve
    expect(() => new X509Certificate(der)).not.toThrow();
    const pem = [...platform.pckChain.slice(0, 2).map((c) => derToPem(c.raw)), derToPem(der)].join("");
    const bad = platform.generateQuote({}, { certificationData: { type: 5, data: Buffer.from(pem) } });
    expect(codeOf(() => parseSgxQuote(bad))).toBe("ERR_EVIDENCE_CHAIN");
  });

  it("checks every inner length against the buffer", () => {
    const cases = [
      patched(quote, (b) => b.writeUInt32LE(0xffffffff, SIG_DATA_LEN)),
      patched(quote, (b) => b.writeUInt32LE(10, SIG_DATA_LEN)),
      patched(quote, (b) => b.writeUInt16LE(0xffff, QE_AUTH_LEN)),
      patched(quote, (b) => b.writeUInt32LE(0xffffffff, CERT_LEN)),
      patched(quote, (b) => b.writeUInt32LE(1, CERT_LEN)),
      Buffer.concat([quote, Buffer.alloc(1)]),
    ];
    for (const bad of cases) expect(codeOf(() => parseSgxQuote(bad))).toBe("ERR_EVIDENCE_MALFORMED");
  });

  it("rejects a quote truncated at any offset, with or without the OE header", () => {
    const withHeader = platform.generateQuote({}, { openEnclaveHeader: true });
    for (const whole of [quote, withHeader]) {
      for (let length = 0; length < whole.length; length++) {
        expect(codeOf(() => parseSgxQuote(whole.subarray(0, length)))).toMatch(/^ERR_EVIDENCE_/);
      }
    }
  });

  it("rejects truncation even when the signature data length is rewritten to match", () => {
    for (let length = 436; length < quote.length; length++) {
      const cut = Buffer.from(quote.subarray(0, length));
      cut.writeUInt32LE(length - 436, SIG_DATA_LEN);
      expect(codeOf(() => parseSgxQuote(cut))).toBe("ERR_EVIDENCE_MALFORMED");
    }
  });

  it("rejects oversized input before reading it", () => {
    expect(codeOf(() => parseSgxQuote(Buffer.alloc(MAX_SGX_QUOTE_BYTES + 1)))).toBe("ERR_INPUT_TOO_LARGE");
  });

  it("throws only ShieldError for arbitrary bytes and arbitrary corruptions", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2048 }), (bytes) => {
        try {
          parseSgxQuote(bytes);
        } catch (e) {
          expect(e).toBeInstanceOf(ShieldError);
        }
      }),
      { numRuns: 300 },
    );
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat({ max: quote.length - 1 }), fc.integer({ min: 0, max: 255 })), {
          minLength: 1,
          maxLength: 4,
        }),
        (edits) => {
          const bad = patched(quote, (b) => edits.forEach(([offset, value]) => (b[offset] = value)));
          try {
            parseSgxQuote(bad);
          } catch (e) {
            expect(e).toBeInstanceOf(ShieldError);
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it("keeps its own copy of the bytes", () => {
    const mine = Buffer.from(quote);
    const parsed = parseSgxQuote(mine);
    const before = createHash("sha256").update(parsed.signedBytes).digest("hex");
    mine.fill(0);
    expect(createHash("sha256").update(parsed.signedBytes).digest("hex")).toBe(before);
    expect(parsed.reportBody.mrEnclave.toString("hex")).toBe("ab".repeat(32));
  });

  it("treats non-bytes as caller misuse", () => {
    expect(() => parseSgxQuote("quote" as unknown as Uint8Array)).toThrow(TypeError);
  });

  it("places the certification data type at its offset in Intel's layout", () => {
    expect(quote.readUInt16LE(CERT_TYPE)).toBe(5);
  });
});
