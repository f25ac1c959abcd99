/**
 * The AttestationService contract: every adapter (the local engine in-process, the Azure MAA
 * client over HTTP) must pass these tests unchanged. Evidence comes from simulated TEEs whose
 * roots the adapter under test is told to trust; a second pair of simulated TEEs is never
 * trusted. Tokens are judged with the trust core's validator and the adapter's own `/certs`.
 */
import { createHash, generateKeyPairSync } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ShieldError, type ShieldErrorCode } from "../../core/errors.js";
import { buildMaaSnpEnvelope, type SnpTrustedRoots } from "../../core/evidence/sevsnp/index.js";
import type { SgxTrustedRoots } from "../../core/evidence/sgx/index.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
  type SimulatedSnpReportFields,
} from "../../core/evidence/simulated/sevsnp.js";
import {
  createSimulatedSgxPlatform,
  type SimulatedSgxPlatform,
  type SimulatedSgxQuoteFields,
} from "../../core/evidence/simulated/sgx.js";
import type { AttestationService } from "../../core/ports/attestation.js";
import { fixedClock, type Clock } from "../../core/ports/clock.js";
import {
  staticSigningKeys,
  validateMaaToken,
  type MaaAttestationType,
  type ValidatedMaaToken,
} from "../../core/token/index.js";

/** What every adapter is built with: which simulated roots to trust, and the time. */
export interface AttestationServiceSetup {
  readonly snpTrustedRoots: SnpTrustedRoots;
  readonly sgxTrustedRoots: SgxTrustedRoots;
  readonly clock: Clock;
}

export interface AttestationServiceHarness {
  readonly port: AttestationService;
  close(): Promise<void>;
}

export const CONTRACT_TIME = new Date("2026-03-01T00:00:00.000Z");

/** Simulated TEEs and evidence builders, made once per test file. */
export interface AttestationFixtures {
  readonly setup: AttestationServiceSetup;
  readonly snp: SimulatedSnpPlatform;
  readonly untrustedSnp: SimulatedSnpPlatform;
  readonly sgx: SimulatedSgxPlatform;
  readonly untrustedSgx: SimulatedSgxPlatform;
  /** Runtime data as the agent builds it: `{"keys":[RSA JWK, key_ops ["encrypt"], kid]}`. */
  readonly runtimeData: Buffer;
  /** An MAA `report` envelope whose REPORT_DATA is sha256(runtimeData) then 32 zero bytes. */
  snpReport(fields?: SimulatedSnpReportFields, platform?: SimulatedSnpPlatform): string;
  /** A quote whose REPORT_DATA starts with sha256(runtimeData). */
  sgxQuote(fields?: SimulatedSgxQuoteFields, platform?: SimulatedSgxPlatform): Buffer;
}

let fixtures: AttestationFixtures | undefined;

/** The file's fixtures (2048-bit simulated chains), created on first use. */
export function attestationFixtures(): AttestationFixtures {
  return (fixtures ??= createFixtures());
}

function createFixtures(): AttestationFixtures {
  const snp = createSimulatedSnpPlatform({ rsaBits: 2048 });
  const untrustedSnp = createSimulatedSnpPlatform({ rsaBits: 2048 });
  const sgx = createSimulatedSgxPlatform();
  const untrustedSgx = createSimulatedSgxPlatform();
  const { publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const jwk = publicKey.export({ format: "jwk" });
  const runtimeData = Buffer.from(
    JSON.stringify({ keys: [{ ...jwk, kid: "contract-runtime-key", key_ops: ["encrypt"] }] }),
  );
  const digest = sha256(runtimeData);
  return {
    setup: {
      snpTrustedRoots: [snp.ark],
      sgxTrustedRoots: [sgx.rootCertificate],
      clock: fixedClock(CONTRACT_TIME),
    },
    snp,
    untrustedSnp,
    sgx,
    untrustedSgx,
    runtimeData,
    snpReport(fields = {}, platform = snp) {
      const report = platform.signReport({ reportData: digest, ...fields });
      return buildMaaSnpEnvelope({ report, vcek: platform.leaf, chain: platform.chainPem });
    },
    sgxQuote(fields = {}, platform = sgx) {
      return platform.generateQuote({ reportData: digest, ...fields });
    },
  };
}

export function sha256(data: Uint8Array | string): Buffer {
  return createHash("sha256").update(data).digest();
}

/** Awaits a refusal and checks it is the terminal ShieldError with `code`. */
export async function expectRefusal(promise: Promise<unknown>, code: ShieldErrorCode): Promise<ShieldError> {
  let caught: unknown;
  try {
    await promise;
  } catch (error) {
    caught = error;
  }
  expect(caught, `expected a ShieldError ${code}`).toBeInstanceOf(ShieldError);
  const error = caught as ShieldError;
  expect({ code: error.code, transient: error.transient }).toEqual({ code, transient: false });
  return error;
}

export function defineAttestationServiceContract(
  name: string,
  create: (setup: AttestationServiceSetup) => Promise<AttestationServiceHarness>,
): void {
  describe(`AttestationService contract: ${name}`, () => {
    let harness: AttestationServiceHarness;
    let port: AttestationService;
    let f: AttestationFixtures;

    beforeAll(async () => {
      f = attestationFixtures();
      harness = await create(f.setup);
      port = harness.port;
    });

    afterAll(async () => {
      await harness?.close();
    });

    async function validate(
      token: string,
      type: MaaAttestationType,
      extra: { nonce?: string; runtimeData?: Uint8Array } = {},
    ): Promise<ValidatedMaaToken> {
      return validateMaaToken(token, {
        keys: staticSigningKeys(await port.getSigningCertificates()),
        issuer: port.issuer,
        at: f.setup.clock.now(),
        requireAttestationType: type,
        runtimeData: extra.runtimeData ?? f.runtimeData,
        ...(extra.nonce === undefined ? {} : { expectedNonce: extra.nonce }),
      });
    }

    it("names its issuer without a trailing slash and serves MAA's x5c-only /certs", async () => {
      expect(port.issuer).toMatch(/^https?:\/\/[^/]+$/);
      const certs = (await port.getSigningCertificates()) as { keys: Record<string, unknown>[] };
      expect(certs.keys.length).toBeGreaterThan(0);
      for (const key of certs.keys) expect(Object.keys(key).sort()).toEqual(["kid", "kty", "x5c"]);
    });

    it("attests good SEV-SNP evidence with MAA's claims, bound to the runtime data and the nonce", async () => {
      const hostData = sha256("contract cce policy");
      const measurement = createHash("sha384").update("contract uvm").digest();
      const token = await port.attestSevSnp({
        report: f.snpReport({ hostData, measurement, vmpl: 0, guestSvn: 2 }),
        runtimeData: f.runtimeData,
        runtimeDataType: "JSON",
        nonce: "contract-nonce-1",
      });
      const { claims, header } = await validate(token, "sevsnpvm", { nonce: "contract-nonce-1" });
      expect(header).toMatchObject({ alg: "RS256", typ: "JWT", jku: `${port.issuer}/certs` });
      expect(claims).toMatchObject({
        iss: port.issuer,
        nonce: "contract-nonce-1",
        "x-ms-ver": "1.0",
        "x-ms-attestation-type": "sevsnpvm",
        "x-ms-sevsnpvm-hostdata": hostData.toString("hex"),
        "x-ms-sevsnpvm-launchmeasurement": measurement.toString("hex"),
        "x-ms-sevsnpvm-is-debuggable": false,
        "x-ms-sevsnpvm-vmpl": 0,
        "x-ms-sevsnpvm-guestsvn": 2,
        "x-ms-sevsnpvm-reportdata": sha256(f.runtimeData).toString("hex") + "0".repeat(64),
        "x-ms-runtime": JSON.parse(f.runtimeData.toString()) as unknown,
      });
      expect(claims.exp - (claims.iat ?? 0)).toBe(8 * 60 * 60);
      expect(claims.iat).toBe(CONTRACT_TIME.getTime() / 1000);
    });

    it("issues no nonce claim when none was sent", async () => {
      const token = await port.attestSevSnp({ report: f.snpReport(), runtimeData: f.runtimeData });
      const { claims } = await validate(token, "sevsnpvm");
      expect(Object.hasOwn(claims, "nonce")).toBe(false);
    });

    it("attests good SGX evidence with MAA's claims, bound to the runtime data and the nonce", async () => {
      const mrEnclave = sha256("contract enclave");
      const mrSigner = sha256("contract signer");
      const token = await port.attestSgx({
        quote: f.sgxQuote({ mrEnclave, mrSigner, isvProdId: 4, isvSvn: 6 }),
        runtimeData: f.runtimeData,
        runtimeDataType: "JSON",
        nonce: "contract-nonce-2",
      });
      const { claims } = await validate(token, "sgx", { nonce: "contract-nonce-2" });
      expect(claims).toMatchObject({
        nonce: "contract-nonce-2",
        "x-ms-attestation-type": "sgx",
        "x-ms-sgx-mrenclave": mrEnclave.toString("hex"),
        "x-ms-sgx-mrsigner": mrSigner.toString("hex"),
        "x-ms-sgx-product-id": 4,
        "x-ms-sgx-svn": 6,
        "x-ms-sgx-is-debuggable": false,
        "x-ms-sgx-ehd": f.runtimeData.toString("base64url"),
        "x-ms-runtime": JSON.parse(f.runtimeData.toString()) as unknown,
      });
    });

    it("attests binary runtime data without interpreting it", async () => {
      const runtimeData = Buffer.from([0, 1, 2, 250, 251, 252]);
      const token = await port.attestSgx({
        quote: f.sgxQuote({ reportData: sha256(runtimeData) }),
        runtimeData,
        runtimeDataType: "Binary",
      });
      const { claims } = await validate(token, "sgx", { runtimeData });
      expect(Object.hasOwn(claims, "x-ms-runtime")).toBe(false);
      expect(claims["x-ms-sgx-ehd"]).toBe(runtimeData.toString("base64url"));
    });

    it("refuses SEV-SNP evidence bound to other runtime data", async () => {
      const other = Buffer.from(JSON.stringify({ keys: [] }));
      await expectRefusal(
        port.attestSevSnp({ report: f.snpReport(), runtimeData: other, runtimeDataType: "JSON" }),
        "ERR_EVIDENCE_REPORT_DATA",
      );
    });

    it("refuses SEV-SNP REPORT_DATA whose last 32 bytes are not zero", async () => {
      const reportData = Buffer.concat([sha256(f.runtimeData), Buffer.alloc(32, 1)]);
      await expectRefusal(
        port.attestSevSnp({ report: f.snpReport({ reportData }), runtimeData: f.runtimeData }),
        "ERR_EVIDENCE_REPORT_DATA",
      );
    });

    it("refuses an SGX quote bound to other runtime data", async () => {
      await expectRefusal(
        port.attestSgx({ quote: f.sgxQuote(), runtimeData: Buffer.from("{}"), runtimeDataType: "JSON" }),
        "ERR_EVIDENCE_REPORT_DATA",
      );
    });

    it("refuses evidence from platforms whose roots it was not told to trust", async () => {
      await expectRefusal(
        port.attestSevSnp({ report: f.snpReport({}, f.untrustedSnp), runtimeData: f.runtimeData }),
        "ERR_EVIDENCE_UNTRUSTED_ROOT",
      );
      await expectRefusal(
        port.attestSgx({ quote: f.sgxQuote({}, f.untrustedSgx), runtimeData: f.runtimeData }),
        "ERR_EVIDENCE_UNTRUSTED_ROOT",
      );
    });

    it("refuses a tampered report or quote", async () => {
      const report = f.snp.signReport({ reportData: sha256(f.runtimeData) });
      report[0x90] = report[0x90]! ^ 0x01; // MEASUREMENT, inside the signed bytes
      const envelope = buildMaaSnpEnvelope({ report, vcek: f.snp.leaf, chain: f.snp.chainPem });
      await expectRefusal(
        port.attestSevSnp({ report: envelope, runtimeData: f.runtimeData }),
        "ERR_EVIDENCE_SIGNATURE",
      );
      const quote = f.sgxQuote();
      quote[48 + 64] = quote[48 + 64]! ^ 0x01; // MRENCLAVE, covered by the quote signature
      await expectRefusal(port.attestSgx({ quote, runtimeData: f.runtimeData }), "ERR_EVIDENCE_SIGNATURE");
    });

    it("refuses a report envelope that is not one", async () => {
      await expectRefusal(
        port.attestSevSnp({ report: "bm90IGFuIGVudmVsb3Bl", runtimeData: f.runtimeData }),
        "ERR_EVIDENCE_MALFORMED",
      );
    });

    it("refuses JSON runtime data that is not a JSON object", async () => {
      const runtimeData = Buffer.from("not json");
      await expectRefusal(
        port.attestSevSnp({
          report: f.snpReport({ reportData: sha256(runtimeData) }),
          runtimeData,
          runtimeDataType: "JSON",
        }),
        "ERR_INPUT_MALFORMED",
      );
    });

    // As MAA does under its default policy: the token says is-debuggable true, and appraisal and
    // the release policy (which always require false) deny it with a per-claim explanation.
    it("attests debuggable evidence and reports it as debuggable", async () => {
      const snpToken = await port.attestSevSnp({
        report: f.snpReport({ debug: true }),
        runtimeData: f.runtimeData,
      });
      expect((await validate(snpToken, "sevsnpvm")).claims["x-ms-sevsnpvm-is-debuggable"]).toBe(true);
      const sgxToken = await port.attestSgx({
        quote: f.sgxQuote({ debug: true }),
        runtimeData: f.runtimeData,
      });
      const { claims } = await validate(sgxToken, "sgx");
      expect(claims["x-ms-sgx-is-debuggable"]).toBe(true);
      expect(claims["is-debuggable"]).toBe(true);
    });
  });
}
