import { createHash } from "node:crypto";
import { beforeAll, describe, expect, it } from "vitest";
import { decodeJwt, decodeProtectedHeader } from "jose";
import {
  createLocalAttestationEngine,
  type LocalAttestationEngine,
  type LocalAttestationEngineOptions,
} from "../../../adapters/local/maa/engine.js";
import { ShieldError, type ShieldErrorCode } from "../../../core/errors.js";
import { amdRootsTrust, buildMaaSnpEnvelope } from "../../../core/evidence/sevsnp/index.js";
import { intelRootsTrust } from "../../../core/evidence/sgx/index.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
  type SimulatedSnpReportFields,
} from "../../../core/evidence/simulated/sevsnp.js";
import {
  createSimulatedSgxPlatform,
  type SimulatedSgxPlatform,
} from "../../../core/evidence/simulated/sgx.js";
import { fixedClock } from "../../../core/ports/clock.js";
import { createMaaTokenIssuer, type MaaTokenIssuer } from "../../../core/token/index.js";
import { derToPem } from "../../../core/x509/certificate.js";
import {
  malformedSgxChain,
  malformedSnpChain,
  offCurveP256Point,
  type MalformedSgxChain,
  type MalformedSnpChain,
} from "../../support/malformed-evidence.js";

const AT = new Date("2026-03-01T00:00:00Z");
const sha256 = (data: Uint8Array | string): Buffer => createHash("sha256").update(data).digest();
const runtimeData = Buffer.from(
  '{"keys":[{"kid":"k","kty":"RSA","e":"AQAB","n":"AQAB","key_ops":["encrypt"]}]}',
);

let issuer: MaaTokenIssuer;
let snp: SimulatedSnpPlatform;
let otherSnp: SimulatedSnpPlatform;
let sgx: SimulatedSgxPlatform;
let engine: LocalAttestationEngine;

beforeAll(async () => {
  issuer = await createMaaTokenIssuer({ issuer: "http://127.0.0.1:9000" });
  snp = createSimulatedSnpPlatform({ rsaBits: 2048 });
  otherSnp = createSimulatedSnpPlatform({ rsaBits: 2048 });
  sgx = createSimulatedSgxPlatform();
  engine = build();
});

function build(overrides: Partial<LocalAttestationEngineOptions> = {}): LocalAttestationEngine {
  return createLocalAttestationEngine({
    issuer,
    snpTrustedRoots: [snp.ark, otherSnp.ark],
    sgxTrustedRoots: [sgx.rootCertificate],
    clock: fixedClock(AT),
    ...overrides,
  });
}

function envelope(fields: SimulatedSnpReportFields = {}, platform = snp): string {
  const report = platform.signReport({ reportData: sha256(runtimeData), ...fields });
  return buildMaaSnpEnvelope({ report, vcek: platform.leaf, chain: platform.chainPem });
}

async function refusal(promise: Promise<unknown>, code: ShieldErrorCode): Promise<ShieldError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ShieldError);
  expect((error as ShieldError).code).toBe(code);
  expect((error as ShieldError).transient).toBe(false);
  return error as ShieldError;
}

describe("local attestation engine: SEV-SNP", () => {
  it("issues an MAA token: RS256, MAA header, 8-hour lifetime from the clock, nonce echoed", async () => {
    const measured = {
      measurement: Buffer.alloc(48, 0xa7),
      hostData: sha256("workload policy"),
      guestSvn: 7,
      vmpl: 0,
    };
    const token = await engine.attestSevSnp({ report: envelope(measured), runtimeData, nonce: "n-1" });
    expect(decodeProtectedHeader(token)).toEqual({
      alg: "RS256",
      jku: "http://127.0.0.1:9000/certs",
      kid: issuer.kid,
      typ: "JWT",
    });
    const claims = decodeJwt(token);
    expect(claims).toMatchObject({
      iss: "http://127.0.0.1:9000",
      iat: AT.getTime() / 1000,
      nbf: AT.getTime() / 1000,
      exp: AT.getTime() / 1000 + 28800,
      nonce: "n-1",
      "x-ms-attestation-type": "sevsnpvm",
      "x-ms-runtime": JSON.parse(runtimeData.toString()) as unknown,
      // What the report says, as MAA writes it: lowercase hex, numbers as numbers.
      "x-ms-sevsnpvm-launchmeasurement": measured.measurement.toString("hex"),
      "x-ms-sevsnpvm-hostdata": measured.hostData.toString("hex"),
      "x-ms-sevsnpvm-reportdata": Buffer.concat([sha256(runtimeData), Buffer.alloc(32)]).toString("hex"),
      "x-ms-sevsnpvm-guestsvn": 7,
      "x-ms-sevsnpvm-vmpl": 0,
      "x-ms-sevsnpvm-is-debuggable": false,
    });
    expect(Object.hasOwn(claims, "x-ms-compliance-status")).toBe(false);
  });

  it("reads runtime data without a dataType as JSON", async () => {
    const claims = decodeJwt(await engine.attestSevSnp({ report: envelope(), runtimeData }));
    expect(claims["x-ms-runtime"]).toEqual(JSON.parse(runtimeData.toString()));
  });

  it("adds x-ms-compliance-status when configured, as ACI's MAA does", async () => {
    const aci = build({ complianceStatus: "azure-compliant-uvm" });
    const claims = decodeJwt(await aci.attestSevSnp({ report: envelope(), runtimeData }));
    expect(claims["x-ms-compliance-status"]).toBe("azure-compliant-uvm");
  });

  it("does not interpret Binary runtime data", async () => {
    const binary = Buffer.from([0xff, 0x00, 0x7b]);
    const claims = decodeJwt(
      await engine.attestSevSnp({
        report: envelope({ reportData: sha256(binary) }),
        runtimeData: binary,
        runtimeDataType: "Binary",
      }),
    );
    expect(Object.hasOwn(claims, "x-ms-runtime")).toBe(false);
  });

  it("step 1: refuses an envelope that is not one, or too large", async () => {
    await refusal(engine.attestSevSnp({ report: "%%%", runtimeData }), "ERR_EVIDENCE_MALFORMED");
    await refusal(
      engine.attestSevSnp({ report: "A".repeat(600 * 1024), runtimeData }),
      "ERR_INPUT_TOO_LARGE",
    );
  });

  it("step 2: refuses JSON runtime data that is not a UTF-8 JSON object", async () => {
    const bom = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), runtimeData]);
    for (const bad of [
      Buffer.from("[1,2]"),
      Buffer.from("nope"),
      Buffer.from([0x7b, 0xff, 0x7d]),
      bom,
      Buffer.from(JSON.stringify(runtimeData.toString())),
      Buffer.from("null"),
      Buffer.from("7"),
    ]) {
      await refusal(
        engine.attestSevSnp({
          report: envelope({ reportData: sha256(bad) }),
          runtimeData: bad,
          runtimeDataType: "JSON",
        }),
        "ERR_INPUT_MALFORMED",
      );
    }
  });

  it("step 2: also refuses a byte-order mark in JSON initTimeData", async () => {
    const initTime = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{"policy":"p"}')]);
    const error = await refusal(
      engine.attestSevSnp({
        report: envelope({ hostData: sha256(initTime) }),
        runtimeData,
        initTimeData: initTime,
        initTimeDataType: "JSON",
      }),
      "ERR_INPUT_MALFORMED",
    );
    expect(error.message).toContain("byte-order mark");
  });

  it("step 3: refuses a root it was not given — AMD's roots never admit simulated evidence", async () => {
    await refusal(
      build({ snpTrustedRoots: [snp.ark] }).attestSevSnp({ report: envelope({}, otherSnp), runtimeData }),
      "ERR_EVIDENCE_UNTRUSTED_ROOT",
    );
    await refusal(
      build({ snpTrustedRoots: amdRootsTrust() }).attestSevSnp({ report: envelope(), runtimeData }),
      "ERR_EVIDENCE_UNTRUSTED_ROOT",
    );
    await refusal(
      build({ snpTrustedRoots: [] }).attestSevSnp({ report: envelope(), runtimeData }),
      "ERR_EVIDENCE_UNTRUSTED_ROOT",
    );
  });

  it("step 3: refuses a VCEK that the chain's ASK did not sign", async () => {
    const report = snp.signReport({ reportData: sha256(runtimeData) });
    const mixed = buildMaaSnpEnvelope({ report, vcek: snp.leaf, chain: otherSnp.chainPem });
    await refusal(engine.attestSevSnp({ report: mixed, runtimeData }), "ERR_EVIDENCE_CHAIN");
  });

  it("step 3: judges certificate validity at the clock's time", async () => {
    const late = build({ clock: fixedClock(new Date("2051-01-01T00:00:00Z")) });
    await refusal(late.attestSevSnp({ report: envelope(), runtimeData }), "ERR_EVIDENCE_CERT_EXPIRED");
  });

  it("step 3: refuses a report signed by another VCEK", async () => {
    const report = otherSnp.signReport({ reportData: sha256(runtimeData), chipId: snp.chipId });
    const forged = buildMaaSnpEnvelope({ report, vcek: snp.leaf, chain: snp.chainPem });
    await refusal(engine.attestSevSnp({ report: forged, runtimeData }), "ERR_EVIDENCE_SIGNATURE");
  });

  it("step 3: refuses a REPORTED_TCB or CHIP_ID the VCEK was not issued for", async () => {
    await refusal(
      engine.attestSevSnp({
        report: envelope({ reportedTcb: { bootloader: 3, tee: 0, snp: 9, microcode: 115 } }),
        runtimeData,
      }),
      "ERR_EVIDENCE_TCB_MISMATCH",
    );
    await refusal(
      engine.attestSevSnp({ report: envelope({ chipId: Buffer.alloc(64, 7) }), runtimeData }),
      "ERR_EVIDENCE_CHIP_MISMATCH",
    );
  });

  it("step 3: refuses REPORT_DATA that is not sha256(runtime data) then 32 zero bytes", async () => {
    const error = await refusal(
      engine.attestSevSnp({ report: envelope(), runtimeData: Buffer.from("{}") }),
      "ERR_EVIDENCE_REPORT_DATA",
    );
    expect(error.violations[0]?.field).toBe("reportData");
    await refusal(
      engine.attestSevSnp({ report: envelope({ reportData: Buffer.alloc(64) }), runtimeData }),
      "ERR_EVIDENCE_REPORT_DATA",
    );
  });

  it("step 4: binds init-time data to HOST_DATA and reports JSON init-time data", async () => {
    const initTimeData = Buffer.from('{"policy":"allow_all"}');
    const token = await engine.attestSevSnp({
      report: envelope({ hostData: sha256(initTimeData) }),
      runtimeData,
      initTimeData,
      initTimeDataType: "JSON",
    });
    expect(decodeJwt(token)["x-ms-inittime"]).toEqual({ policy: "allow_all" });
    const error = await refusal(
      engine.attestSevSnp({ report: envelope(), runtimeData, initTimeData, initTimeDataType: "Binary" }),
      "ERR_EVIDENCE_BINDING",
    );
    expect(error.violations).toEqual([
      { field: "hostData", expected: sha256(initTimeData).toString("hex"), actual: "00".repeat(32) },
    ]);
  });

  it("step 5: attests a debuggable guest unless allowDebug is false", async () => {
    const claims = decodeJwt(await engine.attestSevSnp({ report: envelope({ debug: true }), runtimeData }));
    expect(claims["x-ms-sevsnpvm-is-debuggable"]).toBe(true);
    const strict = build({ allowDebug: false });
    const error = await refusal(
      strict.attestSevSnp({ report: envelope({ debug: true }), runtimeData }),
      "ERR_POLICY_DENIED",
    );
    expect(error.violations).toEqual([
      { field: "x-ms-sevsnpvm-is-debuggable", expected: "false", actual: "true" },
    ]);
    const notDebuggable = decodeJwt(await strict.attestSevSnp({ report: envelope(), runtimeData }));
    expect(notDebuggable["x-ms-sevsnpvm-is-debuggable"]).toBe(false);
  });

  it("refuses caller misuse with TypeError", async () => {
    await expect(
      engine.attestSevSnp({ report: envelope(), runtimeData: "x" as unknown as Uint8Array }),
    ).rejects.toThrow(TypeError);
    await expect(
      engine.attestSevSnp({ report: envelope(), runtimeData, nonce: 5 as unknown as string }),
    ).rejects.toThrow(TypeError);
    await expect(
      engine.attestSevSnp({ report: envelope(), runtimeData, runtimeDataType: "Text" as unknown as "JSON" }),
    ).rejects.toThrow(TypeError);
    expect(() => build({ clock: undefined as unknown as LocalAttestationEngineOptions["clock"] })).toThrow(
      TypeError,
    );
    expect(() => build({ issuer: {} as MaaTokenIssuer })).toThrow(TypeError);
  });
});

describe("local attestation engine: SGX", () => {
  const quote = (fields: Parameters<SimulatedSgxPlatform["generateQuote"]>[0] = {}) =>
    sgx.generateQuote({ reportData: sha256(runtimeData), ...fields });

  it("issues MAA's SGX claims, checking only the first 32 bytes of REPORT_DATA", async () => {
    const reportData = Buffer.concat([sha256(runtimeData), Buffer.alloc(32, 0x5a)]);
    const mrEnclave = sha256("enclave image");
    const mrSigner = sha256("enclave signer");
    const claims = decodeJwt(
      await engine.attestSgx({
        quote: quote({ reportData, mrEnclave, mrSigner, isvProdId: 3, isvSvn: 9 }),
        runtimeData,
        nonce: "s-1",
      }),
    );
    expect(claims).toMatchObject({
      nonce: "s-1",
      "x-ms-attestation-type": "sgx",
      "x-ms-sgx-mrenclave": mrEnclave.toString("hex"),
      "x-ms-sgx-mrsigner": mrSigner.toString("hex"),
      "x-ms-sgx-product-id": 3,
      "x-ms-sgx-svn": 9,
      "x-ms-sgx-is-debuggable": false,
      "x-ms-sgx-report-data": reportData.toString("hex"),
      "x-ms-sgx-ehd": runtimeData.toString("base64url"),
    });
  });

  it("accepts a quote behind an Open Enclave header", async () => {
    const mrEnclave = sha256("enclave behind a header");
    const withHeader = sgx.generateQuote(
      { reportData: sha256(runtimeData), mrEnclave },
      { openEnclaveHeader: true },
    );
    const claims = decodeJwt(await engine.attestSgx({ quote: withHeader, runtimeData }));
    // The claims are the quote's behind the 16-byte header, not bytes shifted by it.
    expect(claims).toMatchObject({
      "x-ms-attestation-type": "sgx",
      "x-ms-sgx-mrenclave": mrEnclave.toString("hex"),
      "x-ms-sgx-report-data": Buffer.concat([sha256(runtimeData), Buffer.alloc(32)]).toString("hex"),
    });
  });

  it("refuses untrusted roots, expired chains, bad signatures and other runtime data", async () => {
    await refusal(
      build({ sgxTrustedRoots: intelRootsTrust() }).attestSgx({ quote: quote(), runtimeData }),
      "ERR_EVIDENCE_UNTRUSTED_ROOT",
    );
    await refusal(
      build({ sgxTrustedRoots: [] }).attestSgx({ quote: quote(), runtimeData }),
      "ERR_EVIDENCE_UNTRUSTED_ROOT",
    );
    await refusal(
      build({ clock: fixedClock(new Date("2051-01-01T00:00:00Z")) }).attestSgx({
        quote: quote(),
        runtimeData,
      }),
      "ERR_EVIDENCE_CERT_EXPIRED",
    );
    const tampered = quote();
    tampered[48 + 128] = tampered[48 + 128]! ^ 0x01; // MRSIGNER
    await refusal(engine.attestSgx({ quote: tampered, runtimeData }), "ERR_EVIDENCE_SIGNATURE");
    await refusal(
      engine.attestSgx({ quote: quote(), runtimeData: Buffer.from("{}") }),
      "ERR_EVIDENCE_REPORT_DATA",
    );
    await refusal(engine.attestSgx({ quote: Buffer.alloc(10), runtimeData }), "ERR_EVIDENCE_MALFORMED");
  });

  it("attests a debug enclave unless allowDebug is false", async () => {
    expect(
      decodeJwt(await engine.attestSgx({ quote: quote({ debug: true }), runtimeData }))[
        "x-ms-sgx-is-debuggable"
      ],
    ).toBe(true);
    await refusal(
      build({ allowDebug: false }).attestSgx({ quote: quote({ debug: true }), runtimeData }),
      "ERR_POLICY_DENIED",
    );
  });

  it("refuses a quote that is not bytes with TypeError", async () => {
    await expect(engine.attestSgx({ quote: "q" as unknown as Uint8Array, runtimeData })).rejects.toThrow(
      TypeError,
    );
  });
});

describe("local attestation engine: signing keys", () => {
  it("serves the issuer's /certs document and OpenID metadata", async () => {
    expect(await engine.getSigningCertificates()).toEqual(issuer.certsDocument());
    expect(engine.openIdConfiguration()).toEqual(issuer.openIdConfiguration());
    expect(engine.issuer).toBe("http://127.0.0.1:9000");
  });
});

describe("local attestation engine: certificates and keys that do not decode", () => {
  let badSnp: MalformedSnpChain;
  let badSgx: MalformedSgxChain;
  let trusting: LocalAttestationEngine;

  beforeAll(() => {
    badSnp = malformedSnpChain();
    badSgx = malformedSgxChain();
    // Trusting the malformed chains' roots, so refusals come from the certificates themselves.
    trusting = build({
      snpTrustedRoots: [snp.ark, badSnp.ark],
      sgxTrustedRoots: [sgx.rootCertificate, badSgx.root],
    });
  });

  const report = () => snp.signReport({ reportData: sha256(runtimeData) });

  it("refuses a VCEK whose key is a P-384 point off the curve, and an ASK whose key does not decode", async () => {
    for (const [vcek, chain] of [
      [badSnp.offCurveVcek, [badSnp.ask, badSnp.ark]],
      [badSnp.vcek, [badSnp.offCurveAsk, badSnp.ark]],
    ] as const) {
      const envelope = buildMaaSnpEnvelope({ report: report(), vcek, chain });
      await refusal(trusting.attestSevSnp({ report: envelope, runtimeData }), "ERR_EVIDENCE_CHAIN");
    }
  });

  it("refuses a garbage or truncated certificate in the chain", async () => {
    const ask = snp.intermediate.raw;
    for (const chain of [
      "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
      derToPem(ask.subarray(0, ask.length - 1)) + derToPem(snp.ark.raw),
    ]) {
      const envelope = buildMaaSnpEnvelope({ report: report(), vcek: snp.leafPem, chain });
      await refusal(trusting.attestSevSnp({ report: envelope, runtimeData }), "ERR_EVIDENCE_CHAIN");
    }
  });

  it("refuses an SGX PCK certificate with a bad key, and an attestation key off the curve", async () => {
    const fields = { reportData: sha256(runtimeData) };
    const badPck = sgx.generateQuote(fields, { pckChain: badSgx.pckChain });
    await refusal(trusting.attestSgx({ quote: badPck, runtimeData }), "ERR_EVIDENCE_CHAIN");
    const badKey = sgx.generateQuote(fields, { attestationKey: offCurveP256Point() });
    await refusal(trusting.attestSgx({ quote: badKey, runtimeData }), "ERR_EVIDENCE_MALFORMED");
  });
});
