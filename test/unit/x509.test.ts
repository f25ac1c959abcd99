import { generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  buildCertificate,
  loadCertificate,
  loadCertificates,
  readExtensions,
  readablePublicKey,
  derToPem,
} from "../../core/x509/certificate.js";
import { integer, octetString, readElement, decodeOid, oid } from "../../core/x509/der.js";
import { ShieldError } from "../../core/errors.js";

describe("x509 builder and extension reader", () => {
  const root = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const leaf = generateKeyPairSync("ec", { namedCurve: "P-384" });
  const now = new Date("2026-01-01T00:00:00Z");
  const later = new Date("2060-01-01T00:00:00Z");

  it("builds an RSA-PSS signed CA and an ECDSA leaf that Node verifies, and reads private extensions", () => {
    const ca = buildCertificate({
      subject: [["CN", "Root"]],
      issuer: [["CN", "Root"]],
      serialNumber: 1n,
      notBefore: now,
      notAfter: later,
      publicKey: root.publicKey,
      signingKey: root.privateKey,
      signatureAlgorithm: "rsa-pss-sha384",
      isCa: true,
    });
    expect(ca.verify(root.publicKey)).toBe(true);
    expect(ca.ca).toBe(true);
    const cert = buildCertificate({
      subject: [
        ["CN", "Leaf"],
        ["O", "Test"],
      ],
      issuer: [["CN", "Root"]],
      serialNumber: 0x80n,
      notBefore: now,
      notAfter: later,
      publicKey: leaf.publicKey,
      signingKey: root.privateKey,
      signatureAlgorithm: "rsa-pss-sha384",
      extensions: [
        { oid: "1.3.6.1.4.1.3704.1.3.1", value: integer(3) },
        { oid: "1.3.6.1.4.1.3704.1.4", value: octetString(Buffer.alloc(64, 7)) },
      ],
    });
    expect(cert.verify(ca.publicKey)).toBe(true);
    expect(cert.checkIssued(ca)).toBe(true);
    expect(new Date(cert.validTo).getUTCFullYear()).toBe(2060);
    const ext = readExtensions(cert);
    expect(readElement(ext.get("1.3.6.1.4.1.3704.1.3.1")!.value).value[0]).toBe(3);
    expect(readElement(ext.get("1.3.6.1.4.1.3704.1.4")!.value).value).toEqual(Buffer.alloc(64, 7));
    expect(loadCertificates(derToPem(cert.raw) + derToPem(ca.raw)).map((c) => c.subject)).toEqual([
      cert.subject,
      ca.subject,
    ]);
  });

  it("round-trips OIDs and rejects truncated DER with a typed error", () => {
    expect(decodeOid(readElement(oid("1.2.840.113549.1.1.10")).value)).toBe("1.2.840.113549.1.1.10");
    expect(() => readElement(Buffer.from([0x30, 0x05, 0x01]))).toThrow(ShieldError);
  });
});

describe("loadCertificate", () => {
  it("reads DER as the certificate itself even when it embeds PEM text", () => {
    const key = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const inner = buildCertificate({
      subject: [["CN", "Inner"]],
      issuer: [["CN", "Inner"]],
      serialNumber: 2n,
      notBefore: new Date("2026-01-01T00:00:00Z"),
      notAfter: new Date("2027-01-01T00:00:00Z"),
      publicKey: key.publicKey,
      signingKey: key.privateKey,
      signatureAlgorithm: "ecdsa-sha256",
    });
    // An extension whose value is PEM text, as MAA's signing certificates carry an SGX quote
    // with the PCK chain in PEM.
    const outer = buildCertificate({
      subject: [["CN", "Outer"]],
      issuer: [["CN", "Outer"]],
      serialNumber: 3n,
      notBefore: new Date("2026-01-01T00:00:00Z"),
      notAfter: new Date("2027-01-01T00:00:00Z"),
      publicKey: key.publicKey,
      signingKey: key.privateKey,
      signatureAlgorithm: "ecdsa-sha256",
      extensions: [{ oid: "1.2.840.113741.1.13.1", value: octetString(Buffer.from(derToPem(inner.raw))) }],
    });
    const loaded = loadCertificate(outer.raw);
    expect(loaded.subject).toContain("CN=Outer");
    expect(loadCertificates(outer.raw)[0]!.subject).toContain("CN=Outer");
  });

  it("refuses, with the caller's code, a certificate that parses but whose key does not decode", () => {
    const key = generateKeyPairSync("ec", { namedCurve: "P-384" });
    const spki = key.publicKey.export({ type: "spki", format: "der" });
    spki[spki.length - 1]! ^= 0x01; // the point leaves the curve
    const cert = buildCertificate({
      subject: [["CN", "Off curve"]],
      issuer: [["CN", "Off curve"]],
      serialNumber: 4n,
      notBefore: new Date("2026-01-01T00:00:00Z"),
      notAfter: new Date("2027-01-01T00:00:00Z"),
      publicKey: key.publicKey,
      subjectPublicKeyInfo: spki,
      signingKey: key.privateKey,
      signatureAlgorithm: "ecdsa-sha384",
    });
    // The builder embeds the given bytes and signs them; Node fails only when the key is read.
    expect(cert.verify(key.publicKey)).toBe(true);
    expect(readablePublicKey(cert)).toBeUndefined();
    // OpenSSL refuses the key (its ERR_OSSL_* code), not a certificate the builder got wrong.
    expect(() => cert.publicKey).toThrow(
      expect.objectContaining({ code: expect.stringMatching(/^ERR_OSSL_/) as string }) as Error,
    );
    const codeOf = (f: () => unknown) => {
      try {
        f();
      } catch (error) {
        expect(error).toBeInstanceOf(ShieldError);
        return (error as ShieldError).code;
      }
      return "no error";
    };
    expect(codeOf(() => loadCertificate(cert.raw))).toBe("ERR_INPUT_MALFORMED");
    expect(codeOf(() => loadCertificate(derToPem(cert.raw), "ERR_EVIDENCE_CHAIN"))).toBe(
      "ERR_EVIDENCE_CHAIN",
    );
    expect(codeOf(() => loadCertificates(derToPem(cert.raw), "ERR_EVIDENCE_CHAIN"))).toBe(
      "ERR_EVIDENCE_CHAIN",
    );
    // The same certificate with its own key loads, and its key reads.
    const fine = buildCertificate({
      subject: [["CN", "Fine"]],
      issuer: [["CN", "Fine"]],
      serialNumber: 5n,
      notBefore: new Date("2026-01-01T00:00:00Z"),
      notAfter: new Date("2027-01-01T00:00:00Z"),
      publicKey: key.publicKey,
      signingKey: key.privateKey,
      signatureAlgorithm: "ecdsa-sha384",
    });
    expect(readablePublicKey(loadCertificate(derToPem(fine.raw)))?.equals(key.publicKey)).toBe(true);
  });
});
