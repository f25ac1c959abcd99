/**
 * Valid version-1 messages for the message tests, built from random bytes of realistic sizes
 * (an SEV-SNP report is 1184 bytes, a DCAP quote a few KiB). The schemas check shape only, so
 * random bytes stand in for real evidence.
 */
import { randomBytes } from "node:crypto";
import { derToPem } from "../../../core/x509/certificate.js";

export const b64url = (bytes: number): string => randomBytes(bytes).toString("base64url");
export const hex = (bytes: number): string => randomBytes(bytes).toString("hex");
const pem = (bytes: number): string => derToPem(randomBytes(bytes));

export const SENT_AT = "2026-03-01T12:00:00Z";

export function sevSnpRawEvidence() {
  return {
    tee: "sevsnp",
    format: "raw",
    report: b64url(1184),
    vcekChain: pem(1350) + pem(1650) + pem(1650),
    uvmEndorsements: b64url(3000),
  };
}

/** MAA's SevSnpVm `report` as the sidecar builds it: Go's padded base64url of a JSON envelope. */
export function sevSnpMaaReportEvidence() {
  const envelope = JSON.stringify({
    SnpReport: randomBytes(1184).toString("base64url"),
    VcekCertChain: Buffer.from(pem(1350) + pem(1650)).toString("base64url"),
  });
  // Go's base64.URLEncoding keeps the `=` padding; make sure there is some.
  const text = envelope.length % 3 === 0 ? `${envelope} ` : envelope;
  const padded = Buffer.from(text).toString("base64").replace(/\+/g, "-").replace(/\//g, "_");
  return { tee: "sevsnp", format: "maa-report", report: padded };
}

export function sgxEvidence() {
  return { tee: "sgx", format: "dcap-quote", quote: b64url(4700) };
}

export function challengeRequest(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: "challenge-request",
    version: 1,
    agentId: "payments.pod-7f9c:0",
    workload: "payments",
    tee: "sevsnp",
    sentAt: SENT_AT,
    ...overrides,
  };
}

export function attestationRequest(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: "attestation-request",
    version: 1,
    agentId: "payments.pod-7f9c:0",
    requestId: "4b7e6a2c-1f0d-4c52-9a53-0c8f2a6f1d11",
    workload: "payments",
    tee: "sevsnp",
    evidence: sevSnpRawEvidence(),
    runtimeData: b64url(420),
    challenge: b64url(32),
    keys: ["payments-db", "payments-api"],
    sentAt: SENT_AT,
    ...overrides,
  };
}

export function releaseResponse(): string {
  return `${b64url(1200)}.${b64url(2400)}.${b64url(256)}`;
}

export function trustedResult(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: "attestation-result",
    version: 1,
    agentId: "payments.pod-7f9c:0",
    requestId: "4b7e6a2c-1f0d-4c52-9a53-0c8f2a6f1d11",
    verdict: "trusted",
    keys: [{ name: "payments-db", version: hex(16), releaseResponse: releaseResponse() }],
    attestedUntil: "2026-03-01T20:00:00Z",
    sentAt: SENT_AT,
    ...overrides,
  };
}

export function deniedResult(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: "attestation-result",
    version: 1,
    agentId: "payments.pod-7f9c:0",
    requestId: "4b7e6a2c-1f0d-4c52-9a53-0c8f2a6f1d11",
    verdict: "denied",
    keys: [],
    denial: {
      code: "ERR_APPRAISAL_DENIED",
      message: "claims do not satisfy the policy",
      violations: [{ field: "x-ms-sevsnpvm-is-debuggable", expected: "false", actual: "true" }],
    },
    sentAt: SENT_AT,
    ...overrides,
  };
}

export function challenge(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: "challenge",
    version: 1,
    agentId: "payments.pod-7f9c:0",
    nonce: b64url(32),
    deadline: "2026-03-01T12:05:00Z",
    sentAt: SENT_AT,
    ...overrides,
  };
}

export function keyEvent(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: "key-event",
    version: 1,
    agentId: "payments.pod-7f9c:0",
    event: "rotated",
    keyName: "payments-db",
    keyVersion: hex(16),
    sentAt: SENT_AT,
    ...overrides,
  };
}

export function policyUpdate(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: "policy-update",
    version: 1,
    deploymentId: "build-2026.03.01-17",
    keys: ["payments-db"],
    add: [{ tee: "sevsnp", hostData: hex(32) }],
    retire: [{ tee: "sevsnp", hostData: hex(32) }],
    graceSeconds: 86_400,
    dryRun: false,
    sentAt: SENT_AT,
    ...overrides,
  };
}

export function rotateKey(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: "rotate-key",
    version: 1,
    keyName: "payments-db",
    keyVersion: hex(16),
    reason: "near-expiry",
    sourceEventId: "00eccf70-95a7-4e7e-8299-2eb17ee9ad64",
    sentAt: SENT_AT,
    ...overrides,
  };
}

export const ALL_VALID = {
  "challenge-request": () => challengeRequest(),
  "challenge-request (sgx)": () => challengeRequest({ tee: "sgx" }),
  "attestation-request (sevsnp raw)": () => attestationRequest(),
  "attestation-request (sevsnp maa-report)": () =>
    attestationRequest({ evidence: sevSnpMaaReportEvidence() }),
  "attestation-request (sgx dcap-quote)": () => attestationRequest({ tee: "sgx", evidence: sgxEvidence() }),
  "attestation-result (trusted)": () => trustedResult(),
  "attestation-result (denied)": () => deniedResult(),
  "attestation-result (error)": () => deniedResult({ verdict: "error" }),
  challenge: () => challenge(),
  "key-event": () => keyEvent(),
  "policy-update": () => policyUpdate(),
  "rotate-key": () => rotateKey(),
} as const;
