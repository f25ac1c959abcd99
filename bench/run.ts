/**
 * `npm run bench`: the trust core's hot paths measured side by side with the bare cryptographic
 * operation they cannot avoid, in one process and in alternating rounds; the local stack's
 * attestation rate, state round trips and Key Vault calls; the Functions app's cold start; the
 * agent's footprint on each transport; the encryption API. What matters is each ratio against a
 * reference measured in the same run. It ends with a table of every figure; with `--json` the
 * last line of stdout is one JSON object `{"results": [...]}` of the same figures (harness.ts
 * `BenchResult`) and everything else goes to stderr.
 */
import { verify as cryptoVerify } from "node:crypto";
import { jwtVerify } from "jose";
import { createSimulatedSnpPlatform } from "../core/evidence/simulated/sevsnp.js";
import { createSnpVerifier, parseSnpReport } from "../core/evidence/sevsnp/index.js";
import { createMaaTokenIssuer, staticSigningKeys, validateMaaToken } from "../core/token/index.js";
import {
  benchResult,
  compare,
  comparisonResult,
  formatComparison,
  formatResults,
  meetsTarget,
  type BenchResult,
  type Comparison,
} from "./harness.js";
import { benchColdStart, formatColdStartBench } from "./cold-start.js";
import { benchAttest, formatAttestBench } from "./attest.js";
import { benchAgent, formatAgentBench } from "./agent.js";
import { benchBusAttest, formatBusAttestBench } from "./bus-attest.js";
import { benchEncryption, formatEncryptionBench } from "./encryption.js";

const TARGET_RATIO = 0.9;
/** `--quick`: few, short rounds (the output's shape, not its figures; used by a smoke test). */
const ROUNDS = process.argv.includes("--quick") ? { rounds: 3, roundMs: 20 } : {};

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
    ROUNDS,
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
    ROUNDS,
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
    ROUNDS,
  );
}

const json = process.argv.includes("--json");
/** The readable report: stdout normally, stderr under --json (stdout then carries only the JSON). */
const print = (text: string) => (json ? process.stderr : process.stdout).write(`${text}\n`);

async function main(): Promise<void> {
  print(`Node ${process.version}, ${new Date().toISOString()}\n`);
  const results: BenchResult[] = [];
  if (process.argv.includes("--encryption")) {
    const encryption = await benchEncryption();
    print(formatEncryptionBench(encryption) + "\n");
    results.push(...encryptionResults(encryption));
    return finish(results);
  }
  const token = await tokenValidation();
  const snp = await snpVerification();
  for (const r of [token, snp]) print(formatComparison(r) + "\n");
  const noise = await control();
  print(formatComparison(noise) + "\n");
  results.push(
    comparisonResult(token, { ratio: TARGET_RATIO, better: "higher" }),
    comparisonResult(snp, { ratio: TARGET_RATIO, better: "higher" }),
    comparisonResult(noise),
  );
  if (process.argv.includes("--core")) return finish(results);

  const cold = await benchColdStart();
  print(formatColdStartBench(cold) + "\n");
  results.push(
    benchResult(
      "functions cold start: import + register every function (as built)",
      { value: cold.appMs, unit: "ms" },
      { name: "bare @azure/functions app, same registrations", value: cold.bareMs },
      { ratio: 1.5, better: "lower" },
    ),
    benchResult(
      "functions cold start: the app bundled into one file",
      { value: cold.bundledMs, unit: "ms" },
      { name: "bare @azure/functions app, same registrations", value: cold.bareMs },
      { ratio: 1.5, better: "lower" },
    ),
    benchResult(
      "first attest invocation in a fresh process (builds the composition)",
      { value: cold.firstInvocationMs, unit: "ms" },
      { name: "the same invocation, warm", value: cold.warmInvocationMs },
      { ratio: null, better: "lower" },
    ),
  );

  for (const latencyMs of [0, 50]) {
    const attestBench = await benchAttest({ latencyMs });
    print(formatAttestBench(attestBench) + "\n");
    results.push(
      benchResult(
        `attestations/s through the local stack, ${latencyMs} ms MAA / Key Vault latency`,
        { value: attestBench.attestationsPerSecond, unit: "attestations/s" },
        {
          name: `bare local MAA attest call, ${latencyMs} ms latency`,
          value: attestBench.bareMaaCallsPerSecond,
        },
        { ratio: null, better: "higher" },
      ),
    );
    if (latencyMs !== 0) continue;
    results.push(
      benchResult(
        "state-store round trips per attestation (challenge + attestation request)",
        { value: attestBench.stateRoundTrips, unit: "requests" },
        {
          name: "Key Vault calls per attestation (releases + signatures)",
          value: attestBench.keysPerRequest + 2,
        },
        { ratio: null, better: "lower" },
      ),
      benchResult(
        "Key Vault release calls per trusted attestation",
        { value: attestBench.releasesPerTrusted, unit: "calls" },
        { name: "keys requested", value: attestBench.keysPerRequest },
        { ratio: 1, better: "lower" },
      ),
      benchResult(
        "Key Vault release calls per denied attestation",
        { value: attestBench.releasesPerDenied, unit: "calls" },
        { name: "keys requested", value: attestBench.keysPerRequest },
        { ratio: 0, better: "lower" },
      ),
      benchResult(
        "Key Vault sign calls per attestation (challenge + result)",
        { value: attestBench.signaturesPerAttestation, unit: "calls" },
        { name: "signed messages per attestation", value: 2 },
        { ratio: 1, better: "lower" },
      ),
    );
    if (
      attestBench.releasesPerTrusted !== attestBench.keysPerRequest ||
      attestBench.releasesPerDenied !== 0
    ) {
      print("Key Vault calls per attestation are not exactly one release per key (and none on denial).");
      process.exitCode = 1;
    }
    if (attestBench.signaturesPerAttestation !== 2) {
      print("Control-plane signatures per attestation are not exactly two (challenge and result).");
      process.exitCode = 1;
    }
  }

  for (const [transport, label] of [
    ["storage-queue", "Storage Queues (Azurite)"],
    ["servicebus", "Service Bus (local AMQP endpoint)"],
  ] as const) {
    const agent = await benchAgent({ transport });
    print(formatAgentBench(agent, label) + "\n");
    results.push(
      benchResult(
        `agent steady-state RSS over ${label}`,
        { value: agent.agentRssBytes / 1024 / 1024, unit: "MiB" },
        { name: "bare node process", value: agent.bareNodeRssBytes / 1024 / 1024 },
        { ratio: 1.3, better: "lower" },
      ),
      benchResult(
        `agent start → ready (trusted, key held) over ${label}`,
        { value: agent.agentReadyMs, unit: "ms" },
        { name: "bare node start → first output", value: agent.bareNodeStartMs },
        { ratio: null, better: "lower" },
      ),
    );
  }
  const overBus = await benchBusAttest();
  print(formatBusAttestBench(overBus) + "\n");
  results.push(
    benchResult(
      "attestations/s through the local stack over Service Bus (host + agents on AMQP)",
      { value: overBus.serviceBus, unit: "attestations/s" },
      { name: "the same over Storage Queues", value: overBus.storageQueue },
      { ratio: null, better: "higher" },
    ),
  );

  const encryption = await benchEncryption();
  print(formatEncryptionBench(encryption) + "\n");
  results.push(...encryptionResults(encryption));
  finish(results);
}

/** The encryption API's figures in the common shape (no targets set by the issue). */
function encryptionResults(bench: Awaited<ReturnType<typeof benchEncryption>>): BenchResult[] {
  return [...bench.operations, ...bench.queries].map((c) => comparisonResult(c));
}

function finish(results: readonly BenchResult[]): void {
  print(formatResults(results));
  const missed = results.filter((r) => !meetsTarget(r));
  print(
    missed.length === 0
      ? "\nEvery figure with a target meets it."
      : `\nTargets missed: ${missed.map((m) => m.name).join("; ")}`,
  );
  if (json) process.stdout.write(`${JSON.stringify({ results })}\n`);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
