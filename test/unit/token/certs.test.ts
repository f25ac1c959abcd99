import { X509Certificate, generateKeyPairSync } from "node:crypto";
import { beforeAll, describe, expect, it } from "vitest";
import { ShieldError } from "../../../core/errors.js";
import { parseCertsDocument } from "../../../core/token/index.js";
import { buildCertificate, derToPem } from "../../../core/x509/certificate.js";
import { octetString } from "../../../core/x509/der.js";
import { createTestSigner, type TestSigner } from "./helpers.js";

let signer: TestSigner;
let other: TestSigner;

beforeAll(() => {
  signer = createTestSigner("https://a.attest.example");
  other = createTestSigner("https://b.attest.example");
});

function expectMalformed(document: unknown, options?: { maxBytes?: number }) {
  try {
    parseCertsDocument(document, options);
  } catch (error) {
    expect(error).toBeInstanceOf(ShieldError);
    expect((error as ShieldError).code).toBe("ERR_JWKS_MALFORMED");
    return;
  }
  throw new Error("parse unexpectedly succeeded");
}

describe("parseCertsDocument", () => {
  it("maps each kid to the public key of its x5c[0], as object, text or bytes", () => {
    const document = { keys: [...signer.certsDocument().keys, ...other.certsDocument().keys] };
    for (const input of [document, JSON.stringify(document), Buffer.from(JSON.stringify(document))]) {
      const keys = parseCertsDocument(input);
      expect([...keys.keys()]).toEqual([signer.kid, other.kid]);
      expect(keys.get(signer.kid)!.key.equals(signer.publicKey)).toBe(true);
      expect(keys.get(other.kid)!.certificate.subject).toBe("CN=https://b.attest.example");
    }
  });

  it("allows extra members and the chain after x5c[0]", () => {
    const entry = { ...signer.certsDocument().keys[0]!, use: "sig", x5t: "abc" };
    entry.x5c = [signer.x5c, other.x5c];
    const keys = parseCertsDocument({ keys: [entry], extra: true });
    expect(keys.get(signer.kid)!.key.equals(signer.publicKey)).toBe(true);
  });

  it("skips entries whose kty is not RSA", () => {
    const ec = { ...other.certsDocument().keys[0]!, kty: "EC" };
    const keys = parseCertsDocument({ keys: [ec, ...signer.certsDocument().keys] });
    expect([...keys.keys()]).toEqual([signer.kid]);
  });

  it("reads a certificate that embeds PEM certificates as itself, not as the first embedded one", () => {
    // MAA signing certificates carry an SGX quote whose collateral holds PEM certificates, and
    // Node's X509Certificate reads its input as PEM first when a line starts with BEGIN.
    const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const embedded = Buffer.from(`quote\x01${derToPem(Buffer.from(other.x5c, "base64"))}`);
    const built = buildCertificate({
      subject: [["CN", "https://maa.example"]],
      issuer: [["CN", "https://maa.example"]],
      serialNumber: 1n,
      notBefore: new Date("2019-05-01T00:00:00Z"),
      notAfter: new Date("2050-12-31T23:59:59Z"),
      publicKey,
      signingKey: privateKey,
      signatureAlgorithm: "rsa-sha256",
      extensions: [{ oid: "1.3.6.1.4.1.311.105.1", value: octetString(embedded) }],
    });
    // Put the embedded BEGIN line at a line start (this breaks the outer self-signature, which
    // the parser does not check; building it that way would have Node return the inner one).
    const der = Buffer.from(built.raw);
    der[der.indexOf("quote\x01") + 5] = 0x0a;
    expect(new X509Certificate(der).subject).toBe("CN=https://b.attest.example");
    const keys = parseCertsDocument({ keys: [{ kid: "k", kty: "RSA", x5c: [der.toString("base64")] }] });
    expect(keys.get("k")!.key.equals(publicKey)).toBe(true);
    expect(keys.get("k")!.certificate.subject).toBe("CN=https://maa.example");
    expect(keys.get("k")!.certificate.raw.equals(der)).toBe(true);
  });

  it.each([
    ["null", null],
    ["an array", []],
    ["no keys member", {}],
    ["keys not an array", { keys: {} }],
    ["an entry without x5c", { keys: [{ kid: "k", kty: "RSA", n: "AQAB", e: "AQAB" }] }],
    ["an empty x5c", { keys: [{ kid: "k", kty: "RSA", x5c: [] }] }],
    ["x5c not base64", { keys: [{ kid: "k", kty: "RSA", x5c: ["not base64!"] }] }],
    ["x5c base64 of something else", { keys: [{ kid: "k", kty: "RSA", x5c: ["AAAAAAAA"] }] }],
    ["an empty kid", { keys: [{ kid: "", kty: "RSA", x5c: ["AAAA"] }] }],
    ["a kid that is not a string", { keys: [{ kid: 1, kty: "RSA", x5c: ["AAAA"] }] }],
    ["text that is not JSON", "{keys:"],
  ])("rejects %s", (_name, document) => {
    expectMalformed(document);
  });

  it("rejects a certificate with trailing bytes", () => {
    const padded = Buffer.concat([Buffer.from(signer.x5c, "base64"), Buffer.from([0, 0])]).toString("base64");
    expectMalformed({ keys: [{ kid: "k", kty: "RSA", x5c: [padded] }] });
  });

  it("rejects a repeated kid", () => {
    expectMalformed({ keys: [...signer.certsDocument("k").keys, ...other.certsDocument("k").keys] });
  });

  it("rejects an RSA entry whose certificate key is EC", () => {
    const { publicKey, privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const cert = buildCertificate({
      subject: [["CN", "ec"]],
      issuer: [["CN", "ec"]],
      serialNumber: 1n,
      notBefore: new Date("2020-01-01T00:00:00Z"),
      notAfter: new Date("2040-01-01T00:00:00Z"),
      publicKey,
      signingKey: privateKey,
      signatureAlgorithm: "ecdsa-sha256",
    });
    expectMalformed({ keys: [{ kid: "k", kty: "RSA", x5c: [cert.raw.toString("base64")] }] });
  });

  it("rejects a certificate whose key does not decode (an EC point off the curve)", () => {
    const { publicKey, privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const spki = publicKey.export({ type: "spki", format: "der" });
    spki[spki.length - 1]! ^= 0x01;
    const cert = buildCertificate({
      subject: [["CN", "ec"]],
      issuer: [["CN", "ec"]],
      serialNumber: 1n,
      notBefore: new Date("2020-01-01T00:00:00Z"),
      notAfter: new Date("2040-01-01T00:00:00Z"),
      publicKey,
      subjectPublicKeyInfo: spki,
      signingKey: privateKey,
      signatureAlgorithm: "ecdsa-sha256",
    });
    // OpenSSL refuses the key (its ERR_OSSL_* code), not a certificate the builder got wrong.
    expect(() => cert.publicKey).toThrow(
      expect.objectContaining({ code: expect.stringMatching(/^ERR_OSSL_/) as string }) as Error,
    );
    expectMalformed({ keys: [{ kid: "k", kty: "RSA", x5c: [cert.raw.toString("base64")] }] });
  });

  it("enforces size limits on text and on parsed documents", () => {
    const text = JSON.stringify(signer.certsDocument());
    expectMalformed(text, { maxBytes: text.length - 1 });
    expect(parseCertsDocument(text, { maxBytes: text.length }).size).toBe(1);
    const many = {
      keys: Array.from({ length: 65 }, (_, i) => ({ ...signer.certsDocument().keys[0]!, kid: `k${i}` })),
    };
    expectMalformed(many);
    expectMalformed({ keys: [{ kid: "k", kty: "RSA", x5c: ["A".repeat(64 * 1024 + 4)] }] });
    expectMalformed({ keys: [{ kid: "k".repeat(257), kty: "RSA", x5c: [signer.x5c] }] });
  });
});
