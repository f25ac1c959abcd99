/**
 * Conformance against real, public attestation data: runs the `shield` CLI (in-process, exactly
 * as an operator would call it) over the vectors in `../shared/vectors` and prints a table of
 * expected versus actual outcomes. The vectors are read where they lie and never copied into the
 * project. Set SHIELD_VECTORS to point elsewhere; without the folder the script says so and
 * exits 0. Exit code 1 when any vector does not behave as expected.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { runCli } from "../cli/main.js";
import { loadCertificates } from "../core/x509/certificate.js";

const projectRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const vectors = resolve(process.env["SHIELD_VECTORS"] ?? join(projectRoot, "..", "shared", "vectors"));

interface Case {
  readonly group: string;
  readonly name: string;
  readonly argv: readonly string[];
  /** "ok", or the error code / refusal the vector must produce. */
  readonly expect: string;
  readonly note?: string;
}

interface Outcome {
  readonly exitCode: number;
  readonly result: string;
  readonly detail: string;
}

const work = mkdtempSync(join(tmpdir(), "shield-conformance-"));
const v = (...parts: string[]) => join(vectors, ...parts);
const scratch = (name: string, data: string | Uint8Array) => {
  const p = join(work, name);
  writeFileSync(p, data);
  return p;
};

/** A moment inside every certificate's validity: one day after the latest notBefore. */
function atWithin(...pemOrDerFiles: string[]): string {
  let latest = 0;
  for (const f of pemOrDerFiles) {
    for (const cert of loadCertificates(readFileSync(f)))
      latest = Math.max(latest, Date.parse(cert.validFrom));
  }
  return new Date(latest + 86_400_000).toISOString();
}

/** Azure THIM JSON ({vcekCert, certificateChain}) → a PEM bundle, VCEK first. */
function thimToPem(json: string): string {
  const thim = JSON.parse(json) as { vcekCert: string; certificateChain: string };
  return thim.vcekCert + "\n" + thim.certificateChain;
}

function flipByte(path: string, offset: number, name: string): string {
  const bytes = readFileSync(path);
  bytes.writeUInt8(bytes.readUInt8(offset) ^ 0x01, offset);
  return scratch(name, bytes);
}

function snpCase(
  name: string,
  report: string,
  vcek: string,
  chain: string | undefined,
  expect = "ok",
  note?: string,
): Case {
  const certFiles = chain === undefined ? [vcek] : [vcek, chain];
  const argv = ["evidence", "verify", "--tee", "sevsnp", "--report", report, "--vcek", vcek];
  if (chain !== undefined) argv.push("--chain", chain);
  argv.push("--at", atWithin(...certFiles));
  return { group: "SEV-SNP report", name, argv, expect, ...(note === undefined ? {} : { note }) };
}

function sgxCase(
  name: string,
  quote: string,
  expect = "ok",
  at = "2024-01-01T00:00:00Z",
  note?: string,
): Case {
  return {
    group: "SGX DCAP quote",
    name,
    argv: ["evidence", "verify", "--tee", "sgx", "--quote", quote, "--at", at],
    expect,
    ...(note === undefined ? {} : { note }),
  };
}

function buildCases(): Case[] {
  const cases: Case[] = [];
  const sev = (...p: string[]) => v("sev-snp", ...p);
  const milanChain = sev("go-sev-guest", "ask_ark_milan.pem");

  // SEV-SNP: real reports with their VCEK/VLEK and AMD chain, against AMD's pinned roots.
  cases.push(
    snpCase(
      "go-sev-guest attestation.bin (Milan, v2, debug policy)",
      sev("go-sev-guest", "attestation.bin"),
      sev("go-sev-guest", "vcek.testcer"),
      milanChain,
    ),
  );
  cases.push(
    snpCase(
      "virtee report_milan.hex (Milan)",
      sev("virtee-sev", "report_milan.hex"),
      sev("virtee-sev", "vcek_milan.der"),
      sev("virtee-sev", "cert_chain_milan"),
    ),
  );
  cases.push(
    snpCase(
      "trustee snp/test-report.bin (Milan)",
      sev("trustee", "snp", "test-report.bin"),
      sev("trustee", "snp", "test-vcek.der"),
      milanChain,
    ),
  );
  cases.push(
    snpCase(
      "trustee snp/test-vlek-report.bin (VLEK, ASVK chain)",
      sev("trustee", "snp", "test-vlek-report.bin"),
      sev("trustee", "snp", "test-vlek.der"),
      sev("go-sev-guest", "ask_ark_milan_vlek.pem"),
    ),
  );
  cases.push(
    snpCase(
      "trustee VLEK report with trustee's ASK+ARK+ASVK bundle",
      sev("trustee", "snp", "test-vlek-report.bin"),
      sev("trustee", "snp", "test-vlek.der"),
      sev("trustee", "amd-certs", "milan_ask_ark_asvk.pem"),
    ),
  );
  cases.push(
    snpCase(
      "Azure CVM HCL report (Milan; VCEK+chain bundle)",
      sev("trustee", "az-snp-vtpm", "derived", "hcl-report.snp-report.bin"),
      sev("trustee", "az-snp-vtpm", "vcek.pem"),
      undefined,
    ),
  );
  cases.push(
    snpCase(
      "Azure CVM Genoa report",
      sev("trustee", "az-snp-vtpm", "derived", "evidence-genoa.snp-report.bin"),
      sev("trustee", "az-snp-vtpm", "vcek-genoa.pem"),
      sev("go-sev-guest", "ask_ark_genoa.pem"),
    ),
  );
  const v0 = JSON.parse(readFileSync(sev("trustee", "az-snp-vtpm", "evidence-v0.json"), "utf8")) as {
    vcek: string;
  };
  cases.push(
    snpCase(
      "Azure CVM evidence-v0 (Milan)",
      sev("trustee", "az-snp-vtpm", "derived", "evidence-v0.snp-report.bin"),
      scratch("v0-vcek.pem", v0.vcek),
      milanChain,
    ),
  );
  cases.push(
    snpCase(
      "Azure CVM evidence-v1 (Milan)",
      sev("trustee", "az-snp-vtpm", "derived", "evidence-v1.snp-report.bin"),
      sev("trustee", "az-snp-vtpm", "derived", "evidence-v1.vcek.der"),
      milanChain,
    ),
  );
  cases.push(
    snpCase(
      "Azure CVM evidence-v2 (Milan)",
      sev("trustee", "az-snp-vtpm", "derived", "evidence-v2.snp-report.bin"),
      sev("trustee", "az-snp-vtpm", "derived", "evidence-v2.vcek.der"),
      milanChain,
    ),
  );
  cases.push(
    snpCase(
      "Confidential ACI report (sidecar test data; THIM bundle)",
      sev("confidential-sidecar-containers", "pkg-attest-test_data", "snp_report.bin"),
      sev("confidential-sidecar-containers", "pkg-attest-test_data", "uvm_host_amd_certificate.pem"),
      undefined,
    ),
  );
  const aci = (dir: string) => {
    const report = scratch(
      `aci-${dir}.bin`,
      Buffer.from(
        readFileSync(sev("confidential-aci-attestation", dir, "snp-report-base64"), "utf8").trim(),
        "base64",
      ),
    );
    const certs = scratch(
      `aci-${dir}.pem`,
      thimToPem(
        Buffer.from(
          readFileSync(sev("confidential-aci-attestation", dir, "host-amd-certs-base64"), "utf8").trim(),
          "base64",
        ).toString("utf8"),
      ),
    );
    return { report, certs };
  };
  const initial = aci("initial-commit");
  cases.push(
    snpCase("Confidential ACI report (initial commit; THIM certs)", initial.report, initial.certs, undefined),
  );
  const head = aci("head");
  cases.push(
    snpCase(
      "Confidential ACI report (head) with the VCEK of another chip",
      head.report,
      head.certs,
      undefined,
      "ERR_EVIDENCE_SIGNATURE",
      "negative vector: upstream pairs it with another chip's VCEK",
    ),
  );
  cases.push(
    snpCase(
      "go-sev-guest report, one MEASUREMENT byte flipped",
      flipByte(sev("go-sev-guest", "attestation.bin"), 0x90, "tampered-snp.bin"),
      sev("go-sev-guest", "vcek.testcer"),
      milanChain,
      "ERR_EVIDENCE_SIGNATURE",
    ),
  );
  cases.push(
    snpCase(
      "go-sev-guest report with another chip's VCEK",
      sev("go-sev-guest", "attestation.bin"),
      sev("trustee", "snp", "test-vcek.der"),
      milanChain,
      "ERR_EVIDENCE_SIGNATURE",
    ),
  );
  cases.push(
    snpCase(
      "VLEK report against the Milan VCEK chain",
      sev("trustee", "snp", "test-vlek-report.bin"),
      sev("trustee", "snp", "test-vlek.der"),
      milanChain,
      "ERR_EVIDENCE_CHAIN",
    ),
  );
  cases.push(
    snpCase(
      "truncated report (first 1000 bytes)",
      scratch("short.bin", readFileSync(sev("go-sev-guest", "attestation.bin")).subarray(0, 1000)),
      sev("go-sev-guest", "vcek.testcer"),
      milanChain,
      "ERR_EVIDENCE_MALFORMED",
    ),
  );

  // SGX DCAP v3: real quotes to the production Intel SGX Root CA (pinned).
  const sgx = (...p: string[]) => v("sgx-dcap", ...p);
  cases.push(sgxCase("mobilecoin hw_quote.dat (hardware)", sgx("mobilecoin-attestation", "hw_quote.dat")));
  cases.push(sgxCase("trustee occlum_quote.dat (debug enclave)", sgx("trustee", "occlum_quote.dat")));
  for (const sdk of ["intel-sdk", "oe-sdk"]) {
    for (const kind of ["debug", "prodid", "release", "securityversion"]) {
      cases.push(
        sgxCase(
          `Azure sample ${sdk} ${kind}${sdk === "oe-sdk" ? " (OE header)" : ""}`,
          sgx("azure-samples-maa", "derived", `${sdk}.enclave.info.${kind}.QuoteHex.bin`),
        ),
      );
    }
  }
  cases.push(
    sgxCase(
      "Azure SDK C++ OpenEnclaveQuote (OE header)",
      sgx("azure-sdk-for-cpp", "derived", "OpenEnclaveQuote.oe-report.bin"),
    ),
  );
  cases.push(
    sgxCase(
      "Azure SDK C++ OpenEnclaveNonDebugQuote (OE header)",
      sgx("azure-sdk-for-cpp", "derived", "OpenEnclaveNonDebugQuote.oe-report.bin"),
    ),
  );
  cases.push(
    sgxCase(
      "Intel TEST-PKI sample quote (certification data type 1)",
      sgx("intel-dcap-qvl-sampledata-TESTPKI", "quote.dat"),
      "ERR_EVIDENCE_UNSUPPORTED",
      "2024-01-01T00:00:00Z",
      "no PCK chain inside the quote",
    ),
  );
  cases.push(
    sgxCase(
      "hw_quote.dat, one MRENCLAVE byte flipped",
      flipByte(sgx("mobilecoin-attestation", "hw_quote.dat"), 48 + 64, "tampered-sgx.bin"),
      "ERR_EVIDENCE_SIGNATURE",
    ),
  );
  cases.push(
    sgxCase(
      "hw_quote.dat judged in 2060 (certificates expired)",
      sgx("mobilecoin-attestation", "hw_quote.dat"),
      "ERR_EVIDENCE_CERT_EXPIRED",
      "2060-01-01T00:00:00Z",
    ),
  );

  // MAA tokens.
  const maa = (...p: string[]) => v("maa-jwt", ...p);
  const sgxToken = maa("teaclave-sgx-sdk", "derived", "token.jwt");
  const sgxJwks = maa("teaclave-sgx-sdk", "derived", "certs.jwks.json");
  const tokenPayload = (path: string) =>
    JSON.parse(
      Buffer.from(readFileSync(path, "utf8").trim().split(".")[1]!, "base64url").toString("utf8"),
    ) as Record<string, unknown>;
  const sgxIat = new Date((tokenPayload(sgxToken)["iat"] as number) * 1000 + 60_000).toISOString();
  const sgxIss = tokenPayload(sgxToken)["iss"] as string;
  const token = (name: string, argv: string[], expect: string, note?: string): Case => ({
    group: "MAA token",
    name,
    argv: ["token", "verify", ...argv],
    expect,
    ...(note === undefined ? {} : { note }),
  });
  cases.push(
    token(
      "teaclave SGX token with the issuer's /certs (iss pinned)",
      ["--token", sgxToken, "--jwks", sgxJwks, "--issuer", sgxIss, "--at", sgxIat],
      "ok",
    ),
  );
  const [h, p, s] = readFileSync(sgxToken, "utf8").trim().split(".");
  const payloadBytes = Buffer.from(p!, "base64url");
  payloadBytes.writeUInt8(payloadBytes.readUInt8(40) ^ 0x01, 40);
  cases.push(
    token(
      "teaclave SGX token, one payload byte changed",
      [
        "--token",
        scratch("tampered.jwt", `${h}.${payloadBytes.toString("base64url")}.${s}`),
        "--jwks",
        sgxJwks,
        "--at",
        sgxIat,
      ],
      "ERR_TOKEN_SIGNATURE",
    ),
  );
  cases.push(
    token(
      "teaclave SGX token with a different issuer pinned",
      [
        "--token",
        sgxToken,
        "--jwks",
        sgxJwks,
        "--issuer",
        "https://sharedweu.weu.attest.azure.net",
        "--at",
        sgxIat,
      ],
      "ERR_TOKEN_ISSUER",
    ),
  );
  cases.push(
    token(
      "teaclave SGX token judged a day after it expired",
      [
        "--token",
        sgxToken,
        "--jwks",
        sgxJwks,
        "--at",
        new Date((tokenPayload(sgxToken)["exp"] as number) * 1000 + 86_400_000).toISOString(),
      ],
      "ERR_TOKEN_EXPIRED",
    ),
  );
  const cvmToken = maa("cvm-guest-attestation", "derived", "jwt_token_line138.jwt");
  cases.push(
    token(
      "CVM sevsnpvm token (line 138) with teaclave's sharedeus /certs",
      [
        "--token",
        cvmToken,
        "--jwks",
        sgxJwks,
        "--at",
        new Date((tokenPayload(cvmToken)["iat"] as number) * 1000).toISOString(),
      ],
      "ERR_TOKEN_KID",
      "its signing key is published but not stored in the vectors",
    ),
  );

  // Release policies with Key Vault's semantics, on the real CVM token's claims.
  const skr = (...p: string[]) => v("akv-skr", ...p);
  const cvmClaims = scratch("cvm-claims.json", JSON.stringify(tokenPayload(cvmToken)));
  const policy = (name: string, policyPath: string, expect: string, note?: string): Case => ({
    group: "Release policy",
    name,
    argv: ["policy", "test", "--policy", policyPath, "--claims", cvmClaims],
    expect,
    ...(note === undefined ? {} : { note }),
  });
  cases.push(
    policy(
      "CVM data-disk policy (26 authorities, nested anyOf) on the CVM token",
      skr("cvm-guest-attestation", "public_SKR_policy-datadisk.json"),
      "ok",
    ),
  );
  cases.push(
    policy(
      "CVM SKR app policy (block 1) on the CVM token",
      skr("cvm-guest-attestation", "derived", "readme_json_block_1.json"),
      "ok",
    ),
  );
  cases.push(
    policy(
      "Azure Local CVM policy (block 2) on the CVM token",
      skr("cvm-guest-attestation", "derived", "readme_json_block_2.json"),
      "refused",
      "requires x-ms-policy.edge-compliant-cvm, absent from an Azure CVM token",
    ),
  );
  cases.push(
    policy(
      "importkey template (not a policy)",
      skr("confidential-sidecar-containers", "examples.skr.aci.importkeyconfig.json"),
      "ERR_POLICY_MALFORMED",
    ),
  );
  return cases;
}

async function run(argv: readonly string[]): Promise<Outcome> {
  const out: string[] = [];
  const exitCode = await runCli([...argv, "--json"], { stdout: (l) => out.push(l), stderr: () => undefined });
  const json = JSON.parse(out.at(-1) ?? "{}") as {
    ok?: boolean;
    released?: boolean;
    error?: { code: string; message: string };
    claims?: Record<string, unknown>;
    summary?: string;
  };
  if (json.ok === true) {
    const c = json.claims ?? {};
    const detail =
      typeof c["measurement"] === "string"
        ? `measurement ${String(c["measurement"]).slice(0, 16)}… debug ${String(c["debug"])}`
        : typeof c["mrEnclave"] === "string"
          ? `mrEnclave ${String(c["mrEnclave"]).slice(0, 16)}… debug ${String(c["debug"])}`
          : typeof c["iss"] === "string"
            ? `iss ${String(c["iss"])}`
            : (json.summary ?? "");
    return { exitCode, result: "ok", detail };
  }
  if (json.released === false) return { exitCode, result: "refused", detail: json.summary ?? "" };
  return { exitCode, result: json.error?.code ?? "?", detail: json.error?.message ?? "" };
}

async function main(): Promise<number> {
  if (!existsSync(vectors)) {
    console.log(`No vectors folder at ${vectors}: nothing to check.`);
    return 0;
  }
  const cases = buildCases();
  const rows: string[][] = [];
  let failures = 0;
  for (const c of cases) {
    const outcome = await run(c.argv);
    const pass = outcome.result === c.expect;
    if (!pass) failures++;
    rows.push([
      pass ? "PASS" : "FAIL",
      c.group,
      c.name,
      c.expect,
      `${outcome.result} (exit ${outcome.exitCode})`,
      c.note ?? outcome.detail,
    ]);
  }
  const headers = ["", "kind", "vector", "expected", "got", "detail"];
  const widths = headers.map((h, i) => Math.min(70, Math.max(h.length, ...rows.map((r) => r[i]!.length))));
  const line = (r: string[]) => r.map((cell, i) => cell.slice(0, widths[i]).padEnd(widths[i]!)).join("  ");
  console.log(line(headers));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const r of rows) console.log(line(r));
  console.log(`\n${cases.length - failures} passed, ${failures} failed`);
  return failures === 0 ? 0 : 1;
}

main()
  .then((code) => {
    process.exitCode = code;
  })
  .catch((error: unknown) => {
    console.error(error instanceof Error ? error.message : String(error));
    process.exitCode = 3;
  })
  .finally(() => rmSync(work, { recursive: true, force: true }));
