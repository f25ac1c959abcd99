/**
 * The attest-and-release use case: one `attestation-request` in, one `attestation-result` out.
 *
 * The request's evidence goes to the attestation service (MAA) with the exact runtime-data
 * bytes; the token that comes back is validated here (signature by the pinned issuer's key,
 * lifetime, nonce, runtime-data binding), its claims are appraised, and only then is each
 * requested key released by the key store — wrapped by Key Vault to the enclave's runtime key.
 * Every outcome is recorded and answered; nothing on an error path releases a key.
 *
 * Delivery is at least once, so the work is claimed per request id: a redelivery of finished
 * work re-sends the stored answer without calling Key Vault again. Transient failures (MAA or
 * Key Vault throttling, 5xx, timeouts) are retried by the port wrappers, then handed back for
 * redelivery; on the last delivery the agent is told and the message is dead-lettered.
 */
import { createHash } from "node:crypto";
import { ShieldError, isShieldError } from "../errors.js";
import { appraiseClaims, assertAppraised, type AppraisalPolicy } from "../appraisal/index.js";
import { buildMaaSnpEnvelope, SNP_REPORT_SIZE } from "../evidence/sevsnp/index.js";
import { parseReleaseResponse, type ReleaseEncryption } from "../keywrap/index.js";
import {
  denialFromError,
  makeAttestationResult,
  parseAttestationRequest,
  type AttestationRequest,
  type AttestationResult,
  type Evidence,
  type Measurement,
  type ReleasedKey,
} from "../messages/index.js";
import type { AttestationService } from "../ports/attestation.js";
import type { AgentChannel } from "../ports/bus.js";
import type { Clock } from "../ports/clock.js";
import type { KeyStore } from "../ports/key-store.js";
import type { Logger } from "../ports/logger.js";
import type { RequestLease, StateStore } from "../ports/state.js";
import { changeAgent } from "../state/agents.js";
import { validateMaaToken, type SigningKeyResolver, type ValidatedMaaToken } from "../token/index.js";
import { pemToDerList } from "../x509/certificate.js";

export interface AttestPorts {
  /** The attestation service, already wrapped with `retrying()` for transient failures. */
  readonly attestation: AttestationService;
  /** The key store, already wrapped with `retrying()`. */
  readonly keys: KeyStore;
  /** Signing keys of the pinned issuer (cached `/certs`). */
  readonly tokenKeys: SigningKeyResolver;
  readonly state: StateStore;
  readonly agents: AgentChannel;
  readonly clock: Clock;
  readonly logger: Logger;
}

export interface AttestConfig {
  /** The MAA issuer tokens must come from (`iss` pinned). */
  readonly issuer: string;
  readonly appraisal: AppraisalPolicy;
  /** How long a good attestation keeps an agent trusted (capped by the token's `exp`). */
  readonly attestationPeriodSeconds: number;
  /** How Key Vault wraps released keys (default RSA_AES_KEY_WRAP_256). */
  readonly encryption?: ReleaseEncryption;
  /** The queue's MaxDeliveryCount: on that delivery a transient failure is final (default 10). */
  readonly maxDeliveryCount?: number;
  /** How long one invocation holds a request before a redelivery may take it over (default 300 s). */
  readonly leaseSeconds?: number;
  readonly maxMessageBytes?: number;
}

export interface AttestDelivery {
  readonly messageId: string;
  /** 1 on first delivery. */
  readonly deliveryCount: number;
}

/** What the trigger adapter should do with the message. */
export type Settlement =
  | { readonly action: "complete" }
  /** Leave it for redelivery (throw, in Functions). */
  | { readonly action: "retry"; readonly error: ShieldError }
  /** Final failure: the agent has been told; move the message to the dead-letter queue. */
  | { readonly action: "dead-letter"; readonly reason: string; readonly description: string };

export interface AttestOutcome {
  readonly settlement: Settlement;
  readonly agentId?: string;
  readonly requestId?: string;
  readonly verdict?: AttestationResult["verdict"];
  /** True when the answer was the stored answer of an earlier delivery. */
  readonly replayed?: boolean;
  readonly keysReleased: number;
}

export const DEFAULT_MAX_DELIVERY_COUNT = 10;
export const DEFAULT_ATTEST_MESSAGE_BYTES = 256 * 1024;
const DEFAULT_LEASE_SECONDS = 300;

/** The audit partition of a key: the tamper-evident record of who received which version. */
export const keyAuditPartition = (keyName: string): string => `key-${keyName}`;
/** The audit partition of an agent's attestations. */
export const agentAuditPartition = (agentId: string): string => `agent-${agentId}`;
/** Messages too malformed to name an agent. */
export const INTAKE_AUDIT_PARTITION = "intake";

interface Released {
  readonly keys: ReleasedKey[];
  readonly validated: ValidatedMaaToken;
  readonly measurement: Measurement;
  readonly attestedUntil: Date;
}

export function createAttestHandler(ports: AttestPorts, config: AttestConfig) {
  const maxDeliveryCount = config.maxDeliveryCount ?? DEFAULT_MAX_DELIVERY_COUNT;
  const leaseMs = (config.leaseSeconds ?? DEFAULT_LEASE_SECONDS) * 1000;
  const maxBytes = config.maxMessageBytes ?? DEFAULT_ATTEST_MESSAGE_BYTES;
  const encryption = config.encryption ?? "RSA_AES_KEY_WRAP_256";
  const { state, agents, clock, logger } = ports;

  return async function handleAttestationRequest(
    body: unknown,
    delivery: AttestDelivery,
  ): Promise<AttestOutcome> {
    let request: AttestationRequest;
    try {
      request = parseAttestationRequest(body, { maxBytes });
    } catch (error) {
      return rejectMalformed(body, delivery, toShieldError(error));
    }
    const { agentId, requestId } = request;
    const log = (
      level: "info" | "warn" | "error",
      message: string,
      extra: Record<string, string | number> = {},
    ) =>
      logger(level, message, {
        agentId,
        requestId,
        messageId: delivery.messageId,
        deliveryCount: delivery.deliveryCount,
        ...extra,
      });

    const now = clock.now();
    const claim = await state.claimRequest(
      { scope: agentId, requestId },
      { at: now, leaseUntil: new Date(now.getTime() + leaseMs) },
    );
    if (claim.state === "completed") {
      // A redelivery of finished work: the same answer again, and no second release.
      await agents.sendToAgent(agentId, claim.result as AttestationResult);
      log("info", "attestation request already answered; answer re-sent");
      const verdict = claim.result.type === "attestation-result" ? claim.result.verdict : undefined;
      return {
        settlement: { action: "complete" },
        agentId,
        requestId,
        replayed: true,
        keysReleased: 0,
        ...(verdict ? { verdict } : {}),
      };
    }
    if (claim.state === "in-progress") {
      log("info", "attestation request is being handled by another invocation");
      return {
        settlement: {
          action: "retry",
          error: new ShieldError("ERR_CONFLICT", "request is being handled elsewhere"),
        },
        agentId,
        requestId,
        keysReleased: 0,
      };
    }

    let result: AttestationResult;
    let released: Released | undefined;
    try {
      released = await attestAndRelease(request, claim.lease, now);
      result = makeAttestationResult({
        agentId,
        requestId,
        keys: released.keys,
        attestedUntil: released.attestedUntil,
        sentAt: clock.now(),
      });
      await recordTrusted(request, released, now);
      log("info", "attestation trusted; keys released", {
        keys: released.keys.length,
        tokenSha256: released.validated.tokenHash,
      });
    } catch (caught) {
      const error = toShieldError(caught);
      const final = delivery.deliveryCount >= maxDeliveryCount;
      if (error.transient && !final) {
        await state.releaseRequest(claim.lease).catch(() => undefined);
        log("warn", "transient failure; left for redelivery", { code: error.code });
        return { settlement: { action: "retry", error }, agentId, requestId, keysReleased: 0 };
      }
      const verdict = error.transient ? "error" : "denied";
      result = makeAttestationResult({
        agentId,
        requestId,
        verdict,
        denial: denialFromError(error),
        sentAt: clock.now(),
      });
      await recordRefused(request, error, verdict, now);
      log(
        verdict === "denied" ? "info" : "error",
        verdict === "denied" ? "attestation denied" : "attestation failed for good",
        {
          code: error.code,
        },
      );
      await state.completeRequest(claim.lease, result, clock.now());
      await agents.sendToAgent(agentId, result);
      if (verdict === "error") {
        return {
          settlement: {
            action: "dead-letter",
            reason: error.code,
            description: `gave up after ${delivery.deliveryCount} deliveries: ${error.message}`,
          },
          agentId,
          requestId,
          verdict,
          keysReleased: 0,
        };
      }
      return { settlement: { action: "complete" }, agentId, requestId, verdict, keysReleased: 0 };
    }
    await state.completeRequest(claim.lease, result, clock.now());
    await agents.sendToAgent(agentId, result);
    return {
      settlement: { action: "complete" },
      agentId,
      requestId,
      verdict: "trusted",
      keysReleased: released.keys.length,
    };
  };

  /** Checks in order; throws a ShieldError at the first that fails. */
  async function attestAndRelease(
    request: AttestationRequest,
    lease: RequestLease,
    now: Date,
  ): Promise<Released> {
    const challenge = await checkChallenge(request, now); // 1. the nonce answers this agent's pending challenge
    const runtimeData = Buffer.from(request.runtimeData, "base64url");
    const token = await obtainToken(request.evidence, runtimeData, challenge); // 2. MAA verifies the evidence
    const validated = await validateMaaToken(token, {
      // 3. the token: pinned issuer, signature, lifetime, nonce, runtime-data binding
      keys: ports.tokenKeys,
      issuer: config.issuer,
      at: now,
      runtimeData,
      requireAttestationType: request.tee === "sevsnp" ? "sevsnpvm" : "sgx",
      ...(challenge === undefined ? {} : { expectedNonce: challenge }),
    });
    assertAppraised(appraiseClaims(validated.claims, config.appraisal)); // 4. our appraisal policy
    const measurement = measurementOf(request, validated);
    if (challenge !== undefined) await consumeChallenge(request, challenge, lease, now); // 5. single use
    const keys: ReleasedKey[] = [];
    for (const name of request.keys) {
      // 6. Key Vault checks the token against the key's release policy and wraps the key.
      const releaseResponse = await ports.keys.release(name, token, { encryption });
      keys.push({ name, version: versionOf(releaseResponse), releaseResponse });
    }
    const periodEnd = now.getTime() + config.attestationPeriodSeconds * 1000;
    const attestedUntil = new Date(Math.min(periodEnd, validated.claims.exp * 1000));
    return { keys, validated, measurement, attestedUntil };
  }

  async function checkChallenge(request: AttestationRequest, now: Date): Promise<string | undefined> {
    if (request.challenge === undefined) return undefined;
    const agent = await state.getAgent(request.agentId);
    const pending = agent?.challenge;
    if (pending === undefined || pending.nonce !== request.challenge) {
      throw new ShieldError("ERR_TOKEN_NONCE", "the request answers no pending challenge", {
        violations: [
          { field: "challenge", expected: "the agent's pending challenge", actual: "another nonce" },
        ],
      });
    }
    if (now.getTime() > pending.deadline.getTime()) {
      throw new ShieldError("ERR_TOKEN_NONCE", "the challenge deadline has passed", {
        violations: [
          {
            field: "challenge",
            expected: `answered by ${pending.deadline.toISOString()}`,
            actual: now.toISOString(),
          },
        ],
      });
    }
    return pending.nonce;
  }

  async function consumeChallenge(
    request: AttestationRequest,
    nonce: string,
    lease: RequestLease,
    now: Date,
  ): Promise<void> {
    const pending = (await state.getAgent(request.agentId))?.challenge;
    const use = await state.consumeNonce(request.agentId, nonce, {
      at: now,
      expiresAt: pending?.deadline ?? now,
    });
    // A takeover of this same request after a transient failure finds its own nonce used; the
    // pending challenge is only cleared by success, so it still names this nonce.
    const retryOfThisRequest = lease.attempt > 1 && pending?.nonce === nonce;
    if (use === "replayed" && !retryOfThisRequest) {
      throw new ShieldError("ERR_TOKEN_NONCE", "the challenge nonce was already used");
    }
  }

  async function obtainToken(
    evidence: Evidence,
    runtimeData: Buffer,
    nonce: string | undefined,
  ): Promise<string> {
    const common = {
      runtimeData,
      runtimeDataType: "JSON" as const,
      ...(nonce === undefined ? {} : { nonce }),
    };
    switch (evidence.tee) {
      case "sevsnp":
        return ports.attestation.attestSevSnp({ report: maaReportOf(evidence), ...common });
      case "sgx":
        return ports.attestation.attestSgx({ quote: Buffer.from(evidence.quote, "base64url"), ...common });
    }
  }

  async function recordTrusted(request: AttestationRequest, released: Released, now: Date): Promise<void> {
    const { agentId, requestId } = request;
    const { validated, measurement, attestedUntil } = released;
    await state.recordAttestation({
      agentId,
      requestId,
      at: now,
      verdict: "trusted",
      violations: [],
      tokenHash: validated.tokenHash,
      claimsDigest: sha256(JSON.stringify(validated.claims)),
      measurement,
      attestedUntil,
      keys: request.keys,
    });
    await changeAgent(state, agentId, (current) => ({
      agentId,
      workload: request.workload,
      tee: request.tee,
      status: "trusted",
      lastAttestedAt: now,
      attestedUntil,
      measurement,
      updatedAt: now,
      // The challenge is answered: clearing it makes its nonce useless for any later request.
      ...(current?.challenge !== undefined && current.challenge.nonce !== request.challenge
        ? { challenge: current.challenge }
        : {}),
    }));
    for (const key of released.keys) {
      await state.recordHolding({
        agentId,
        keyName: key.name,
        keyVersion: key.version,
        measurement,
        releasedAt: now,
        requestId,
      });
      await state.appendAudit(keyAuditPartition(key.name), {
        at: now,
        kind: "key-released",
        subject: agentId,
        requestId,
        details: {
          keyVersion: key.version,
          measurement: measurementText(measurement),
          tokenSha256: validated.tokenHash,
        },
      });
    }
    await state.appendAudit(agentAuditPartition(agentId), {
      at: now,
      kind: "attestation-trusted",
      subject: agentId,
      requestId,
      details: {
        keys: request.keys.join(","),
        measurement: measurementText(measurement),
        attestedUntil: attestedUntil.toISOString(),
      },
    });
  }

  async function recordRefused(
    request: AttestationRequest,
    error: ShieldError,
    verdict: "denied" | "error",
    now: Date,
  ): Promise<void> {
    const { agentId, requestId } = request;
    await state.recordAttestation({
      agentId,
      requestId,
      at: now,
      verdict,
      reasonCode: error.code,
      violations: error.violations.slice(0, 64),
      keys: request.keys,
    });
    if (verdict === "denied") {
      // Failed evidence means the agent is not (or no longer) trusted; keep its challenge so a
      // re-attestation timer still sees the deadline.
      await changeAgent(state, agentId, (current) => ({
        agentId,
        workload: request.workload,
        tee: request.tee,
        status: current?.status === "revoked" ? "revoked" : "untrusted",
        statusReason: error.code,
        updatedAt: now,
        ...(current?.lastAttestedAt ? { lastAttestedAt: current.lastAttestedAt } : {}),
        ...(current?.measurement ? { measurement: current.measurement } : {}),
        ...(current?.challenge ? { challenge: current.challenge } : {}),
      }));
    }
    await state.appendAudit(agentAuditPartition(agentId), {
      at: now,
      kind: verdict === "denied" ? "attestation-denied" : "attestation-failed",
      subject: agentId,
      requestId,
      details: { code: error.code, violations: error.violations.length, keys: request.keys.join(",") },
    });
  }

  async function rejectMalformed(
    body: unknown,
    delivery: AttestDelivery,
    error: ShieldError,
  ): Promise<AttestOutcome> {
    const now = clock.now();
    const ids = salvageIds(body);
    logger("warn", "malformed attestation request recorded and completed", {
      messageId: delivery.messageId,
      code: error.code,
      ...(ids ? { agentId: ids.agentId, requestId: ids.requestId } : {}),
    });
    await state.appendAudit(INTAKE_AUDIT_PARTITION, {
      at: now,
      kind: "message-rejected",
      subject: ids?.agentId ?? "unknown",
      ...(ids ? { requestId: ids.requestId } : {}),
      details: {
        messageId: delivery.messageId.slice(0, 128),
        code: error.code,
        violations: error.violations.length,
      },
    });
    if (ids !== undefined) {
      await agents.sendToAgent(
        ids.agentId,
        makeAttestationResult({ ...ids, verdict: "denied", denial: denialFromError(error), sentAt: now }),
      );
    }
    return { settlement: { action: "complete" }, ...(ids ?? {}), verdict: "denied", keysReleased: 0 };
  }
}

/** The agent and request ids of a message that failed its schema, when they are themselves valid. */
function salvageIds(body: unknown): { agentId: string; requestId: string } | undefined {
  let value = body;
  if (typeof body === "string" || body instanceof Uint8Array) {
    try {
      value = JSON.parse(typeof body === "string" ? body : Buffer.from(body).toString("utf8")) as unknown;
    } catch {
      return undefined;
    }
  }
  if (typeof value !== "object" || value === null) return undefined;
  const { agentId, requestId } = value as Record<string, unknown>;
  const id = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
  if (
    typeof agentId !== "string" ||
    typeof requestId !== "string" ||
    !id.test(agentId) ||
    !id.test(requestId)
  ) {
    return undefined;
  }
  return { agentId, requestId };
}

function maaReportOf(evidence: Extract<Evidence, { tee: "sevsnp" }>): string {
  if (evidence.format === "maa-report") return evidence.report;
  const report = Buffer.from(evidence.report, "base64url");
  if (report.length !== SNP_REPORT_SIZE) {
    throw new ShieldError(
      "ERR_EVIDENCE_MALFORMED",
      `SEV-SNP report must be ${SNP_REPORT_SIZE} bytes, got ${report.length}`,
    );
  }
  const [vcek, ...chain] = pemToDerList(evidence.vcekChain).map((der) => derToPemBlock(der));
  if (vcek === undefined)
    throw new ShieldError("ERR_EVIDENCE_MALFORMED", "the VCEK chain holds no certificate");
  return buildMaaSnpEnvelope({
    report,
    vcek,
    chain: chain.join(""),
    ...(evidence.uvmEndorsements === undefined
      ? {}
      : { uvmEndorsements: [Buffer.from(evidence.uvmEndorsements, "base64url")] }),
  });
}

function derToPemBlock(der: Buffer): string {
  const body = der
    .toString("base64")
    .replace(/(.{64})/g, "$1\n")
    .replace(/\n$/, "");
  return `-----BEGIN CERTIFICATE-----\n${body}\n-----END CERTIFICATE-----\n`;
}

function measurementOf(request: AttestationRequest, validated: ValidatedMaaToken): Measurement {
  const claims = validated.claims;
  if (request.tee === "sevsnp") {
    const hostData = claims["x-ms-sevsnpvm-hostdata"];
    if (typeof hostData !== "string" || !/^[0-9a-f]{64}$/i.test(hostData)) {
      throw new ShieldError("ERR_TOKEN_CLAIMS", "token has no x-ms-sevsnpvm-hostdata");
    }
    return { tee: "sevsnp", hostData: hostData.toLowerCase() };
  }
  const mrenclave = claims["x-ms-sgx-mrenclave"];
  const mrsigner = claims["x-ms-sgx-mrsigner"];
  if (typeof mrenclave !== "string" || typeof mrsigner !== "string") {
    throw new ShieldError("ERR_TOKEN_CLAIMS", "token has no x-ms-sgx-mrenclave / x-ms-sgx-mrsigner");
  }
  return { tee: "sgx", mrenclave: mrenclave.toLowerCase(), mrsigner: mrsigner.toLowerCase() };
}

function measurementText(m: Measurement): string {
  return m.tee === "sevsnp" ? `sevsnp:${m.hostData}` : `sgx:${m.mrenclave ?? "-"}:${m.mrsigner ?? "-"}`;
}

/** The version segment of the released key's id (`.../keys/<name>/<version>`). */
function versionOf(releaseResponse: string): string {
  const { kid } = parseReleaseResponse(releaseResponse);
  const version = kid.split("/").filter(Boolean).at(-1);
  if (version === undefined || !/^[0-9A-Za-z-]{1,64}$/.test(version)) {
    throw new ShieldError("ERR_RELEASE_RESPONSE_MALFORMED", "release response names no key version");
  }
  return version;
}

function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/** Unexpected errors are treated as transient: retried, then reported — never a release. */
function toShieldError(error: unknown): ShieldError {
  if (isShieldError(error)) return error;
  return new ShieldError("ERR_INTERNAL", "unexpected failure while handling the request", { cause: error });
}
