/**
 * A stand-in for the functions on the in-memory bus. It answers each `challenge-request` with a
 * fresh nonce in a signed `challenge` (signed by the test control plane, test/support/control),
 * and each `attestation-request` as a test script says — trusted (each requested key wrapped to
 * the runtime key in the request's runtime data and signed like a Key Vault release response),
 * denied, error, or not at all — in a signed `attestation-result`. Like the attest function it
 * accepts only a request that answers a challenge it issued to that agent, carries that nonce in
 * its runtime data and is the first to answer it; anything else gets the freshness denial the
 * attest function gives, without running the script. Keys and the release signer are generated
 * here.
 */
import { generateKeyPairSync, randomBytes, type KeyObject, type X509Certificate } from "node:crypto";
import type { MemoryBus } from "../../../adapters/local/bus/memory.js";
import {
  buildReleaseResponse,
  exportForRelease,
  type ReleaseResponseSigner,
  type ReleasedKeyType,
} from "../../../core/keywrap/index.js";
import {
  makeAttestationResult,
  requestDigest,
  makeChallenge,
  parseMessage,
  type AttestationRequest,
  type AttestationResult,
  type Challenge,
  type ChallengeRequest,
  type ReleasedKey,
} from "../../../core/messages/index.js";
import type { AgentMessage, RequestReceiver, SignedAgentMessage } from "../../../core/ports/bus.js";
import { buildCertificate } from "../../../core/x509/certificate.js";
import type { TestControlPlane } from "../../support/control.js";

export const FAKE_VAULT = "https://fake-vault.vault.azure.net";

export function makeSigner(commonName = "fake-vault release signer"): ReleaseResponseSigner {
  const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const name = [["CN", commonName]] as const;
  const now = Date.now();
  const certificate = buildCertificate({
    subject: name,
    issuer: name,
    serialNumber: 1n,
    notBefore: new Date(now - 86_400_000),
    notAfter: new Date(now + 86_400_000 * 365),
    publicKey,
    signingKey: privateKey,
    signatureAlgorithm: "rsa-sha256",
  });
  return { privateKey, certificateChain: [certificate] };
}

export interface FakeKeyVersion {
  readonly version: string;
  readonly kty: ReleasedKeyType;
  /** As Key Vault wraps it: raw bytes for oct, PKCS #8 DER for RSA/EC. */
  readonly plaintext: Buffer;
}

/** The fake vault: versions per key name, the last one current. */
export class FakeVault {
  readonly keys = new Map<string, FakeKeyVersion[]>();

  addOct(name: string, version: string, bytes: Buffer): FakeKeyVersion {
    return this.#add(name, { version, kty: "oct-HSM", plaintext: Buffer.from(bytes) });
  }

  addRsa(name: string, version: string, privateKey: KeyObject): FakeKeyVersion {
    return this.#add(name, {
      version,
      kty: "RSA-HSM",
      plaintext: exportForRelease({ kty: "RSA-HSM", privateKey }),
    });
  }

  current(name: string): FakeKeyVersion {
    const versions = this.keys.get(name);
    const current = versions?.at(-1);
    if (current === undefined) throw new Error(`no key ${name}`);
    return current;
  }

  #add(name: string, version: FakeKeyVersion): FakeKeyVersion {
    const versions = this.keys.get(name) ?? [];
    versions.push(version);
    this.keys.set(name, versions);
    return version;
  }
}

export type Reply =
  | {
      readonly kind: "trusted";
      readonly attestedUntil?: Date;
      readonly signer?: ReleaseResponseSigner;
      readonly mislabel?: boolean;
      /** Keys released beyond those requested (a control plane that lists what was not asked for). */
      readonly extraKeys?: readonly string[];
      /** The key id Key Vault signs into the release response (default `${FAKE_VAULT}/keys/<name>/<version>`). */
      readonly keyId?: (name: string, version: string) => string;
      /**
       * The request nonce Key Vault echoes in the release response: by default the request's
       * challenge (the attest function passes it to Key Vault); `null` for none.
       */
      readonly releaseNonce?: string | null;
    }
  | {
      readonly kind: "denied";
      readonly code: string;
      readonly violations?: { field: string; expected: string; actual: string }[];
    }
  | { readonly kind: "error"; readonly code: string }
  | { readonly kind: "drop" };

export type Script = (request: AttestationRequest, index: number) => Reply | Promise<Reply>;

export interface IssuedChallenge {
  readonly agentId: string;
  readonly nonce: string;
  /** The request id that answered it first. */
  answeredBy?: string;
}

export interface FakeResponder {
  /** Every attestation request received, in order. */
  readonly requests: AttestationRequest[];
  /** Every challenge request received, in order. */
  readonly challengeRequests: ChallengeRequest[];
  /** Every challenge sent (answers to challenge requests and `challenge()`), in order. */
  readonly challenges: Challenge[];
  /** Requests refused for freshness without running the script, with the code. */
  readonly refused: { readonly request: AttestationRequest; readonly code: string }[];
  /** Every result sent, in order, and its signed form as it went on the bus. */
  readonly results: AttestationResult[];
  readonly signedResults: SignedAgentMessage[];
  /** Every signed message sent (challenges, results and what `send` sent), in order. */
  readonly sent: SignedAgentMessage[];
  /** Builds the result the script would send for a request (to send by hand). */
  resultFor(request: AttestationRequest, reply: Reply): Promise<AttestationResult | undefined>;
  /** Issues a challenge to an agent and sends it signed, as the re-attestation timer does. */
  challenge(
    agentId: string,
    options?: { nonce?: string; deadline?: Date; reason?: "requested" | "reattest" },
  ): Promise<Challenge>;
  /** Signs a message with the control plane and sends it to the agent it names. */
  send(message: AgentMessage): Promise<SignedAgentMessage>;
  stop(): Promise<void>;
}

export interface FakeResponderOptions {
  readonly bus: MemoryBus;
  readonly vault: FakeVault;
  readonly signer: ReleaseResponseSigner;
  /** Signs challenges and results. */
  readonly control: TestControlPlane;
  readonly script?: Script;
  /** Whether to answer a challenge request (default: always). */
  readonly answerChallenge?: (request: ChallengeRequest, index: number) => boolean;
}

export function startFakeResponder(options: FakeResponderOptions): FakeResponder {
  const { bus, vault, signer, control } = options;
  const script: Script = options.script ?? (() => ({ kind: "trusted" }));
  const receiver: RequestReceiver = bus.openRequestReceiver();
  const requests: AttestationRequest[] = [];
  const challengeRequests: ChallengeRequest[] = [];
  const challenges: Challenge[] = [];
  const refused: FakeResponder["refused"] = [];
  const results: AttestationResult[] = [];
  const signedResults: SignedAgentMessage[] = [];
  const sent: SignedAgentMessage[] = [];
  const issued = new Map<string, IssuedChallenge>();
  let stopping = false;

  async function send(message: AgentMessage): Promise<SignedAgentMessage> {
    const signed = await control.sign(message);
    sent.push(signed);
    await bus.sendToAgent(message.agentId, signed);
    return signed;
  }

  async function challenge(
    agentId: string,
    given: { nonce?: string; deadline?: Date; reason?: "requested" | "reattest" } = {},
  ): Promise<Challenge> {
    const nonce = given.nonce ?? randomBytes(32).toString("base64url");
    issued.set(nonce, { agentId, nonce });
    const message = makeChallenge({
      agentId,
      nonce,
      deadline: given.deadline ?? new Date(Date.now() + 60_000),
      ...(given.reason === undefined ? {} : { reason: given.reason }),
      sentAt: new Date(),
    });
    challenges.push(message);
    await send(message);
    return message;
  }

  /** The attest function's freshness checks: an issued nonce of this agent, carried, unused. */
  function freshness(request: AttestationRequest): string | undefined {
    const open = issued.get(request.challenge);
    if (open === undefined || open.agentId !== request.agentId) return "ERR_CHALLENGE_UNKNOWN";
    if (open.answeredBy !== undefined && open.answeredBy !== request.requestId) return "ERR_CHALLENGE_USED";
    const runtime = JSON.parse(Buffer.from(request.runtimeData, "base64url").toString("utf8")) as {
      nonce?: unknown;
    };
    if (runtime.nonce !== request.challenge) return "ERR_CHALLENGE_MISMATCH";
    open.answeredBy = request.requestId;
    return undefined;
  }

  async function resultFor(
    request: AttestationRequest,
    reply: Reply,
  ): Promise<AttestationResult | undefined> {
    const common = {
      agentId: request.agentId,
      requestId: request.requestId,
      requestDigest: requestDigest(request),
      sentAt: new Date(),
    };
    switch (reply.kind) {
      case "drop":
        return undefined;
      case "denied":
        return makeAttestationResult({
          ...common,
          verdict: "denied",
          denial: {
            code: reply.code,
            message: "denied by the fake responder",
            violations: reply.violations ?? [],
          },
        });
      case "error":
        return makeAttestationResult({
          ...common,
          verdict: "error",
          denial: { code: reply.code, message: "failed in the fake responder", violations: [] },
        });
      case "trusted": {
        const runtime = JSON.parse(Buffer.from(request.runtimeData, "base64url").toString("utf8")) as {
          keys: [{ kty: "RSA"; n: string; e: string; kid: string }];
        };
        const nonce = reply.releaseNonce === undefined ? request.challenge : reply.releaseNonce;
        const keys: ReleasedKey[] = [];
        for (const name of [...request.keys, ...(reply.extraKeys ?? [])]) {
          const key = vault.current(name);
          const labelled = reply.mislabel ? `${name}x` : name;
          const releaseResponse = await buildReleaseResponse({
            keyId: reply.keyId?.(name, key.version) ?? `${FAKE_VAULT}/keys/${name}/${key.version}`,
            kty: key.kty,
            keyOps: ["encrypt", "decrypt"],
            attributes: { enabled: true, exportable: true },
            enc: "RSA_AES_KEY_WRAP_256",
            targetKey: runtime.keys[0],
            plaintext: key.plaintext,
            signer: reply.signer ?? signer,
            requestApiVersion: "7.4",
            ...(nonce === null ? {} : { nonce }),
            at: new Date(),
          });
          keys.push({ name: labelled, version: key.version, releaseResponse });
        }
        return makeAttestationResult({
          ...common,
          keys,
          attestedUntil: reply.attestedUntil ?? new Date(Date.now() + 3_600_000),
        });
      }
    }
  }

  async function answer(request: AttestationRequest, index: () => number): Promise<void> {
    const code = freshness(request);
    const reply: Reply = code === undefined ? await script(request, index()) : { kind: "denied", code };
    if (code !== undefined) refused.push({ request, code });
    const result = await resultFor(request, reply);
    if (result !== undefined && !stopping) {
      results.push(result);
      signedResults.push(await send(result));
    }
  }

  const loop = (async () => {
    let index = 0;
    let challengeIndex = 0;
    while (!stopping) {
      const message = await receiver.receive(50);
      if (message === undefined) continue;
      await message.complete();
      const request = parseMessage(message.body, { maxBytes: 256 * 1024 });
      if (request.type === "challenge-request") {
        challengeRequests.push(request);
        const answerIt = options.answerChallenge?.(request, challengeIndex++) ?? true;
        // As the attest function answers a challenge-request: a challenge for the asker only.
        if (answerIt && !stopping) await challenge(request.agentId, { reason: "requested" });
        continue;
      }
      if (request.type !== "attestation-request") throw new Error(`unexpected ${request.type} request`);
      requests.push(request);
      await answer(request, () => index++);
    }
  })();

  return {
    requests,
    challengeRequests,
    challenges,
    refused,
    results,
    signedResults,
    sent,
    resultFor,
    challenge,
    send,
    async stop() {
      stopping = true;
      await receiver.close();
      await loop;
    },
  };
}

export function trustAnchors(signer: ReleaseResponseSigner): X509Certificate[] {
  return [...signer.certificateChain];
}
