/**
 * A stand-in for the attest function on the in-memory bus: it takes each attestation request,
 * and answers as a test script says — trusted (each requested key wrapped to the runtime key in
 * the request's runtime data and signed like a Key Vault release response), denied, error, or
 * not at all. Keys and the release signer are generated here.
 */
import { generateKeyPairSync, type KeyObject, type X509Certificate } from "node:crypto";
import type { MemoryBus } from "../../../adapters/local/bus/memory.js";
import {
  buildReleaseResponse,
  exportForRelease,
  type ReleaseResponseSigner,
  type ReleasedKeyType,
} from "../../../core/keywrap/index.js";
import {
  makeAttestationResult,
  parseAttestationRequest,
  type AttestationRequest,
  type AttestationResult,
  type ReleasedKey,
} from "../../../core/messages/index.js";
import type { RequestReceiver } from "../../../core/ports/bus.js";
import { buildCertificate } from "../../../core/x509/certificate.js";

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
    }
  | {
      readonly kind: "denied";
      readonly code: string;
      readonly violations?: { field: string; expected: string; actual: string }[];
    }
  | { readonly kind: "error"; readonly code: string }
  | { readonly kind: "drop" };

export type Script = (request: AttestationRequest, index: number) => Reply | Promise<Reply>;

export interface FakeResponder {
  /** Every request received, in order. */
  readonly requests: AttestationRequest[];
  /** Every result sent, in order. */
  readonly results: AttestationResult[];
  /** Builds the result the script would send for a request (to send by hand). */
  resultFor(request: AttestationRequest, reply: Reply): Promise<AttestationResult | undefined>;
  stop(): Promise<void>;
}

export interface FakeResponderOptions {
  readonly bus: MemoryBus;
  readonly vault: FakeVault;
  readonly signer: ReleaseResponseSigner;
  readonly script?: Script;
}

export function startFakeResponder(options: FakeResponderOptions): FakeResponder {
  const { bus, vault, signer } = options;
  const script: Script = options.script ?? (() => ({ kind: "trusted" }));
  const receiver: RequestReceiver = bus.openRequestReceiver();
  const requests: AttestationRequest[] = [];
  const results: AttestationResult[] = [];
  let stopping = false;

  async function resultFor(
    request: AttestationRequest,
    reply: Reply,
  ): Promise<AttestationResult | undefined> {
    const common = { agentId: request.agentId, requestId: request.requestId, sentAt: new Date() };
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
        const keys: ReleasedKey[] = [];
        for (const name of request.keys) {
          const key = vault.current(name);
          const labelled = reply.mislabel ? `${name}x` : name;
          const releaseResponse = await buildReleaseResponse({
            keyId: `${FAKE_VAULT}/keys/${name}/${key.version}`,
            kty: key.kty,
            keyOps: ["encrypt", "decrypt"],
            attributes: { enabled: true, exportable: true },
            enc: "RSA_AES_KEY_WRAP_256",
            targetKey: runtime.keys[0],
            plaintext: key.plaintext,
            signer: reply.signer ?? signer,
            requestApiVersion: "7.4",
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

  const loop = (async () => {
    let index = 0;
    while (!stopping) {
      const message = await receiver.receive(50);
      if (message === undefined) continue;
      await message.complete();
      const request = parseAttestationRequest(message.body, { maxBytes: 256 * 1024 });
      requests.push(request);
      const reply = await script(request, index++);
      const result = await resultFor(request, reply);
      if (result !== undefined && !stopping) {
        results.push(result);
        await bus.sendToAgent(request.agentId, result);
      }
    }
  })();

  return {
    requests,
    results,
    resultFor,
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
