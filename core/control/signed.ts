/**
 * Signed control messages: everything the functions send to an agent (results, challenges, key
 * events) travels as a compact JWS signed with the control-plane key (core/ports/control-signer),
 * and an agent acts only on what verifies against the keys it pins. Whoever can write to an
 * agent's queue can therefore delay it, never steer it.
 *
 * The payload is the message itself (DESIGN §8), so a signed result covers its request id, its
 * `attestedUntil` and every release response it carries. The protected header names the key
 * (`kid`) and carries what makes one signing unique and short-lived:
 *
 * ```
 * {"alg":"ES256","kid":"https://<vault>/keys/<name>/<version>","typ":"shield-control+jws",
 *  "sub":"<agent id>","jti":"<uuid>","iat":<seconds>,"exp":<seconds>}
 * ```
 *
 * Verification, in order (each failure a terminal ShieldError; nothing is decided from an
 * unverified part): 1. size and compact form; 2. header: `typ`, `alg` in the allowlist, `kid`
 * pinned and the pinned key made for that `alg`; 3. signature (jose); 4. header claims: `sub` is
 * this agent, `jti` an identifier, `iat`/`exp` integers, not expired, not issued in the future,
 * lifetime bounded; 5. payload: the message parser, a type agents receive, addressed to this
 * agent. Replays of a verified message within its lifetime are the receiver's to refuse, with
 * {@link ControlReplayGuard}.
 */
import { createHash, createPublicKey, type JsonWebKey, type KeyObject } from "node:crypto";
import { compactVerify } from "jose";
import { ShieldError, isShieldError } from "../errors.js";
import { IDENTIFIER_PATTERN, parseMessage } from "../messages/index.js";
import {
  AGENT_MESSAGE_TYPES,
  MAX_SIGNED_MESSAGE_ID_CHARS,
  type AgentChannel,
  type AgentMessage,
  type AgentMessageType,
  type SignedAgentMessage,
} from "../ports/bus.js";
import type { Clock, Random } from "../ports/clock.js";
import { CONTROL_ALGORITHMS, type ControlAlgorithm, type ControlSigner } from "../ports/control-signer.js";

export const CONTROL_JWS_TYPE = "shield-control+jws";
/** A result with its release responses fits well under this; the bus limit is 256 KiB. */
export const MAX_CONTROL_MESSAGE_CHARS = 256 * 1024;
/** How far the agent's clock may be behind or ahead of the control plane's. */
export const CONTROL_CLOCK_SKEW_SECONDS = 60;
/** No signed control message is valid for longer than this. */
export const MAX_CONTROL_LIFETIME_SECONDS = 24 * 3600;
/** Default lifetime of a signed result or key event: long enough for the bus, short for a replay. */
export const DEFAULT_CONTROL_TTL_SECONDS = 900;

// ---------------------------------------------------------------------------------------------
// Signing (functions side)

export interface SignControlOptions {
  readonly signer: ControlSigner;
  readonly messageId: string;
  readonly issuedAt: Date;
  readonly expiresAt: Date;
}

/** Signs one message for the agent it names; the signer sees only the SHA-256 digest. */
export async function signControlMessage(
  message: AgentMessage,
  options: SignControlOptions,
): Promise<SignedAgentMessage> {
  const { signer, messageId, issuedAt, expiresAt } = options;
  if (!AGENT_MESSAGE_TYPES.includes(message.type)) {
    throw new TypeError("signControlMessage: only attestation-result, challenge and key-event are signed");
  }
  if (!IDENTIFIER_PATTERN.test(messageId) || messageId.length > MAX_SIGNED_MESSAGE_ID_CHARS) {
    throw new TypeError("signControlMessage: messageId");
  }
  if (!(CONTROL_ALGORITHMS as readonly string[]).includes(signer.algorithm)) {
    throw new TypeError("signControlMessage: signer.algorithm is not a control-plane algorithm");
  }
  const iat = Math.floor(issuedAt.getTime() / 1000);
  const exp = Math.floor(expiresAt.getTime() / 1000);
  if (!Number.isSafeInteger(iat) || !Number.isSafeInteger(exp) || exp <= iat) {
    throw new TypeError("signControlMessage: expiresAt must be after issuedAt");
  }
  if (exp - iat > MAX_CONTROL_LIFETIME_SECONDS) {
    throw new TypeError(`signControlMessage: lifetime above ${MAX_CONTROL_LIFETIME_SECONDS} s`);
  }
  const header = {
    alg: signer.algorithm,
    kid: signer.keyId,
    typ: CONTROL_JWS_TYPE,
    sub: message.agentId,
    jti: messageId,
    iat,
    exp,
  };
  const signingInput = `${b64(JSON.stringify(header))}.${b64(JSON.stringify(message))}`;
  const digest = createHash("sha256").update(signingInput, "ascii").digest();
  const signature = await signer.sign(digest);
  return {
    type: message.type,
    agentId: message.agentId,
    messageId,
    jws: `${signingInput}.${signature.toString("base64url")}`,
  };
}

/** The functions' side of the agent channel: unsigned messages in, signed ones on the wire. */
export interface AgentSender {
  sendToAgent(agentId: string, message: AgentMessage): Promise<void>;
}

export interface ControlChannelOptions {
  readonly transport: AgentChannel;
  readonly signer: ControlSigner;
  readonly clock: Clock;
  readonly random: Random;
  /** Lifetime of signed results and key events (default 900 s); a challenge lives to its deadline. */
  readonly ttlSeconds?: number;
}

/**
 * Signs every message with a fresh id and expiry, then hands it to the transport. A message
 * sent again (a redelivered request's stored answer) is signed again: a new id, a new expiry.
 */
export function createControlChannel(options: ControlChannelOptions): AgentSender {
  const ttlSeconds = options.ttlSeconds ?? DEFAULT_CONTROL_TTL_SECONDS;
  if (!Number.isSafeInteger(ttlSeconds) || ttlSeconds < 1 || ttlSeconds > MAX_CONTROL_LIFETIME_SECONDS) {
    throw new TypeError(`ttlSeconds must be an integer in 1..${MAX_CONTROL_LIFETIME_SECONDS}`);
  }
  const { transport, signer, clock, random } = options;
  return {
    async sendToAgent(agentId: string, message: AgentMessage): Promise<void> {
      if (message.agentId !== agentId) {
        throw new TypeError(`sendToAgent: the ${message.type} message is addressed to another agent`);
      }
      const issuedAt = clock.now();
      const expiresAt =
        message.type === "challenge"
          ? new Date(Math.max(new Date(message.deadline).getTime(), issuedAt.getTime() + 1000))
          : new Date(issuedAt.getTime() + ttlSeconds * 1000);
      const signed = await signControlMessage(message, {
        signer,
        messageId: random.uuid(),
        issuedAt,
        expiresAt,
      });
      await transport.sendToAgent(agentId, signed);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Pinned keys (agent side)

export interface ControlKey {
  readonly kid: string;
  readonly algorithms: readonly ControlAlgorithm[];
  readonly key: KeyObject;
}

/** The control-plane keys an agent trusts: one, or two while that key is rotated. */
export interface ControlKeySet {
  readonly keys: readonly ControlKey[];
  find(kid: string): ControlKey | undefined;
}

const MAX_PINNED_KEYS = 4;

/**
 * Reads pinned control-plane keys from a JWK set (`{"keys":[...]}`) or a JWK array: public EC
 * P-256 (ES256) or RSA ≥ 2048 bits (RS256 and PS256, or the JWK's `alg`), each with the `kid`
 * the control plane signs with. Configuration errors are ERR_CONFIG; private members refused.
 */
export function controlKeySet(value: unknown): ControlKeySet {
  const list = Array.isArray(value)
    ? (value as unknown[])
    : typeof value === "object" && value !== null && Array.isArray((value as { keys?: unknown }).keys)
      ? (value as { keys: unknown[] }).keys
      : undefined;
  if (list === undefined || list.length === 0 || list.length > MAX_PINNED_KEYS) {
    throw new ShieldError(
      "ERR_CONFIG",
      `control-plane keys: a JWK set of 1..${MAX_PINNED_KEYS} public keys is required`,
    );
  }
  const keys = list.map((jwk, index) => controlKeyFromJwk(jwk, index));
  const kids = new Set(keys.map((k) => k.kid));
  if (kids.size !== keys.length) throw new ShieldError("ERR_CONFIG", "control-plane keys: duplicate kid");
  return {
    keys,
    find: (kid) => keys.find((k) => k.kid === kid),
  };
}

function controlKeyFromJwk(jwk: unknown, index: number): ControlKey {
  const bad = (why: string): ShieldError =>
    new ShieldError("ERR_CONFIG", `control-plane key ${index}: ${why}`);
  if (typeof jwk !== "object" || jwk === null || Array.isArray(jwk)) throw bad("not a JWK object");
  const fields = jwk as Record<string, unknown>;
  const kid = fields["kid"];
  if (typeof kid !== "string" || kid.length === 0 || kid.length > 512) throw bad("kid is required");
  for (const secret of ["d", "p", "q", "dp", "dq", "qi", "k"]) {
    if (secret in fields) throw bad("must be a public key");
  }
  let key: KeyObject;
  try {
    const { kty, crv, x, y, n, e } = fields;
    key = createPublicKey({
      key: (kty === "EC" ? { kty, crv, x, y } : { kty, n, e }) as JsonWebKey,
      format: "jwk",
    });
  } catch {
    throw bad("not a valid public JWK");
  }
  const details = key.asymmetricKeyDetails;
  let algorithms: ControlAlgorithm[];
  if (key.asymmetricKeyType === "ec" && details?.namedCurve === "prime256v1") algorithms = ["ES256"];
  else if (key.asymmetricKeyType === "rsa" && (details?.modulusLength ?? 0) >= 2048)
    algorithms = ["RS256", "PS256"];
  else throw bad("must be EC P-256 or RSA of at least 2048 bits");
  const alg = fields["alg"];
  if (alg !== undefined) {
    if (typeof alg !== "string" || !(algorithms as string[]).includes(alg)) {
      throw bad(`alg ${typeof alg === "string" ? alg.slice(0, 16) : typeof alg} does not fit the key`);
    }
    algorithms = [alg as ControlAlgorithm];
  }
  return { kid, algorithms, key };
}

// ---------------------------------------------------------------------------------------------
// Verification (agent side)

export interface VerifyControlOptions {
  readonly keys: ControlKeySet;
  /** The agent verifying: `sub` and the message's `agentId` must name it. */
  readonly agentId: string;
  readonly at: Date;
}

export interface VerifiedControlMessage {
  readonly message: AgentMessage;
  readonly messageId: string;
  readonly expiresAt: Date;
  readonly kid: string;
}

interface ControlHeader {
  readonly alg: ControlAlgorithm;
  readonly kid: string;
  readonly sub: string;
  readonly jti: string;
  readonly iat: number;
  readonly exp: number;
}

/** Verifies a received body as a signed control message for this agent (checks in the module doc). */
export async function verifyControlMessage(
  body: unknown,
  options: VerifyControlOptions,
): Promise<VerifiedControlMessage> {
  // 1. size and compact form
  if (typeof body !== "string") {
    throw new ShieldError("ERR_CONTROL_MALFORMED", "control message is not a signed (JWS) message");
  }
  if (body.length > MAX_CONTROL_MESSAGE_CHARS) {
    throw new ShieldError(
      "ERR_INPUT_TOO_LARGE",
      `control message is larger than ${MAX_CONTROL_MESSAGE_CHARS}`,
    );
  }
  const parts = body.split(".");
  if (parts.length !== 3 || parts.some((part) => !/^[A-Za-z0-9_-]+$/.test(part))) {
    throw new ShieldError("ERR_CONTROL_MALFORMED", "control message is not a compact JWS");
  }
  // 2. header
  const rawHeader = decodeJson(parts[0]!, "header");
  const kid = checkHeaderKey(rawHeader, options.keys);
  // 3. signature
  const pinned = options.keys.find(kid)!;
  let payloadBytes: Uint8Array;
  try {
    const verified = await compactVerify(body, pinned.key, { algorithms: [...pinned.algorithms] });
    payloadBytes = verified.payload;
  } catch (cause) {
    throw new ShieldError("ERR_CONTROL_SIGNATURE", "control message signature does not verify", { cause });
  }
  // 4. header claims
  const header = checkHeaderClaims(rawHeader, options);
  // 5. payload
  let message;
  try {
    message = parseMessage(Buffer.from(payloadBytes), { maxBytes: MAX_CONTROL_MESSAGE_CHARS });
  } catch (cause) {
    if (isShieldError(cause)) throw cause;
    throw new ShieldError("ERR_CONTROL_MALFORMED", "control message payload is not a message", { cause });
  }
  if (!(AGENT_MESSAGE_TYPES as readonly string[]).includes(message.type)) {
    throw new ShieldError("ERR_CONTROL_MALFORMED", `a ${message.type} message is not sent to agents`);
  }
  const agentMessage = message as AgentMessage;
  if (agentMessage.agentId !== options.agentId) {
    throw new ShieldError("ERR_CONTROL_AUDIENCE", "control message is addressed to another agent");
  }
  return {
    message: agentMessage,
    messageId: header.jti,
    expiresAt: new Date(header.exp * 1000),
    kid: header.kid,
  };
}

function decodeJson(part: string, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
  } catch {
    throw new ShieldError("ERR_CONTROL_MALFORMED", `control message ${what} is not JSON`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ShieldError("ERR_CONTROL_MALFORMED", `control message ${what} is not a JSON object`);
  }
  return value as Record<string, unknown>;
}

function checkHeaderKey(header: Record<string, unknown>, keys: ControlKeySet): string {
  if (header["typ"] !== CONTROL_JWS_TYPE) {
    throw new ShieldError("ERR_CONTROL_MALFORMED", `control message typ must be ${CONTROL_JWS_TYPE}`);
  }
  const alg = header["alg"];
  if (typeof alg !== "string" || !(CONTROL_ALGORITHMS as readonly string[]).includes(alg)) {
    throw new ShieldError("ERR_CONTROL_ALG", "control message algorithm is not allowed", {
      violations: [
        {
          field: "alg",
          expected: CONTROL_ALGORITHMS.join(" | "),
          actual: typeof alg === "string" ? alg.slice(0, 16) : "missing",
        },
      ],
    });
  }
  const kid = header["kid"];
  const pinned = typeof kid === "string" ? keys.find(kid) : undefined;
  if (pinned === undefined) {
    throw new ShieldError("ERR_CONTROL_KID", "control message is signed by a key this agent does not pin", {
      violations: [
        {
          field: "kid",
          expected: keys.keys.map((k) => k.kid).join(" | "),
          actual: typeof kid === "string" ? kid.slice(0, 256) : "missing",
        },
      ],
    });
  }
  if (!(pinned.algorithms as readonly string[]).includes(alg)) {
    throw new ShieldError("ERR_CONTROL_ALG", "control message algorithm does not fit the pinned key", {
      violations: [{ field: "alg", expected: pinned.algorithms.join(" | "), actual: alg }],
    });
  }
  return pinned.kid;
}

function checkHeaderClaims(header: Record<string, unknown>, options: VerifyControlOptions): ControlHeader {
  const { sub, jti, iat, exp } = header;
  if (sub !== options.agentId) {
    throw new ShieldError("ERR_CONTROL_AUDIENCE", "control message is signed for another agent");
  }
  if (typeof jti !== "string" || !IDENTIFIER_PATTERN.test(jti)) {
    throw new ShieldError("ERR_CONTROL_MALFORMED", "control message has no valid jti");
  }
  if (!Number.isSafeInteger(iat) || !Number.isSafeInteger(exp)) {
    throw new ShieldError("ERR_CONTROL_MALFORMED", "control message iat and exp must be integers");
  }
  const issued = iat as number;
  const expires = exp as number;
  const now = Math.floor(options.at.getTime() / 1000);
  if (expires <= issued || expires - issued > MAX_CONTROL_LIFETIME_SECONDS) {
    throw new ShieldError("ERR_CONTROL_MALFORMED", "control message lifetime is out of bounds");
  }
  if (now >= expires + CONTROL_CLOCK_SKEW_SECONDS) {
    throw new ShieldError("ERR_CONTROL_EXPIRED", "control message has expired", {
      violations: [
        {
          field: "exp",
          expected: `after ${options.at.toISOString()}`,
          actual: new Date(expires * 1000).toISOString(),
        },
      ],
    });
  }
  if (issued > now + CONTROL_CLOCK_SKEW_SECONDS) {
    throw new ShieldError("ERR_CONTROL_EXPIRED", "control message was issued in the future");
  }
  return {
    alg: header["alg"] as ControlAlgorithm,
    kid: header["kid"] as string,
    sub,
    jti,
    iat: issued,
    exp: expires,
  };
}

/**
 * Remembers the ids of verified messages until they expire, so a copy replayed within its
 * lifetime is refused (ERR_CONTROL_REPLAYED). Bounded: when full, the entries closest to expiry
 * make room first.
 */
export class ControlReplayGuard {
  readonly #seen = new Map<string, number>();
  readonly #capacity: number;

  constructor(capacity = 4096) {
    if (!Number.isSafeInteger(capacity) || capacity < 1)
      throw new TypeError("capacity must be a positive integer");
    this.#capacity = capacity;
  }

  /** Records the message; throws ERR_CONTROL_REPLAYED when it was seen before. */
  admit(verified: Pick<VerifiedControlMessage, "messageId" | "expiresAt">, at: Date): void {
    const now = at.getTime();
    for (const [id, until] of this.#seen)
      if (until + CONTROL_CLOCK_SKEW_SECONDS * 1000 <= now) this.#seen.delete(id);
    if (this.#seen.has(verified.messageId)) {
      throw new ShieldError("ERR_CONTROL_REPLAYED", "control message was already received");
    }
    if (this.#seen.size >= this.#capacity) {
      let soonest: string | undefined;
      let soonestAt = Infinity;
      for (const [id, until] of this.#seen) {
        if (until < soonestAt) {
          soonest = id;
          soonestAt = until;
        }
      }
      if (soonest !== undefined) this.#seen.delete(soonest);
    }
    this.#seen.set(verified.messageId, verified.expiresAt.getTime());
  }
}

export type { AgentMessageType };

function b64(text: string): string {
  return Buffer.from(text, "utf8").toString("base64url");
}
