/**
 * The attest-and-release use case: every message on the requests queue comes in here. A
 * `challenge-request` is answered with a signed challenge (challenge.ts); an
 * `attestation-request` answering that challenge gets one signed `attestation-result`.
 *
 * An attestation request goes through these steps, in this order, each a function below over
 * one explicit context:
 *
 * 1. **claim** the request id (delivery is at least once): a redelivery of finished work re-sends
 *    the stored answer without calling Key Vault again; a copy of a request answered longer ago
 *    than the replay window is refused (ERR_REQUEST_REPLAYED) and nothing is sent;
 * 2. **freshness**: the agent is not revoked; the request answers the agent's open challenge
 *    (issued to that agent id, unanswered or answered by this very request, before its deadline),
 *    and the runtime data — whose hash the hardware signed — carries that nonce;
 * 3. **attest**: MAA verifies the evidence with the exact runtime-data bytes and the nonce; the
 *    token is validated here (pinned issuer, signature, lifetime, nonce, runtime-data binding);
 * 4. **appraise**: Shield's own appraisal policy; the nonce is then marked used (once, ETag);
 * 5. **release**: Key Vault checks the token against each key's release policy and wraps the key
 *    to the enclave's runtime key; the challenge nonce goes along as Key Vault's request nonce;
 * 6. **answer**: the result is built and size-checked, the attestation recorded, the answer
 *    stored (from here on a redelivery re-sends it), then signed and sent;
 * 7. **record**: the agent's standing, the key holdings and the audit chain.
 *
 * A terminal failure at any step is recorded, stored as the answer and sent as a signed denial;
 * nothing on an error path releases a key. Transient failures (MAA or Key Vault throttling, 5xx,
 * timeouts) are retried by the port wrappers, then handed back for redelivery; on the last
 * delivery the agent is told and the message is dead-lettered.
 */
import { createHash } from "node:crypto";
import { ShieldError, isShieldError } from "../errors.js";
import { appraiseClaims, assertAppraised, type AppraisalPolicy } from "../appraisal/index.js";
import type { AgentSender } from "../control/signed.js";
import { buildMaaSnpEnvelope, SNP_REPORT_SIZE } from "../evidence/sevsnp/index.js";
import { parseReleaseResponse, type ReleaseEncryption } from "../keywrap/index.js";
import {
  denialFromError,
  makeAttestationResult,
  parseMessage,
  requestBinding,
  requestDigest,
  type AttestationRequest,
  type AttestationResult,
  type Evidence,
  type Measurement,
  type ReleasedKey,
  type TrustedResult,
} from "../messages/index.js";
import type { AttestationService } from "../ports/attestation.js";
import type { Clock, Random } from "../ports/clock.js";
import type { KeyStore } from "../ports/key-store.js";
import type { Logger } from "../ports/logger.js";
import type { AgentRecord, AgentState, AttestationRecord, RequestLease, StateStore } from "../ports/state.js";
import { changeAgent } from "../state/agents.js";
import { validateMaaToken, type SigningKeyResolver, type ValidatedMaaToken } from "../token/index.js";
import { pemToDerList } from "../x509/certificate.js";
import { createChallengeIssuer, type ChallengeConfig } from "./challenge.js";
import { agentAuditPartition, keyAuditPartition, type Revoker } from "../lifecycle/revoke.js";

export { agentAuditPartition, keyAuditPartition };
import type { AppraisalPolicySource } from "../rollout/appraisal-source.js";
import { noMetrics, type ShieldMetrics } from "../ports/metrics.js";

export interface AttestPorts {
  /** The attestation service, already wrapped with `retrying()` for transient failures. */
  readonly attestation: AttestationService;
  /** The key store, already wrapped with `retrying()`. */
  readonly keys: KeyStore;
  /** Signing keys of the pinned issuer (cached `/certs`). */
  readonly tokenKeys: SigningKeyResolver;
  readonly state: StateStore;
  /** Signs and sends to agents (core/control `createControlChannel`). */
  readonly agents: AgentSender;
  readonly clock: Clock;
  readonly random: Random;
  readonly logger: Logger;
  /** Attestations, denials, releases and challenge round trips (default: none recorded). */
  readonly metrics?: ShieldMetrics;
  /**
   * Revokes an agent whose answer to its own challenge is denied while it holds keys or is
   * being re-attested (core/lifecycle/revoke.ts). Without it such an agent only becomes
   * `untrusted`; the functions always provide it.
   */
  readonly revoker?: Revoker;
  /** The appraisal policy held in state (DESIGN §9); `config.appraisal` when absent. */
  readonly appraisalPolicies?: AppraisalPolicySource;
}

export interface AttestConfig extends ChallengeConfig {
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
  /**
   * How long after its answer a request is still answered again from the record (redelivery, the
   * agent's resend after a timeout); later copies are replays (default 3600 s).
   */
  readonly replayWindowSeconds?: number;
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
  /** Set when a challenge was sent in answer to a `challenge-request`. */
  readonly challenged?: boolean;
  readonly keysReleased: number;
}

export const DEFAULT_MAX_DELIVERY_COUNT = 10;
export const DEFAULT_ATTEST_MESSAGE_BYTES = 256 * 1024;
const DEFAULT_LEASE_SECONDS = 300;
const DEFAULT_REPLAY_WINDOW_SECONDS = 3600;

/** Messages too malformed to name an agent. */
export const INTAKE_AUDIT_PARTITION = "intake";

/** A release response with its signer chain is 3–5 KiB; 8 KiB leaves room for RSA-4096 keys. */
const ESTIMATED_RELEASE_RESPONSE_BYTES = 8 * 1024;
const RESULT_OVERHEAD_BYTES = 2 * 1024;

type LogLevel = "info" | "warn" | "error";

/** One attestation request on its way through the steps; each step fills in what it learns. */
interface AttestContext {
  readonly request: AttestationRequest;
  readonly delivery: AttestDelivery;
  readonly now: Date;
  /** The last delivery: a transient failure is final. */
  readonly final: boolean;
  readonly runtimeData: Buffer;
  /** What every answer carries, so the agent can tell it answers this very request. */
  readonly digest: string;
  readonly log: (level: LogLevel, message: string, extra?: Record<string, string | number>) => void;
  lease?: RequestLease;
  /** Step 3 passed: the evidence binds this agent's open challenge, as MAA verified it. */
  challengeMatched: boolean;
  token?: string;
  validated?: ValidatedMaaToken;
  measurement?: Measurement;
  /** Keys Key Vault has released so far (step 5). */
  readonly released: ReleasedKey[];
  attestedUntil?: Date;
}

function withoutEtag(agent: AgentRecord): AgentState {
  const { etag: _etag, ...rest } = agent;
  return rest;
}

export function createAttestHandler(ports: AttestPorts, config: AttestConfig) {
  const maxDeliveryCount = config.maxDeliveryCount ?? DEFAULT_MAX_DELIVERY_COUNT;
  const leaseMs = (config.leaseSeconds ?? DEFAULT_LEASE_SECONDS) * 1000;
  const replayWindowMs = (config.replayWindowSeconds ?? DEFAULT_REPLAY_WINDOW_SECONDS) * 1000;
  const maxBytes = config.maxMessageBytes ?? DEFAULT_ATTEST_MESSAGE_BYTES;
  const encryption = config.encryption ?? "RSA_AES_KEY_WRAP_256";
  const maxResultBytes = config.maxResultBytes ?? 240_000;
  const { state, agents, clock, logger } = ports;
  const metrics = ports.metrics ?? noMetrics;
  const challenges = createChallengeIssuer(ports, config);

  return async function handleAgentRequest(body: unknown, delivery: AttestDelivery): Promise<AttestOutcome> {
    let message;
    try {
      message = parseMessage(body, { maxBytes });
      if (message.type !== "attestation-request" && message.type !== "challenge-request") {
        throw new ShieldError(
          "ERR_MESSAGE_SCHEMA",
          `a ${message.type} message does not belong on the requests queue`,
          {
            violations: [
              { field: "type", expected: "challenge-request | attestation-request", actual: message.type },
            ],
          },
        );
      }
    } catch (error) {
      return rejectMalformed(body, delivery, toShieldError(error));
    }
    if (message.type === "challenge-request") return answerChallengeRequest(message, delivery);
    const request = message;
    const { agentId, requestId } = request;
    const ctx: AttestContext = {
      request,
      delivery,
      now: clock.now(),
      final: delivery.deliveryCount >= maxDeliveryCount,
      runtimeData: Buffer.from(request.runtimeData, "base64url"),
      digest: requestDigest(request),
      log: (level, text, extra = {}) =>
        logger(level, text, {
          agentId,
          requestId,
          messageId: delivery.messageId,
          deliveryCount: delivery.deliveryCount,
          ...extra,
        }),
      challengeMatched: false,
      released: [],
    };

    const claimed = await claim(ctx); // 1
    if (claimed !== undefined) return claimed;
    let answered = false;
    try {
      let result: TrustedResult;
      try {
        await checkFreshness(ctx); // 2
        checkKeyCount(request);
        await attest(ctx); // 3
        await appraise(ctx); // 4
        await release(ctx); // 5
        result = await storeAnswer(ctx); // 6
        answered = true;
      } catch (caught) {
        const error = toShieldError(caught);
        if (error.transient && !ctx.final) {
          ctx.log("warn", "transient failure; left for redelivery", { code: error.code });
          await recordDiscardedReleases(ctx, error);
          return { settlement: { action: "retry", error }, agentId, requestId, keysReleased: 0 };
        }
        return await refuse(ctx, error, () => {
          answered = true;
        });
      }
      await record(ctx, result); // 7
      await agents.sendToAgent(agentId, result);
      metrics.attestation({ verdict: "trusted", tee: request.tee });
      for (const key of result.keys) metrics.release({ keyName: key.name });
      ctx.log("info", "attestation trusted; keys released", {
        keys: result.keys.length,
        tokenSha256: ctx.validated?.tokenHash ?? "-",
      });
      return {
        settlement: { action: "complete" },
        agentId,
        requestId,
        verdict: "trusted",
        keysReleased: result.keys.length,
      };
    } catch (caught) {
      // A failure after the answer was stored (records, signing, sending): redelivery re-sends it.
      const error = toShieldError(caught);
      ctx.log("warn", "could not finish; left for redelivery", { code: error.code });
      return { settlement: { action: "retry", error }, agentId, requestId, keysReleased: 0 };
    } finally {
      if (!answered && ctx.lease !== undefined) await state.releaseRequest(ctx.lease).catch(() => undefined);
    }
  };

  /** A `challenge-request`: a signed challenge back (a transient failure is left for redelivery). */
  async function answerChallengeRequest(
    message: Extract<ReturnType<typeof parseMessage>, { type: "challenge-request" }>,
    delivery: AttestDelivery,
  ): Promise<AttestOutcome> {
    const { agentId } = message;
    try {
      await challenges.handleRequest(message);
      return { settlement: { action: "complete" }, agentId, challenged: true, keysReleased: 0 };
    } catch (caught) {
      const error = toShieldError(caught);
      logger("warn", "challenge request could not be answered", {
        agentId,
        messageId: delivery.messageId,
        code: error.code,
      });
      if (error.transient && delivery.deliveryCount < maxDeliveryCount) {
        return { settlement: { action: "retry", error }, agentId, keysReleased: 0 };
      }
      return {
        settlement: { action: "dead-letter", reason: error.code, description: error.message },
        agentId,
        keysReleased: 0,
      };
    }
  }

  // ---------------------------------------------------------------------------------------
  // 1. claim

  /** Claims the request id; returns the outcome when there is nothing more to do. */
  async function claim(ctx: AttestContext): Promise<AttestOutcome | undefined> {
    const { request, now } = ctx;
    const { agentId, requestId } = request;
    const claimed = await state.claimRequest(
      { scope: agentId, requestId },
      { at: now, leaseUntil: new Date(now.getTime() + leaseMs) },
    );
    if (claimed.state === "new") {
      ctx.lease = claimed.lease;
      return undefined;
    }
    if (claimed.state === "completed") {
      if (now.getTime() - claimed.completedAt.getTime() > replayWindowMs) {
        // Long after its answer: not a redelivery but a copy. It gets nothing, not even the old answer.
        const error = new ShieldError("ERR_REQUEST_REPLAYED", "the request was answered long ago: a replay", {
          violations: [
            {
              field: "requestId",
              expected: `answered after ${new Date(now.getTime() - replayWindowMs).toISOString()}`,
              actual: claimed.completedAt.toISOString(),
            },
          ],
        });
        return refuseCopy(ctx, error, "request-replayed", false);
      }
      const stored = claimed.result as AttestationResult;
      if (stored.requestDigest !== ctx.digest) {
        // Another request under a request id already used: a doctored copy, or the original
        // after a copy took the id first. Answered (bound to this request) with a freshness
        // code, so a genuine agent asks again under a new id; the stored answer stays.
        const error = new ShieldError(
          "ERR_REQUEST_REPLAYED",
          "the request id was already used by another request",
        );
        return refuseCopy(ctx, error, "request-id-reused", true);
      }
      // A redelivery of finished work: the same answer again, and no second release. Records
      // an earlier delivery could not finish are completed from the stored answer.
      if (stored.verdict === "trusted") await record(ctx, stored);
      await agents.sendToAgent(agentId, stored);
      ctx.log("info", "attestation request already answered; answer re-sent");
      return {
        settlement: { action: "complete" },
        agentId,
        requestId,
        replayed: true,
        keysReleased: 0,
        verdict: stored.verdict,
      };
    }
    const busy = new ShieldError("ERR_CONFLICT", "the request is being handled by another invocation");
    if (!ctx.final) {
      ctx.log("info", "attestation request is being handled by another invocation");
      return { settlement: { action: "retry", error: busy }, agentId, requestId, keysReleased: 0 };
    }
    // The last delivery must not vanish silently: tell the agent to ask again.
    await agents.sendToAgent(agentId, failedResult(ctx, "error", busy, now));
    return {
      settlement: { action: "dead-letter", reason: busy.code, description: busy.message },
      agentId,
      requestId,
      verdict: "error",
      keysReleased: 0,
    };
  }

  /** A denial or failure answering this very request (bound to it by its digest). */
  function failedResult(
    ctx: AttestContext,
    verdict: "denied" | "error",
    error: ShieldError,
    sentAt: Date,
  ): AttestationResult {
    const { agentId, requestId } = ctx.request;
    return makeAttestationResult({
      agentId,
      requestId,
      requestDigest: ctx.digest,
      verdict,
      denial: denialFromError(error),
      sentAt,
    });
  }

  /** A copy of an answered request: on record, settled, and answered only when `answer` (bound to it). */
  async function refuseCopy(
    ctx: AttestContext,
    error: ShieldError,
    kind: string,
    answer: boolean,
  ): Promise<AttestOutcome> {
    const { agentId, requestId } = ctx.request;
    await state.appendAudit(agentAuditPartition(agentId), {
      at: ctx.now,
      kind,
      subject: agentId,
      requestId,
      details: { code: error.code, messageId: ctx.delivery.messageId.slice(0, 128) },
    });
    if (answer) {
      await agents.sendToAgent(agentId, failedResult(ctx, "denied", error, ctx.now));
    }
    ctx.log("warn", `${kind}: refused`, { code: error.code });
    return { settlement: { action: "complete" }, agentId, requestId, verdict: "denied", keysReleased: 0 };
  }

  // ---------------------------------------------------------------------------------------
  // 2. freshness

  /**
   * A revoked agent gets nothing until an operator reinstates it. Evidence must bind a nonce the
   * control plane issued to this agent id, unused and in time: a replay of any earlier request,
   * under any agent id, names a nonce that is not this agent's open one.
   */
  async function checkFreshness(ctx: AttestContext): Promise<void> {
    const { request, now } = ctx;
    const agent = await state.getAgent(request.agentId);
    if (agent?.status === "revoked") {
      throw new ShieldError("ERR_AGENT_REVOKED", "the agent is revoked", {
        violations: [{ field: "agent", expected: "not revoked", actual: agent.statusReason ?? "revoked" }],
      });
    }
    const pending = agent?.challenge;
    if (pending === undefined || pending.nonce !== request.challenge) {
      throw new ShieldError(
        "ERR_CHALLENGE_UNKNOWN",
        "the request answers no challenge issued to this agent",
        {
          violations: [
            {
              field: "challenge",
              expected: "the agent's open challenge",
              actual: pending === undefined ? "none open" : "another nonce",
            },
          ],
        },
      );
    }
    if (pending.answeredBy !== undefined && pending.answeredBy !== request.requestId) {
      throw new ShieldError("ERR_CHALLENGE_USED", "the challenge nonce was already used");
    }
    if (now.getTime() > pending.deadline.getTime()) {
      throw new ShieldError("ERR_CHALLENGE_EXPIRED", "the challenge deadline has passed", {
        violations: [
          {
            field: "challenge",
            expected: `answered by ${pending.deadline.toISOString()}`,
            actual: now.toISOString(),
          },
        ],
      });
    }
    checkRuntimeBinding(ctx.runtimeData, pending.nonce, request);
    if (pending.answeredBy === undefined) {
      // The first delivery that answers it: from issue to the arrival of the evidence.
      metrics.challengeRoundTrip({
        seconds: Math.max(0, (now.getTime() - pending.issuedAt.getTime()) / 1000),
        tee: request.tee,
      });
    }
  }

  /**
   * The nonce, and the binding of the request's other fields, must be inside the runtime data,
   * whose hash the hardware signed: evidence cannot be replayed, nor sent under another agent id,
   * request id, workload or key list.
   */
  function checkRuntimeBinding(runtimeData: Buffer, challenge: string, request: AttestationRequest): void {
    let parsed: unknown;
    try {
      parsed = JSON.parse(runtimeData.toString("utf8"));
    } catch {
      parsed = undefined;
    }
    const document =
      typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)
        ? (parsed as { nonce?: unknown; request?: unknown })
        : {};
    const nonce = document.nonce;
    if (nonce !== challenge) {
      throw new ShieldError("ERR_CHALLENGE_MISMATCH", "the runtime data does not carry the challenge nonce", {
        violations: [
          {
            field: "runtimeData.nonce",
            expected: "the challenge nonce",
            actual: typeof nonce === "string" ? "another nonce" : "absent",
          },
        ],
      });
    }
    if (document.request !== requestBinding(request)) {
      throw new ShieldError("ERR_EVIDENCE_BINDING", "the runtime data does not bind this request", {
        violations: [
          {
            field: "runtimeData.request",
            expected: "sha256 of agentId, requestId, workload, tee and keys",
            actual: typeof document.request === "string" ? "another request" : "absent",
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

  // ---------------------------------------------------------------------------------------
  // 3. attest

  /** MAA verifies the evidence; the token it returns is validated here, not trusted. */
  async function attest(ctx: AttestContext): Promise<void> {
    const { request, runtimeData, now } = ctx;
    const token = await obtainToken(request.evidence, runtimeData, request.challenge);
    ctx.token = token;
    const validated = await validateMaaToken(token, {
      keys: ports.tokenKeys,
      issuer: config.issuer,
      at: now,
      runtimeData,
      requireAttestationType: request.tee === "sevsnp" ? "sevsnpvm" : "sgx",
      expectedNonce: request.challenge,
    });
    ctx.validated = validated;
    ctx.challengeMatched = true;
  }

  async function obtainToken(evidence: Evidence, runtimeData: Buffer, nonce: string): Promise<string> {
    const common = { runtimeData, runtimeDataType: "JSON" as const, nonce };
    switch (evidence.tee) {
      case "sevsnp":
        return ports.attestation.attestSevSnp({ report: maaReportOf(evidence), ...common });
      case "sgx":
        return ports.attestation.attestSgx({ quote: Buffer.from(evidence.quote, "base64url"), ...common });
    }
  }

  // ---------------------------------------------------------------------------------------
  // 4. appraise

  async function appraise(ctx: AttestContext): Promise<void> {
    const validated = ctx.validated!;
    const policy = (await ports.appraisalPolicies?.policyFor(ctx.request)) ?? config.appraisal;
    assertAppraised(appraiseClaims(validated.claims, policy));
    ctx.measurement = measurementOf(ctx.request, validated);
    await consumeChallenge(ctx.request);
  }

  /** Marks the challenge answered by this request, once (ETag-conditional). */
  async function consumeChallenge(request: AttestationRequest): Promise<void> {
    await changeAgent(state, request.agentId, (current) => {
      const pending = current?.challenge;
      if (current === undefined || pending === undefined || pending.nonce !== request.challenge) {
        throw new ShieldError("ERR_CHALLENGE_USED", "the challenge nonce was already used");
      }
      if (pending.answeredBy === request.requestId) return undefined; // this request, again
      if (pending.answeredBy !== undefined) {
        throw new ShieldError("ERR_CHALLENGE_USED", "the challenge nonce was already used");
      }
      return {
        ...withoutEtag(current),
        challenge: { ...pending, answeredBy: request.requestId },
        updatedAt: clock.now(),
      };
    });
  }

  // ---------------------------------------------------------------------------------------
  // 5. release

  /** One Key Vault release per requested key, the challenge nonce as the request nonce. */
  async function release(ctx: AttestContext): Promise<void> {
    for (const name of ctx.request.keys) {
      const releaseResponse = await ports.keys.release(name, ctx.token!, {
        encryption,
        nonce: ctx.request.challenge,
      });
      ctx.released.push({ name, version: versionOf(releaseResponse), releaseResponse });
    }
    const periodEnd = ctx.now.getTime() + config.attestationPeriodSeconds * 1000;
    ctx.attestedUntil = new Date(Math.min(periodEnd, ctx.validated!.claims.exp * 1000));
  }

  // ---------------------------------------------------------------------------------------
  // 6. answer

  /** Builds the trusted result, records the attestation, then stores the answer. */
  async function storeAnswer(ctx: AttestContext): Promise<TrustedResult> {
    const { request } = ctx;
    const result = makeAttestationResult({
      agentId: request.agentId,
      requestId: request.requestId,
      requestDigest: ctx.digest,
      keys: ctx.released,
      attestedUntil: ctx.attestedUntil!,
      sentAt: clock.now(),
    }) as TrustedResult;
    const bytes = Buffer.byteLength(JSON.stringify(result));
    if (bytes > maxResultBytes) {
      throw new ShieldError("ERR_INPUT_TOO_LARGE", `the answer (${bytes} bytes) does not fit the bus`);
    }
    // The attestation record, then the stored answer: from here on a redelivery re-sends this
    // answer and never calls Key Vault again.
    await state.recordAttestation(attestationRecord(ctx));
    await state.completeRequest(ctx.lease!, result, clock.now());
    return result;
  }

  /** A final refusal: recorded, stored as the answer, and sent. */
  async function refuse(
    ctx: AttestContext,
    error: ShieldError,
    markAnswered: () => void,
  ): Promise<AttestOutcome> {
    const { agentId, requestId } = ctx.request;
    // Failures the workload's evidence caused are denials; configuration and outages are errors.
    const verdict =
      error.transient || error.code === "ERR_CONFIG" || error.code === "ERR_INTERNAL" ? "error" : "denied";
    const result = failedResult(ctx, verdict, error, clock.now());
    await recordRefused(ctx, error, verdict);
    await closeAnsweredChallenge(ctx);
    await state.completeRequest(ctx.lease!, result, clock.now());
    markAnswered();
    await agents.sendToAgent(agentId, result);
    metrics.attestation({ verdict, tee: ctx.request.tee });
    if (verdict === "denied") metrics.denial({ code: error.code, tee: ctx.request.tee });
    ctx.log(
      verdict === "denied" ? "info" : "error",
      verdict === "denied" ? "attestation denied" : "attestation failed for good",
      { code: error.code },
    );
    if (verdict === "error" && (error.transient || ctx.delivery.deliveryCount >= maxDeliveryCount)) {
      return {
        settlement: {
          action: "dead-letter",
          reason: error.code,
          description: `gave up after ${ctx.delivery.deliveryCount} deliveries: ${error.message}`,
        },
        agentId,
        requestId,
        verdict,
        keysReleased: 0,
      };
    }
    return { settlement: { action: "complete" }, agentId, requestId, verdict, keysReleased: 0 };
  }

  /**
   * A request that used the nonce and was then refused (Key Vault said no, the answer was too
   * large, the last delivery failed) is answered: the challenge is done, and the agent may ask
   * for a new one at once instead of waiting out the deadline.
   */
  async function closeAnsweredChallenge(ctx: AttestContext): Promise<void> {
    await changeAgent(state, ctx.request.agentId, (current) => {
      if (current?.challenge?.answeredBy !== ctx.request.requestId) return undefined;
      const { challenge: _done, ...rest } = withoutEtag(current);
      return { ...rest, updatedAt: clock.now() };
    });
  }

  // ---------------------------------------------------------------------------------------
  // 7. record

  function attestationRecord(ctx: AttestContext): AttestationRecord {
    const validated = ctx.validated!;
    return {
      agentId: ctx.request.agentId,
      requestId: ctx.request.requestId,
      at: ctx.now,
      verdict: "trusted",
      violations: [],
      tokenHash: validated.tokenHash,
      claimsDigest: sha256(JSON.stringify(validated.claims)),
      measurement: ctx.measurement!,
      attestedUntil: ctx.attestedUntil!,
      keys: ctx.request.keys,
    };
  }

  /**
   * The agent's standing, who holds which key version, and the audit entries. Runs after the
   * answer is stored; a redelivery runs it again from the stored answer when it did not finish
   * (holdings are upserts; the audit is appended only for keys whose holding is missing).
   */
  async function record(ctx: AttestContext, result: TrustedResult): Promise<void> {
    const { request, now } = ctx;
    const { agentId, requestId } = request;
    const fresh = ctx.measurement !== undefined;
    const stored = fresh ? undefined : await state.getAttestation(agentId, requestId);
    const measurement = ctx.measurement ?? stored?.measurement;
    const tokenHash = ctx.validated?.tokenHash ?? stored?.tokenHash;
    if (measurement === undefined) return; // nothing trustworthy to complete from
    const held = new Set(
      (await state.listHoldingsByAgent(agentId))
        .filter((h) => h.requestId === requestId)
        .map((h) => h.keyName),
    );
    if (!fresh && result.keys.every((k) => held.has(k.name))) return;
    const at = stored?.at ?? now;
    const attestedUntil = new Date(result.attestedUntil);
    await changeAgent(state, agentId, (current) => {
      // A later attestation already moved the agent on; and a revoked agent stays revoked.
      if (current?.lastAttestedAt !== undefined && current.lastAttestedAt.getTime() > at.getTime())
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
        lastAttestedAt: at,
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
        at,
        kind: "key-released",
        subject: agentId,
        requestId,
        eventId: `key-released:${agentId}:${requestId}:${key.version}`,
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
        releasedAt: at,
        requestId,
      });
    }
    if (held.size === 0) {
      await state.appendAudit(agentAuditPartition(agentId), {
        at,
        kind: "attestation-trusted",
        subject: agentId,
        requestId,
        eventId: `attestation-trusted:${agentId}:${requestId}`,
        details: {
          keys: request.keys.join(","),
          measurement: measurementText(measurement),
          attestedUntil: attestedUntil.toISOString(),
        },
      });
    }
  }

  /** Keys Key Vault released for a request that then failed: never delivered, but on record. */
  async function recordDiscardedReleases(ctx: AttestContext, error: ShieldError): Promise<void> {
    for (const key of ctx.released.splice(0)) {
      await state
        .appendAudit(keyAuditPartition(key.name), {
          at: ctx.now,
          kind: "key-release-discarded",
          subject: ctx.request.agentId,
          requestId: ctx.request.requestId,
          details: {
            keyVersion: key.version,
            code: error.code,
            tokenSha256: ctx.validated?.tokenHash ?? null,
          },
        })
        .catch(() => undefined);
    }
  }

  async function recordRefused(
    ctx: AttestContext,
    error: ShieldError,
    verdict: "denied" | "error",
  ): Promise<void> {
    const { request, now } = ctx;
    const { agentId, requestId } = request;
    await recordDiscardedReleases(ctx, error);
    await state.recordAttestation({
      agentId,
      requestId,
      at: now,
      verdict,
      reasonCode: error.code,
      violations: error.violations.slice(0, 64),
      keys: request.keys,
      ...(ctx.validated === undefined ? {} : { tokenHash: ctx.validated.tokenHash }),
      ...(ctx.measurement === undefined ? {} : { measurement: ctx.measurement }),
    });
    // The agent id is not authenticated, so a refusal changes an agent's standing only when the
    // request proved it speaks for that agent: it answered the agent's own open challenge with
    // evidence MAA verified.
    const standingChanged = verdict === "denied" && ctx.challengeMatched;
    const current = standingChanged ? await state.getAgent(agentId) : undefined;
    const holds = standingChanged
      ? (await state.listHoldingsByAgent(agentId)).some((h) => h.revokedAt === undefined)
      : false;
    const revoke =
      ports.revoker !== undefined &&
      standingChanged &&
      (holds || current?.status === "trusted" || current?.challenge?.reason === "reattest");
    if (revoke) {
      // A re-attestation, or an agent holding keys, denied: its keys are revoked (revoke.ts).
      await ports.revoker.revoke(agentId, { kind: "denied", requestId, code: error.code });
    } else if (standingChanged) {
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
      eventId: `attestation-refused:${agentId}:${requestId}`,
      details: {
        code: error.code,
        violations: error.violations.length,
        keys: request.keys.join(","),
        standingChanged,
        revoked: revoke,
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
    logger("warn", "malformed request recorded and completed", {
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
