/**
 * Issuing challenges: the freshness half of the attest protocol. Every attestation answers a
 * challenge the control plane issued to that agent — a 32-byte random nonce with a deadline,
 * written to the agent's record before the signed `challenge` message is sent, so the nonce
 * exists in state before anyone can answer it. The agent binds the nonce into its runtime data
 * (and so into the hardware report); `attest` refuses evidence that does not bind an open nonce
 * of that agent, and uses each nonce once.
 *
 * An agent has at most one open challenge. A `challenge-request` while one is open and not near
 * its deadline sends the same challenge again instead of replacing it, and one while the open
 * challenge is being answered sends nothing: agent ids are not authenticated, so whoever can
 * write to the requests queue could otherwise invalidate an agent's nonce while it collects
 * evidence, or push a new challenge at it while its answer is on the way. A challenge made for a
 * `challenge-request` says so (`reason: "requested"`); agents use such a challenge only while
 * they wait for one, so asking in an agent's name never makes it attest. The re-attestation
 * timer issues challenges through the same function with `reason: "reattest"`.
 */
import { ShieldError } from "../errors.js";
import {
  makeChallenge,
  parseChallengeRequest,
  type ChallengeRequest,
  type TeeKind,
} from "../messages/index.js";
import type { AgentSender } from "../control/signed.js";
import type { Clock, Random } from "../ports/clock.js";
import type { Logger } from "../ports/logger.js";
import type { AgentRecord, PendingChallenge, StateStore } from "../ports/state.js";
import { changeAgent } from "../state/agents.js";

export interface ChallengePorts {
  readonly state: StateStore;
  readonly agents: AgentSender;
  readonly clock: Clock;
  readonly random: Random;
  readonly logger: Logger;
}

export interface ChallengeConfig {
  /** How long an agent has to answer a challenge (default 300 s). */
  readonly challengeSeconds?: number;
}

export const DEFAULT_CHALLENGE_SECONDS = 300;
/** An open challenge is sent again at most this often (an agent asks again after a timeout). */
export const RESEND_INTERVAL_MS = 10_000;
/** Bytes of randomness in a nonce. */
export const NONCE_BYTES = 32;

export interface IssuedChallenge {
  readonly nonce: string;
  readonly deadline: Date;
  /** True when an open challenge was sent again rather than a new one made. */
  readonly reused: boolean;
  /**
   * True when nothing was sent: the open challenge is being answered right now (its nonce is
   * consumed, the answer not yet recorded) and a new one would only replace what the agent is
   * about to receive, or it was sent less than RESEND_INTERVAL_MS ago.
   */
  readonly suppressed?: boolean;
}

export interface ChallengeIssuer {
  /**
   * Writes a pending challenge for the agent (or reuses the open one) and sends it signed, with
   * the reason agents act on: `requested` (a challenge-request's answer) or `reattest`.
   */
  issue(
    agent: { agentId: string; workload: string; tee: TeeKind },
    reason?: "requested" | "reattest",
  ): Promise<IssuedChallenge>;
  /** The `challenge-request` message handler: parse, issue. */
  handleRequest(message: ChallengeRequest): Promise<IssuedChallenge>;
}

export function createChallengeIssuer(ports: ChallengePorts, config: ChallengeConfig = {}): ChallengeIssuer {
  const seconds = config.challengeSeconds ?? DEFAULT_CHALLENGE_SECONDS;
  if (!Number.isSafeInteger(seconds) || seconds < 10 || seconds > 3600) {
    throw new TypeError("challengeSeconds must be an integer in 10..3600");
  }
  const { state, agents, clock, random, logger } = ports;

  /** An open challenge with at least a third of its time left is sent again as it is. */
  function reusable(challenge: PendingChallenge | undefined, now: Date): challenge is PendingChallenge {
    return (
      challenge !== undefined &&
      challenge.answeredBy === undefined &&
      challenge.deadline.getTime() - now.getTime() >= (seconds * 1000) / 3
    );
  }

  async function issue(
    agent: { agentId: string; workload: string; tee: TeeKind },
    reason: "requested" | "reattest" = "reattest",
  ): Promise<IssuedChallenge> {
    const now = clock.now();
    let issued: IssuedChallenge | undefined;
    /** What the message says: the stored challenge's reason (an owed re-attestation stays one). */
    let sentReason = reason;
    /** What this call wrote: a write whose answer was lost is refused as a conflict when sent again. */
    let written: IssuedChallenge | undefined;
    await changeAgent(state, agent.agentId, (current: AgentRecord | undefined) => {
      const open = current?.challenge;
      if (
        written !== undefined &&
        open?.nonce === written.nonce &&
        open.answeredBy === undefined &&
        open.sentAt?.getTime() === now.getTime()
      ) {
        // This call's own write landed: it is sent, not taken for one "sent moments ago".
        issued = written;
        return undefined;
      }
      if (open?.answeredBy !== undefined && open.deadline.getTime() > now.getTime()) {
        issued = { nonce: open.nonce, deadline: open.deadline, reused: true, suppressed: true };
        return undefined;
      }
      // A re-attestation deadline never moves: asking for a challenge (anyone can, in an agent's
      // name) gets a fresh nonce at most, due by the same deadline, and nothing once it passed.
      const owed = open?.reason === "reattest" && open.answeredBy === undefined ? open : undefined;
      if (owed !== undefined && owed.deadline.getTime() <= now.getTime()) {
        issued = { nonce: owed.nonce, deadline: owed.deadline, reused: true, suppressed: true };
        return undefined;
      }
      if (reusable(current?.challenge, now)) {
        const reused = current.challenge;
        const upgrade = reason === "reattest" && reused.reason !== "reattest";
        const lastSent = reused.sentAt ?? reused.issuedAt;
        if (!upgrade && now.getTime() - lastSent.getTime() < RESEND_INTERVAL_MS) {
          // Sent moments ago: asking again and again in an agent's name buys no signatures.
          issued = { nonce: reused.nonce, deadline: reused.deadline, reused: true, suppressed: true };
          return undefined;
        }
        issued = { nonce: reused.nonce, deadline: reused.deadline, reused: true };
        written = issued;
        sentReason = upgrade ? reason : (reused.reason ?? reason);
        const { etag: _etag, ...rest } = current;
        return {
          ...rest,
          challenge: { ...reused, ...(upgrade ? { reason } : {}), sentAt: now },
          updatedAt: now,
        };
      }
      const challenge: PendingChallenge = {
        nonce: random.bytes(NONCE_BYTES).toString("base64url"),
        issuedAt: now,
        deadline: owed?.deadline ?? new Date(now.getTime() + seconds * 1000),
        reason: owed === undefined ? reason : "reattest",
        sentAt: now,
      };
      issued = { nonce: challenge.nonce, deadline: challenge.deadline, reused: false };
      written = issued;
      sentReason = challenge.reason ?? reason;
      if (current === undefined) {
        return {
          agentId: agent.agentId,
          workload: agent.workload,
          tee: agent.tee,
          status: "new",
          challenge,
          updatedAt: now,
        };
      }
      const { etag: _etag, ...rest } = current;
      return { ...rest, challenge, updatedAt: now };
    });
    if (issued === undefined) throw new ShieldError("ERR_INTERNAL", "no challenge was issued");
    if (issued.suppressed === true) {
      logger("info", "challenge being answered or just sent; none sent", { agentId: agent.agentId });
      return issued;
    }
    try {
      await agents.sendToAgent(
        agent.agentId,
        makeChallenge({
          agentId: agent.agentId,
          nonce: issued.nonce,
          deadline: issued.deadline,
          reason: sentReason,
          sentAt: now,
        }),
      );
    } catch (error) {
      // Never sent: a new challenge is withdrawn, so no agent is held to one it never received
      // (the re-attestation timer finds it due again next tick).
      if (!issued.reused) await withdraw(agent.agentId, issued.nonce).catch(() => undefined);
      throw error;
    }
    logger("info", issued.reused ? "open challenge sent again" : "challenge issued", {
      agentId: agent.agentId,
      deadline: issued.deadline.toISOString(),
    });
    return issued;
  }

  async function withdraw(agentId: string, nonce: string): Promise<void> {
    await changeAgent(state, agentId, (current) => {
      if (current?.challenge?.nonce !== nonce || current.challenge.answeredBy !== undefined) return undefined;
      const { etag: _etag, challenge: _withdrawn, ...rest } = current;
      return { ...rest, updatedAt: clock.now() };
    });
  }

  return {
    issue,
    handleRequest: (message) =>
      issue({ agentId: message.agentId, workload: message.workload, tee: message.tee }, "requested"),
  };
}

export { parseChallengeRequest };
