/**
 * Every parser of untrusted input, fed arbitrary values and mutations of valid input: it
 * accepts or throws a `ShieldError` (a typed code) — never a TypeError, RangeError or anything
 * else an attacker could turn into a crash or a redelivery loop. Messages have their own
 * property suite (test/unit/messages/property.test.ts); here are the rest: control messages,
 * SEV-SNP and SGX evidence (parsers and verifiers), MAA tokens and `/certs` documents, release,
 * appraisal and measurement policies, Key Vault events, release responses, the encryption API's
 * ciphertext format, and the deployment request through the webhook.
 *
 * Runs are kept moderate (the whole property suite stays well under 20 s on a busy machine).
 */
import fc from "fast-check";
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HeldKeys } from "../../agent/held-keys.js";
import { KeyOperations } from "../../agent/encryption.js";
import { parseAppraisalPolicy } from "../../core/appraisal/index.js";
import { ControlReplayGuard, verifyControlMessage } from "../../core/control/signed.js";
import { ShieldError, isShieldErrorCode } from "../../core/errors.js";
import {
  buildMaaSnpEnvelope,
  createSnpVerifier,
  parseMaaSnpEnvelope,
  parseSnpReport,
  SNP_REPORT_SIZE,
} from "../../core/evidence/sevsnp/index.js";
import { createSgxVerifier, parseSgxQuote } from "../../core/evidence/sgx/index.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../core/evidence/simulated/sevsnp.js";
import { createSimulatedSgxPlatform, type SimulatedSgxPlatform } from "../../core/evidence/simulated/sgx.js";
import { parseReleaseResponse } from "../../core/keywrap/index.js";
import { parseKeyVaultEvents } from "../../core/lifecycle/keyvault-events.js";
import { makeKeyEvent } from "../../core/messages/index.js";
import { parseAllowedMeasurements, parseReleasePolicy } from "../../core/policy/index.js";
import {
  createMaaTokenIssuer,
  parseCertsDocument,
  staticSigningKeys,
  validateMaaToken,
  type MaaTokenIssuer,
} from "../../core/token/index.js";
import { createTestControlPlane, type TestControlPlane } from "../support/control.js";
import { NEW_HOST_DATA, startDeployHarness, type DeployHarness } from "../support/deploy.js";

/** Runs `f`; a ShieldError is an answer, anything else thrown fails the property. */
function typed(f: () => unknown): void {
  try {
    f();
  } catch (error) {
    if (!(error instanceof ShieldError)) throw error;
    expect(isShieldErrorCode(error.code)).toBe(true);
  }
}

async function typedAsync(f: () => Promise<unknown>): Promise<void> {
  try {
    await f();
  } catch (error) {
    if (!(error instanceof ShieldError)) throw error;
    expect(isShieldErrorCode(error.code)).toBe(true);
  }
}

/** A copy of `bytes` with a few bytes overwritten, cut short or extended. */
function mutatedBytes(bytes: Buffer): fc.Arbitrary<Buffer> {
  return fc.oneof(
    fc
      .array(fc.tuple(fc.nat({ max: bytes.length - 1 }), fc.integer({ min: 0, max: 255 })), {
        minLength: 1,
        maxLength: 8,
      })
      .map((edits) => {
        const copy = Buffer.from(bytes);
        for (const [at, value] of edits) copy[at] = value;
        return copy;
      }),
    fc.nat({ max: bytes.length }).map((length) => Buffer.from(bytes.subarray(0, length))),
    fc.uint8Array({ minLength: 1, maxLength: 64 }).map((tail) => Buffer.concat([bytes, tail])),
  );
}

/** A copy of `text` with a few characters replaced, removed or inserted. */
function mutatedText(text: string, alphabet = "ABCxyz019_-.=+/{}\"'"): fc.Arbitrary<string> {
  const char = fc.constantFrom(...alphabet.split(""));
  return fc.oneof(
    fc
      .tuple(fc.nat({ max: text.length - 1 }), char)
      .map(([at, c]) => text.slice(0, at) + c + text.slice(at + 1)),
    fc.nat({ max: text.length }).map((at) => text.slice(0, at) + text.slice(at + 1)),
    fc.tuple(fc.nat({ max: text.length }), char).map(([at, c]) => text.slice(0, at) + c + text.slice(at)),
  );
}

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");
const AT = new Date("2030-01-01T00:00:00Z");

let snp: SimulatedSnpPlatform;
let sgx: SimulatedSgxPlatform;
let control: TestControlPlane;
let maa: MaaTokenIssuer;

beforeAll(async () => {
  snp = createSimulatedSnpPlatform({ rsaBits: 2048 });
  sgx = createSimulatedSgxPlatform();
  control = createTestControlPlane();
  maa = await createMaaTokenIssuer({ issuer: "https://shield-property.attest.example" });
});

describe("control messages (agent inbox)", () => {
  it("verifyControlMessage throws only typed errors on arbitrary values and on mutated signed messages", async () => {
    const { jws } = await control.sign(
      makeKeyEvent({ agentId: "agent-1", event: "rotated", keyName: "orders", keyVersion: "v2", sentAt: AT }),
      { at: AT },
    );
    const verify = (body: unknown) =>
      typedAsync(async () => {
        const verified = await verifyControlMessage(body, { keys: control.keys, agentId: "agent-1", at: AT });
        new ControlReplayGuard().admit(verified, AT);
      });
    await fc.assert(fc.asyncProperty(fc.anything(), verify), { numRuns: 100 });
    await fc.assert(fc.asyncProperty(fc.oneof(mutatedText(jws, "AQgw_-.=x"), fc.string()), verify), {
      numRuns: 100,
    });
    const [, payload, signature] = jws.split(".");
    await fc.assert(
      fc.asyncProperty(fc.dictionary(fc.string(), fc.jsonValue()), (header) =>
        verify(`${b64(header)}.${payload}.${signature}`),
      ),
      { numRuns: 100 },
    );
  });
});

describe("SEV-SNP evidence", () => {
  it("parseSnpReport throws only typed errors on arbitrary bytes, of any length and of the report's length", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 1400 }),
          fc.uint8Array({ minLength: SNP_REPORT_SIZE, maxLength: SNP_REPORT_SIZE }),
        ),
        (bytes) => typed(() => parseSnpReport(bytes)),
      ),
      { numRuns: 200 },
    );
  });

  it("the verifier throws only typed errors on mutated signed reports", () => {
    const verifier = createSnpVerifier({ trustedRoots: [snp.ark] });
    const report = snp.signReport({ hostData: Buffer.alloc(32, 0x5a) });
    fc.assert(
      fc.property(mutatedBytes(report), (bytes) =>
        typed(() =>
          verifier.verify({ report: bytes, vcek: snp.leaf, chain: [snp.intermediate, snp.ark], at: AT }),
        ),
      ),
      { numRuns: 150 },
    );
  });

  it("parseMaaSnpEnvelope throws only typed errors on arbitrary text and on envelopes with arbitrary members", () => {
    const envelope = buildMaaSnpEnvelope({
      report: snp.signReport(),
      vcek: snp.leafPem,
      chain: snp.chainPem,
    });
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string(),
          fc.jsonValue().map(b64),
          fc
            .record({
              SnpReport: fc.string(),
              VcekCertChain: fc.string(),
              Endorsements: fc.option(fc.string()),
            })
            .map(b64),
          mutatedText(envelope, "AQgw_-="),
        ),
        (text) => typed(() => parseMaaSnpEnvelope(text)),
      ),
      { numRuns: 200 },
    );
  });
});

describe("SGX evidence", () => {
  it("parseSgxQuote throws only typed errors on arbitrary bytes", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2048 }), (bytes) => typed(() => parseSgxQuote(bytes))),
      { numRuns: 200 },
    );
  });

  it("the verifier throws only typed errors on mutated quotes (sizes, keys, certification data)", () => {
    const verifier = createSgxVerifier({ trustedRoots: [sgx.rootCertificate] });
    const quote = Buffer.from(sgx.generateQuote({ mrEnclave: "e1".repeat(32) }));
    // Bias edits towards the length fields and the signature data, where lying sizes live.
    const lengthFields = fc.constantFrom(432, 433, 434, 435, 1012, 1013, 1046, 1048, 1049, 1050, 1051);
    const sizeLie = fc.tuple(lengthFields, fc.integer({ min: 0, max: 255 })).map(([at, value]) => {
      const copy = Buffer.from(quote);
      copy[at] = value;
      return copy;
    });
    fc.assert(
      fc.property(fc.oneof(mutatedBytes(quote), sizeLie), (bytes) =>
        typed(() => verifier.verify({ quote: bytes, at: AT })),
      ),
      { numRuns: 150 },
    );
  });
});

describe("MAA tokens", () => {
  it("validateMaaToken throws only typed errors on arbitrary text and mutated tokens", async () => {
    const keys = staticSigningKeys(maa.certsDocument());
    const token = await maa.issue({ "x-ms-attestation-type": "sevsnpvm" }, { at: AT, nonce: "n-1" });
    const validate = (text: string) =>
      typedAsync(() => validateMaaToken(text, { keys, issuer: maa.issuer, at: AT, expectedNonce: "n-1" }));
    await fc.assert(fc.asyncProperty(fc.oneof(fc.string(), mutatedText(token, "AQgw_-.")), validate), {
      numRuns: 150,
    });
  });

  it("claim checks throw only typed errors on signed tokens with arbitrary claims", async () => {
    const keys = staticSigningKeys(maa.certsDocument());
    const claimName = fc.constantFrom(
      "iss",
      "exp",
      "nbf",
      "iat",
      "nonce",
      "x-ms-attestation-type",
      "x-ms-runtime",
      "x-ms-isolation-tee",
      "x-ms-sevsnpvm-reportdata",
      "x-ms-sgx-report-data",
      "x-ms-sgx-ehd",
    );
    await fc.assert(
      fc.asyncProperty(
        fc.dictionary(fc.oneof(claimName, fc.string()), fc.jsonValue(), { maxKeys: 6 }),
        fc.uint8Array({ maxLength: 64 }),
        fc.constantFrom("sevsnpvm" as const, "sgx" as const),
        async (claims, runtimeData, type) => {
          const token = await maa.issue(claims, { at: AT, nonce: "n-1" });
          await typedAsync(() =>
            validateMaaToken(token, {
              keys,
              issuer: maa.issuer,
              at: AT,
              expectedNonce: "n-1",
              runtimeData,
              requireAttestationType: type,
            }),
          );
        },
      ),
      { numRuns: 60 },
    );
  });

  it("parseCertsDocument throws only typed errors on arbitrary JSON and text", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.jsonValue(),
          fc.string(),
          fc.record({
            keys: fc.array(fc.dictionary(fc.constantFrom("kid", "kty", "x5c", "n", "e"), fc.jsonValue())),
          }),
        ),
        (value) => typed(() => parseCertsDocument(value)),
      ),
      { numRuns: 200 },
    );
  });
});

/** Policy-shaped JSON with arbitrary members and values at every level. */
const conditionJson: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  condition: fc.oneof(
    { depthSize: "small" },
    fc.record(
      {
        claim: fc.oneof(fc.string(), fc.constantFrom("a", "a.b", "x-ms-sevsnpvm-hostdata", ".", "a..b")),
        equals: fc.oneof(fc.string(), fc.integer(), fc.boolean(), fc.jsonValue()),
        exists: fc.oneof(fc.boolean(), fc.string()),
        greater: fc.oneof(fc.integer(), fc.string()),
        other: fc.jsonValue(),
      },
      { requiredKeys: [] },
    ),
    fc.record({ anyOf: fc.array(tie("condition"), { maxLength: 3 }) }, { requiredKeys: [] }),
    fc.record({ allOf: fc.array(tie("condition"), { maxLength: 3 }) }, { requiredKeys: [] }),
    fc.jsonValue(),
  ),
})).condition;

const policyJson = fc.record(
  {
    version: fc.oneof(fc.constantFrom("1.0.0", "0.2", "1.0.2"), fc.jsonValue()),
    anyOf: fc.array(
      fc.record(
        {
          authority: fc.oneof(fc.webUrl(), fc.string()),
          allOf: fc.array(conditionJson),
          anyOf: fc.array(conditionJson),
        },
        { requiredKeys: [] },
      ),
      { maxLength: 3 },
    ),
  },
  { requiredKeys: [] },
);

describe("policies", () => {
  it("parseReleasePolicy throws only typed errors on arbitrary values, policy-shaped JSON, text and wrappers", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.jsonValue(),
          policyJson,
          policyJson.map((p) => JSON.stringify(p)),
          policyJson.map((p) => ({ contentType: "application/json; charset=utf-8", data: b64(p) })),
          fc.record(
            { data: fc.oneof(fc.string(), fc.jsonValue()), contentType: fc.jsonValue() },
            { requiredKeys: [] },
          ),
          fc.uint8Array({ maxLength: 200 }),
        ),
        (value) => typed(() => parseReleasePolicy(value)),
      ),
      { numRuns: 300 },
    );
  });

  it("parseReleasePolicy refuses deep nesting with a typed error", () => {
    let deep: unknown = { claim: "a", equals: "b" };
    for (let i = 0; i < 5_000; i++) deep = { anyOf: [deep] };
    typed(() =>
      parseReleasePolicy({ version: "1.0.0", anyOf: [{ authority: "https://a.example", anyOf: [deep] }] }),
    );
    // As text, built by hand: JSON.stringify itself cannot go this deep.
    const text = `{"version":"1.0.0","anyOf":[{"authority":"https://a.example","anyOf":[${'{"anyOf":['.repeat(5_000)}{"claim":"a","equals":"b"}${"]}".repeat(5_000)}]}]}`;
    typed(() => parseReleasePolicy(text));
  });

  it("parseAppraisalPolicy and parseAllowedMeasurements throw only typed errors on arbitrary input", () => {
    const appraisalShaped = fc.record(
      {
        version: fc.jsonValue(),
        sevsnpvm: fc.oneof(
          fc.jsonValue(),
          fc.record({ hostData: fc.array(fc.string()), maxVmpl: fc.jsonValue() }, { requiredKeys: [] }),
        ),
        sgx: fc.oneof(
          fc.jsonValue(),
          fc.record({ mrEnclave: fc.array(fc.string()), minSvn: fc.jsonValue() }, { requiredKeys: [] }),
        ),
      },
      { requiredKeys: [] },
    );
    fc.assert(
      fc.property(
        fc.oneof(
          fc.jsonValue(),
          appraisalShaped,
          appraisalShaped.map((v) => JSON.stringify(v)),
          fc.string(),
        ),
        (value) => {
          typed(() => parseAppraisalPolicy(value));
          typed(() => parseAllowedMeasurements(value));
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe("Key Vault events", () => {
  it("parseKeyVaultEvents throws only typed errors on arbitrary values and event-shaped JSON", () => {
    const data = fc.record(
      {
        Id: fc.oneof(fc.constant("https://kv.vault.azure.net/keys/orders/0123456789abcdef"), fc.string()),
        VaultName: fc.string(),
        ObjectType: fc.constantFrom("Key", "Secret", ""),
        ObjectName: fc.string(),
        Version: fc.string(),
        NBF: fc.oneof(fc.string(), fc.integer(), fc.jsonValue()),
        EXP: fc.oneof(fc.string(), fc.integer(), fc.jsonValue()),
      },
      { requiredKeys: [] },
    );
    const event = fc.record(
      {
        id: fc.oneof(fc.uuid(), fc.string(), fc.jsonValue()),
        topic: fc.string(),
        subject: fc.string(),
        eventType: fc.constantFrom(
          "Microsoft.KeyVault.KeyNearExpiry",
          "Microsoft.KeyVault.KeyExpired",
          "Microsoft.KeyVault.KeyNewVersionCreated",
          "Microsoft.EventGrid.SubscriptionValidationEvent",
          "other",
        ),
        type: fc.string(),
        specversion: fc.constantFrom("1.0", "0.3"),
        eventTime: fc.oneof(
          fc.date().map((d) => (Number.isNaN(d.getTime()) ? "x" : d.toISOString())),
          fc.string(),
        ),
        data: fc.oneof(data, fc.jsonValue()),
        dataVersion: fc.string(),
        metadataVersion: fc.string(),
      },
      { requiredKeys: [] },
    );
    fc.assert(
      fc.property(
        fc.oneof(
          fc.jsonValue(),
          event,
          fc.array(event, { maxLength: 4 }),
          fc.array(event).map((e) => JSON.stringify(e)),
          fc.string(),
        ),
        (value) => typed(() => parseKeyVaultEvents(value)),
      ),
      { numRuns: 300 },
    );
  });
});

describe("release responses and ciphertexts", () => {
  it("parseReleaseResponse throws only typed errors on arbitrary text and JWS-shaped text", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string(),
          fc
            .tuple(fc.jsonValue(), fc.jsonValue(), fc.string())
            .map(([h, p, s]) => `${b64(h)}.${b64(p)}.${s}`),
          fc
            .record({ response: fc.record({ key: fc.jsonValue() }), request: fc.jsonValue() })
            .map((p) => `${b64({ alg: "RS256" })}.${b64(p)}.AA`),
        ),
        (text) => typed(() => parseReleaseResponse(text)),
      ),
      { numRuns: 200 },
    );
  });

  it("the encryption API's ciphertext format: decrypt throws only typed errors on arbitrary and mutated ciphertexts", () => {
    const keys = new HeldKeys();
    keys.install("orders", "v1", "oct-HSM", randomBytes(32), AT);
    const operations = new KeyOperations(keys);
    const sealed = operations.encrypt("orders", Buffer.from("4111 1111 1111 1111")).ciphertext;
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string(),
          mutatedText(sealed, "AQgw_-:v1s"),
          fc.string().map((tail) => `shield:v1:${tail}`),
          fc
            .tuple(fc.string(), fc.uint8Array({ maxLength: 64 }))
            .map(([v, b]) => `shield:v1:${v}:${Buffer.from(b).toString("base64url")}`),
        ),
        fc.option(fc.uint8Array({ maxLength: 16 }), { nil: undefined }),
        (ciphertext, associatedData) => {
          typed(() => operations.decrypt("orders", ciphertext, associatedData));
          typed(() => operations.rewrap("orders", ciphertext, associatedData, "ctx"));
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe("the deployment request, through the webhook", () => {
  let h: DeployHarness;
  let keyName: string;

  beforeAll(async () => {
    h = await startDeployHarness();
    keyName = await h.createKey(1);
  }, 60_000);

  afterAll(async () => {
    await h?.close();
  });

  it("answers every correctly signed body, arbitrary or request-shaped, with a typed 2xx/4xx and never throws", async () => {
    const hex = fc.string({ unit: fc.constantFrom(..."0123456789abcdefAB".split("")), maxLength: 96 });
    const measurement = fc.oneof(
      fc.record(
        {
          tee: fc.constantFrom("sevsnp", "sgx", "tdx"),
          hostData: fc.oneof(fc.constant(NEW_HOST_DATA), hex),
        },
        { requiredKeys: [] },
      ),
      fc.record({ tee: fc.constant("sgx"), mrenclave: hex, mrsigner: hex }, { requiredKeys: [] }),
      fc.jsonValue(),
    );
    const shaped = fc.record(
      {
        version: fc.oneof(fc.constant(1), fc.jsonValue()),
        keys: fc.oneof(fc.constant([keyName]), fc.array(fc.string(), { maxLength: 3 }), fc.jsonValue()),
        add: fc.oneof(fc.array(measurement, { maxLength: 3 }), fc.jsonValue()),
        retire: fc.oneof(fc.array(measurement, { maxLength: 2 }), fc.jsonValue()),
        graceSeconds: fc.oneof(fc.integer(), fc.double(), fc.jsonValue()),
        dryRun: fc.oneof(fc.constant(true), fc.jsonValue()),
      },
      { requiredKeys: [] },
    );
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          shaped.map((b) => JSON.stringify(b)),
          fc.json(),
          fc.string(),
        ),
        async (raw) => {
          const answer = await h.handler.post(h.signed(raw), Buffer.from(raw));
          expect(answer.status).toBeGreaterThanOrEqual(200);
          expect(answer.status).toBeLessThan(500);
          if (answer.status >= 400) {
            expect(isShieldErrorCode((answer.body["error"] as { code: string }).code)).toBe(true);
          }
        },
      ),
      { numRuns: 60 },
    );
  });
});
