/**
 * `npm run bench`: the trust core's hot paths measured side by side with the bare cryptographic
 * operation they cannot avoid, in one process and in alternating rounds. What matters is the
 * ratio: how much of the bare rate survives all the checks around it once certificates and
 * signing keys are cached.
 */
import { verify as cryptoVerify } from "node:crypto";
import { jwtVerify } from "jose";
import { createSimulatedSnpPlatform } from "../core/evidence/simulated/sevsnp.js";
import { createSnpVerifier, parseSnpReport } from "../core/evidence/sevsnp/index.js";
import { createMaaTokenIssuer, staticSigningKeys, validateMaaToken } from "../core/token/index.js";
import { compare, formatComparison, type Comparison } from "./harness.js";
import { benchAttest, formatAttestBench } from "./attest.js";
import { benchAgent, formatAgentBench } from "./agent.js";
import { benchEncryption, formatEncryptionBench } from "./encryption.js";

const TARGET_RATIO = 0.9;

async function tokenValidation(): Promise<Comparison> {
  const issuer = await createMaaTokenIssuer({ issuer: "https://bench.attest.example" });
  const now = new Date();
  const token = await issuer.issue(
    {
      "x-ms-attestation-type": "sevsnpvm",
      "x-ms-sevsnpvm-hostdata": "ab".repeat(32),
      "x-ms-sevsnpvm-is-debuggable": false,
      "x-ms-sevsnpvm-vmpl": 0,
    },
    { at: now, nonce: "bench-nonce" },
  );
  const keys = staticSigningKeys(issuer.certsDocument());
  const publicKey = issuer.publicKey;
  return compare(
    "MAA token validation (RS256, 2048-bit key, keys cached)",
    {
      label: "validateMaaToken (all checks)",
      run: () =>
        validateMaaToken(token, { keys, issuer: issuer.issuer, at: now, expectedNonce: "bench-nonce" }),
    },
    { label: "bare jose.jwtVerify", run: () => jwtVerify(token, publicKey) },
  );
}

/** The same workload against itself: how far apart two identical paths measure on this machine. */
async function control(): Promise<Comparison> {
  const issuer = await createMaaTokenIssuer({ issuer: "https://bench.attest.example" });
  const token = await issuer.issue({ "x-ms-attestation-type": "sevsnpvm" }, { at: new Date() });
  const key = issuer.publicKey;
  return compare(
    "control: bare jose.jwtVerify against itself (measurement noise)",
    { label: "jose.jwtVerify (A)", run: () => jwtVerify(token, key) },
    { label: "jose.jwtVerify (B)", run: () => jwtVerify(token, key) },
  );
}

async function snpVerification(): Promise<Comparison> {
  const platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  const reportBytes = platform.signReport({ reportData: Buffer.alloc(32, 7), hostData: Buffer.alloc(32, 9) });
  const verifier = createSnpVerifier({ trustedRoots: [platform.ark] });
  const chain = [platform.intermediate, platform.ark];
  const at = new Date("2030-01-01T00:00:00Z");
  const expectedReportData = Buffer.alloc(32, 7);
  // The bare operation: one ECDSA P-384 / SHA-384 verification of the same signed bytes.
  const parsed = parseSnpReport(reportBytes);
  const signature = Buffer.concat([parsed.signature.r.subarray(-48), parsed.signature.s.subarray(-48)]);
  const leafKey = platform.leaf.publicKey;
  const signed = parsed.signedBytes;
  if (!cryptoVerify("sha384", signed, { key: leafKey, dsaEncoding: "ieee-p1363" }, signature)) {
    throw new Error("bench setup: bare verification failed");
  }
  return compare(
    "SEV-SNP report verification (ECDSA P-384, chain cached)",
    {
      label: "SnpVerifier.verify (parse + all checks)",
      run: () => verifier.verify({ report: reportBytes, vcek: platform.leaf, chain, at, expectedReportData }),
    },
    {
      label: "bare crypto.verify ECDSA P-384",
      run: () => cryptoVerify("sha384", signed, { key: leafKey, dsaEncoding: "ieee-p1363" }, signature),
    },
  );
}

async function main(): Promise<void> {
  console.log(`Node ${process.version}, ${new Date().toISOString()}\n`);
  if (process.argv.includes("--encryption")) {
    console.log(formatEncryptionBench(await benchEncryption()) + "\n");
    return;
  }
  const results = [await tokenValidation(), await snpVerification()];
  for (const r of results) console.log(formatComparison(r) + "\n");
  console.log(formatComparison(await control()) + "\n");
  if (process.argv.includes("--core")) {
    reportMisses(results);
    return;
  }
  const attestBench = await benchAttest();
  console.log(formatAttestBench(attestBench) + "\n");
  const agentBench = await benchAgent();
  console.log(formatAgentBench(agentBench) + "\n");
  console.log(formatEncryptionBench(await benchEncryption()) + "\n");
  const agentOverServiceBus = await benchAgent({ transport: "servicebus" });
  console.log(formatAgentBench(agentOverServiceBus, "Service Bus (local AMQP endpoint)") + "\n");
  if (attestBench.releasesPerTrusted !== attestBench.keysPerRequest || attestBench.releasesPerDenied !== 0) {
    console.log("Key Vault calls per attestation are not exactly one release per key (and none on denial).");
    process.exitCode = 1;
  }
  if (attestBench.signaturesPerAttestation !== 2) {
    console.log("Control-plane signatures per attestation are not exactly two (challenge and result).");
    process.exitCode = 1;
  }
  reportMisses(results);
}

function reportMisses(results: readonly Comparison[]): void {
  const misses = results.filter((r) => r.ratio < TARGET_RATIO);
  console.log(
    misses.length === 0
      ? `All paths at or above ${TARGET_RATIO * 100}% of their bare rate.`
      : `Below ${TARGET_RATIO * 100}% of the bare rate: ${misses.map((m) => m.name).join("; ")}`,
  );
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
