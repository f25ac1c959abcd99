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
import type { AgentRecord, AgentState, AttestationRecord, RequestLease, StateStore } from "../ports/state.js";
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
  /** The largest answer the agent channel carries, in bytes of JSON (default 240 000: Service Bus Standard). */
  readonly maxResultBytes?: number;
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

/** What an attempt got through, for the records of a failure. */
interface Progress {
  challengeMatched: boolean;
  tokenHash?: string;
  measurement?: Measurement;
  readonly released: { name: string; version: string }[];
}

/** A release response with its signer chain is 3–5 KiB; 8 KiB leaves room for RSA-4096 keys. */
const ESTIMATED_RELEASE_RESPONSE_BYTES = 8 * 1024;
const RESULT_OVERHEAD_BYTES = 2 * 1024;

function withoutEtag(agent: AgentRecord): AgentState {
  const { etag: _etag, ...rest } = agent;
  return rest;
}

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
  const maxResultBytes = config.maxResultBytes ?? 240_000;
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
    const final = delivery.deliveryCount >= maxDeliveryCount;
    const claim = await state.claimRequest(
      { scope: agentId, requestId },
      { at: now, leaseUntil: new Date(now.getTime() + leaseMs) },
    );
    if (claim.state === "completed") {
      // A redelivery of finished work: the same answer again, and no second release. Records
      // an earlier delivery could not finish are completed from the stored answer.
      const stored = claim.result as AttestationResult;
      if (stored.verdict === "trusted") await finishTrustedRecords(request, stored, now);
      await agents.sendToAgent(agentId, stored);
      log("info", "attestation request already answered; answer re-sent");
      return {
        settlement: { action: "complete" },
        agentId,
        requestId,
        replayed: true,
        keysReleased: 0,
        verdict: stored.verdict,
      };
    }
    if (claim.state === "in-progress") {
      const busy = new ShieldError("ERR_CONFLICT", "the request is being handled by another invocation");
      if (!final) {
        log("info", "attestation request is being handled by another invocation");
        return { settlement: { action: "retry", error: busy }, agentId, requestId, keysReleased: 0 };
      }
      // The last delivery must not vanish silently: tell the agent to ask again.
      await agents.sendToAgent(
        agentId,
        makeAttestationResult({
          agentId,
          requestId,
          verdict: "error",
          denial: denialFromError(busy),
          sentAt: now,
        }),
      );
      return {
        settlement: { action: "dead-letter", reason: busy.code, description: busy.message },
        agentId,
        requestId,
        verdict: "error",
        keysReleased: 0,
      };
    }

    const lease = claim.lease;
    let completed = false;
    const progress: Progress = { challengeMatched: false, released: [] };
    try {
      let result: Extract<AttestationResult, { verdict: "trusted" }>;
      let released: Released;
      try {
        released = await attestAndRelease(request, progress, now);
        result = makeAttestationResult({
          agentId,
          requestId,
          keys: released.keys,
          attestedUntil: released.attestedUntil,
          sentAt: clock.now(),
        }) as Extract<AttestationResult, { verdict: "trusted" }>;
        checkResultSize(result);
        // The attestation record, then the stored answer: from here on a redelivery re-sends
        // this answer and never calls Key Vault again.
        await state.recordAttestation(attestationRecord(request, released, now));
      } catch (caught) {
        const error = toShieldError(caught);
        if (error.transient && !final) {
          log("warn", "transient failure; left for redelivery", { code: error.code });
          await recordDiscardedReleases(request, progress, error, now);
          return { settlement: { action: "retry", error }, agentId, requestId, keysReleased: 0 };
        }
        return await refuse(request, lease, error, progress, delivery, now, () => {
          completed = true;
        });
      }
      await state.completeRequest(lease, result, clock.now());
      completed = true;
      await finishTrustedRecords(request, result, now, released);
      await agents.sendToAgent(agentId, result);
      log("info", "attestation trusted; keys released", {
        keys: released.keys.length,
        tokenSha256: released.validated.tokenHash,
      });
      return {
        settlement: { action: "complete" },
        agentId,
        requestId,
        verdict: "trusted",
        keysReleased: released.keys.length,
      };
    } catch (caught) {
      // A failure after the answer was stored (records, sending): redelivery re-sends it.
      const error = toShieldError(caught);
      log("warn", "could not finish; left for redelivery", { code: error.code });
      return { settlement: { action: "retry", error }, agentId, requestId, keysReleased: 0 };
    } finally {
      if (!completed) await state.releaseRequest(lease).catch(() => undefined);
    }
  };

  /** A final refusal: recorded, stored as the answer, and sent. */
  async function refuse(
    request: AttestationRequest,
    lease: RequestLease,
    error: ShieldError,
    progress: Progress,
    delivery: AttestDelivery,
    now: Date,
    markCompleted: () => void,
  ): Promise<AttestOutcome> {
    const { agentId, requestId } = request;
    // Failures the workload's evidence caused are denials; configuration and outages are errors.
    const verdict =
      error.transient || error.code === "ERR_CONFIG" || error.code === "ERR_INTERNAL" ? "error" : "denied";
    const result = makeAttestationResult({
      agentId,
      requestId,
      verdict,
      denial: denialFromError(error),
      sentAt: clock.now(),
    });
    await recordRefused(request, error, verdict, progress, now);
    await state.completeRequest(lease, result, clock.now());
    markCompleted();
    await agents.sendToAgent(agentId, result);
    logger(
      verdict === "denied" ? "info" : "error",
      verdict === "denied" ? "attestation denied" : "attestation failed for good",
      {
        agentId,
        requestId,
        code: error.code,
      },
    );
    if (verdict === "error" && (error.transient || delivery.deliveryCount >= maxDeliveryCount)) {
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

  /** Checks in order; throws a ShieldError at the first that fails. */
  async function attestAndRelease(
    request: AttestationRequest,
    progress: Progress,
    now: Date,
  ): Promise<Released> {
    const challenge = await checkChallenge(request, now); // 1. agent standing and challenge
    const runtimeData = Buffer.from(request.runtimeData, "base64url");
    if (challenge !== undefined) checkRuntimeNonce(runtimeData, challenge); // 2. freshness is in the hardware binding
    checkKeyCount(request); // 3. the answer must fit the bus before anything is released
    const token = await obtainToken(request.evidence, runtimeData, challenge); // 4. MAA verifies the evidence
    const validated = await validateMaaToken(token, {
      // 5. the token: pinned issuer, signature, lifetime, nonce, runtime-data binding
      keys: ports.tokenKeys,
      issuer: config.issuer,
      at: now,
      runtimeData,
      requireAttestationType: request.tee === "sevsnp" ? "sevsnpvm" : "sgx",
      ...(challenge === undefined ? {} : { expectedNonce: challenge }),
    });
    progress.challengeMatched = challenge !== undefined;
    progress.tokenHash = validated.tokenHash;
    assertAppraised(appraiseClaims(validated.claims, config.appraisal)); // 6. our appraisal policy
    const measurement = measurementOf(request, validated);
    progress.measurement = measurement;
    if (challenge !== undefined) await consumeChallenge(request, challenge); // 7. the nonce is used once
    const keys: ReleasedKey[] = [];
    for (const name of request.keys) {
      // 8. Key Vault checks the token against the key's release policy and wraps the key.
      const releaseResponse = await ports.keys.release(name, token, { encryption });
      const key = { name, version: versionOf(releaseResponse), releaseResponse };
      keys.push(key);
      progress.released.push({ name: key.name, version: key.version });
    }
    const periodEnd = now.getTime() + config.attestationPeriodSeconds * 1000;
    const attestedUntil = new Date(Math.min(periodEnd, validated.claims.exp * 1000));
    return { keys, validated, measurement, attestedUntil };
  }

  /**
   * A revoked agent gets nothing until an operator reinstates it. An agent with a pending
   * challenge must answer it: evidence without the nonce could be a replay of old evidence.
   */
  async function checkChallenge(request: AttestationRequest, now: Date): Promise<string | undefined> {
    const agent = await state.getAgent(request.agentId);
    if (agent?.status === "revoked") {
      throw new ShieldError("ERR_AGENT_REVOKED", "the agent is revoked", {
        violations: [{ field: "agent", expected: "not revoked", actual: agent.statusReason ?? "revoked" }],
      });
    }
    const pending = agent?.challenge;
    const open =
      pending !== undefined &&
      (pending.answeredBy === undefined || pending.answeredBy === request.requestId) &&
      now.getTime() <= pending.deadline.getTime();
    if (request.challenge === undefined) {
      if (open) {
        throw new ShieldError("ERR_TOKEN_NONCE", "a challenge is pending: the request must answer it", {
          violations: [{ field: "challenge", expected: "the agent's pending challenge", actual: "none" }],
        });
      }
      return undefined;
    }
    if (pending === undefined || pending.nonce !== request.challenge) {
      throw new ShieldError("ERR_TOKEN_NONCE", "the request answers no pending challenge", {
        violations: [
          { field: "challenge", expected: "the agent's pending challenge", actual: "another nonce" },
        ],
      });
    }
    if (pending.answeredBy !== undefined && pending.answeredBy !== request.requestId) {
      throw new ShieldError("ERR_TOKEN_NONCE", "the challenge nonce was already used");
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

  /** The nonce must be inside the runtime data, whose hash the hardware signed. */
  function checkRuntimeNonce(runtimeData: Buffer, challenge: string): void {
    let nonce: unknown;
    try {
      nonce = (JSON.parse(runtimeData.toString("utf8")) as { nonce?: unknown } | null)?.nonce;
    } catch {
      nonce = undefined;
    }
    if (nonce !== challenge) {
      throw new ShieldError("ERR_TOKEN_NONCE", "the runtime data does not carry the challenge nonce", {
        violations: [
          {
            field: "runtimeData.nonce",
            expected: "the challenge nonce",
            actual: typeof nonce === "string" ? "another nonce" : "absent",
          },
        ],
      });
    }
  }

  function checkKeyCount(request: AttestationRequest): void {
    const worst = request.keys.length * ESTIMATED_RELEASE_RESPONSE_BYTES + RESULT_OVERHEAD_BYTES;
    if (worst > maxResultBytes) {
      throw new ShieldError("ERR_INPUT_TOO_LARGE", "too many keys for one answer on this bus", {
        violations: [
          {
            field: "keys",
            expected: `at most ${Math.floor((maxResultBytes - RESULT_OVERHEAD_BYTES) / ESTIMATED_RELEASE_RESPONSE_BYTES)}`,
            actual: String(request.keys.length),
          },
        ],
      });
    }
  }

  function checkResultSize(result: AttestationResult): void {
    const bytes = Buffer.byteLength(JSON.stringify(result));
    if (bytes > maxResultBytes) {
      throw new ShieldError("ERR_INPUT_TOO_LARGE", `the answer (${bytes} bytes) does not fit the bus`);
    }
  }

  /** Marks the challenge answered by this request, once (ETag-conditional). */
  async function consumeChallenge(request: AttestationRequest, nonce: string): Promise<void> {
    await changeAgent(state, request.agentId, (current) => {
      const pending = current?.challenge;
      if (current === undefined || pending === undefined || pending.nonce !== nonce) {
        throw new ShieldError("ERR_TOKEN_NONCE", "the challenge nonce was already used");
      }
      if (pending.answeredBy === request.requestId) return undefined; // this request, again
      if (pending.answeredBy !== undefined) {
        throw new ShieldError("ERR_TOKEN_NONCE", "the challenge nonce was already used");
      }
      return {
        ...withoutEtag(current),
        challenge: { ...pending, answeredBy: request.requestId },
        updatedAt: clock.now(),
      };
    });
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

  function attestationRecord(request: AttestationRequest, released: Released, now: Date): AttestationRecord {
    return {
      agentId: request.agentId,
      requestId: request.requestId,
      at: now,
      verdict: "trusted",
      violations: [],
      tokenHash: released.validated.tokenHash,
      claimsDigest: sha256(JSON.stringify(released.validated.claims)),
      measurement: released.measurement,
      attestedUntil: released.attestedUntil,
      keys: request.keys,
    };
  }

  /**
   * The agent's standing, who holds which key version, and the audit entries. Runs after the
   * answer is stored; a redelivery runs it again from the stored answer when it did not finish
   * (holdings are upserts; the audit is appended only for keys whose holding is missing).
   */
  async function finishTrustedRecords(
    request: AttestationRequest,
    result: Extract<AttestationResult, { verdict: "trusted" }>,
    now: Date,
    released?: Released,
  ): Promise<void> {
    const { agentId, requestId } = request;
    const record = released === undefined ? await state.getAttestation(agentId, requestId) : undefined;
    const measurement = released?.measurement ?? record?.measurement;
    const tokenHash = released?.validated.tokenHash ?? record?.tokenHash;
    if (measurement === undefined) return; // nothing trustworthy to complete from
    const held = new Set(
      (await state.listHoldingsByAgent(agentId))
        .filter((h) => h.requestId === requestId)
        .map((h) => h.keyName),
    );
    if (released === undefined && result.keys.every((k) => held.has(k.name))) return;
    const attestedUntil = new Date(result.attestedUntil);
    await changeAgent(state, agentId, (current) => {
      // A later attestation already moved the agent on; and a revoked agent stays revoked.
      if (current?.lastAttestedAt !== undefined && current.lastAttestedAt.getTime() > now.getTime())
        return undefined;
      const answered = current?.challenge?.answeredBy === requestId;
      return {
        agentId,
        workload: request.workload,
        tee: request.tee,
        status: current?.status === "revoked" ? "revoked" : "trusted",
        ...(current?.status === "revoked" && current.statusReason
          ? { statusReason: current.statusReason }
          : {}),
        lastAttestedAt: now,
        attestedUntil,
        measurement,
        updatedAt: clock.now(),
        // An answered challenge is done; one issued since stays pending.
        ...(current?.challenge !== undefined && !answered ? { challenge: current.challenge } : {}),
      };
    });
    for (const key of result.keys) {
      if (held.has(key.name)) continue;
      await state.appendAudit(keyAuditPartition(key.name), {
        at: now,
        kind: "key-released",
        subject: agentId,
        requestId,
        details: {
          keyVersion: key.version,
          measurement: measurementText(measurement),
          tokenSha256: tokenHash ?? null,
        },
      });
      await state.recordHolding({
        agentId,
        keyName: key.name,
        keyVersion: key.version,
        measurement,
        releasedAt: now,
        requestId,
      });
    }
    if (held.size === 0) {
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
  }

  /** Keys Key Vault released for a request that then failed: never delivered, but on record. */
  async function recordDiscardedReleases(
    request: AttestationRequest,
    progress: Progress,
    error: ShieldError,
    now: Date,
  ): Promise<void> {
    for (const key of progress.released.splice(0)) {
      await state
        .appendAudit(keyAuditPartition(key.name), {
          at: now,
          kind: "key-release-discarded",
          subject: request.agentId,
          requestId: request.requestId,
          details: { keyVersion: key.version, code: error.code, tokenSha256: progress.tokenHash ?? null },
        })
        .catch(() => undefined);
    }
  }

  async function recordRefused(
    request: AttestationRequest,
    error: ShieldError,
    verdict: "denied" | "error",
    progress: Progress,
    now: Date,
  ): Promise<void> {
    const { agentId, requestId } = request;
    await recordDiscardedReleases(request, progress, error, now);
    await state.recordAttestation({
      agentId,
      requestId,
      at: now,
      verdict,
      reasonCode: error.code,
      violations: error.violations.slice(0, 64),
      keys: request.keys,
      ...(progress.tokenHash === undefined ? {} : { tokenHash: progress.tokenHash }),
      ...(progress.measurement === undefined ? {} : { measurement: progress.measurement }),
    });
    // The agent id is not authenticated, so a refusal changes an agent's standing only when
    // the request proved it speaks for that agent — it answered the agent's own pending
    // challenge with evidence MAA verified — or when the agent is new.
    const existing = await state.getAgent(agentId);
    if (verdict === "denied" && (existing === undefined || progress.challengeMatched)) {
      await changeAgent(state, agentId, (current) => ({
        agentId,
        workload: request.workload,
        tee: request.tee,
        status: current?.status === "revoked" ? "revoked" : "untrusted",
        statusReason: error.code,
        updatedAt: clock.now(),
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
      details: {
        code: error.code,
        violations: error.violations.length,
        keys: request.keys.join(","),
        standingChanged: verdict === "denied" && (existing === undefined || progress.challengeMatched),
      },
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
