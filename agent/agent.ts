/**
 * The agent's runtime: the attestation rounds, the inbox, the timers and the keys, driven by
 * the pure state machine in state-machine.ts. It owns what the machine only names — a round
 * sends an `attestation-request` with fresh evidence bound to the runtime data (to a challenge
 * nonce when it answers one), waits for the `attestation-result` with its request id, and on a
 * trusted result unwraps every released key with the runtime key and installs it in memory.
 *
 * A round, in order:
 * 1. a challenge: the one that started the round, or else one asked for with a
 *    `challenge-request` (every attestation answers a nonce the control plane issued); runtime
 *    data are fresh bytes carrying that nonce;
 * 2. evidence from the provider, bound to exactly those bytes;
 * 3. the request (a new request id) is sent; the result with that id is awaited;
 * 4. no result within the result timeout: the same request is sent again (the functions answer a
 *    repeated request id from their record, without a second release);
 * 5. a result with verdict `error` (the functions gave up on a transient failure), or a denial
 *    that speaks only of freshness (the challenge expired, was used or is unknown — e.g. a
 *    replayed challenge was answered): a new challenge and a new request with fresh evidence;
 * 6. steps 4 and 5, and transient failures of steps 2 and 3, are retried with exponential
 *    backoff and full jitter (core/retry) until the round ends or is replaced;
 * 7. a trusted result must vouch for at least `minAttestedMs` from now (else it is asked for
 *    again, with fresh evidence and backoff, as in step 5), and is believed for at most
 *    `maxAttestedMs` from now;
 * 8. every release response is verified (signer trust as configured) and unwrapped, its key id
 *    must name the configured vault and the key and version the result lists, a nonce Key Vault
 *    echoes must be the challenge nonce, each name must be a requested key and
 *    appear once, and no version may be revoked or older than one installed before (held-keys.ts);
 *    only when all of them pass are they installed (all or nothing); a denial is logged with its
 *    code and violations; a terminal failure on this side ends the round as `round-failed`. While
 *    keys are held (re-attesting) a failed round is run again after a capped backoff, and the
 *    keys are served until `attestedUntil`.
 *
 * Inbox messages are signed by the control plane (core/control): each is verified against the
 * pinned control-plane keys, must be addressed to this agent, unexpired and not seen before;
 * anything else is dropped with a log line and a count (`status().inbox`), and changes nothing.
 * Results for other request ids (duplicates, replaced rounds), and results that do not carry the
 * digest of the request this agent sent (`requestDigest`), are dropped; a challenge nonce is
 * answered once. Key events: `rotated` for a version not held starts a round (the previous
 * version is served until the new one is installed); `revoked` of the version being served
 * revokes the agent, of an older held version wipes that version, and any revoked version of a
 * configured key is remembered so that no later result installs it.
 *
 * Key material never reaches a log line, an error or a message: logs carry ids, names,
 * versions, codes and counts. The store's Buffers and the key files are wiped on revocation, on
 * a lapse, on a final failure and at stop, and the Buffers made while unwrapping are zeroed once
 * installed. Copies outside this module's reach are not: the key API's JSON and PEM bodies are
 * JavaScript strings, which cannot be overwritten, and OpenSSL's KeyObject for an RSA or EC key
 * lives until the garbage collector frees it.
 */
import { ShieldError, isShieldError, isShieldErrorCode, isTransientCode } from "../core/errors.js";
import { ControlReplayGuard, verifyControlMessage, type ControlKeySet } from "../core/control/signed.js";
import type { SignerTrust } from "../core/keywrap/index.js";
import {
  makeAttestationRequest,
  makeChallengeRequest,
  requestBinding,
  requestDigest,
  type AttestationRequest,
  type AttestationResult,
  type Challenge,
  type FailedResult,
  type KeyEvent,
  type TrustedResult,
} from "../core/messages/index.js";
import type { AgentInbox, RequestChannel } from "../core/ports/bus.js";
import { systemClock, systemRandom, type Clock, type Random } from "../core/ports/clock.js";
import { silentLogger, type Logger } from "../core/ports/logger.js";
import { withRetry } from "../core/retry.js";
import { collectEvidence, type EvidenceProvider } from "./evidence/provider.js";
import { HeldKeys, type HeldKeysView } from "./held-keys.js";
import type { KeyFiles } from "./key-files.js";
import type { RuntimeData, RuntimeKey } from "./runtime-key.js";
import {
  INITIAL_STATE,
  transition,
  type AgentEffect,
  type AgentEvent,
  type AgentState,
  type AgentStateName,
  type AttestPurpose,
} from "./state-machine.js";

export interface AgentTiming {
  /** How long to wait for a result before sending the request again (default 120 s). */
  readonly resultTimeoutMs?: number;
  /** Re-attest this often while trusted (default 1 h); 0: only when challenged or told of a rotation. */
  readonly reattestIntervalMs?: number;
  /** First retry delay cap (default 1 s); doubles up to `retryMaxDelayMs` (default 60 s). */
  readonly retryBaseDelayMs?: number;
  readonly retryMaxDelayMs?: number;
  /** Longest single wait on the inbox (default 5 s). */
  readonly receiveWaitMs?: number;
  /** A trusted result must vouch for at least this long from now (default 60 s). */
  readonly minAttestedMs?: number;
  /** A trusted result is believed for at most this long from now (default 8 h, MAA's token lifetime). */
  readonly maxAttestedMs?: number;
}

export interface AgentOptions {
  readonly agentId: string;
  readonly workload: string;
  /** Key Vault key names to request, each time. */
  readonly keys: readonly string[];
  readonly provider: EvidenceProvider;
  readonly runtimeKey: RuntimeKey;
  readonly requests: RequestChannel;
  /** This agent's inbox; the agent closes it on stop. */
  readonly inbox: AgentInbox;
  /**
   * Who may sign Key Vault release responses (trust anchors or a predicate over the verified
   * chain; see core/keywrap `SignerTrust`). Required: a release response anyone could sign would
   * let anyone who can write to the agent's inbox choose its keys.
   */
  readonly releaseSigners: SignerTrust;
  /**
   * The control-plane keys (one, or two while that key rotates): only messages signed by one of
   * them are acted on. Required: the inbox is writable by more parties than the control plane.
   */
  readonly controlKeys: ControlKeySet;
  /** The Key Vault (or Managed HSM) origin release responses must come from (`https://<vault>`). */
  readonly keyVaultUrl: string;
  readonly keyFiles?: KeyFiles;
  readonly timing?: AgentTiming;
  readonly clock?: Clock;
  readonly random?: Random;
  readonly logger?: Logger;
}

export interface AgentStatus {
  readonly agentId: string;
  readonly workload: string;
  readonly state: AgentStateName;
  readonly attestedUntil?: string;
  readonly reason?: string;
  readonly provider: string;
  readonly tee: string;
  /** The runtime key's RFC 7638 thumbprint (public). */
  readonly runtimeKeyId: string;
  readonly configuredKeys: readonly string[];
  readonly keys: ReturnType<HeldKeysView["summary"]>;
  readonly inbox: InboxCounters;
  /** Attestation rounds that got an answer, by verdict, and those that got none in time. */
  readonly attestations?: AttestationCounters;
}

export interface AttestationCounters {
  readonly trusted: number;
  readonly denied: number;
  readonly error: number;
  /** No result within the result timeout. */
  readonly timeout: number;
}

/** What the inbox did with what it received. */
export interface InboxCounters {
  readonly accepted: number;
  /** Messages dropped unverified or unwanted, by the code of the reason. */
  readonly dropped: Readonly<Record<string, number>>;
}

export interface Agent {
  /** Starts receiving and the first attestation round; resolves at once (not when trusted). */
  start(): Promise<void>;
  /** Wipes every key, cancels rounds and timers, closes the inbox; resolves when all has ended. */
  stop(): Promise<void>;
  state(): AgentState;
  status(): AgentStatus;
  /** The held keys, read-only (for the key API). */
  readonly keys: HeldKeysView;
  readonly configuredKeys: readonly string[];
  /** Calls `listener` after each state change; returns the unsubscribe function. */
  subscribe(listener: (state: AgentState) => void): () => void;
}

const DEFAULTS = {
  resultTimeoutMs: 120_000,
  reattestIntervalMs: 3_600_000,
  retryBaseDelayMs: 1_000,
  retryMaxDelayMs: 60_000,
  receiveWaitMs: 5_000,
  minAttestedMs: 60_000,
  maxAttestedMs: 8 * 3_600_000,
} as const;

/** setTimeout's longest delay; longer waits are taken in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** How long `stop` waits for a receive in flight to end. */
const STOP_WAIT_MS = 2_000;
/** Challenge nonces remembered to answer each once, however often it is delivered. */
const ANSWERED_NONCES = 64;
/** Renew this long before `attestedUntil`: a tenth of the time left, at most five minutes. */
const renewalLead = (remainingMs: number): number => Math.min(remainingMs / 10, 300_000);

/** Denial codes that say nothing about the workload, only that the nonce was not fresh. */
const FRESHNESS_CODES: ReadonlySet<string> = new Set([
  "ERR_CHALLENGE_UNKNOWN",
  "ERR_CHALLENGE_EXPIRED",
  "ERR_CHALLENGE_USED",
  "ERR_CHALLENGE_MISMATCH",
  "ERR_REQUEST_REPLAYED",
]);

interface Round {
  readonly purpose: AttestPurpose;
  /** The challenge being answered: the one that started the round, or one asked for. */
  nonce?: string;
  /** Set while the round waits for the challenge it asked for. */
  challengeWaiter?: (nonce: string) => void;
  readonly abort: AbortController;
  request?: AttestationRequest;
  /** A result that came while nobody was waiting (between a timeout and the resend). */
  arrived?: AttestationResult;
  waiter?: (result: AttestationResult | undefined) => void;
}

type RoundOutcome =
  | { readonly verdict: "trusted"; readonly result: TrustedResult; readonly keys: readonly UnwrappedKey[] }
  | { readonly verdict: "denied"; readonly result: FailedResult };

interface UnwrappedKey {
  readonly name: string;
  readonly version: string;
  readonly kty: Parameters<HeldKeys["install"]>[2];
  /** Zeroed once installed. */
  readonly material: Buffer;
}

export function createAgent(options: AgentOptions): Agent {
  checkOptions(options);
  const { agentId, workload, provider, runtimeKey, requests, inbox, releaseSigners, controlKeys } = options;
  const keyVaultOrigin = new URL(options.keyVaultUrl).origin;
  const replayGuard = new ControlReplayGuard();
  const inboxCounters = { accepted: 0, dropped: {} as Record<string, number> };
  const attestationCounters = { trusted: 0, denied: 0, error: 0, timeout: 0 };
  const configuredKeys = Object.freeze([...options.keys]);
  const clock = options.clock ?? systemClock;
  const random = options.random ?? systemRandom;
  const logger = options.logger ?? silentLogger;
  const timing = { ...DEFAULTS, ...definedTiming(options.timing) };
  const store = new HeldKeys();
  const listeners = new Set<(state: AgentState) => void>();
  const answeredNonces: string[] = [];
  /** A re-attestation challenge that arrived while a round was answering another one. */
  let deferredChallenge: { readonly nonce: string; readonly deadline: Date } | undefined;

  let state: AgentState = INITIAL_STATE;
  let round: Round | undefined;
  /** Rounds failed in a row while keys are held: the backoff before the next one. */
  let failedRounds = 0;
  let lastRound: { readonly purpose: AttestPurpose; readonly nonce?: string } | undefined;
  let retryTimer: NodeJS.Timeout | undefined;
  const timers = new Set<NodeJS.Timeout>();
  let receiving: Promise<void> | undefined;
  let stopping = false;
  const lifetime = new AbortController();
  // Key file writes and removals, in order.
  let files: Promise<void> = Promise.resolve();

  function dispatch(event: AgentEvent): void {
    const before = state;
    const next = transition(state, event);
    state = next.state;
    if (state.name !== before.name) {
      logger(state.name === "revoked" || state.name === "failed" ? "warn" : "info", "agent state changed", {
        agentId,
        from: before.name,
        to: state.name,
        event: event.type,
        ...(state.reason === undefined ? {} : { reason: state.reason }),
      });
    }
    for (const effect of next.effects) run(effect);
    if (state !== before) for (const listener of listeners) listener(state);
  }

  function run(effect: AgentEffect): void {
    switch (effect.kind) {
      case "attest":
        startRound(effect.purpose, effect.challenge?.nonce);
        return;
      case "schedule":
        schedule(effect.attestedUntil);
        return;
      case "wipe-all":
        wipeAll(effect.reason);
        return;
      case "wipe-version":
        wipeVersion(effect.keyName, effect.keyVersion);
        return;
      case "retry":
        retryRound();
        return;
      case "halt":
        round?.abort.abort();
        round = undefined;
        clearRetry();
        clearTimers();
        return;
    }
  }

  // ---------------------------------------------------------------------------------------
  // Rounds

  function startRound(purpose: AttestPurpose, nonce: string | undefined): void {
    clearRetry();
    round?.abort.abort();
    lastRound = { purpose, ...(nonce === undefined ? {} : { nonce }) };
    const current: Round = {
      purpose,
      abort: new AbortController(),
      ...(nonce === undefined ? {} : { nonce }),
    };
    round = current;
    void runRound(current);
  }

  /** The failed round again, after a capped exponential backoff with jitter. */
  function retryRound(): void {
    const again = lastRound;
    if (again === undefined) return;
    failedRounds++;
    const capMs = Math.min(timing.retryMaxDelayMs, timing.retryBaseDelayMs * 2 ** Math.min(failedRounds, 16));
    const delayMs = Math.floor(capMs / 2 + (random.bytes(4).readUInt32BE(0) / 2 ** 32) * (capMs / 2));
    logger("warn", "attestation round will be run again", {
      agentId,
      purpose: again.purpose,
      failedRounds,
      delayMs,
    });
    clearRetry();
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      const waiting = state.name === "re-attesting" || state.name === "attesting";
      // A fresh challenge: the failed round's nonce may have been used or have expired.
      if (round === undefined && waiting && !stopping) startRound(again.purpose, undefined);
    }, delayMs);
    retryTimer.unref();
  }

  function clearRetry(): void {
    if (retryTimer !== undefined) clearTimeout(retryTimer);
    retryTimer = undefined;
  }

  async function runRound(current: Round): Promise<void> {
    let outcome: RoundOutcome;
    try {
      outcome = await withRetry(() => attempt(current), {
        attempts: Number.MAX_SAFE_INTEGER,
        baseDelayMs: timing.retryBaseDelayMs,
        maxDelayMs: timing.retryMaxDelayMs,
        random: () => random.bytes(4).readUInt32BE(0) / 2 ** 32,
        sleep: (ms) => pause(ms, current.abort.signal),
        onRetry: (attemptNumber, error, delayMs) => {
          if (current.abort.signal.aborted) return;
          logger("warn", "attestation round retrying", {
            agentId,
            purpose: current.purpose,
            attempt: attemptNumber,
            code: codeOf(error),
            delayMs,
          });
        },
      });
    } catch (error) {
      if (current !== round || current.abort.signal.aborted) return;
      round = undefined;
      const code = codeOf(error);
      logger("error", "attestation round failed", { agentId, purpose: current.purpose, code });
      dispatch({ type: "round-failed", code });
      return;
    }
    if (current !== round || current.abort.signal.aborted) {
      for (const key of outcome.verdict === "trusted" ? outcome.keys : []) key.material.fill(0);
      return;
    }
    round = undefined;
    if (outcome.verdict === "denied") {
      const { denial } = outcome.result;
      logger("warn", "attestation denied", {
        agentId,
        requestId: outcome.result.requestId,
        purpose: current.purpose,
        code: denial.code,
        denial: denial.message,
        violations: JSON.stringify(denial.violations),
      });
      dispatch({ type: "result-denied", code: denial.code });
      return;
    }
    try {
      // Again, synchronously with the install: a revocation may have come in since unwrapping.
      checkInstallable(outcome.keys);
    } catch (error) {
      for (const key of outcome.keys) key.material.fill(0);
      const code = codeOf(error);
      logger("error", "attestation round failed", { agentId, purpose: current.purpose, code });
      dispatch({ type: "round-failed", code });
      return;
    }
    install(outcome.keys);
    failedRounds = 0;
    const attestedUntil = believedUntil(outcome.result);
    logger("info", "attestation trusted", {
      agentId,
      requestId: outcome.result.requestId,
      purpose: current.purpose,
      keys: outcome.keys.length,
      attestedUntil: attestedUntil.toISOString(),
    });
    dispatch({ type: "result-trusted", attestedUntil });
    answerDeferredChallenge();
  }

  /** One try: (re)send the round's request, wait for its result, verify and unwrap. */
  async function attempt(current: Round): Promise<RoundOutcome> {
    const signal = current.abort.signal;
    if (signal.aborted) throw new RoundReplaced();
    if (current.nonce === undefined) {
      current.request = undefined;
      current.nonce = await askForChallenge(current);
      if (signal.aborted) throw new RoundReplaced();
    }
    if (current.request === undefined) {
      current.arrived = undefined;
      current.request = await buildRequest(current, current.nonce);
      if (signal.aborted) throw new RoundReplaced();
    }
    const request = current.request;
    await requests.sendRequest(request);
    logger("info", "attestation request sent", {
      agentId,
      requestId: request.requestId,
      purpose: current.purpose,
    });
    const result = await waitForResult(current, timing.resultTimeoutMs);
    if (result === undefined) {
      if (signal.aborted) throw new RoundReplaced();
      attestationCounters.timeout += 1;
      throw new ShieldError(
        "ERR_TIMEOUT",
        `no attestation result within ${Math.round(timing.resultTimeoutMs / 1000)} s`,
      );
    }
    attestationCounters[result.verdict] += 1;
    if (result.verdict === "denied" && FRESHNESS_CODES.has(result.denial.code)) {
      // The nonce was not fresh (expired while evidence was collected, already used, replaced):
      // a verdict on the nonce, not on this workload. A new challenge, fresh evidence.
      current.request = undefined;
      current.nonce = undefined;
      throw new ShieldError(
        "ERR_UPSTREAM_UNAVAILABLE",
        `the challenge was not accepted (${result.denial.code})`,
      );
    }
    if (result.verdict === "error") {
      // The functions could not complete the request (they give up only on transient
      // failures): ask again, with fresh evidence, whatever code they name.
      current.request = undefined;
      current.nonce = undefined;
      const code = result.denial.code;
      throw new ShieldError(
        isShieldErrorCode(code) && isTransientCode(code) ? code : "ERR_UPSTREAM_UNAVAILABLE",
        `the functions could not complete the attestation (${code})`,
      );
    }
    if (result.verdict === "trusted") {
      checkAttestedUntil(current, result);
      return { verdict: "trusted", result, keys: unwrapAll(result, request.challenge) };
    }
    return { verdict: "denied", result };
  }

  /**
   * A result vouching for less than `minAttestedMs` would expire (and wipe the keys) at once and
   * loop: it is asked for again, with fresh evidence, like an `error` result.
   */
  function checkAttestedUntil(current: Round, result: TrustedResult): void {
    const remainingMs = new Date(result.attestedUntil).getTime() - clock.now().getTime();
    if (Number.isFinite(remainingMs) && remainingMs >= timing.minAttestedMs) return;
    current.request = undefined;
    // The request used the nonce up: fresh evidence needs a fresh challenge (step 5).
    current.nonce = undefined;
    throw new ShieldError(
      "ERR_UPSTREAM_UNAVAILABLE",
      `the attestation result vouches for ${Number.isFinite(remainingMs) ? Math.round(remainingMs / 1000) : "?"} s, less than ${Math.round(timing.minAttestedMs / 1000)} s`,
    );
  }

  /** `attestedUntil`, but never later than `maxAttestedMs` from now. */
  function believedUntil(result: TrustedResult): Date {
    const latest = clock.now().getTime() + timing.maxAttestedMs;
    return new Date(Math.min(new Date(result.attestedUntil).getTime(), latest));
  }

  /** Every released key must be a requested one, once, in a version that may be installed. */
  function checkInstallable(keys: readonly { readonly name: string; readonly version: string }[]): void {
    const names = new Set<string>();
    for (const { name, version } of keys) {
      if (!configuredKeys.includes(name) || names.has(name)) {
        throw new ShieldError(
          "ERR_RELEASE_RESPONSE_MALFORMED",
          "the result releases a key that was not requested, or one key twice",
          { violations: [{ field: "keys.name", expected: configuredKeys.join(","), actual: name }] },
        );
      }
      names.add(name);
      const refusal = store.refusal(name, version);
      if (refusal !== undefined) {
        throw new ShieldError(
          "ERR_RELEASE_RESPONSE_MALFORMED",
          refusal === "revoked"
            ? `key ${name} version ${version} was revoked`
            : `key ${name} version ${version} is older than a version already installed`,
          { violations: [{ field: "keys.version", expected: `not ${refusal}`, actual: version }] },
        );
      }
    }
  }

  /** Sends a `challenge-request` and waits for the signed challenge it brings. */
  async function askForChallenge(current: Round): Promise<string> {
    await requests.sendRequest(
      makeChallengeRequest({ agentId, workload, tee: provider.tee, sentAt: clock.now() }),
    );
    logger("info", "challenge requested", { agentId, purpose: current.purpose });
    const nonce = await new Promise<string | undefined>((resolve) => {
      const done = (value: string | undefined): void => {
        clearTimeout(timer);
        current.abort.signal.removeEventListener("abort", aborted);
        current.challengeWaiter = undefined;
        resolve(value);
      };
      const aborted = (): void => done(undefined);
      const timer = setTimeout(() => done(undefined), timing.resultTimeoutMs);
      timer.unref();
      current.abort.signal.addEventListener("abort", aborted, { once: true });
      current.challengeWaiter = done;
    });
    if (nonce !== undefined) return nonce;
    if (current.abort.signal.aborted) throw new RoundReplaced();
    throw new ShieldError(
      "ERR_TIMEOUT",
      `no challenge within ${Math.round(timing.resultTimeoutMs / 1000)} s`,
    );
  }

  async function buildRequest(current: Round, nonce: string): Promise<AttestationRequest> {
    const requestId = random.uuid();
    const keys = [...configuredKeys];
    // The hardware signs the runtime data, so its evidence cannot be sent with other fields.
    const binding = requestBinding({ agentId, requestId, workload, tee: provider.tee, keys });
    const runtimeData: RuntimeData = runtimeKey.bindToNonce(nonce, binding);
    const evidence = await collectEvidence(provider, {
      runtimeData: runtimeData.bytes,
      reportData: runtimeData.reportData,
    });
    return makeAttestationRequest({
      agentId,
      requestId,
      workload,
      tee: provider.tee,
      evidence,
      runtimeData: runtimeData.base64url,
      challenge: nonce,
      keys,
      sentAt: clock.now(),
    });
  }

  function waitForResult(current: Round, timeoutMs: number): Promise<AttestationResult | undefined> {
    if (current.arrived !== undefined) {
      const arrived = current.arrived;
      current.arrived = undefined;
      return Promise.resolve(arrived);
    }
    return new Promise((resolve) => {
      const done = (result: AttestationResult | undefined): void => {
        clearTimeout(timer);
        current.abort.signal.removeEventListener("abort", aborted);
        current.waiter = undefined;
        resolve(result);
      };
      const aborted = (): void => done(undefined);
      const timer = setTimeout(() => done(undefined), timeoutMs);
      timer.unref();
      current.abort.signal.addEventListener("abort", aborted, { once: true });
      current.waiter = done;
    });
  }

  /** Verifies and unwraps every released key; any failure rejects the whole result. */
  function unwrapAll(result: TrustedResult, challenge: string): UnwrappedKey[] {
    const unwrapped: UnwrappedKey[] = [];
    checkInstallable(result.keys);
    try {
      for (const released of result.keys) {
        const key = runtimeKey.unwrapReleased(released.releaseResponse, {
          trustedSigners: releaseSigners,
          at: clock.now(),
        });
        if (!key.signerTrusted) {
          throw new ShieldError("ERR_RELEASE_RESPONSE_SIGNATURE", "release response signer is not trusted");
        }
        checkKeyId(key.kid, keyVaultOrigin, released.name, released.version);
        // Key Vault echoes the request nonce (the challenge) in what it signs: a release
        // response made for another request cannot be slipped into this one.
        if (key.nonce !== undefined && key.nonce !== challenge) {
          throw new ShieldError(
            "ERR_RELEASE_RESPONSE_NONCE",
            "release response was made for another request",
            {
              violations: [
                { field: "request.nonce", expected: "the challenge nonce", actual: "another nonce" },
              ],
            },
          );
        }
        const material = "bytes" in key ? key.bytes : key.privateKey.export({ type: "pkcs8", format: "der" });
        unwrapped.push({ name: released.name, version: released.version, kty: key.kty, material });
      }
    } catch (error) {
      for (const key of unwrapped) key.material.fill(0);
      throw error;
    }
    return unwrapped;
  }

  function install(keys: readonly UnwrappedKey[]): void {
    const at = clock.now();
    for (const key of keys) {
      const installed = store.install(key.name, key.version, key.kty, key.material, at);
      key.material.fill(0);
      if (installed.installed) {
        logger("info", "key installed", { agentId, keyName: key.name, keyVersion: key.version });
      }
      for (const dropped of installed.dropped) {
        logger("info", "older key version wiped", { agentId, keyName: key.name, keyVersion: dropped });
      }
      const current = installed.currentChanged ? store.get(key.name) : undefined;
      if (current !== undefined && options.keyFiles !== undefined) {
        const keyFiles = options.keyFiles;
        queueFiles(() => keyFiles.write(current), "write", key.name);
      }
    }
  }

  // ---------------------------------------------------------------------------------------
  // Wiping and files

  function wipeAll(reason: string): void {
    const wiped = store.wipeAll({ revoked: reason === "revoked" });
    if (wiped > 0) logger("warn", "keys wiped", { agentId, reason, versions: wiped });
    if (options.keyFiles !== undefined) {
      const keyFiles = options.keyFiles;
      queueFiles(() => keyFiles.removeAll(), "remove", "*");
    }
  }

  function wipeVersion(keyName: string, keyVersion: string): void {
    if (store.wipeVersion(keyName, keyVersion, { revoked: true })) {
      logger("warn", "revoked key version wiped", { agentId, keyName, keyVersion });
    }
  }

  function queueFiles(operation: () => Promise<void>, what: string, keyName: string): void {
    files = files.then(operation).catch((error: unknown) => {
      logger("error", "key file operation failed", {
        agentId,
        operation: what,
        keyName,
        code: codeOf(error),
      });
    });
  }

  // ---------------------------------------------------------------------------------------
  // Timers

  function schedule(attestedUntil: Date): void {
    clearTimers();
    const remaining = attestedUntil.getTime() - clock.now().getTime();
    if (timing.reattestIntervalMs > 0) {
      const renewIn = Math.min(timing.reattestIntervalMs, Math.max(0, remaining - renewalLead(remaining)));
      after(renewIn, () => dispatch({ type: "reattest-due" }));
    }
    after(Math.max(0, remaining), () => dispatch({ type: "attestation-expired" }));
  }

  function after(ms: number, action: () => void): void {
    const timer = setTimeout(
      () => {
        timers.delete(timer);
        if (ms > MAX_TIMER_MS) after(ms - MAX_TIMER_MS, action);
        else action();
      },
      Math.min(ms, MAX_TIMER_MS),
    );
    timer.unref();
    timers.add(timer);
  }

  function clearTimers(): void {
    for (const timer of timers) clearTimeout(timer);
    timers.clear();
  }

  // ---------------------------------------------------------------------------------------
  // Inbox

  async function receiveLoop(): Promise<void> {
    let failures = 0;
    while (!stopping) {
      let received;
      try {
        received = await inbox.receive(timing.receiveWaitMs);
        failures = 0;
      } catch (error) {
        if (stopping) return;
        failures++;
        const delayMs = Math.min(
          timing.retryMaxDelayMs,
          timing.retryBaseDelayMs * 2 ** Math.min(failures, 16),
        );
        logger("warn", "inbox receive failed", { agentId, code: codeOf(error), delayMs });
        await pause(delayMs, lifetime.signal).catch(() => undefined);
        continue;
      }
      if (received === undefined || stopping) continue;
      await handleMessage(received.body, received.messageId);
    }
  }

  function drop(messageId: string, code: string, message: string): void {
    inboxCounters.dropped[code] = (inboxCounters.dropped[code] ?? 0) + 1;
    logger("warn", message, { agentId, messageId, code });
  }

  /** Verifies, then acts; what does not verify changes nothing. */
  async function handleMessage(body: unknown, messageId: string): Promise<void> {
    let verified;
    try {
      const at = clock.now();
      verified = await verifyControlMessage(body, { keys: controlKeys, agentId, at });
      replayGuard.admit(verified, at);
    } catch (error) {
      drop(messageId, codeOf(error), "inbox message dropped: not a valid control message");
      return;
    }
    if (stopping) return;
    inboxCounters.accepted++;
    const message = verified.message;
    switch (message.type) {
      case "attestation-result":
        onResult(message, messageId);
        return;
      case "challenge":
        onChallenge(message, messageId);
        return;
      case "key-event":
        onKeyEvent(message, messageId);
        return;
    }
  }

  function onResult(result: AttestationResult, messageId: string): void {
    const current = round;
    if (result.agentId !== agentId || current?.request?.requestId !== result.requestId) {
      logger("debug", "attestation result for no running round dropped", {
        agentId,
        messageId,
        requestId: result.requestId,
      });
      return;
    }
    // Bound to the request it answers: a result for a doctored copy sent under this request id
    // (the control plane signs answers to whatever reaches it) is not about this agent's evidence.
    if (result.requestDigest !== requestDigest(current.request)) {
      drop(messageId, "ERR_CONTROL_UNBOUND", "attestation result for another request under this id dropped");
      return;
    }
    if (current.waiter !== undefined) current.waiter(result);
    else current.arrived = result;
  }

  function onChallenge(challenge: Challenge, messageId: string): void {
    if (challenge.agentId !== agentId) {
      logger("warn", "challenge for another agent dropped", { agentId, messageId });
      return;
    }
    const waiting = round?.challengeWaiter;
    if (waiting === undefined && challenge.reason === "requested") {
      // The answer to a challenge-request this agent is not waiting for: anyone can ask in its
      // name, so such a challenge never makes it attest.
      drop(messageId, "unsolicited-challenge", "challenge this agent did not ask for dropped");
      return;
    }
    // A round that asked may get a nonce it answered before: the control plane sends an open
    // challenge again while it is unused (the earlier answer was refused before using it).
    if (waiting === undefined && answeredNonces.includes(challenge.nonce)) {
      logger("debug", "challenge already answered", { agentId, messageId });
      return;
    }
    if (!answeredNonces.includes(challenge.nonce)) answeredNonces.push(challenge.nonce);
    if (answeredNonces.length > ANSWERED_NONCES) answeredNonces.shift();
    logger("info", "challenge received", { agentId, messageId, deadline: challenge.deadline });
    if (waiting !== undefined) {
      // The challenge the running round asked for (or one the timer sent meanwhile): answer it.
      round!.nonce = challenge.nonce;
      waiting(challenge.nonce);
      return;
    }
    const deadline = new Date(challenge.deadline);
    if (round?.nonce !== undefined) {
      // A round is answering another challenge; replacing it would throw its answer away. This
      // one is answered when that round ends (if still in time).
      deferredChallenge = { nonce: challenge.nonce, deadline };
      logger("info", "challenge deferred until the running round ends", { agentId, messageId });
      return;
    }
    dispatch({ type: "challenge", nonce: challenge.nonce, deadline });
  }

  /** A re-attestation challenge that came during a round, once that round has ended trusted. */
  function answerDeferredChallenge(): void {
    const deferred = deferredChallenge;
    deferredChallenge = undefined;
    if (deferred === undefined || stopping) return;
    if (deferred.deadline.getTime() <= clock.now().getTime()) return;
    dispatch({ type: "challenge", nonce: deferred.nonce, deadline: deferred.deadline });
  }

  function onKeyEvent(event: KeyEvent, messageId: string): void {
    const fields = { agentId, messageId, keyName: event.keyName, keyVersion: event.keyVersion };
    if (!configuredKeys.includes(event.keyName)) {
      logger("debug", "key event for a key this agent does not use", fields);
      return;
    }
    if (event.event === "rotated") {
      if (store.has(event.keyName, event.keyVersion)) {
        logger("debug", "rotation to a version already held", fields);
        return;
      }
      logger("info", "key rotated; fetching the new version", fields);
      dispatch({ type: "key-rotated", keyName: event.keyName, keyVersion: event.keyVersion });
      return;
    }
    // Remembered whether held or not: a resent or replayed result must not bring it back.
    store.markRevoked(event.keyName, event.keyVersion);
    if (!store.has(event.keyName, event.keyVersion)) {
      logger("info", "revocation of a version this agent does not hold; remembered", fields);
      return;
    }
    const current = store.currentVersion(event.keyName) === event.keyVersion;
    logger("warn", "key revoked", { ...fields, current });
    dispatch({ type: "key-revoked", keyName: event.keyName, keyVersion: event.keyVersion, current });
  }

  // ---------------------------------------------------------------------------------------

  return {
    start(): Promise<void> {
      if (state.name !== "starting" || receiving !== undefined) {
        return Promise.reject(new TypeError("the agent was already started"));
      }
      logger("info", "agent starting", {
        agentId,
        provider: provider.name,
        tee: provider.tee,
        runtimeKeyId: runtimeKey.kid,
        keys: configuredKeys.join(","),
      });
      receiving = receiveLoop().catch((error: unknown) => {
        logger("error", "inbox loop ended", { agentId, code: codeOf(error) });
      });
      dispatch({ type: "start" });
      return Promise.resolve();
    },
    async stop(): Promise<void> {
      if (stopping) return;
      stopping = true;
      lifetime.abort();
      dispatch({ type: "stop" });
      await inbox.close().catch((error: unknown) => {
        logger("warn", "inbox close failed", { agentId, code: codeOf(error) });
      });
      // Keys are already wiped; waiting on a transport that does not stop promptly gains nothing.
      await Promise.race([receiving, pause(STOP_WAIT_MS, undefined)]);
      await files;
      logger("info", "agent stopped", { agentId });
    },
    state: () => state,
    status(): AgentStatus {
      return {
        agentId,
        workload,
        state: state.name,
        ...(state.attestedUntil === undefined ? {} : { attestedUntil: state.attestedUntil.toISOString() }),
        ...(state.reason === undefined ? {} : { reason: state.reason }),
        provider: provider.name,
        tee: provider.tee,
        runtimeKeyId: runtimeKey.kid,
        configuredKeys,
        keys: store.summary(),
        inbox: { accepted: inboxCounters.accepted, dropped: { ...inboxCounters.dropped } },
        attestations: { ...attestationCounters },
      };
    },
    keys: store,
    configuredKeys,
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
}

/** The key id Key Vault signed must name the configured vault, and the key and version the result lists. */
function checkKeyId(kid: string, vaultOrigin: string, name: string, version: string): void {
  let segments: string[] = [];
  let origin = "";
  try {
    const url = new URL(kid);
    origin = url.origin;
    segments = url.pathname.split("/").filter(Boolean);
  } catch {
    // Reported below.
  }
  if (origin !== vaultOrigin) {
    throw new ShieldError(
      "ERR_RELEASE_RESPONSE_MALFORMED",
      "release response is for a key in another vault",
      {
        violations: [{ field: "kid", expected: vaultOrigin, actual: origin.slice(0, 256) || "not a URL" }],
      },
    );
  }
  if (segments.length !== 3 || segments[0] !== "keys" || segments[1] !== name || segments[2] !== version) {
    throw new ShieldError(
      "ERR_RELEASE_RESPONSE_MALFORMED",
      "release response is for another key or version than the result lists",
      { violations: [{ field: "kid", expected: `/keys/${name}/${version}`, actual: segments.join("/") }] },
    );
  }
}

function codeOf(error: unknown): string {
  return isShieldError(error) ? error.code : error instanceof TypeError ? "TypeError" : "ERR_INTERNAL";
}

/**
 * A replaced or halted round ends with this: not a ShieldError, so withRetry gives up at once
 * instead of counting it as a transient failure.
 */
class RoundReplaced extends Error {
  constructor() {
    super("the round was replaced");
  }
}

/** Waits `ms`; rejects when `signal` aborts, so a replaced round stops retrying at once. */
function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new RoundReplaced());
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", aborted);
      resolve();
    }, ms);
    timer.unref();
    const aborted = (): void => {
      clearTimeout(timer);
      reject(new RoundReplaced());
    };
    signal?.addEventListener("abort", aborted, { once: true });
  });
}

function definedTiming(timing: AgentTiming | undefined): Partial<Record<keyof AgentTiming, number>> {
  const out: Partial<Record<keyof AgentTiming, number>> = {};
  for (const [name, value] of Object.entries(timing ?? {}) as [keyof AgentTiming, number | undefined][]) {
    if (value === undefined) continue;
    const zeroAllowed = name === "reattestIntervalMs" || name === "minAttestedMs";
    if (typeof value !== "number" || !Number.isFinite(value) || value < 0 || (!zeroAllowed && value === 0)) {
      throw new TypeError(`timing.${name} must be a positive number of milliseconds`);
    }
    out[name] = value;
  }
  return out;
}

function checkOptions(options: AgentOptions): void {
  if (typeof options !== "object" || options === null) throw new TypeError("options must be an object");
  if (!Array.isArray(options.keys) || options.keys.length === 0) {
    throw new TypeError("keys must name at least one Key Vault key");
  }
  if (options.releaseSigners === undefined || options.releaseSigners === null) {
    throw new TypeError("releaseSigners is required: release responses must come from a trusted signer");
  }
  if (typeof options.controlKeys?.find !== "function") {
    throw new TypeError("controlKeys is required: only messages signed by the control plane are acted on");
  }
  let vault: URL;
  try {
    vault = new URL(options.keyVaultUrl);
  } catch {
    throw new TypeError("keyVaultUrl must be the Key Vault URL release responses come from");
  }
  if (vault.protocol !== "https:" && vault.protocol !== "http:") {
    throw new TypeError("keyVaultUrl must be an http(s) URL");
  }
  for (const name of ["provider", "runtimeKey", "requests", "inbox"] as const) {
    if (typeof options[name] !== "object" || options[name] === null) {
      throw new TypeError(`${name} is required`);
    }
  }
}
