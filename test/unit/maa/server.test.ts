import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeJwt } from "jose";
import { createLocalAttestationEngine } from "../../../adapters/local/maa/engine.js";
import { startLocalMaaServer, type LocalMaaServer } from "../../../adapters/local/maa/server.js";
import { ShieldError } from "../../../core/errors.js";
import { buildMaaSnpEnvelope } from "../../../core/evidence/sevsnp/index.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../../core/evidence/simulated/sevsnp.js";
import {
  createSimulatedSgxPlatform,
  type SimulatedSgxPlatform,
} from "../../../core/evidence/simulated/sgx.js";
import { fixedClock } from "../../../core/ports/clock.js";
import type { LogFields, LogLevel } from "../../../core/ports/logger.js";
import { createMaaTokenIssuer } from "../../../core/token/index.js";
import { derToPem } from "../../../core/x509/certificate.js";
import {
  malformedSgxChain,
  malformedSnpChain,
  offCurveP256Point,
  textForms,
  type MalformedSgxChain,
  type MalformedSnpChain,
} from "../../support/malformed-evidence.js";

const sha256 = (data: Uint8Array | string): Buffer => createHash("sha256").update(data).digest();
const runtimeData = Buffer.from('{"keys":[]}');
const logLines: { level: LogLevel; message: string; fields?: LogFields }[] = [];

let snp: SimulatedSnpPlatform;
let sgx: SimulatedSgxPlatform;
let server: LocalMaaServer;

beforeAll(async () => {
  snp = createSimulatedSnpPlatform({ rsaBits: 2048 });
  sgx = createSimulatedSgxPlatform();
  server = await startLocalMaaServer({
    engine: async (url) =>
      createLocalAttestationEngine({
        issuer: await createMaaTokenIssuer({ issuer: url }),
        snpTrustedRoots: [snp.ark],
        sgxTrustedRoots: [sgx.rootCertificate],
        clock: fixedClock(new Date("2026-03-01T00:00:00Z")),
      }),
    logger: (level, message, fields) => logLines.push({ level, message, ...(fields ? { fields } : {}) }),
  });
});

afterAll(async () => {
  await server?.close();
});

function report(fields: Parameters<SimulatedSnpPlatform["signReport"]>[0] = {}): string {
  const bytes = snp.signReport({ reportData: sha256(runtimeData), ...fields });
  return buildMaaSnpEnvelope({ report: bytes, vcek: snp.leaf, chain: snp.chainPem });
}

const json = { data: runtimeData.toString("base64url"), dataType: "JSON" };

async function post(path: string, body: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

const SNP = "/attest/SevSnpVm?api-version=2022-08-01";
const SGX = "/attest/SgxEnclave?api-version=2022-08-01";

function tokenClaims(body: Record<string, unknown>): Record<string, unknown> {
  expect(Object.keys(body)).toEqual(["token"]);
  return decodeJwt(body.token as string);
}

describe("local MAA server: request bodies", () => {
  it("takes the sidecar's request: SevSnpVM spelling, api-version 2020-10-01, padded base64url, uint64 nonce", async () => {
    const padded = Buffer.from(runtimeData).toString("base64").replaceAll("+", "-").replaceAll("/", "_");
    const body = `{"report":"${report()}","runtimeData":{"data":"${padded}","dataType":"JSON"},"nonce":18446744073709551615}`;
    const { status, body: answer } = await post("/attest/SevSnpVM?api-version=2020-10-01", body);
    expect(status).toBe(200);
    // Echoed as MAA does for the sidecar's number: a string, with every digit.
    expect(tokenClaims(answer).nonce).toBe("18446744073709551615");
  });

  it("echoes a string nonce and leaves a nested `nonce` member alone", async () => {
    const { body } = await post(SNP, { report: report(), runtimeData: { ...json, nonce: 5 }, nonce: "abc" });
    expect(tokenClaims(body).nonce).toBe("abc");
  });

  it("refuses a nonce that is a number but not an unsigned integer", async () => {
    for (const nonce of ["-1", "1.5", "1e3"]) {
      const body = `{"report":"${report()}","runtimeData":${JSON.stringify(json)},"nonce":${nonce}}`;
      const answer = await post(SNP, body);
      expect(answer.status).toBe(400);
      expect(answer.body).toMatchObject({ error: { code: "InvalidParameter" } });
    }
  });

  it("treats JSON null as absent, as .NET and Go clients send it", async () => {
    const { status, body } = await post(SNP, {
      report: report(),
      runtimeData: json,
      initTimeData: null,
      draftPolicyForAttestation: null,
      nonce: null,
    });
    expect(status).toBe(200);
    expect(Object.hasOwn(tokenClaims(body), "nonce")).toBe(false);
  });

  it("answers 400 for JSON runtime data that is not a UTF-8 JSON object", async () => {
    const bom = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), runtimeData]);
    for (const bad of [
      bom,
      Buffer.from("[]"),
      Buffer.from('"keys"'),
      Buffer.from("null"),
      Buffer.from([0xc3]),
    ]) {
      const answer = await post(SNP, {
        report: report({ reportData: sha256(bad) }),
        runtimeData: { data: bad.toString("base64url"), dataType: "JSON" },
      });
      expect(answer.status).toBe(400);
      expect(answer.body).toMatchObject({
        error: {
          code: "InvalidParameter",
          message: expect.stringMatching(/^ERR_INPUT_MALFORMED: runtimeData of dataType JSON/) as string,
        },
      });
    }
    const quote = sgx.generateQuote({ reportData: sha256(bom) }).toString("base64url");
    const sgxAnswer = await post(SGX, {
      quote,
      runtimeData: { data: bom.toString("base64url"), dataType: "JSON" },
    });
    expect(sgxAnswer.status).toBe(400);
  });

  it("reads runtime data without a dataType as Binary", async () => {
    const { body } = await post(SNP, { report: report(), runtimeData: { data: json.data } });
    expect(Object.hasOwn(tokenClaims(body), "x-ms-runtime")).toBe(false);
  });

  it("honours SEV-SNP initTimeData and refuses it for SGX", async () => {
    const initTime = Buffer.from('{"policy":"p"}');
    const ok = await post(SNP, {
      report: report({ hostData: sha256(initTime) }),
      runtimeData: json,
      initTimeData: { data: initTime.toString("base64url"), dataType: "JSON" },
    });
    expect(tokenClaims(ok.body)["x-ms-inittime"]).toEqual({ policy: "p" });
    const mismatch = await post(SNP, { report: report(), runtimeData: json, initTimeData: { data: "AAAA" } });
    expect(mismatch.body).toMatchObject({
      error: { message: expect.stringMatching(/^ERR_EVIDENCE_BINDING: /) as string },
    });
    const quote = sgx.generateQuote({ reportData: sha256(runtimeData) }).toString("base64url");
    const sgxAnswer = await post(SGX, { quote, runtimeData: json, initTimeData: { data: "AAAA" } });
    expect(sgxAnswer.status).toBe(400);
  });

  it("refuses draftPolicyForAttestation: no attestation policies run here", async () => {
    const answer = await post(SNP, {
      report: report(),
      runtimeData: json,
      draftPolicyForAttestation: "version=1.0;",
    });
    expect(answer.status).toBe(400);
    expect(answer.body).toMatchObject({
      error: { message: expect.stringContaining("draftPolicyForAttestation") as string },
    });
  });

  it("refuses bodies without runtimeData, with fields of the wrong type, or with bad base64url", async () => {
    const quote = sgx.generateQuote({ reportData: sha256(runtimeData) }).toString("base64url");
    for (const [path, body] of [
      [SNP, { report: report() }],
      [SNP, { report: 7, runtimeData: json }],
      [SNP, { report: report(), runtimeData: { data: "a+b/", dataType: "JSON" } }],
      [SNP, { report: report(), runtimeData: { ...json, dataType: "Text" } }],
      [SGX, { quote: `${quote}!`, runtimeData: json }],
      [SGX, { runtimeData: json }],
      [SGX, ["not", "an", "object"]],
    ] as const) {
      const answer = await post(path, body);
      expect(answer.status).toBe(400);
      expect(answer.body).toMatchObject({ error: { code: "InvalidParameter" } });
    }
  });

  it("accepts an SGX quote and ignores unknown members", async () => {
    const quote = sgx.generateQuote({ reportData: sha256(runtimeData) }).toString("base64url");
    const { status, body } = await post(SGX, { quote, runtimeData: json, somethingNew: true });
    expect(status).toBe(200);
    expect(tokenClaims(body)["x-ms-attestation-type"]).toBe("sgx");
  });

  it("refuses an api-version that is not a date", async () => {
    const answer = await post("/attest/SevSnpVm?api-version=latest", { report: report(), runtimeData: json });
    expect(answer.status).toBe(400);
  });
});

describe("local MAA server: routes, faults, logging", () => {
  it("serves GET and HEAD on /certs and metadata, and says which methods a path takes", async () => {
    const head = await fetch(`${server.url}/certs`, { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(head.headers.get("content-type")).toBe("application/json; charset=utf-8");
    const metadata = await fetch(`${server.url}/.well-known/openid-configuration`);
    expect(await metadata.json()).toMatchObject({ issuer: server.url, jwks_uri: `${server.url}/certs` });
    const wrong = await fetch(`${server.url}/certs`, { method: "POST", body: "{}" });
    expect(wrong.status).toBe(405);
    expect(wrong.headers.get("allow")).toBe("GET, HEAD");
    await wrong.arrayBuffer();
  });

  it("fails exactly the next `count` requests when asked to, and never otherwise", async () => {
    expect(await fetch(`${server.url}/certs`).then((r) => r.arrayBuffer().then(() => r.status))).toBe(200);
    server.failNext(503, 2);
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) {
      const response = await fetch(`${server.url}/certs`);
      statuses.push(response.status);
      await response.arrayBuffer();
    }
    expect(statuses).toEqual([503, 503, 200]);
    server.failNext(429);
    const throttled = await fetch(`${server.url}/certs`);
    expect(throttled.headers.get("retry-after")).toBe("1");
    expect(await throttled.json()).toEqual({ error: { code: "TooManyRequests", message: "injected fault" } });
    expect(() => server.failNext(200)).toThrow(TypeError);
    expect(() => server.delayNext(-1)).toThrow(TypeError);
  });

  it("logs status and hashes, never the evidence or the token", async () => {
    logLines.length = 0;
    const evidence = report();
    const { body } = await post(SNP, { report: evidence, runtimeData: json });
    await post(SNP, { report: evidence, runtimeData: { data: "e30", dataType: "JSON" } });
    const text = JSON.stringify(logLines);
    expect(text).not.toContain(evidence.slice(0, 40));
    expect(text).not.toContain((body.token as string).slice(0, 40));
    const evidenceSha256 = createHash("sha256").update(evidence).digest("hex");
    expect(logLines).toEqual([
      expect.objectContaining({
        level: "info",
        fields: expect.objectContaining({ status: 200, evidenceSha256 }) as unknown,
      }),
      expect.objectContaining({
        level: "warn",
        fields: expect.objectContaining({
          status: 400,
          code: "ERR_EVIDENCE_REPORT_DATA",
          evidenceSha256,
        }) as unknown,
      }),
    ]);
  });

  it("binds loopback only", async () => {
    const error: unknown = await startLocalMaaServer({
      engine: server.engine,
      host: "0.0.0.0" as unknown as "127.0.0.1",
    }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ShieldError);
    expect((error as ShieldError).code).toBe("ERR_CONFIG");
  });

  it("closes promptly with a delayed request in flight, and twice without error", async () => {
    const other = await startLocalMaaServer({ engine: server.engine });
    other.delayNext(60_000);
    const pending = fetch(`${other.url}/certs`).then(
      () => "answered",
      () => "dropped",
    );
    await new Promise((resolve) => setTimeout(resolve, 50));
    const started = Date.now();
    await other.close();
    await other.close();
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(await pending).toBe("dropped");
  });
});

describe("local MAA server: certificates and keys that do not decode", () => {
  let badSnp: MalformedSnpChain;
  let badSgx: MalformedSgxChain;
  let trusting: LocalMaaServer;

  beforeAll(async () => {
    badSnp = malformedSnpChain();
    badSgx = malformedSgxChain();
    // Trusting the malformed chains' roots, so refusals come from the certificates themselves.
    trusting = await startLocalMaaServer({
      engine: async (url) =>
        createLocalAttestationEngine({
          issuer: await createMaaTokenIssuer({ issuer: url }),
          snpTrustedRoots: [snp.ark, badSnp.ark],
          sgxTrustedRoots: [sgx.rootCertificate, badSgx.root],
          clock: fixedClock(new Date("2026-03-01T00:00:00Z")),
        }),
    });
  });

  afterAll(async () => {
    await trusting?.close();
  });

  async function postTo(path: string, body: unknown) {
    const response = await fetch(`${trusting.url}${path}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    return { status: response.status, text: await response.text() };
  }

  /** 400 InvalidParameter naming the code, as for other bad evidence; never 500, never the key's bytes. */
  function expectRefused(answer: { status: number; text: string }, code: string, point: Buffer): void {
    expect(answer.status).toBe(400);
    const body = JSON.parse(answer.text) as { error: { code: string; message: string } };
    expect(body.error.code).toBe("InvalidParameter");
    expect(body.error.message.startsWith(`${code}: `)).toBe(true);
    for (const form of textForms(point.subarray(1, 17))) expect(answer.text).not.toContain(form);
  }

  it("answers 400 ERR_EVIDENCE_CHAIN for a VCEK whose key is a P-384 point off the curve", async () => {
    const bytes = snp.signReport({ reportData: sha256(runtimeData) });
    const report = buildMaaSnpEnvelope({
      report: bytes,
      vcek: badSnp.offCurveVcek,
      chain: [badSnp.ask, badSnp.ark],
    });
    expectRefused(await postTo(SNP, { report, runtimeData: json }), "ERR_EVIDENCE_CHAIN", badSnp.point);
  });

  it("answers 400 ERR_EVIDENCE_CHAIN for a truncated certificate in the chain", async () => {
    const bytes = snp.signReport({ reportData: sha256(runtimeData) });
    const ask = snp.intermediate.raw;
    const chain = derToPem(ask.subarray(0, ask.length - 1)) + derToPem(snp.ark.raw);
    const report = buildMaaSnpEnvelope({ report: bytes, vcek: snp.leafPem, chain });
    expectRefused(await postTo(SNP, { report, runtimeData: json }), "ERR_EVIDENCE_CHAIN", badSnp.point);
  });

  it("answers 400 for an SGX PCK certificate with a bad key and for an attestation key off the curve", async () => {
    const fields = { reportData: sha256(runtimeData) };
    const badPck = sgx.generateQuote(fields, { pckChain: badSgx.pckChain }).toString("base64url");
    expectRefused(
      await postTo(SGX, { quote: badPck, runtimeData: json }),
      "ERR_EVIDENCE_CHAIN",
      badSgx.point,
    );
    const point = offCurveP256Point();
    const badKey = sgx.generateQuote(fields, { attestationKey: point }).toString("base64url");
    expectRefused(
      await postTo(SGX, { quote: badKey, runtimeData: json }),
      "ERR_EVIDENCE_MALFORMED",
      Buffer.concat([Buffer.from([4]), point]),
    );
  });
});
