import { X509Certificate, createHash, generateKeyPairSync } from "node:crypto";
import fc from "fast-check";
import { afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { ShieldError } from "../../../core/errors.js";
import {
  INTEL_SGX_ROOT_FINGERPRINTS,
  createSgxVerifier,
  intelRootsTrust,
  parseSgxQuote,
  spkiFingerprint,
  verifySgxEvidence,
  type SgxVerifier,
} from "../../../core/evidence/sgx/index.js";
import {
  SIMULATED_SGX_NAMES,
  createSimulatedSgxPlatform,
  type SimulatedSgxPlatform,
} from "../../../core/evidence/simulated/sgx.js";
import { buildCertificate, derToPem } from "../../../core/x509/certificate.js";
import {
  malformedSgxChain,
  offCurveP256Point,
  textForms,
  type MalformedSgxChain,
} from "../../support/malformed-evidence.js";

// Offsets in a bare quote (sgx_quote_3.h).
const ISV_REPORT_BODY = 48;
const QE_REPORT = 436 + 64 + 64;
const QE_AUTH_DATA = QE_REPORT + 384 + 64 + 2;

const at = new Date("2026-06-01T00:00:00Z");
const runtimeDataHash = createHash("sha256").update('{"keys":[]}').digest();
const fields = {
  mrEnclave: "11".repeat(32),
  mrSigner: "22".repeat(32),
  isvProdId: 4,
  isvSvn: 9,
  reportData: runtimeDataHash,
};

let platform: SimulatedSgxPlatform;
let otherPlatform: SimulatedSgxPlatform;
let shortLivedPlatform: SimulatedSgxPlatform;
let verifier: SgxVerifier;
let quote: Buffer;

beforeAll(() => {
  platform = createSimulatedSgxPlatform();
  otherPlatform = createSimulatedSgxPlatform();
  shortLivedPlatform = createSimulatedSgxPlatform({
    notBefore: new Date("2025-01-01T00:00:00Z"),
    pckNotAfter: new Date("2027-01-01T00:00:00Z"),
  });
  verifier = createSgxVerifier({ trustedRoots: [platform.rootCertificate] });
  quote = platform.generateQuote(fields);
});

afterEach(() => {
  vi.restoreAllMocks();
});

function failure(fn: () => unknown): ShieldError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ShieldError) return e;
    throw e;
  }
  throw new Error("expected a ShieldError");
}

function flipped(bytes: Buffer, offset: number): Buffer {
  const copy = Buffer.from(bytes);
  copy[offset]! ^= 0x01;
  return copy;
}

const p256 = () => generateKeyPairSync("ec", { namedCurve: "P-256" });

describe("SGX quote verifier: good quotes", () => {
  it("verifies a quote and returns its claims", () => {
    const { claims, quote: parsed } = verifier.verify({ quote, at });
    expect(claims).toEqual({
      quoteVersion: 3,
      mrEnclave: "11".repeat(32),
      mrSigner: "22".repeat(32),
      isvProdId: 4,
      isvSvn: 9,
      reportData: runtimeDataHash.toString("hex") + "00".repeat(32),
      debug: false,
      attributes: "05000000000000000700000000000000",
      cpuSvn: "02".repeat(16),
      miscSelect: 0,
      qeSvn: 8,
      pceSvn: 13,
    });
    expect(parsed.openEnclaveHeader).toBe(false);
  });

  it("verifies the same quote behind an Open Enclave header", () => {
    const withHeader = platform.generateQuote({ ...fields, debug: true }, { openEnclaveHeader: true });
    const { claims, quote: parsed } = verifier.verify({ quote: withHeader, at });
    expect(parsed.openEnclaveHeader).toBe(true);
    expect(claims.mrEnclave).toBe("11".repeat(32));
    expect(claims.debug).toBe(true);
    expect(claims.attributes).toBe("07000000000000000700000000000000");
  });

  it("accepts a quote parsed beforehand, but not a hand-built one", () => {
    const parsed = parseSgxQuote(quote);
    expect(verifier.verify({ quote: parsed, at }).claims.isvSvn).toBe(9);
    expect(() => verifier.verify({ quote: { ...parsed }, at })).toThrow(TypeError);
  });

  it("trusts roots named by SPKI SHA-256 fingerprint", () => {
    const fingerprint = spkiFingerprint(platform.rootCertificate)
      .toUpperCase()
      .replace(/(..)(?!$)/g, "$1:");
    const byFingerprint = createSgxVerifier({ trustedRoots: [fingerprint] });
    expect(byFingerprint.verify({ quote, at }).claims.isvProdId).toBe(4);
  });

  it("verifies in one call with verifySgxEvidence", () => {
    const result = verifySgxEvidence(quote, {
      trustedRoots: [platform.rootCertificate],
      at,
      expectedReportData: runtimeDataHash,
    });
    expect(result.claims.mrSigner).toBe("22".repeat(32));
  });

  it("takes the PCK chain from the caller when the quote does not carry one", () => {
    const ppid = platform.generateQuote(fields, {
      certificationData: { type: 1, data: Buffer.alloc(36, 1) },
    });
    expect(failure(() => verifier.verify({ quote: ppid, at })).code).toBe("ERR_EVIDENCE_UNSUPPORTED");
    const result = verifier.verify({ quote: ppid, at, pckChain: platform.pckChain });
    expect(result.claims.mrEnclave).toBe("11".repeat(32));
    // The caller's chain is held to the same checks.
    expect(failure(() => verifier.verify({ quote: ppid, at, pckChain: otherPlatform.pckChain })).code).toBe(
      "ERR_EVIDENCE_UNTRUSTED_ROOT",
    );
  });

  it("rejects a caller's chain holding a certificate whose key does not decode", () => {
    const der = Buffer.from(platform.rootCertificate.raw);
    const spki = platform.rootCertificate.publicKey.export({ type: "spki", format: "der" });
    der[der.indexOf(spki) + spki.length - 1]! ^= 0x01;
    const chain = [platform.pckChain[0]!, platform.pckChain[1]!, new X509Certificate(der)];
    expect(failure(() => verifier.verify({ quote, at, pckChain: chain })).code).toBe("ERR_EVIDENCE_CHAIN");
  });

  it("pins the production Intel SGX root, not simulated ones", () => {
    expect(INTEL_SGX_ROOT_FINGERPRINTS).toEqual([
      "a0af031289f5d5d4132f9186068a7fc13628633ba235777472e29b6b6c67a49e",
    ]);
    const intel = createSgxVerifier({ trustedRoots: intelRootsTrust() });
    expect(failure(() => intel.verify({ quote, at })).code).toBe("ERR_EVIDENCE_UNTRUSTED_ROOT");
  });
});

describe("SGX quote verifier: each check failing alone", () => {
  it("1. parse: wrong version, wrong key type, truncation", () => {
    const version = Buffer.from(quote);
    version.writeUInt16LE(4, 0);
    expect(failure(() => verifier.verify({ quote: version, at })).code).toBe("ERR_EVIDENCE_VERSION");
    const keyType = Buffer.from(quote);
    keyType.writeUInt16LE(3, 2);
    expect(failure(() => verifier.verify({ quote: keyType, at })).code).toBe("ERR_EVIDENCE_UNSUPPORTED");
    expect(failure(() => verifier.verify({ quote: quote.subarray(0, 1000), at })).code).toBe(
      "ERR_EVIDENCE_MALFORMED",
    );
  });

  it("2. chain: root not trusted", () => {
    const foreign = otherPlatform.generateQuote(fields);
    const error = failure(() => verifier.verify({ quote: foreign, at }));
    expect(error.code).toBe("ERR_EVIDENCE_UNTRUSTED_ROOT");
    expect(error.violations[0]?.actual).toBe(spkiFingerprint(otherPlatform.rootCertificate));
  });

  it("2. chain: PCK Platform CA signed by another key", () => {
    const [pck, platformCa, root] = platform.pckChain;
    const intruder = p256();
    const forgedCa = buildCertificate({
      subject: SIMULATED_SGX_NAMES.platformCa,
      issuer: SIMULATED_SGX_NAMES.root,
      serialNumber: 77n,
      notBefore: new Date("2020-01-01T00:00:00Z"),
      notAfter: new Date("2049-12-31T23:59:59Z"),
      publicKey: platformCa!.publicKey,
      signingKey: intruder.privateKey,
      signatureAlgorithm: "ecdsa-sha256",
      isCa: true,
    });
    const bad = platform.generateQuote(fields, { pckChain: [pck!, forgedCa, root!] });
    const error = failure(() => verifier.verify({ quote: bad, at }));
    expect(error.code).toBe("ERR_EVIDENCE_CHAIN");
    expect(error.message).toMatch(/not signed by the root/);
  });

  it("2. chain: PCK leaf signed by another key", () => {
    const [pck, platformCa, root] = platform.pckChain;
    const forgedPck = buildCertificate({
      subject: SIMULATED_SGX_NAMES.pck,
      issuer: SIMULATED_SGX_NAMES.platformCa,
      serialNumber: 78n,
      notBefore: new Date("2020-01-01T00:00:00Z"),
      notAfter: new Date("2049-12-31T23:59:59Z"),
      publicKey: pck!.publicKey,
      signingKey: p256().privateKey,
      signatureAlgorithm: "ecdsa-sha256",
    });
    const bad = platform.generateQuote(fields, { pckChain: [forgedPck, platformCa!, root!] });
    expect(failure(() => verifier.verify({ quote: bad, at })).message).toMatch(/not signed by the PCK CA/);
  });

  it("2. chain: trusted root key in a certificate it did not sign itself", () => {
    const [pck, platformCa, root] = platform.pckChain;
    const notSelfSigned = buildCertificate({
      subject: SIMULATED_SGX_NAMES.root,
      issuer: SIMULATED_SGX_NAMES.root,
      serialNumber: 79n,
      notBefore: new Date("2020-01-01T00:00:00Z"),
      notAfter: new Date("2049-12-31T23:59:59Z"),
      publicKey: root!.publicKey,
      signingKey: p256().privateKey,
      signatureAlgorithm: "ecdsa-sha256",
      isCa: true,
    });
    const bad = platform.generateQuote(fields, { pckChain: [pck!, platformCa!, notSelfSigned] });
    const error = failure(() => verifier.verify({ quote: bad, at }));
    expect(error.code).toBe("ERR_EVIDENCE_CHAIN");
    expect(error.message).toMatch(/self-signed/);
  });

  it("2. chain: wrong number of certificates", () => {
    const [pck, platformCa] = platform.pckChain;
    const bad = platform.generateQuote(fields, { pckChain: [pck!, platformCa!] });
    expect(failure(() => verifier.verify({ quote: bad, at })).code).toBe("ERR_EVIDENCE_CHAIN");
  });

  it("3. validity: PCK expired at a later time, and not yet valid before", () => {
    const shortLived = createSgxVerifier({ trustedRoots: [shortLivedPlatform.rootCertificate] });
    const q = shortLivedPlatform.generateQuote(fields);
    expect(shortLived.verify({ quote: q, at }).claims.isvSvn).toBe(9);
    const later = new Date("2027-06-01T00:00:00Z");
    const expired = failure(() => shortLived.verify({ quote: q, at: later }));
    expect(expired.code).toBe("ERR_EVIDENCE_CERT_EXPIRED");
    expect(expired.violations).toEqual([
      {
        field: "pckCertificate.validity",
        expected: expect.stringContaining("2027-01-01") as string,
        actual: later.toISOString(),
      },
    ]);
    const early = failure(() => shortLived.verify({ quote: q, at: new Date("2024-01-01T00:00:00Z") }));
    expect(early.code).toBe("ERR_EVIDENCE_CERT_EXPIRED");
    expect(early.violations.map((v) => v.field)).toEqual([
      "pckCertificate.validity",
      "pckCaCertificate.validity",
      "rootCertificate.validity",
    ]);
  });

  it("4. QE report signature: one flipped byte in the QE report", () => {
    const bad = flipped(quote, QE_REPORT + 64); // QE MRENCLAVE, outside its REPORT_DATA
    const error = failure(() => verifier.verify({ quote: bad, at }));
    expect(error.code).toBe("ERR_EVIDENCE_SIGNATURE");
    expect(error.message).toMatch(/QE report/);
  });

  it("5. binding: QE authentication data that the QE report does not bind", () => {
    const bad = flipped(quote, QE_AUTH_DATA + 5);
    expect(failure(() => verifier.verify({ quote: bad, at })).code).toBe("ERR_EVIDENCE_BINDING");
  });

  it("6. quote signature: one flipped byte in the ISV report body or the header", () => {
    for (const offset of [ISV_REPORT_BODY + 64, ISV_REPORT_BODY + 320, 8]) {
      const error = failure(() => verifier.verify({ quote: flipped(quote, offset), at }));
      expect(error.code).toBe("ERR_EVIDENCE_SIGNATURE");
      expect(error.message).toMatch(/quote signature/);
    }
    const withHeader = platform.generateQuote(fields, { openEnclaveHeader: true });
    expect(
      failure(() => verifier.verify({ quote: flipped(withHeader, 16 + ISV_REPORT_BODY + 1), at })).code,
    ).toBe("ERR_EVIDENCE_SIGNATURE");
  });

  it("7. report data: 32- and 64-byte expectations", () => {
    expect(verifier.verify({ quote, at, expectedReportData: runtimeDataHash }).claims.isvSvn).toBe(9);
    const full = Buffer.concat([runtimeDataHash, Buffer.alloc(32)]);
    expect(verifier.verify({ quote, at, expectedReportData: full }).claims.isvSvn).toBe(9);
    const wrong = flipped(runtimeDataHash, 0);
    const error = failure(() => verifier.verify({ quote, at, expectedReportData: wrong }));
    expect(error.code).toBe("ERR_EVIDENCE_REPORT_DATA");
    expect(error.violations[0]).toEqual({
      field: "reportData[0..32]",
      expected: wrong.toString("hex"),
      actual: runtimeDataHash.toString("hex"),
    });
    const wrongTail = Buffer.concat([runtimeDataHash, Buffer.alloc(32, 1)]);
    expect(failure(() => verifier.verify({ quote, at, expectedReportData: wrongTail })).code).toBe(
      "ERR_EVIDENCE_REPORT_DATA",
    );
  });
});

describe("SGX quote verifier: chain cache", () => {
  it("verifies a platform's chain once, still judges validity each time, and never caches failures", () => {
    const cached = createSgxVerifier({ trustedRoots: [shortLivedPlatform.rootCertificate] });
    const chainVerify = vi.spyOn(X509Certificate.prototype, "verify");
    const q1 = shortLivedPlatform.generateQuote({ isvSvn: 1 });
    const q2 = shortLivedPlatform.generateQuote({ isvSvn: 2 });
    cached.verify({ quote: q1, at });
    const afterFirst = chainVerify.mock.calls.length;
    expect(afterFirst).toBe(3);
    cached.verify({ quote: q2, at });
    expect(chainVerify.mock.calls.length).toBe(afterFirst);
    expect(failure(() => cached.verify({ quote: q2, at: new Date("2028-01-01T00:00:00Z") })).code).toBe(
      "ERR_EVIDENCE_CERT_EXPIRED",
    );

    const foreign = otherPlatform.generateQuote({});
    expect(failure(() => cached.verify({ quote: foreign, at })).code).toBe("ERR_EVIDENCE_UNTRUSTED_ROOT");
    expect(failure(() => cached.verify({ quote: foreign, at })).code).toBe("ERR_EVIDENCE_UNTRUSTED_ROOT");
  });

  it("re-verifies every time when the cache is off", () => {
    const uncached = createSgxVerifier({ trustedRoots: [platform.rootCertificate], chainCacheSize: 0 });
    const chainVerify = vi.spyOn(X509Certificate.prototype, "verify");
    uncached.verify({ quote, at });
    uncached.verify({ quote, at });
    expect(chainVerify.mock.calls.length).toBe(6);
  });
});

describe("SGX quote verifier: robustness and misuse", () => {
  it("either rejects a corrupted quote with a ShieldError or reads the same claims from it", () => {
    const original = verifier.verify({ quote, at }).claims;
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat({ max: quote.length - 1 }), fc.integer({ min: 0, max: 255 })), {
          minLength: 1,
          maxLength: 3,
        }),
        (edits) => {
          const bad = Buffer.from(quote);
          for (const [offset, value] of edits) bad[offset] = value;
          try {
            // Only unsigned formatting (PEM whitespace) may change and still verify.
            expect(verifier.verify({ quote: bad, at }).claims).toEqual(original);
          } catch (e) {
            expect(e).toBeInstanceOf(ShieldError);
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it("rejects a quote truncated anywhere with a ShieldError", () => {
    for (let length = 0; length < quote.length; length += 7) {
      expect(failure(() => verifier.verify({ quote: quote.subarray(0, length), at }))).toBeInstanceOf(
        ShieldError,
      );
    }
  });

  it("treats bad arguments as caller misuse", () => {
    expect(() => createSgxVerifier({ trustedRoots: [] })).toThrow(TypeError);
    expect(() => createSgxVerifier({ trustedRoots: ["abcd"] })).toThrow(TypeError);
    expect(() => createSgxVerifier({ trustedRoots: [platform.rootCertificate], chainCacheSize: -1 })).toThrow(
      TypeError,
    );
    expect(() => verifier.verify({ quote, at: new Date("nope") })).toThrow(TypeError);
    expect(() => verifier.verify({ quote, at, expectedReportData: Buffer.alloc(16) })).toThrow(TypeError);
  });

  it("never puts evidence bytes in error messages", () => {
    const error = failure(() => verifier.verify({ quote: flipped(quote, ISV_REPORT_BODY + 64), at }));
    const signature = quote.subarray(436, 500).toString("hex");
    expect(JSON.stringify(error.toJSON())).not.toContain(signature.slice(0, 16));
  });
});

describe("SGX quote verifier: certificates and keys that do not decode", () => {
  let bad: MalformedSgxChain;

  beforeAll(() => {
    bad = malformedSgxChain();
  });

  /** Typed, terminal, and free of the key's bytes. */
  function expectRefusal(
    fn: () => unknown,
    code: "ERR_EVIDENCE_CHAIN" | "ERR_EVIDENCE_MALFORMED",
    point: Buffer,
  ) {
    const error = failure(fn);
    expect(error.code).toBe(code);
    expect(error.transient).toBe(false);
    const text = `${error.message} ${JSON.stringify(error.toJSON())}`;
    for (const form of textForms(point.subarray(0, 16))) expect(text).not.toContain(form);
  }

  it("refuses a PCK certificate whose key is a P-256 point off the curve, in the quote or from the caller", () => {
    expect(bad.pckChain[0]!.verify(bad.pckChain[1]!.publicKey)).toBe(true); // only the key is wrong
    const trusting = createSgxVerifier({ trustedRoots: [bad.root] });
    const embedded = platform.generateQuote(fields, { pckChain: bad.pckChain });
    expectRefusal(() => trusting.verify({ quote: embedded, at }), "ERR_EVIDENCE_CHAIN", bad.point);
    expectRefusal(
      () => verifySgxEvidence(embedded, { trustedRoots: [bad.root], at }),
      "ERR_EVIDENCE_CHAIN",
      bad.point,
    );
    const ppid = platform.generateQuote(fields, {
      certificationData: { type: 1, data: Buffer.alloc(36, 1) },
    });
    expectRefusal(
      () => trusting.verify({ quote: ppid, at, pckChain: bad.pckChain }),
      "ERR_EVIDENCE_CHAIN",
      bad.point,
    );
  });

  it("refuses a garbage or truncated certificate in the quote's PCK chain", () => {
    const [pck, ca, root] = platform.pckChain.map((c) => c.raw);
    for (const pem of [
      derToPem(pck!) + "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n" + derToPem(root!),
      derToPem(pck!) + derToPem(ca!.subarray(0, ca!.length - 1)) + derToPem(root!),
    ]) {
      const quote = platform.generateQuote(fields, {
        certificationData: { type: 5, data: Buffer.from(pem) },
      });
      expect(failure(() => verifier.verify({ quote, at })).code).toBe("ERR_EVIDENCE_CHAIN");
    }
  });

  it("refuses an attestation key that is not a point on P-256, even when the QE report certifies it", () => {
    const point = offCurveP256Point();
    const quote = platform.generateQuote(fields, { attestationKey: point });
    // The QE report binds exactly these bytes, so only the key's decoding can refuse it.
    const qeReportData = quote.subarray(QE_REPORT + 320, QE_REPORT + 352);
    const authData = quote.subarray(QE_AUTH_DATA, QE_AUTH_DATA + 32);
    expect(qeReportData).toEqual(createHash("sha256").update(point).update(authData).digest());
    expect(quote.subarray(500, 564)).toEqual(point);
    expectRefusal(() => parseSgxQuote(quote), "ERR_EVIDENCE_MALFORMED", point);
    expectRefusal(() => verifier.verify({ quote, at }), "ERR_EVIDENCE_MALFORMED", point);
  });
});
