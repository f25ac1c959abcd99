/**
 * Hostile files given to the `shield` command line (driven in-process through `runCli`, as
 * test/cli does): evidence whose keys do not decode or whose sizes lie, simulated evidence
 * checked against the real vendor roots ("Azure mode"), forged tokens and malformed policies.
 * Each must end with exit code 1 and the case's typed code in the `--json` error, without a
 * stack trace or any input bytes on stdout or stderr.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateKeyPairSync, sign } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../../cli/main.js";
import type { ShieldErrorCode } from "../../core/errors.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../core/evidence/simulated/sevsnp.js";
import { createSimulatedSgxPlatform, type SimulatedSgxPlatform } from "../../core/evidence/simulated/sgx.js";
import { renderReleasePolicy, serializeReleasePolicy } from "../../core/policy/index.js";
import { createMaaTokenIssuer, type MaaTokenIssuer } from "../../core/token/index.js";
import { derToPem } from "../../core/x509/certificate.js";
import {
  malformedSgxChain,
  malformedSnpChain,
  offCurveP256Point,
  type MalformedSgxChain,
  type MalformedSnpChain,
} from "../support/malformed-evidence.js";

const AT = "2026-06-01T00:00:00Z";
const ISSUER = "https://shield-hostile.attest.example";
const HOST_DATA = "aa".repeat(32);
/** SGX quote offsets (evidence-formats.md). */
const SGX = { sigLength: 432, sigData: 436, qeAuthLength: 436 + 64 + 64 + 384 + 64 };

let dir: string;
let snp: SimulatedSnpPlatform;
let sgx: SimulatedSgxPlatform;
let maa: MaaTokenIssuer;
let badSnp: MalformedSnpChain;
let badSgx: MalformedSgxChain;
let n = 0;

const file = (data: string | Uint8Array): string => {
  const path = join(dir, `f${++n}`);
  writeFileSync(path, data);
  return path;
};
const pem = (...certs: { raw: Buffer }[]) => certs.map((c) => derToPem(c.raw)).join("");
const b64 = (value: object | string) =>
  Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");
const jwks = () => file(JSON.stringify(maa.certsDocument()));

async function token(claims: Record<string, unknown> = {}): Promise<string> {
  return maa.issue({ "x-ms-attestation-type": "sevsnpvm", ...claims }, { at: new Date(AT) });
}

/** A token with the issuer's header and claims, re-signed by `key` (or not at all). */
async function resigned(
  headerPatch: Record<string, unknown>,
  key = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey,
): Promise<string> {
  const [h, p] = (await token()).split(".");
  const header = { ...(JSON.parse(Buffer.from(h!, "base64url").toString()) as object), ...headerPatch };
  const input = `${b64(header)}.${p}`;
  return `${input}.${sign("sha256", Buffer.from(input), key).toString("base64url")}`;
}

function sgxQuote(bend: (quote: Buffer) => void = () => undefined, options = {}): string {
  const quote = Buffer.from(sgx.generateQuote({ mrEnclave: "e1".repeat(32) }, options));
  bend(quote);
  return file(quote);
}

interface CliCase {
  readonly name: string;
  readonly code: ShieldErrorCode;
  readonly argv: () => Promise<string[]> | string[];
}

const cases: CliCase[] = [
  // SEV-SNP
  {
    name: "simulated SEV-SNP evidence checked against AMD's roots (Azure mode)",
    code: "ERR_EVIDENCE_UNTRUSTED_ROOT",
    argv: () => [
      "evidence",
      "verify",
      "--tee",
      "sevsnp",
      "--report",
      file(snp.signReport()),
      "--vcek",
      file(snp.leafPem),
      "--chain",
      file(snp.chainPem),
      "--at",
      AT,
    ],
  },
  {
    name: "VCEK whose P-384 key is off the curve",
    code: "ERR_EVIDENCE_CHAIN",
    argv: () => [
      "evidence",
      "verify",
      "--tee",
      "sevsnp",
      "--report",
      file(snp.signReport()),
      "--vcek",
      file(pem(badSnp.offCurveVcek)),
      "--chain",
      file(pem(badSnp.ask, badSnp.ark)),
      "--root",
      file(pem(badSnp.ark)),
      "--at",
      AT,
    ],
  },
  {
    name: "ASK whose key is off the curve",
    code: "ERR_EVIDENCE_CHAIN",
    argv: () => [
      "evidence",
      "verify",
      "--tee",
      "sevsnp",
      "--report",
      file(snp.signReport()),
      "--vcek",
      file(pem(badSnp.vcek)),
      "--chain",
      file(pem(badSnp.offCurveAsk, badSnp.ark)),
      "--root",
      file(pem(badSnp.ark)),
      "--at",
      AT,
    ],
  },
  {
    name: "truncated report file",
    code: "ERR_EVIDENCE_MALFORMED",
    argv: () => [
      "evidence",
      "verify",
      "--tee",
      "sevsnp",
      "--report",
      file(snp.signReport().subarray(0, 1000)),
      "--vcek",
      file(snp.leafPem),
      "--chain",
      file(snp.chainPem),
      "--root",
      file(pem(snp.ark)),
      "--at",
      AT,
    ],
  },
  {
    name: "report file of 2 MiB",
    code: "ERR_INPUT_TOO_LARGE",
    argv: () => [
      "evidence",
      "verify",
      "--tee",
      "sevsnp",
      "--report",
      file(Buffer.alloc(2 * 1024 * 1024)),
      "--vcek",
      file(snp.leafPem),
      "--chain",
      file(snp.chainPem),
      "--root",
      file(pem(snp.ark)),
      "--at",
      AT,
    ],
  },
  {
    name: "VCEK judged after it expired",
    code: "ERR_EVIDENCE_CERT_EXPIRED",
    argv: () => [
      "evidence",
      "verify",
      "--tee",
      "sevsnp",
      "--report",
      file(snp.signReport()),
      "--vcek",
      file(snp.leafPem),
      "--chain",
      file(snp.chainPem),
      "--root",
      file(pem(snp.ark)),
      "--at",
      "2060-01-01T00:00:00Z",
    ],
  },
  {
    name: "VCEK file that holds no certificate but PEM-looking garbage",
    code: "ERR_EVIDENCE_CHAIN",
    argv: () => [
      "evidence",
      "verify",
      "--tee",
      "sevsnp",
      "--report",
      file(snp.signReport()),
      "--vcek",
      file("-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n"),
      "--chain",
      file(snp.chainPem),
      "--root",
      file(pem(snp.ark)),
      "--at",
      AT,
    ],
  },
  {
    name: "report data other than expected",
    code: "ERR_EVIDENCE_REPORT_DATA",
    argv: () => [
      "evidence",
      "verify",
      "--tee",
      "sevsnp",
      "--report",
      file(snp.signReport()),
      "--vcek",
      file(snp.leafPem),
      "--chain",
      file(snp.chainPem),
      "--root",
      file(pem(snp.ark)),
      "--report-data",
      "ab".repeat(32),
      "--at",
      AT,
    ],
  },
  {
    name: "MAA report envelope whose inner report is not base64url JSON",
    code: "ERR_EVIDENCE_MALFORMED",
    argv: () => [
      "evidence",
      "verify",
      "--tee",
      "sevsnp",
      "--report",
      file(b64("x".repeat(2000))),
      "--root",
      file(pem(snp.ark)),
      "--at",
      AT,
    ],
  },
  // SGX
  {
    name: "simulated SGX quote checked against Intel's root (Azure mode)",
    code: "ERR_EVIDENCE_UNTRUSTED_ROOT",
    argv: () => ["evidence", "verify", "--tee", "sgx", "--quote", sgxQuote(), "--at", AT],
  },
  {
    name: "SGX signature data length that lies (too large)",
    code: "ERR_EVIDENCE_MALFORMED",
    argv: () => [
      "evidence",
      "verify",
      "--tee",
      "sgx",
      "--at",
      AT,
      "--root",
      file(pem(sgx.rootCertificate)),
      "--quote",
      sgxQuote((q) => q.writeUInt32LE(0xffffffff, SGX.sigLength)),
    ],
  },
  {
    name: "SGX QE authentication data length that lies",
    code: "ERR_EVIDENCE_MALFORMED",
    argv: () => [
      "evidence",
      "verify",
      "--tee",
      "sgx",
      "--at",
      AT,
      "--root",
      file(pem(sgx.rootCertificate)),
      "--quote",
      sgxQuote((q) => q.writeUInt16LE(0xffff, SGX.qeAuthLength)),
    ],
  },
  {
    name: "SGX certification data length that lies",
    code: "ERR_EVIDENCE_MALFORMED",
    argv: () => [
      "evidence",
      "verify",
      "--tee",
      "sgx",
      "--at",
      AT,
      "--root",
      file(pem(sgx.rootCertificate)),
      "--quote",
      sgxQuote((q) => {
        const at = SGX.qeAuthLength + 2 + q.readUInt16LE(SGX.qeAuthLength) + 2;
        q.writeUInt32LE(q.readUInt32LE(at) + 1, at);
      }),
    ],
  },
  {
    name: "SGX certification data of another type than a PEM chain",
    code: "ERR_EVIDENCE_UNSUPPORTED",
    argv: () => [
      "evidence",
      "verify",
      "--tee",
      "sgx",
      "--at",
      AT,
      "--root",
      file(pem(sgx.rootCertificate)),
      "--quote",
      sgxQuote(() => undefined, { certificationData: { type: 3, data: Buffer.alloc(64) } }),
    ],
  },
  {
    name: "SGX attestation key off the P-256 curve (certified by the QE report)",
    code: "ERR_EVIDENCE_MALFORMED",
    argv: () => [
      "evidence",
      "verify",
      "--tee",
      "sgx",
      "--at",
      AT,
      "--root",
      file(pem(sgx.rootCertificate)),
      "--quote",
      sgxQuote(() => undefined, { attestationKey: offCurveP256Point() }),
    ],
  },
  {
    name: "SGX PCK leaf whose key is off the curve",
    code: "ERR_EVIDENCE_CHAIN",
    argv: () => [
      "evidence",
      "verify",
      "--tee",
      "sgx",
      "--at",
      AT,
      "--root",
      file(pem(badSgx.root)),
      "--quote",
      sgxQuote(() => undefined, { pckChain: badSgx.pckChain }),
    ],
  },
  {
    name: "SGX QE authentication data changed (wrong attestation-key binding)",
    code: "ERR_EVIDENCE_BINDING",
    argv: () => [
      "evidence",
      "verify",
      "--tee",
      "sgx",
      "--at",
      AT,
      "--root",
      file(pem(sgx.rootCertificate)),
      "--quote",
      sgxQuote((q) => void (q[SGX.qeAuthLength + 2]! ^= 0xff)),
    ],
  },
  // tokens
  {
    name: "token with alg none",
    code: "ERR_TOKEN_ALG",
    argv: async () => {
      const [h, p] = (await token()).split(".");
      const header = { ...(JSON.parse(Buffer.from(h!, "base64url").toString()) as object), alg: "none" };
      return ["token", "verify", "--token", file(`${b64(header)}.${p}.AA`), "--jwks", jwks(), "--at", AT];
    },
  },
  {
    name: "token with an embedded jwk of the signer's own key",
    code: "ERR_TOKEN_SIGNATURE",
    argv: async () => {
      const rogue = generateKeyPairSync("rsa", { modulusLength: 2048 });
      const forged = await resigned({ jwk: rogue.publicKey.export({ format: "jwk" }) }, rogue.privateKey);
      return ["token", "verify", "--token", file(forged), "--jwks", jwks(), "--at", AT];
    },
  },
  {
    name: "token with a kid the /certs document does not hold",
    code: "ERR_TOKEN_KID",
    argv: async () => [
      "token",
      "verify",
      "--token",
      file(await resigned({ kid: "unknown-kid" })),
      "--jwks",
      jwks(),
      "--at",
      AT,
    ],
  },
  {
    name: "token of 100 KiB (refused by the file limit before anything parses it)",
    code: "ERR_INPUT_TOO_LARGE",
    argv: async () => [
      "token",
      "verify",
      "--token",
      file(await token({ padding: "A".repeat(100 * 1024) })),
      "--jwks",
      jwks(),
      "--at",
      AT,
    ],
  },
  {
    name: "token checked before it is valid",
    code: "ERR_TOKEN_NOT_YET_VALID",
    argv: async () => [
      "token",
      "verify",
      "--token",
      file(await token()),
      "--jwks",
      jwks(),
      "--at",
      "2026-05-31T00:00:00Z",
    ],
  },
  // policies
  {
    name: "release policy file that is not JSON",
    code: "ERR_INPUT_MALFORMED",
    argv: () => ["policy", "test", "--policy", file("{anyOf"), "--claims", file("{}")],
  },
  {
    name: "release policy of an unknown version",
    code: "ERR_POLICY_VERSION",
    argv: () => [
      "policy",
      "test",
      "--policy",
      file(
        JSON.stringify({
          version: "2.0.0",
          anyOf: [{ authority: ISSUER, allOf: [{ claim: "a", equals: "b" }] }],
        }),
      ),
      "--claims",
      file("{}"),
    ],
  },
  {
    name: "release policy with an operator Key Vault does not know",
    code: "ERR_POLICY_MALFORMED",
    argv: () => [
      "policy",
      "test",
      "--policy",
      file(
        JSON.stringify({
          version: "1.0.0",
          anyOf: [{ authority: ISSUER, allOf: [{ claim: "a", matches: ".*" }] }],
        }),
      ),
      "--claims",
      file("{}"),
    ],
  },
  {
    name: "release policy with a __proto__ member",
    code: "ERR_POLICY_MALFORMED",
    argv: () => [
      "policy",
      "test",
      "--policy",
      file(
        `{"__proto__":{"released":true},"version":"1.0.0","anyOf":[{"authority":"${ISSUER}","allOf":[{"claim":"a","equals":"b"}]}]}`,
      ),
      "--claims",
      file("{}"),
    ],
  },
  {
    name: "token whose issuer is not an authority of the policy",
    code: "ERR_POLICY_DENIED",
    argv: async () => [
      "policy",
      "test",
      "--policy",
      file(
        serializeReleasePolicy(
          renderReleasePolicy({
            authority: "https://other.attest.example",
            measurements: { sevsnpvm: { hostData: [HOST_DATA] } },
          }),
        ),
      ),
      "--token",
      file(await token()),
      "--jwks",
      jwks(),
      "--at",
      AT,
    ],
  },
];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "shield-hostile-cli-"));
  snp = createSimulatedSnpPlatform({ rsaBits: 2048, notAfter: new Date("2050-01-01T00:00:00Z") });
  sgx = createSimulatedSgxPlatform();
  maa = await createMaaTokenIssuer({ issuer: ISSUER });
  badSnp = malformedSnpChain();
  badSgx = malformedSgxChain();
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("shield: hostile files end in exit 1 with their typed code", () => {
  it("baseline: the same tools verify honest input", async () => {
    const report = await runCli(
      [
        "evidence",
        "verify",
        "--tee",
        "sevsnp",
        "--report",
        file(snp.signReport()),
        "--vcek",
        file(snp.leafPem),
        "--chain",
        file(snp.chainPem),
        "--root",
        file(pem(snp.ark)),
        "--at",
        AT,
      ],
      { stdout: () => undefined, stderr: () => undefined },
    );
    const quote = await runCli(
      [
        "evidence",
        "verify",
        "--tee",
        "sgx",
        "--quote",
        sgxQuote(),
        "--root",
        file(pem(sgx.rootCertificate)),
        "--at",
        AT,
      ],
      { stdout: () => undefined, stderr: () => undefined },
    );
    const verified = await runCli(
      ["token", "verify", "--token", file(await token()), "--jwks", jwks(), "--at", AT],
      {
        stdout: () => undefined,
        stderr: () => undefined,
      },
    );
    expect([report, quote, verified]).toEqual([0, 0, 0]);
  });

  for (const hostile of cases) {
    it(`${hostile.name} → ${hostile.code}`, async () => {
      const argv = [...(await hostile.argv()), "--json"];
      const stdout: string[] = [];
      const stderr: string[] = [];
      const code = await runCli(argv, { stdout: (l) => stdout.push(l), stderr: (l) => stderr.push(l) });
      const json = JSON.parse(stdout.at(-1) ?? "{}") as {
        ok?: boolean;
        error?: { code?: string; message?: string };
      };
      expect({ exit: code, ok: json.ok, error: json.error?.code }).toEqual({
        exit: 1,
        ok: false,
        error: hostile.code,
      });
      const everything = [...stdout, ...stderr].join("\n");
      expect(everything).not.toMatch(/\bat .+\.ts:\d+/); // no stack trace
      expect(everything.length).toBeLessThan(4096); // no input echoed back
    });
  }
});
