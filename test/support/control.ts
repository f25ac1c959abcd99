/**
 * A control-plane signer for tests: an in-process RSA key that signs digests exactly as Key
 * Vault's `sign` does for RS256 (RSASSA-PKCS1-v1_5 over the given SHA-256 digest), the JWK set
 * agents pin, and helpers that sign messages for an agent or stand in for the signing channel.
 */
import { constants, generateKeyPairSync, privateEncrypt, randomUUID } from "node:crypto";
import {
  controlKeySet,
  createControlChannel,
  signControlMessage,
  type AgentSender,
  type ControlKeySet,
} from "../../core/control/signed.js";
import type { AgentChannel, AgentMessage, SignedAgentMessage } from "../../core/ports/bus.js";
import { systemClock, systemRandom, type Clock } from "../../core/ports/clock.js";
import type { ControlSigner } from "../../core/ports/control-signer.js";

const SHA256_DIGEST_INFO = Buffer.from("3031300d060960864801650304020105000420", "hex");

export interface TestControlPlane {
  readonly signer: ControlSigner & { readonly signatures: number };
  /** The JWK set agents pin (`SHIELD_CONTROL_KEYS_FILE`'s content). */
  readonly jwks: { readonly keys: readonly Record<string, string>[] };
  readonly keys: ControlKeySet;
  /** Signs a message for the agent it names, valid for `ttlMs` (default 5 minutes). */
  sign(
    message: AgentMessage,
    options?: { ttlMs?: number; at?: Date; messageId?: string },
  ): Promise<SignedAgentMessage>;
  /** The functions' side over a transport: signs, then sends. */
  channel(transport: AgentChannel, clock?: Clock): AgentSender;
}

export function createTestControlPlane(
  kid = "https://shield-test.vault.azure.net/keys/control/0123456789abcdef",
): TestControlPlane {
  const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const jwk = publicKey.export({ format: "jwk" });
  const jwks = { keys: [{ kty: "RSA", n: jwk.n ?? "", e: jwk.e ?? "", alg: "RS256", kid }] };
  let signatures = 0;
  const signer = {
    keyId: kid,
    algorithm: "RS256" as const,
    get signatures() {
      return signatures;
    },
    sign(digest: Buffer): Promise<Buffer> {
      signatures++;
      return Promise.resolve(
        privateEncrypt(
          { key: privateKey, padding: constants.RSA_PKCS1_PADDING },
          Buffer.concat([SHA256_DIGEST_INFO, digest]),
        ),
      );
    },
  };
  return {
    signer,
    jwks,
    keys: controlKeySet(jwks),
    sign(message, options = {}) {
      const at = options.at ?? new Date();
      return signControlMessage(message, {
        signer,
        messageId: options.messageId ?? randomUUID(),
        issuedAt: at,
        expiresAt: new Date(at.getTime() + (options.ttlMs ?? 300_000)),
      });
    },
    channel: (transport, clock = systemClock) =>
      createControlChannel({ transport, signer, clock, random: systemRandom }),
  };
}
