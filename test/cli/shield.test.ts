/**
 * The `shield` command line, driven in-process through `runCli` with files the tests generate:
 * exit codes, the `--json` contract, and typed errors for tampered and malformed input.
 */
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../../cli/main.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../core/evidence/simulated/sevsnp.js";
import { createSimulatedSgxPlatform, type SimulatedSgxPlatform } from "../../core/evidence/simulated/sgx.js";
import { createMaaTokenIssuer, type MaaTokenIssuer } from "../../core/token/index.js";
import { derToPem } from "../../core/x509/certificate.js";
import {
  malformedSgxChain,
  malformedSnpChain,
  offCurveP256Point,
  textForms,
  type MalformedSgxChain,
  type MalformedSnpChain,
} from "../support/malformed-evidence.js";

interface Run {
  code: number;
  stdout: string[];
  stderr: string[];
  json: Record<string, unknown>;
}

async function shield(...argv: string[]): Promise<Run> {
  const stdout: string[] = [];
  const stderr: string[] = [];
  const code = await runCli(argv, { stdout: (l) => stdout.push(l), stderr: (l) => stderr.push(l) });
  let json: Record<string, unknown> = {};
  if (argv.includes("--json")) {
    const last = stdout.at(-1) ?? "";
    json = JSON.parse(last) as Record<string, unknown>;
  }
  return { code, stdout, stderr, json };
}

const errorCode = (r: Run) => (r.json["error"] as { code: string } | undefined)?.code;

let dir: string;
const file = (name: string, data: string | Uint8Array) => {
  const p = join(dir, name);
  writeFileSync(p, data);
  return p;
};

const AT = "2026-06-01T00:00:00Z";
const ISSUER = "https://shield-test.attest.example";
const HOST_DATA = "aa".repeat(32);

let snp: SimulatedSnpPlatform;
let sgx: SimulatedSgxPlatform;
let maa: MaaTokenIssuer;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "shield-cli-"));
  snp = createSimulatedSnpPlatform({ rsaBits: 2048 });
  sgx = createSimulatedSgxPlatform();
  maa = await createMaaTokenIssuer({ issuer: ISSUER });
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("shield --help and usage errors", () => {
  it("lists every command of the contract", async () => {
    const r = await shield("--help");
    expect(r.code).toBe(0);
    for (const c of ["evidence verify", "token verify", "policy test", "policy render", "policy diff"]) {
      expect(r.stdout.join("\n")).toContain(c);
    }
  });

  it("exits 2 with ERR_USAGE for an unknown command, a missing option and an unknown option", async () => {
    expect((await shield("frobnicate", "--json")).code).toBe(2);
    const missing = await shield("evidence", "verify", "--tee", "sevsnp", "--json");
    expect(missing.code).toBe(2);
    expect(errorCode(missing)).toBe("ERR_USAGE");
    const unknown = await shield("policy", "diff", "--from", "a", "--to", "b", "--bogus", "--json");
    expect(unknown.code).toBe(2);
    const badTee = await shield("evidence", "verify", "--tee", "tdx", "--json");
    expect(errorCode(badTee)).toBe("ERR_USAGE");
    const badAt = await shield(
      "token",
      "verify",
      "--token",
      "x",
      "--jwks",
      "y",
      "--at",
      "yesterday",
      "--json",
    );
    expect(badAt.code).toBe(2);
  });

  it("exits 3 with ERR_IO when a file does not exist", async () => {
    const r = await shield(
      "policy",
      "diff",
      "--from",
      join(dir, "nope.json"),
      "--to",
      join(dir, "nope.json"),
      "--json",
    );
    expect(r.code).toBe(3);
    expect(errorCode(r)).toBe("ERR_IO");
  });
});

describe("shield evidence verify --tee sevsnp", () => {
  const reportData = createHash("sha256").update("runtime data").digest();
  let reportPath: string;
  let vcekPath: string;
  let chainPath: string;
  let rootPath: string;

  beforeAll(() => {
    const report = snp.signReport({ reportData, hostData: Buffer.from(HOST_DATA, "hex") });
    reportPath = file("report.bin", report);
    vcekPath = file("vcek.pem", snp.leafPem);
    chainPath = file("chain.pem", snp.chainPem);
    rootPath = file("ark.pem", derToPem(snp.ark.raw));
  });

  it("verifies a report against an explicitly trusted root and prints the claims", async () => {
    const r = await shield(
      "evidence",
      "verify",
      "--tee",
      "sevsnp",
      "--report",
      reportPath,
      "--vcek",
      vcekPath,
      "--chain",
      chainPath,
      "--root",
      rootPath,
      "--report-data",
      reportData.toString("hex"),
      "--at",
      AT,
      "--json",
    );
    expect(r.code).toBe(0);
    expect(r.json["ok"]).toBe(true);
    const claims = r.json["claims"] as Record<string, unknown>;
    expect(claims["hostData"]).toBe(HOST_DATA);
    expect(claims["debug"]).toBe(false);
    expect(claims["reportData"]).toBe(reportData.toString("hex") + "00".repeat(32));
  });

  it("refuses the simulated chain under AMD's roots (the default) with exit 1", async () => {
    const r = await shield(
      "evidence",
      "verify",
      "--tee",
      "sevsnp",
      "--report",
      reportPath,
      "--vcek",
      vcekPath,
      "--chain",
      chainPath,
      "--at",
      AT,
      "--json",
    );
    expect(r.code).toBe(1);
    expect(errorCode(r)).toBe("ERR_EVIDENCE_UNTRUSTED_ROOT");
  });

  it("fails with exit 1 and ERR_EVIDENCE_SIGNATURE when one byte of the report is flipped", async () => {
    const report = snp.signReport({ reportData });
    report.writeUInt8(report.readUInt8(0x90) ^ 0x01, 0x90); // first byte of MEASUREMENT
    const r = await shield(
      "evidence",
      "verify",
      "--tee",
      "sevsnp",
      "--report",
      file("tampered.bin", report),
      "--vcek",
      vcekPath,
      "--chain",
      chainPath,
      "--root",
      rootPath,
      "--at",
      AT,
      "--json",
    );
    expect(r.code).toBe(1);
    expect(errorCode(r)).toBe("ERR_EVIDENCE_SIGNATURE");
  });

  it("fails with ERR_EVIDENCE_REPORT_DATA when the expected report data differs", async () => {
    const r = await shield(
      "evidence",
      "verify",
      "--tee",
      "sevsnp",
      "--report",
      reportPath,
      "--vcek",
      vcekPath,
      "--chain",
      chainPath,
      "--root",
      rootPath,
      "--report-data",
      "00".repeat(32),
      "--at",
      AT,
      "--json",
    );
    expect(r.code).toBe(1);
    expect(errorCode(r)).toBe("ERR_EVIDENCE_REPORT_DATA");
  });

  it("fails with a typed error for a certificate from another platform", async () => {
    const other = createSimulatedSnpPlatform({ rsaBits: 2048 });
    const r = await shield(
      "evidence",
      "verify",
      "--tee",
      "sevsnp",
      "--report",
      reportPath,
      "--vcek",
      file("other.pem", other.leafPem),
      "--chain",
      chainPath,
      "--root",
      rootPath,
      "--at",
      AT,
      "--json",
    );
    expect(r.code).toBe(1);
    expect(errorCode(r)).toBe("ERR_EVIDENCE_CHAIN");
  });

  it("fails with ERR_EVIDENCE_CERT_EXPIRED when judged after the VCEK expired", async () => {
    const r = await shield(
      "evidence",
      "verify",
      "--tee",
      "sevsnp",
      "--report",
      reportPath,
      "--vcek",
      vcekPath,
      "--chain",
      chainPath,
      "--root",
      rootPath,
      "--at",
      "2099-01-01T00:00:00Z",
      "--json",
    );
    expect(r.code).toBe(1);
    expect(errorCode(r)).toBe("ERR_EVIDENCE_CERT_EXPIRED");
  });

  it("fails cleanly on truncated, oversized and non-certificate input", async () => {
    const report = snp.signReport({});
    const truncated = await shield(
      "evidence",
      "verify",
      "--tee",
      "sevsnp",
      "--report",
      file("short.bin", report.subarray(0, 1000)),
      "--vcek",
      vcekPath,
      "--chain",
      chainPath,
      "--root",
      rootPath,
      "--json",
    );
    expect(truncated.code).toBe(1);
    expect(errorCode(truncated)).toBe("ERR_EVIDENCE_MALFORMED");
    const huge = await shield(
      "evidence",
      "verify",
      "--tee",
      "sevsnp",
      "--report",
      file("huge.bin", Buffer.alloc(2 * 1024 * 1024)),
      "--vcek",
      vcekPath,
      "--json",
    );
    expect(huge.code).toBe(1);
    expect(errorCode(huge)).toBe("ERR_INPUT_TOO_LARGE");
    const notCert = await shield(
      "evidence",
      "verify",
      "--tee",
      "sevsnp",
      "--report",
      reportPath,
      "--vcek",
      file("junk.pem", "hello"),
      "--chain",
      chainPath,
      "--root",
      rootPath,
      "--json",
    );
    expect(notCert.code).toBe(1);
    expect(errorCode(notCert)).toMatch(/^ERR_/);
    expect(notCert.stdout.join("\n")).not.toMatch(/\n\s+at /); // no stack trace
  });
});

describe("shield evidence verify --tee sgx", () => {
  it("verifies a quote to an explicitly trusted root, and refuses it under Intel's root", async () => {
    const quote = file("quote.bin", sgx.generateQuote({ mrEnclave: "11".repeat(32), isvSvn: 3 }));
    const root = file("sgx-root.pem", derToPem(sgx.rootCertificate.raw));
    const ok = await shield(
      "evidence",
      "verify",
      "--tee",
      "sgx",
      "--quote",
      quote,
      "--root",
      root,
      "--at",
      AT,
      "--json",
    );
    expect(ok.code).toBe(0);
    expect((ok.json["claims"] as Record<string, unknown>)["mrEnclave"]).toBe("11".repeat(32));
    const refused = await shield(
      "evidence",
      "verify",
      "--tee",
      "sgx",
      "--quote",
      quote,
      "--at",
      AT,
      "--json",
    );
    expect(refused.code).toBe(1);
    expect(errorCode(refused)).toBe("ERR_EVIDENCE_UNTRUSTED_ROOT");
  });

  it("fails with ERR_EVIDENCE_SIGNATURE when the enclave report body is tampered", async () => {
    const quote = sgx.generateQuote({});
    quote.writeUInt8(quote.readUInt8(48 + 64) ^ 0xff, 48 + 64); // first byte of MRENCLAVE
    const root = file("sgx-root2.pem", derToPem(sgx.rootCertificate.raw));
    const r = await shield(
      "evidence",
      "verify",
      "--tee",
      "sgx",
      "--quote",
      file("q2.bin", quote),
      "--root",
      root,
      "--at",
      AT,
      "--json",
    );
    expect(r.code).toBe(1);
    expect(errorCode(r)).toBe("ERR_EVIDENCE_SIGNATURE");
  });
});

describe("shield token verify", () => {
  let tokenPath: string;
  let jwksPath: string;

  beforeAll(async () => {
    const token = await maa.issue(
      {
        "x-ms-attestation-type": "sevsnpvm",
        "x-ms-sevsnpvm-hostdata": HOST_DATA,
        "x-ms-sevsnpvm-is-debuggable": false,
      },
      { at: new Date(AT), nonce: "n-1" },
    );
    tokenPath = file("token.jwt", token + "\n");
    jwksPath = file("certs.json", JSON.stringify(maa.certsDocument()));
  });

  it("validates with a /certs file, pins the issuer and checks the nonce", async () => {
    const r = await shield(
      "token",
      "verify",
      "--token",
      tokenPath,
      "--jwks",
      jwksPath,
      "--issuer",
      ISSUER,
      "--nonce",
      "n-1",
      "--at",
      AT,
      "--json",
    );
    expect(r.code).toBe(0);
    expect(r.json["issuer"]).toBe(ISSUER);
    expect((r.json["claims"] as Record<string, unknown>)["x-ms-sevsnpvm-hostdata"]).toBe(HOST_DATA);
    expect((r.json["header"] as Record<string, unknown>)["alg"]).toBe("RS256");
  });

  it("reports the issuer without pinning it when only --jwks is given", async () => {
    const r = await shield("token", "verify", "--token", tokenPath, "--jwks", jwksPath, "--at", AT, "--json");
    expect(r.code).toBe(0);
    expect(r.json["issuerPinned"]).toBe(false);
  });

  it("fails with exit 1 and a typed code for a tampered payload, a wrong issuer, expiry and a wrong nonce", async () => {
    const [h, p, s] = (await maa.issue({ "x-ms-attestation-type": "sevsnpvm" }, { at: new Date(AT) })).split(
      ".",
    );
    const payload = JSON.parse(Buffer.from(p!, "base64url").toString()) as Record<string, unknown>;
    payload["x-ms-attestation-type"] = "sgx";
    const forged = file(
      "forged.jwt",
      `${h}.${Buffer.from(JSON.stringify(payload)).toString("base64url")}.${s}`,
    );
    const cases: [string[], string][] = [
      [["--token", forged, "--jwks", jwksPath, "--at", AT], "ERR_TOKEN_SIGNATURE"],
      [
        ["--token", tokenPath, "--jwks", jwksPath, "--issuer", "https://evil.example", "--at", AT],
        "ERR_TOKEN_ISSUER",
      ],
      [["--token", tokenPath, "--jwks", jwksPath, "--at", "2026-06-02T00:00:00Z"], "ERR_TOKEN_EXPIRED"],
      [["--token", tokenPath, "--jwks", jwksPath, "--nonce", "other", "--at", AT], "ERR_TOKEN_NONCE"],
      [
        ["--token", file("garbage.jwt", "not-a-token"), "--jwks", jwksPath, "--at", AT],
        "ERR_TOKEN_MALFORMED",
      ],
      [["--token", tokenPath, "--jwks", file("bad-certs.json", "{ nope"), "--at", AT], "ERR_INPUT_MALFORMED"],
    ];
    for (const [args, code] of cases) {
      const r = await shield("token", "verify", ...args, "--json");
      expect({ code: r.code, error: errorCode(r) }).toEqual({ code: 1, error: code });
      expect(JSON.stringify(r.json)).not.toContain(s!); // no token material in the output
    }
  });

  it("needs --issuer or --jwks (usage error)", async () => {
    const r = await shield("token", "verify", "--token", tokenPath, "--json");
    expect(r.code).toBe(2);
  });
});

describe("shield policy render | test | diff", () => {
  let policyPath: string;
  let measurementsPath: string;

  beforeAll(async () => {
    measurementsPath = file(
      "measurements.json",
      JSON.stringify({ sevsnpvm: { hostData: [HOST_DATA], complianceStatus: "azure-compliant-uvm" } }),
    );
    const r = await shield(
      "policy",
      "render",
      "--authority",
      ISSUER,
      "--measurements",
      measurementsPath,
      "--json",
    );
    expect(r.code).toBe(0);
    policyPath = file("policy.json", JSON.stringify(r.json["policy"]));
  });

  const claims = (over: Record<string, unknown> = {}) => ({
    iss: ISSUER,
    "x-ms-attestation-type": "sevsnpvm",
    "x-ms-compliance-status": "azure-compliant-uvm",
    "x-ms-sevsnpvm-hostdata": HOST_DATA,
    "x-ms-sevsnpvm-is-debuggable": false,
    ...over,
  });

  it("would release to matching claims (exit 0) and explains a refusal clause by clause (exit 1)", async () => {
    const ok = await shield(
      "policy",
      "test",
      "--policy",
      policyPath,
      "--claims",
      file("c1.json", JSON.stringify(claims())),
      "--json",
    );
    expect(ok.code).toBe(0);
    expect(ok.json["released"]).toBe(true);
    const debug = await shield(
      "policy",
      "test",
      "--policy",
      policyPath,
      "--claims",
      file("c2.json", JSON.stringify(claims({ "x-ms-sevsnpvm-is-debuggable": true }))),
      "--json",
    );
    expect(debug.code).toBe(1);
    expect(debug.json["ok"]).toBe(false);
    expect(debug.json["released"]).toBe(false);
    expect(debug.json["violations"]).toEqual([
      {
        field: "x-ms-sevsnpvm-is-debuggable",
        expected: expect.stringContaining("false") as unknown,
        actual: "true",
      },
    ]);
  });

  it("answers 'would not release' (exit 1) for claims without iss: no authority matches", async () => {
    const { iss: _iss, ...noIss } = claims();
    for (const [name, body] of [
      ["c-noiss.json", noIss],
      ["c-numiss.json", { ...noIss, iss: 42 }],
    ] as const) {
      const r = await shield(
        "policy",
        "test",
        "--policy",
        policyPath,
        "--claims",
        file(name, JSON.stringify(body)),
        "--json",
      );
      expect(r.code).toBe(1);
      expect(r.json["ok"]).toBe(false);
      expect(r.json["error"]).toBeUndefined();
      expect(r.json["released"]).toBe(false);
      expect(r.json["summary"]).toMatch(/no iss, so no authority matches/);
      expect(r.json["violations"]).toEqual([
        { field: "iss", expected: `one of ${ISSUER}`, actual: "(missing)" },
      ]);
      const authorities = r.json["authorities"] as { issuerMatched: boolean; result: string }[];
      expect(authorities.map((a) => [a.issuerMatched, a.result])).toEqual([[false, "issuer-mismatch"]]);
    }
    const text = await shield(
      "policy",
      "test",
      "--policy",
      policyPath,
      "--claims",
      file("c-noiss2.json", JSON.stringify(noIss)),
    );
    expect(text.code).toBe(1);
    expect(text.stdout[0]).toMatch(/^not released: the claims have no iss/);
  });

  it("evaluates a signed token against the policy", async () => {
    const { iss: _iss, ...rest } = claims();
    const token = await maa.issue(rest, { at: new Date(AT) });
    const r = await shield(
      "policy",
      "test",
      "--policy",
      policyPath,
      "--token",
      file("t.jwt", token),
      "--jwks",
      file("c.json", JSON.stringify(maa.certsDocument())),
      "--at",
      AT,
      "--json",
    );
    expect(r.code).toBe(0);
    expect(r.json["released"]).toBe(true);
  });

  it("shows the measurement added by a rollout", async () => {
    const next = "bb".repeat(32);
    const m2 = file(
      "m2.json",
      JSON.stringify({ sevsnpvm: { hostData: [HOST_DATA, next], complianceStatus: "azure-compliant-uvm" } }),
    );
    const rendered = await shield("policy", "render", "--authority", ISSUER, "--measurements", m2, "--json");
    const to = file("policy2.json", JSON.stringify(rendered.json["policy"]));
    const r = await shield("policy", "diff", "--from", policyPath, "--to", to, "--json");
    expect(r.code).toBe(0);
    const diff = r.json["diff"] as { measurementsAdded: { value: string }[]; measurementsRemoved: unknown[] };
    expect(diff.measurementsAdded.map((m) => m.value)).toEqual([next]);
    expect(diff.measurementsRemoved).toEqual([]);
  });

  it("rejects a malformed policy with ERR_POLICY_MALFORMED and exit 1", async () => {
    const bad = file(
      "bad-policy.json",
      JSON.stringify({
        version: "1.0.0",
        anyOf: [{ authority: ISSUER, allOf: [{ claim: "x", contains: "y" }] }],
      }),
    );
    const r = await shield(
      "policy",
      "test",
      "--policy",
      bad,
      "--claims",
      file("c3.json", JSON.stringify(claims())),
      "--json",
    );
    expect(r.code).toBe(1);
    expect(errorCode(r)).toBe("ERR_POLICY_MALFORMED");
  });
});

describe("shield evidence verify: certificates and keys that do not decode", () => {
  let badSnp: MalformedSnpChain;
  let badSgx: MalformedSgxChain;

  beforeAll(() => {
    badSnp = malformedSnpChain();
    badSgx = malformedSgxChain();
  });

  /** Exit 1 with the typed code in JSON, no stack trace, none of the key's bytes. */
  function expectRefused(r: Run, code: string, point: Buffer): void {
    expect(r.code).toBe(1);
    expect(r.json["ok"]).toBe(false);
    expect(errorCode(r)).toBe(code);
    const out = [...r.stdout, ...r.stderr].join("\n");
    expect(out).not.toMatch(/\n\s+at /);
    for (const form of textForms(point.subarray(1, 17))) expect(out).not.toContain(form);
  }

  const sevsnp = (vcek: string, chain: string, root: string) =>
    shield(
      "evidence",
      "verify",
      "--tee",
      "sevsnp",
      "--report",
      file("malformed-report.bin", snp.signReport({})),
      "--vcek",
      vcek,
      "--chain",
      chain,
      "--root",
      root,
      "--at",
      AT,
      "--json",
    );

  it("exits 1 with ERR_EVIDENCE_CHAIN for a VCEK whose key is a P-384 point off the curve", async () => {
    const r = await sevsnp(
      file("offcurve-vcek.pem", derToPem(badSnp.offCurveVcek.raw)),
      file("offcurve-chain.pem", derToPem(badSnp.ask.raw) + derToPem(badSnp.ark.raw)),
      file("offcurve-ark.pem", derToPem(badSnp.ark.raw)),
    );
    expectRefused(r, "ERR_EVIDENCE_CHAIN", badSnp.point);
  });

  it("exits 1 with ERR_EVIDENCE_CHAIN for a garbage or truncated certificate in the chain", async () => {
    const ask = snp.intermediate.raw;
    for (const [name, chain] of [
      ["garbage-chain.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"],
      ["truncated-chain.pem", derToPem(ask.subarray(0, ask.length - 1)) + derToPem(snp.ark.raw)],
    ] as const) {
      const r = await sevsnp(
        file("good-vcek.pem", snp.leafPem),
        file(name, chain),
        file("good-ark.pem", derToPem(snp.ark.raw)),
      );
      expectRefused(r, "ERR_EVIDENCE_CHAIN", badSnp.point);
    }
  });

  const sgxVerify = (quote: Buffer, root: string) =>
    shield(
      "evidence",
      "verify",
      "--tee",
      "sgx",
      "--quote",
      file("malformed-quote.bin", quote),
      "--root",
      root,
      "--at",
      AT,
      "--json",
    );

  it("exits 1 with ERR_EVIDENCE_CHAIN for an SGX PCK certificate with a bad key", async () => {
    const quote = sgx.generateQuote({}, { pckChain: badSgx.pckChain });
    const r = await sgxVerify(quote, file("bad-sgx-root.pem", derToPem(badSgx.root.raw)));
    expectRefused(r, "ERR_EVIDENCE_CHAIN", badSgx.point);
  });

  it("exits 1 with ERR_EVIDENCE_MALFORMED for an SGX attestation key off the curve", async () => {
    const point = offCurveP256Point();
    const quote = sgx.generateQuote({}, { attestationKey: point });
    const r = await sgxVerify(quote, file("sgx-root-3.pem", derToPem(sgx.rootCertificate.raw)));
    expectRefused(r, "ERR_EVIDENCE_MALFORMED", Buffer.concat([Buffer.from([4]), point]));
  });

  it("exits 1 with ERR_INPUT_MALFORMED for a --root whose key does not decode", async () => {
    const r = await sgxVerify(
      sgx.generateQuote({}),
      file("offcurve-root.pem", derToPem(badSgx.pckChain[0]!.raw)),
    );
    expectRefused(r, "ERR_INPUT_MALFORMED", badSgx.point);
  });
});
