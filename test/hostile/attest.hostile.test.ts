/**
 * Hostile input to the `attest` function (the Service Bus trigger's exported handler), with the
 * composition's real adapters — the MAA client over HTTP, the Key Vault SDK, Table Storage and
 * Storage Queues — against the local MAA- and Key Vault-compatible servers and Azurite. Each
 * case is one message (tokens are bent by the attestation server's issuer after it verified
 * the evidence for real; see hostile-maa.ts), and each must end the same way: the handler
 * settles the message without throwing, the agent gets a signed denial with the case's code (or,
 * for a message too broken to name an agent, an intake audit entry records it), the refusal is
 * on record, and the local Key Vault saw no release call.
 */
import { HttpRequest, InvocationContext } from "@azure/functions";
import { createHash, generateKeyPairSync, randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLocalAttestationEngine } from "../../adapters/local/maa/engine.js";
import { startLocalStack, type LocalStack } from "../../local/stack.js";
import { createKeyVaultKeyStore } from "../../adapters/keyvault/key-store.js";
import { localKeyVaultCredential } from "../../adapters/local/keyvault/credential.js";
import { createStorageQueueBus, type StorageQueueBus } from "../../adapters/storage-queue/bus.js";
import { createTableStateStore } from "../../adapters/state/table.js";
import { createRuntimeKey, type RuntimeKey } from "../../agent/runtime-key.js";
import { controlKeySet, verifyControlMessage } from "../../core/control/signed.js";
import type { ShieldErrorCode } from "../../core/errors.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
  type SimulatedSnpReportFields,
} from "../../core/evidence/simulated/sevsnp.js";
import {
  createSimulatedSgxPlatform,
  type SimulatedSgxPlatform,
  type SimulatedSgxQuoteOptions,
} from "../../core/evidence/simulated/sgx.js";
import {
  makeAttestationRequest,
  makeChallengeRequest,
  requestBinding,
  type AttestationRequest,
  type AttestationResult,
} from "../../core/messages/index.js";
import { fixedClock } from "../../core/ports/clock.js";
import type { StateStore } from "../../core/ports/state.js";
import { renderReleasePolicy } from "../../core/policy/index.js";
import { INTAKE_AUDIT_PARTITION } from "../../core/attest/attest.js";
import { attest } from "../../functions/attest.js";
import { keyVaultEventsWebhook } from "../../functions/keyvault-events.js";
import { policyUpdates } from "../../functions/policy-updates.js";
import { rotate } from "../../functions/rotate.js";
import { composition, resetComposition } from "../../functions/composition/root.js";
import { azuriteConnectionString, uniqueTableName } from "../support/storage.js";
import { createHostileIssuer, type HostileIssuer, type TokenMutation } from "./hostile-maa.js";

const HOST_DATA = "5a".repeat(32);
const MRENCLAVE = "e1".repeat(32);
const MRSIGNER = "f2".repeat(32);
const KEY = "orders-key";

let stack: LocalStack;
let platform: SimulatedSnpPlatform;
/** A platform whose root nobody trusts. */
let stranger: SimulatedSnpPlatform;
let sgx: SimulatedSgxPlatform;
let runtimeKey: RuntimeKey;
let bus: StorageQueueBus;
let state: StateStore;
let maa: HostileIssuer;
const maaClock = fixedClock(new Date());

function context(messageId: string): InvocationContext {
  return new InvocationContext({
    functionName: "attest",
    invocationId: `inv-${messageId}`,
    triggerMetadata: { messageId, deliveryCount: 1 },
    logHandler: () => undefined,
  });
}

async function nextMessage(agentId: string) {
  const inbox = bus.openAgentInbox(agentId);
  try {
    const received = await inbox.receive(10_000);
    if (received === undefined) throw new Error("no message for the agent");
    const verified = await verifyControlMessage(received.body, {
      keys: controlKeySet(stack.controlKeys),
      agentId,
      at: new Date(),
    });
    return verified.message;
  } finally {
    await inbox.close();
  }
}

async function challengeFor(agentId: string, tee: "sevsnp" | "sgx"): Promise<string> {
  await attest(
    makeChallengeRequest({ agentId, workload: "orders", tee, sentAt: new Date() }),
    context(`c-${agentId}`),
  );
  const message = await nextMessage(agentId);
  if (message.type !== "challenge") throw new Error(`expected a challenge, got ${message.type}`);
  return message.nonce;
}

interface Bound {
  readonly agentId: string;
  readonly requestId: string;
  readonly challenge: string;
  readonly runtime: ReturnType<RuntimeKey["bindToNonce"]>;
}

/** A fresh agent's challenge, and runtime data bound to it and to the request. */
async function bind(tee: "sevsnp" | "sgx", keys: readonly string[] = [KEY]): Promise<Bound> {
  const agentId = `hostile-${randomUUID().slice(0, 12)}`;
  const requestId = `req-${randomUUID().slice(0, 12)}`;
  const challenge = await challengeFor(agentId, tee);
  const runtime = runtimeKey.bindToNonce(
    challenge,
    requestBinding({ agentId, requestId, workload: "orders", tee, keys: [...keys] }),
  );
  return { agentId, requestId, challenge, runtime };
}

interface SnpOptions {
  /** Report fields on top of the bound report data and the allowed host data. */
  readonly fields?: SimulatedSnpReportFields;
  /** Signs the report (default: the trusted platform). */
  readonly signer?: SimulatedSnpPlatform;
  /** Changes the signed bytes. */
  readonly bytes?: (report: Buffer) => Buffer;
  /** The VCEK chain PEM (default: the signer's). */
  readonly chain?: (signer: SimulatedSnpPlatform) => string;
  /** Changes the finished request (as JSON data). */
  readonly request?: (request: Record<string, unknown>) => unknown;
  /** REPORT_DATA from the bound one (default: its hash half, then zeros). */
  readonly reportData?: (bound: Buffer) => Buffer;
  readonly keys?: readonly string[];
}

type Built = { readonly body: unknown; readonly agentId?: string; readonly requestId?: string };

async function snp(options: SnpOptions = {}): Promise<Built> {
  const keys = options.keys ?? [KEY];
  const b = await bind("sevsnp", keys);
  const signer = options.signer ?? platform;
  const signed = signer.signReport({
    reportData: options.reportData
      ? options.reportData(b.runtime.reportData)
      : b.runtime.reportData.subarray(0, 32),
    hostData: Buffer.from(HOST_DATA, "hex"),
    ...options.fields,
  });
  const request: AttestationRequest = makeAttestationRequest({
    agentId: b.agentId,
    requestId: b.requestId,
    workload: "orders",
    tee: "sevsnp",
    evidence: {
      tee: "sevsnp",
      format: "raw",
      report: signed.toString("base64url"),
      vcekChain: options.chain ? options.chain(signer) : signer.leafPem + signer.chainPem,
    },
    runtimeData: b.runtime.base64url,
    keys: [...keys],
    challenge: b.challenge,
    sentAt: new Date(),
  });
  const json = JSON.parse(JSON.stringify(request)) as Record<string, unknown>;
  // Bent bytes go in after the builder, which (rightly) refuses to make such a message.
  if (options.bytes) {
    json["evidence"] = {
      ...(json["evidence"] as object),
      report: options.bytes(Buffer.from(signed)).toString("base64url"),
    };
  }
  return { body: options.request ? options.request(json) : json, agentId: b.agentId, requestId: b.requestId };
}

interface SgxOptions {
  readonly debug?: boolean;
  readonly mrEnclave?: string;
  readonly reportData?: Buffer;
  readonly bytes?: (quote: Buffer) => Buffer;
  readonly platform?: SimulatedSgxPlatform;
  readonly options?: SimulatedSgxQuoteOptions;
}

/** x ‖ y of another SGX platform's attestation key. */
function otherSgxKey(): Buffer {
  const quote = createSimulatedSgxPlatform().generateQuote({});
  return Buffer.from(quote.subarray(SGX.attestationKey, SGX.attestationKey + 64));
}

async function sgxRequest(options: SgxOptions = {}): Promise<Built> {
  const b = await bind("sgx");
  const quote = (options.platform ?? sgx).generateQuote(
    {
      mrEnclave: options.mrEnclave ?? MRENCLAVE,
      mrSigner: MRSIGNER,
      reportData: options.reportData ?? b.runtime.reportData,
      ...(options.debug ? { debug: true } : {}),
    },
    options.options,
  );
  const bytes = options.bytes ? options.bytes(Buffer.from(quote)) : quote;
  const request = makeAttestationRequest({
    agentId: b.agentId,
    requestId: b.requestId,
    workload: "orders",
    tee: "sgx",
    evidence: { tee: "sgx", format: "dcap-quote", quote: bytes.toString("base64url") },
    runtimeData: b.runtime.base64url,
    keys: [KEY],
    challenge: b.challenge,
    sentAt: new Date(),
  });
  return { body: request, agentId: b.agentId, requestId: b.requestId };
}

/** SGX quote offsets (evidence-formats.md): the signature data length, then what it holds. */
const SGX = { sigLength: 432, sigData: 436, attestationKey: 436 + 64, qeReport: 436 + 128 };

type Category = "token" | "sev-snp" | "sgx" | "message";

interface AttestCase {
  readonly name: string;
  readonly category: Category;
  /** The code the refusal must carry. */
  readonly code: ShieldErrorCode;
  /** A violation the denial must name. */
  readonly field?: string;
  /** How the attestation server bends the token for this case. */
  readonly token?: TokenMutation;
  readonly input: () => Promise<Built>;
}

const header = (patch: Record<string, unknown>): TokenMutation => {
  return ({ header: h, claims }, t) => t.sign({ ...h, ...patch }, claims);
};
const claims = (patch: Record<string, unknown>): TokenMutation => {
  return ({ header: h, claims: c }, t) => t.sign(h, { ...c, ...patch });
};
const now = () => Math.floor(Date.now() / 1000);

const cases: AttestCase[] = [
  // ---- tokens: MAA verified the evidence; the token it answers with is then distorted
  {
    name: "alg none with an empty signature (the MAA client refuses it as no compact JWT)",
    category: "token",
    code: "ERR_TOKEN_MALFORMED",
    token: ({ header: h, claims: c }, t) => `${t.encode({ ...h, alg: "none" })}.${t.encode(c)}.`,
    input: () => snp(),
  },
  {
    name: "alg none with a signature part",
    category: "token",
    code: "ERR_TOKEN_ALG",
    token: header({ alg: "none" }),
    input: () => snp(),
  },
  {
    name: "alg NONE (other case) signed anyway",
    category: "token",
    code: "ERR_TOKEN_ALG",
    token: header({ alg: "NONE" }),
    input: () => snp(),
  },
  {
    name: "HS256 keyed with the issuer's RSA public key",
    category: "token",
    code: "ERR_TOKEN_ALG",
    token: ({ header: h, claims: c }, t) => t.hmac({ ...h, alg: "HS256" }, c, t.publicKeyPem),
    input: () => snp(),
  },
  {
    name: "RS384 instead of RS256",
    category: "token",
    code: "ERR_TOKEN_ALG",
    token: header({ alg: "RS384" }),
    input: () => snp(),
  },
  {
    name: "PS256 instead of RS256",
    category: "token",
    code: "ERR_TOKEN_ALG",
    token: header({ alg: "PS256" }),
    input: () => snp(),
  },
  {
    name: "unknown kid",
    category: "token",
    code: "ERR_TOKEN_KID",
    token: header({ kid: "bm90LWEta2V5LWlkLWF0LWFsbA==" }),
    input: () => snp(),
  },
  {
    name: "path-trick kid (../../certs)",
    category: "token",
    code: "ERR_TOKEN_KID",
    token: header({ kid: "../../../certs?kid=x#" }),
    input: () => snp(),
  },
  {
    name: "kid that is not a string",
    category: "token",
    code: "ERR_TOKEN_KID",
    token: header({ kid: { $ref: "/certs" } }),
    input: () => snp(),
  },
  {
    name: "jku pointing at the attacker's JWKS, signed by the attacker",
    category: "token",
    code: "ERR_TOKEN_SIGNATURE",
    token: ({ header: h, claims: c }, t) =>
      t.sign({ ...h, jku: "https://attacker.example/certs" }, c, t.rogueKey),
    input: () => snp(),
  },
  {
    name: "x5u pointing at the attacker's certificate, signed by the attacker",
    category: "token",
    code: "ERR_TOKEN_SIGNATURE",
    token: ({ header: h, claims: c }, t) =>
      t.sign({ ...h, x5u: "https://attacker.example/cert.pem" }, c, t.rogueKey),
    input: () => snp(),
  },
  {
    name: "embedded jwk of the attacker's key, signed by it",
    category: "token",
    code: "ERR_TOKEN_SIGNATURE",
    token: ({ header: h, claims: c }, t) => {
      const jwk = generateKeyPairSync("rsa", { modulusLength: 2048 }).publicKey.export({ format: "jwk" });
      return t.sign({ ...h, jwk }, c, t.rogueKey);
    },
    input: () => snp(),
  },
  {
    name: "embedded jwk without a kid",
    category: "token",
    code: "ERR_TOKEN_KID",
    token: ({ header: h, claims: c }, t) => {
      const { kid: _kid, ...rest } = h;
      const jwk = generateKeyPairSync("rsa", { modulusLength: 2048 }).publicKey.export({ format: "jwk" });
      return t.sign({ ...rest, jwk }, c, t.rogueKey);
    },
    input: () => snp(),
  },
  {
    name: "x5c chain of the attacker's certificate, signed by it",
    category: "token",
    code: "ERR_TOKEN_SIGNATURE",
    token: ({ header: h, claims: c }, t) => t.sign({ ...h, x5c: ["MIIBrogue"] }, c, t.rogueKey),
    input: () => snp(),
  },
  {
    name: "crit header the validator does not understand",
    category: "token",
    code: "ERR_TOKEN_MALFORMED",
    token: header({ crit: ["exp-extended"], "exp-extended": true }),
    input: () => snp(),
  },
  {
    name: "b64: false (unencoded payload)",
    category: "token",
    code: "ERR_TOKEN_MALFORMED",
    token: header({ b64: false, crit: ["b64"] }),
    input: () => snp(),
  },
  {
    name: "typ other than JWT",
    category: "token",
    code: "ERR_TOKEN_MALFORMED",
    token: header({ typ: "at+jwt" }),
    input: () => snp(),
  },
  {
    name: "expired (exp an hour ago)",
    category: "token",
    code: "ERR_TOKEN_EXPIRED",
    token: claims({ iat: now() - 9 * 3600, nbf: now() - 9 * 3600, exp: now() - 3600 }),
    input: () => snp(),
  },
  {
    name: "not yet valid (nbf in an hour)",
    category: "token",
    code: "ERR_TOKEN_NOT_YET_VALID",
    token: claims({ nbf: now() + 3600 }),
    input: () => snp(),
  },
  {
    name: "exp as a string",
    category: "token",
    code: "ERR_TOKEN_CLAIMS",
    token: claims({ exp: String(now() + 3600) }),
    input: () => snp(),
  },
  {
    name: "no exp at all",
    category: "token",
    code: "ERR_TOKEN_CLAIMS",
    token: ({ header: h, claims: c }, t) => {
      const { exp: _exp, ...rest } = c;
      return t.sign(h, rest);
    },
    input: () => snp(),
  },
  {
    name: "wrong issuer (another MAA instance)",
    category: "token",
    code: "ERR_TOKEN_ISSUER",
    token: claims({ iss: "https://sharedeus.eus.attest.azure.net" }),
    input: () => snp(),
  },
  {
    name: "issuer with a look-alike host (pinned issuer as a prefix)",
    category: "token",
    code: "ERR_TOKEN_ISSUER",
    token: ({ header: h, claims: c }, t) => t.sign(h, { ...c, iss: `${String(c["iss"])}.attacker.example` }),
    input: () => snp(),
  },
  {
    name: "tampered payload (allowed host data swapped in after signing)",
    category: "token",
    code: "ERR_TOKEN_SIGNATURE",
    token: ({ header: h, claims: c }, t) => {
      const [head, , signature] = t.sign(h, c).split(".");
      return `${head}.${t.encode({ ...c, "x-ms-sevsnpvm-is-debuggable": false })}.${signature}`;
    },
    input: () => snp({ fields: { debug: true } }),
  },
  {
    name: "signature of another token",
    category: "token",
    code: "ERR_TOKEN_SIGNATURE",
    token: ({ header: h, claims: c }, t) => {
      const [head, body] = t.sign(h, c).split(".");
      const other = t.sign(h, { ...c, jti: "other" }).split(".")[2];
      return `${head}.${body}.${other}`;
    },
    input: () => snp(),
  },
  {
    name: "duplicate claims: allowed host data first, the attested debug flag last (last wins, as RFC 7519 says)",
    category: "token",
    code: "ERR_APPRAISAL_DENIED",
    field: "x-ms-sevsnpvm-is-debuggable",
    token: ({ header: h, claims: c }, t) => {
      const text = JSON.stringify(c).replace(/^\{/, '{"x-ms-sevsnpvm-is-debuggable":false,');
      return t.sign(h, text);
    },
    input: () => snp({ fields: { debug: true } }),
  },
  {
    name: "duplicate nonce: the challenge first, another nonce last",
    category: "token",
    code: "ERR_TOKEN_NONCE",
    token: ({ header: h, claims: c }, t) => {
      const text = JSON.stringify(c).replace(/\}$/, ',"nonce":"another-nonce-entirely"}');
      return t.sign(h, text);
    },
    input: () => snp(),
  },
  {
    name: "huge token (a 100 KiB claim)",
    category: "token",
    code: "ERR_TOKEN_MALFORMED",
    token: claims({ padding: "A".repeat(100 * 1024) }),
    input: () => snp(),
  },
  {
    name: "wrong nonce",
    category: "token",
    code: "ERR_TOKEN_NONCE",
    token: claims({ nonce: "bm90LXRoZS1jaGFsbGVuZ2Utbm9uY2U" }),
    input: () => snp(),
  },
  {
    name: "nonce missing",
    category: "token",
    code: "ERR_TOKEN_NONCE",
    token: ({ header: h, claims: c }, t) => {
      const { nonce: _nonce, ...rest } = c;
      return t.sign(h, rest);
    },
    input: () => snp(),
  },
  {
    name: "runtime-data mismatch: report-data claim of other runtime data",
    category: "token",
    code: "ERR_TOKEN_RUNTIME_DATA",
    token: claims({
      "x-ms-sevsnpvm-reportdata": createHash("sha256").update("other").digest("hex") + "0".repeat(64),
    }),
    input: () => snp(),
  },
  {
    name: "runtime-data mismatch: x-ms-runtime keys of another key",
    category: "token",
    code: "ERR_TOKEN_RUNTIME_DATA",
    token: ({ header: h, claims: c }, t) => {
      const other = generateKeyPairSync("rsa", { modulusLength: 2048 }).publicKey.export({ format: "jwk" });
      const runtime = c["x-ms-runtime"] as Record<string, unknown>;
      return t.sign(h, {
        ...c,
        "x-ms-runtime": { ...runtime, keys: [{ ...other, kid: "attacker", key_ops: ["encrypt"] }] },
      });
    },
    input: () => snp(),
  },
  {
    name: "attestation type sgx on a SEV-SNP request",
    category: "token",
    code: "ERR_TOKEN_CLAIMS",
    token: claims({ "x-ms-attestation-type": "sgx" }),
    input: () => snp(),
  },
  {
    name: "payload a JSON array",
    category: "token",
    code: "ERR_TOKEN_MALFORMED",
    token: ({ header: h }, t) => t.sign(h, "[1,2,3]"),
    input: () => snp(),
  },
  {
    name: "two-part token",
    category: "token",
    code: "ERR_TOKEN_MALFORMED",
    token: ({ header: h, claims: c }, t) => t.sign(h, c).split(".").slice(0, 2).join("."),
    input: () => snp(),
  },

  // ---- SEV-SNP reports, verified by the attestation server
  {
    name: "truncated report (1000 bytes)",
    category: "sev-snp",
    code: "ERR_EVIDENCE_MALFORMED",
    input: () => snp({ bytes: (r) => r.subarray(0, 1000) }),
  },
  {
    name: "oversized report (1185 bytes)",
    category: "sev-snp",
    code: "ERR_EVIDENCE_MALFORMED",
    input: () => snp({ bytes: (r) => Buffer.concat([r, Buffer.alloc(1)]) }),
  },
  {
    name: "report far beyond the message limit for reports",
    category: "sev-snp",
    code: "ERR_MESSAGE_SCHEMA",
    input: () => snp({ bytes: (r) => Buffer.concat([r, Buffer.alloc(4096)]) }),
  },
  {
    name: "unknown report version 99",
    category: "sev-snp",
    code: "ERR_EVIDENCE_VERSION",
    input: () => snp({ fields: { version: 99 } }),
  },
  {
    name: "report version 1 (before SNP reports were versioned 2)",
    category: "sev-snp",
    code: "ERR_EVIDENCE_VERSION",
    input: () => snp({ fields: { version: 1 } }),
  },
  {
    name: "debug guest policy",
    category: "sev-snp",
    code: "ERR_APPRAISAL_DENIED",
    field: "x-ms-sevsnpvm-is-debuggable",
    input: () => snp({ fields: { debug: true } }),
  },
  {
    name: "VMPL 1",
    category: "sev-snp",
    code: "ERR_APPRAISAL_DENIED",
    field: "x-ms-sevsnpvm-vmpl",
    input: () => snp({ fields: { vmpl: 1 } }),
  },
  {
    name: "VMPL 3",
    category: "sev-snp",
    code: "ERR_APPRAISAL_DENIED",
    field: "x-ms-sevsnpvm-vmpl",
    input: () => snp({ fields: { vmpl: 3 } }),
  },
  {
    name: "unknown measurement (host data not allowed)",
    category: "sev-snp",
    code: "ERR_APPRAISAL_DENIED",
    field: "x-ms-sevsnpvm-hostdata",
    input: () => snp({ fields: { hostData: Buffer.alloc(32, 0x6b) } }),
  },
  {
    name: "signature over another report",
    category: "sev-snp",
    code: "ERR_EVIDENCE_SIGNATURE",
    input: () =>
      snp({
        bytes: (r) => {
          const other = platform.signReport({ hostData: Buffer.alloc(32, 0x01) });
          other.copy(r, 0x2a0, 0x2a0);
          return r;
        },
      }),
  },
  {
    name: "host data changed after signing",
    category: "sev-snp",
    code: "ERR_EVIDENCE_SIGNATURE",
    input: () =>
      snp({
        fields: { hostData: Buffer.alloc(32, 0x6b) },
        bytes: (r) => {
          Buffer.from(HOST_DATA, "hex").copy(r, 0xc0);
          return r;
        },
      }),
  },
  {
    name: "all-zero signature",
    category: "sev-snp",
    code: "ERR_EVIDENCE_SIGNATURE",
    input: () => snp({ bytes: (r) => r.fill(0, 0x2a0) }),
  },
  {
    name: "report of another chip than its VCEK's",
    category: "sev-snp",
    code: "ERR_EVIDENCE_CHIP_MISMATCH",
    input: () => snp({ fields: { chipId: Buffer.alloc(64, 0x42) } }),
  },
  {
    name: "report signed by another chip, presented with this chip's VCEK",
    category: "sev-snp",
    code: "ERR_EVIDENCE_SIGNATURE",
    input: () => snp({ signer: stranger, chain: () => platform.leafPem + platform.chainPem }),
  },
  {
    name: "another chip's VCEK with this chip's ASK and ARK",
    category: "sev-snp",
    code: "ERR_EVIDENCE_CHAIN",
    input: () => snp({ signer: stranger, chain: (s) => s.leafPem + platform.chainPem }),
  },
  {
    name: "reported TCB other than the VCEK's",
    category: "sev-snp",
    code: "ERR_EVIDENCE_TCB_MISMATCH",
    input: () => snp({ fields: { reportedTcb: { bootloader: 2, tee: 0, snp: 8, microcode: 115 } } }),
  },
  {
    name: "untrusted root (a whole chain of its own)",
    category: "sev-snp",
    code: "ERR_EVIDENCE_UNTRUSTED_ROOT",
    input: () => snp({ signer: stranger }),
  },
  {
    name: "report data of other runtime data",
    category: "sev-snp",
    code: "ERR_EVIDENCE_REPORT_DATA",
    input: () => snp({ fields: { reportData: createHash("sha256").update("someone else").digest() } }),
  },
  {
    name: "report data with a non-zero second half",
    category: "sev-snp",
    code: "ERR_EVIDENCE_REPORT_DATA",
    input: () => snp({ reportData: (bound) => Buffer.concat([bound.subarray(0, 32), Buffer.alloc(32, 1)]) }),
  },
  {
    name: "signature algorithm other than ECDSA P-384",
    category: "sev-snp",
    code: "ERR_EVIDENCE_UNSUPPORTED",
    input: () => snp({ fields: { signatureAlgo: 2 } }),
  },
  {
    name: "VCEK chain with no certificate the MAA envelope can carry (VCEK only)",
    category: "sev-snp",
    code: "ERR_EVIDENCE_CHAIN",
    input: () => snp({ chain: (s) => s.leafPem }),
  },
  {
    name: "VCEK chain in the wrong order (ARK, ASK, VCEK)",
    category: "sev-snp",
    code: "ERR_EVIDENCE_CHAIN",
    input: () =>
      snp({
        chain: (s) => {
          const [ask, ark] = s.chainPem.split(/(?<=-----END CERTIFICATE-----\n?)/);
          return `${ark ?? ""}${ask ?? ""}${s.leafPem}`;
        },
      }),
  },
  {
    name: "MAA report envelope that is not JSON",
    category: "sev-snp",
    code: "ERR_EVIDENCE_MALFORMED",
    input: () =>
      snp({
        request: (request) => ({
          ...request,
          evidence: {
            tee: "sevsnp",
            format: "maa-report",
            report: Buffer.from("{not json").toString("base64url"),
          },
        }),
      }),
  },
  {
    name: "evidence of a TEE the request does not name (SGX quote on a SEV-SNP request)",
    category: "sev-snp",
    code: "ERR_MESSAGE_SCHEMA",
    input: () =>
      snp({
        request: (request) => ({
          ...request,
          evidence: { tee: "sgx", format: "dcap-quote", quote: Buffer.alloc(64).toString("base64url") },
        }),
      }),
  },

  // ---- SGX quotes, verified by the attestation server
  {
    name: "SGX debug enclave",
    category: "sgx",
    code: "ERR_APPRAISAL_DENIED",
    field: "x-ms-sgx-is-debuggable",
    input: () => sgxRequest({ debug: true }),
  },
  {
    name: "SGX unknown MRENCLAVE",
    category: "sgx",
    code: "ERR_APPRAISAL_DENIED",
    field: "x-ms-sgx-mrenclave",
    input: () => sgxRequest({ mrEnclave: "00".repeat(32) }),
  },
  {
    name: "SGX signature data length larger than what follows",
    category: "sgx",
    code: "ERR_EVIDENCE_MALFORMED",
    input: () =>
      sgxRequest({
        bytes: (q) => {
          q.writeUInt32LE(q.readUInt32LE(SGX.sigLength) + 100, SGX.sigLength);
          return q;
        },
      }),
  },
  {
    name: "SGX signature data length smaller than what follows",
    category: "sgx",
    code: "ERR_EVIDENCE_MALFORMED",
    input: () =>
      sgxRequest({
        bytes: (q) => {
          q.writeUInt32LE(q.readUInt32LE(SGX.sigLength) - 1, SGX.sigLength);
          return q;
        },
      }),
  },
  {
    name: "SGX quote cut inside its certification data",
    category: "sgx",
    code: "ERR_EVIDENCE_MALFORMED",
    input: () =>
      sgxRequest({
        bytes: (q) => {
          const cut = q.subarray(0, q.length - 200);
          cut.writeUInt32LE(cut.length - SGX.sigData, SGX.sigLength);
          return cut;
        },
      }),
  },
  {
    name: "SGX attestation key not the one the QE report binds",
    category: "sgx",
    code: "ERR_EVIDENCE_BINDING",
    input: () =>
      sgxRequest({
        bytes: (q) => {
          // Another platform's attestation key: the QE report certifies this platform's.
          otherSgxKey().copy(q, SGX.attestationKey);
          return q;
        },
      }),
  },
  {
    name: "SGX quote signed by a key other than the one the QE certifies",
    category: "sgx",
    code: "ERR_EVIDENCE_SIGNATURE",
    input: () => sgxRequest({ options: { attestationKey: otherSgxKey() } }),
  },
  {
    name: "SGX QE authentication data changed (binding hash no longer matches)",
    category: "sgx",
    code: "ERR_EVIDENCE_BINDING",
    input: () =>
      sgxRequest({
        bytes: (q) => {
          // After the QE report (384) and its signature (64): a 2-byte length, then the data.
          q[SGX.qeReport + 384 + 64 + 2]! ^= 0xff;
          return q;
        },
      }),
  },
  {
    name: "SGX report data of other runtime data",
    category: "sgx",
    code: "ERR_EVIDENCE_REPORT_DATA",
    input: () => sgxRequest({ reportData: Buffer.alloc(64, 7) }),
  },
  {
    name: "SGX quote from a platform whose root nobody trusts",
    category: "sgx",
    code: "ERR_EVIDENCE_UNTRUSTED_ROOT",
    input: () => sgxRequest({ platform: createSimulatedSgxPlatform() }),
  },
  {
    name: "SGX quote version 4",
    category: "sgx",
    code: "ERR_EVIDENCE_VERSION",
    input: () =>
      sgxRequest({
        bytes: (q) => {
          q.writeUInt16LE(4, 0);
          return q;
        },
      }),
  },

  // ---- messages
  {
    name: "invalid JSON text",
    category: "message",
    code: "ERR_MESSAGE_SCHEMA",
    input: () => Promise.resolve({ body: '{"type":"attestation-request",' }),
  },
  {
    name: "bytes that are not UTF-8",
    category: "message",
    code: "ERR_MESSAGE_SCHEMA",
    input: () => Promise.resolve({ body: Buffer.from([0x7b, 0xff, 0xfe, 0x7d]) }),
  },
  {
    name: "a JSON array",
    category: "message",
    code: "ERR_MESSAGE_SCHEMA",
    input: () => Promise.resolve({ body: "[]" }),
  },
  {
    name: "wrong schema (runtime data not base64url), ids salvaged and answered",
    category: "message",
    code: "ERR_MESSAGE_SCHEMA",
    input: async () => {
      const built = await snp();
      return { ...built, body: { ...(built.body as object), runtimeData: "not base64url!" } };
    },
  },
  {
    name: "unknown member in the request",
    category: "message",
    code: "ERR_MESSAGE_SCHEMA",
    input: async () => {
      const built = await snp();
      return { ...built, body: { ...(built.body as object), releaseAnyway: true } };
    },
  },
  {
    name: "unknown message type",
    category: "message",
    code: "ERR_MESSAGE_SCHEMA",
    input: async () => {
      const built = await snp();
      return { ...built, body: { ...(built.body as object), type: "release-keys" } };
    },
  },
  {
    name: "a functions-to-agent message on the requests queue",
    category: "message",
    code: "ERR_MESSAGE_SCHEMA",
    input: () =>
      Promise.resolve({
        body: {
          type: "key-event",
          version: 1,
          agentId: "someone",
          event: "rotated",
          keyName: KEY,
          keyVersion: "0123456789abcdef",
          sentAt: new Date().toISOString(),
        },
      }),
  },
  {
    name: "unknown version 2",
    category: "message",
    code: "ERR_MESSAGE_VERSION",
    input: async () => {
      const built = await snp();
      return { ...built, body: { ...(built.body as object), version: 2 } };
    },
  },
  {
    name: "version as a string",
    category: "message",
    code: "ERR_MESSAGE_SCHEMA",
    input: async () => {
      const built = await snp();
      return { ...built, body: { ...(built.body as object), version: "1" } };
    },
  },
  {
    name: "oversized message (300 KiB)",
    category: "message",
    code: "ERR_INPUT_TOO_LARGE",
    input: async () => {
      const built = await snp();
      return {
        ...built,
        body: JSON.stringify({ ...(built.body as object), padding: "x".repeat(300 * 1024) }),
      };
    },
  },
  {
    name: "__proto__ member in the JSON text",
    category: "message",
    code: "ERR_MESSAGE_SCHEMA",
    input: async () => {
      const built = await snp();
      const text = JSON.stringify(built.body).replace(
        /^\{/,
        '{"__proto__":{"verdict":"trusted","isAdmin":true},',
      );
      return { ...built, body: text };
    },
  },
  {
    name: "constructor.prototype member",
    category: "message",
    code: "ERR_MESSAGE_SCHEMA",
    input: async () => {
      const built = await snp();
      const text = JSON.stringify(built.body).replace(
        /^\{/,
        '{"constructor":{"prototype":{"verdict":"trusted"}},',
      );
      return { ...built, body: text };
    },
  },
  {
    name: "too many keys for one answer",
    category: "message",
    code: "ERR_INPUT_TOO_LARGE",
    input: () => snp({ keys: Array.from({ length: 32 }, (_, i) => `key-${i}`) }),
  },
];

const releases = () => stack.vault.stats().calls;

beforeAll(async () => {
  platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
  stranger = createSimulatedSnpPlatform({ rsaBits: 2048 });
  sgx = createSimulatedSgxPlatform();
  runtimeKey = await createRuntimeKey();
  const tableName = uniqueTableName("hostile");
  const connectionString = azuriteConnectionString();
  stack = await startLocalStack({
    storageConnectionString: connectionString,
    platform,
    complianceStatus: "azure-compliant-uvm",
    appraisalPolicy: JSON.stringify({
      sevsnpvm: { hostData: [HOST_DATA], complianceStatus: ["azure-compliant-uvm"] },
      sgx: { mrEnclave: [MRENCLAVE] },
    }),
    maaClock,
    // The attestation server keeps its REST front and its evidence verification; its issuer
    // is the one the cases bend, and it trusts the SGX platform too.
    decorateMaaEngine: (engine) => {
      maa = createHostileIssuer(engine.issuer);
      return createLocalAttestationEngine({
        issuer: maa,
        snpTrustedRoots: [platform.ark],
        sgxTrustedRoots: [sgx.rootCertificate],
        clock: maaClock,
        complianceStatus: "azure-compliant-uvm",
      });
    },
    tableName,
  });
  Object.assign(process.env, stack.settings);
  await resetComposition();
  await composition(); // creates the state table, so any case can run first
  bus = createStorageQueueBus({ connectionString });
  state = await createTableStateStore({ tableName, connectionString });
  const keyStore = createKeyVaultKeyStore({
    vaultUrl: stack.keyVault.url,
    credential: localKeyVaultCredential(stack.keyVault.accessToken),
  });
  const releasePolicy = renderReleasePolicy({
    authority: stack.maa.url,
    measurements: {
      sevsnpvm: { hostData: [HOST_DATA], complianceStatus: "azure-compliant-uvm" },
      sgx: { mrEnclave: [MRENCLAVE] },
    },
  });
  await keyStore.createKey(KEY, { keyType: "oct-HSM", keySize: 256, releasePolicy });
}, 120_000);

afterAll(async () => {
  await resetComposition();
  await bus?.close();
  await stack?.close();
});

async function recordOf(built: Built, messageId: string): Promise<string | undefined> {
  if (built.agentId !== undefined && built.requestId !== undefined) {
    const record = await state.getAttestation(built.agentId, built.requestId);
    if (record !== undefined) return record.reasonCode;
  }
  const intake = await state.listAudit(INTAKE_AUDIT_PARTITION);
  const entry = intake.find(
    (e) => (e.details as { messageId?: string } | undefined)?.messageId === messageId,
  );
  return (entry?.details as { code?: string } | undefined)?.code;
}

describe("the harness itself", () => {
  it("releases to honest evidence under honest tokens re-signed by the bending issuer (so refusals below mean something)", async () => {
    maa.mutation = undefined;
    const before = releases();
    for (const build of [() => snp(), () => sgxRequest()]) {
      const built = await build();
      await attest(built.body, context(`baseline-${randomUUID()}`));
      const result = (await nextMessage(built.agentId!)) as AttestationResult;
      expect(result.verdict).toBe("trusted");
    }
    expect(releases() - before).toBe(2);
  });
});

describe("attest: hostile input is refused with its code, on record, with no release", () => {
  it("has a case for every category", () => {
    const categories = new Set(cases.map((c) => c.category));
    expect([...categories].sort()).toEqual(["message", "sev-snp", "sgx", "token"]);
    expect(new Set(cases.map((c) => c.name)).size).toBe(cases.length);
  });

  for (const hostile of cases) {
    it(`${hostile.category}: ${hostile.name} → ${hostile.code}`, async () => {
      maa.mutation = undefined;
      const built = await hostile.input();
      maa.mutation = hostile.token;
      const messageId = `hostile-${randomUUID()}`;
      const before = releases();
      try {
        // Settles (returns) instead of throwing: a throw would be a redelivery.
        await attest(built.body, context(messageId));
      } finally {
        maa.mutation = undefined;
      }
      if (built.agentId !== undefined) {
        const answer = await nextMessage(built.agentId);
        expect(answer.type).toBe("attestation-result");
        const result = answer as AttestationResult;
        expect(result.verdict).toBe("denied");
        if (result.verdict === "trusted") return;
        expect(result.denial.code).toBe(hostile.code);
        if (hostile.field !== undefined) {
          expect(result.denial.violations.map((v) => v.field)).toContain(hostile.field);
        }
        expect(result.keys).toEqual([]);
      }
      expect(await recordOf(built, messageId)).toBe(hostile.code);
      expect(releases()).toBe(before);
    });
  }
});

/** Hostile messages to the other queue and HTTP functions of the composition. */
interface FunctionCase {
  readonly name: string;
  readonly code: ShieldErrorCode;
  /** Runs the function with the hostile input; resolves with the HTTP status, if any. */
  readonly run: (messageId: string) => Promise<number | undefined>;
  /** The intake audit entry's kind. */
  readonly kind: string;
}

function eventGridRequest(body: string): HttpRequest {
  return new HttpRequest({
    method: "POST",
    url: "http://localhost/api/keyvault-events",
    body: { string: body },
    headers: { "content-type": "application/json", "aeg-event-type": "Notification" },
  });
}

const functionCases: FunctionCase[] = [
  {
    name: "policy-updates: not JSON",
    code: "ERR_MESSAGE_SCHEMA",
    kind: "message-rejected",
    run: (id) => policyUpdates("{deploymentId:", context(id)).then(() => undefined),
  },
  {
    name: "policy-updates: an attestation request on the policy-update queue",
    code: "ERR_MESSAGE_SCHEMA",
    kind: "message-rejected",
    run: async (id) => {
      const built = await snp();
      await policyUpdates(built.body, context(id));
      return undefined;
    },
  },
  {
    name: "policy-updates: unknown version",
    code: "ERR_MESSAGE_VERSION",
    kind: "message-rejected",
    run: (id) =>
      policyUpdates(
        { type: "policy-update", version: 7, deploymentId: "d-1", keys: [KEY], add: [], graceSeconds: 60 },
        context(id),
      ).then(() => undefined),
  },
  {
    name: "policy-updates: oversized",
    code: "ERR_INPUT_TOO_LARGE",
    kind: "message-rejected",
    run: (id) => policyUpdates("x".repeat(100 * 1024), context(id)).then(() => undefined),
  },
  {
    name: "rotate: not JSON",
    code: "ERR_MESSAGE_SCHEMA",
    kind: "message-rejected",
    run: (id) => rotate("{keyName:", context(id)).then(() => undefined),
  },
  {
    name: "rotate: unknown reason, __proto__ member",
    code: "ERR_MESSAGE_SCHEMA",
    kind: "message-rejected",
    run: (id) =>
      rotate(
        `{"__proto__":{"reason":"manual"},"type":"rotate-key","version":1,"keyName":"${KEY}","reason":"because","sourceEventId":"e-1","sentAt":"${new Date().toISOString()}"}`,
        context(id),
      ).then(() => undefined),
  },
  {
    name: "keyvault-events webhook: not JSON",
    code: "ERR_EVENT_MALFORMED",
    kind: "event-rejected",
    run: async (id) => (await keyVaultEventsWebhook(eventGridRequest("[{"), context(id))).status,
  },
  {
    name: "keyvault-events webhook: a Key Vault event without its data",
    code: "ERR_EVENT_MALFORMED",
    kind: "event-rejected",
    run: async (id) =>
      (
        await keyVaultEventsWebhook(
          eventGridRequest(
            JSON.stringify([
              {
                id: randomUUID(),
                topic: "/subscriptions/x/resourceGroups/y/providers/Microsoft.KeyVault/vaults/shield-local",
                subject: KEY,
                eventType: "Microsoft.KeyVault.KeyNearExpiry",
                eventTime: new Date().toISOString(),
                dataVersion: "1",
                metadataVersion: "1",
              },
            ]),
          ),
          context(id),
        )
      ).status,
  },
];

describe("queue and HTTP functions: malformed messages are recorded, settled and release nothing", () => {
  for (const hostile of functionCases) {
    it(`${hostile.name} → ${hostile.code}`, async () => {
      const messageId = `hostile-${randomUUID()}`;
      const before = releases();
      const entries = async () =>
        (await state.listAudit(INTAKE_AUDIT_PARTITION)).filter(
          (e) =>
            e.kind === hostile.kind && (e.details as { code?: string } | undefined)?.code === hostile.code,
        );
      const earlier = (await entries()).length;
      const status = await hostile.run(messageId); // settles: no throw
      if (status !== undefined) expect(status).toBe(400);
      const recorded = await entries();
      expect(recorded.length).toBe(earlier + 1);
      if (hostile.kind === "message-rejected") {
        expect((recorded.at(-1)!.details as { messageId?: string }).messageId).toBe(messageId);
      }
      expect(releases()).toBe(before);
    });
  }
});
