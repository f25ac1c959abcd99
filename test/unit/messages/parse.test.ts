import { describe, expect, it } from "vitest";
import { ShieldError } from "../../../core/errors.js";
import {
  parseAttestationRequest,
  parseAttestationResult,
  parseChallenge,
  parseChallengeRequest,
  parseKeyEvent,
  parseMessage,
  parsePolicyUpdate,
  parseRotateKey,
} from "../../../core/messages/index.js";
import {
  ALL_VALID,
  attestationRequest,
  b64url,
  challenge,
  challengeRequest,
  deniedResult,
  hex,
  keyEvent,
  policyUpdate,
  rotateKey,
  sevSnpMaaReportEvidence,
  sevSnpRawEvidence,
  sgxEvidence,
  trustedResult,
} from "./fixtures.js";

const LIMIT = { maxBytes: 256 * 1024 };

function failure(body: unknown, options = LIMIT): ShieldError {
  try {
    parseMessage(body, options);
  } catch (error) {
    expect(error).toBeInstanceOf(ShieldError);
    return error as ShieldError;
  }
  throw new Error("expected the message to be refused");
}

/** The violation fields of a refused message, for rules that should fail on exactly one path. */
function failingFields(body: unknown): string[] {
  const error = failure(body);
  expect(error.code).toBe("ERR_MESSAGE_SCHEMA");
  return error.violations.map((v) => v.field);
}

describe("parseMessage: valid messages", () => {
  for (const [name, make] of Object.entries(ALL_VALID)) {
    it(`accepts ${name} as an object, a string and bytes`, () => {
      const message = make();
      const json = JSON.stringify(message);
      const expected = JSON.parse(json) as unknown;
      expect(parseMessage(message, LIMIT)).toEqual(expected);
      expect(parseMessage(json, LIMIT)).toEqual(expected);
      expect(parseMessage(Buffer.from(json), LIMIT)).toEqual(expected);
      expect(parseMessage(new TextEncoder().encode(json), LIMIT)).toEqual(expected);
    });
  }

  it("accepts a UTF-8 byte order mark before the JSON", () => {
    const json = JSON.stringify(challenge());
    expect(
      parseMessage(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(json)]), LIMIT).type,
    ).toBe("challenge");
  });

  it("returns plain data even when given a class instance with undefined fields", () => {
    class Envelope {
      constructor(body: Record<string, unknown>) {
        Object.assign(this, body, { ignored: undefined });
      }
      describe(): string {
        return "envelope";
      }
    }
    const parsed = parseMessage(new Envelope(keyEvent()), { maxBytes: 10_000 });
    expect(Object.getPrototypeOf(parsed)).toBe(Object.prototype);
    expect(parsed).not.toHaveProperty("ignored");
  });

  it("has typed parsers that accept their own type and refuse any other", () => {
    expect(parseChallengeRequest(challengeRequest(), LIMIT).type).toBe("challenge-request");
    expect(parseAttestationRequest(attestationRequest(), LIMIT).type).toBe("attestation-request");
    expect(parseAttestationResult(trustedResult(), LIMIT).verdict).toBe("trusted");
    expect(parseChallenge(challenge(), LIMIT).type).toBe("challenge");
    expect(parseKeyEvent(keyEvent(), LIMIT).type).toBe("key-event");
    expect(parsePolicyUpdate(policyUpdate(), LIMIT).type).toBe("policy-update");
    expect(parseRotateKey(rotateKey(), LIMIT).type).toBe("rotate-key");
    let caught: unknown;
    try {
      parseAttestationRequest(challenge(), LIMIT);
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(ShieldError);
    expect((caught as ShieldError).code).toBe("ERR_MESSAGE_SCHEMA");
    expect((caught as ShieldError).violations).toEqual([
      { field: "type", expected: "attestation-request", actual: "challenge" },
    ]);
    // A request for a challenge is not an answer to one, nor the other way round.
    expect(() => parseChallengeRequest(attestationRequest(), LIMIT)).toThrow(
      expect.objectContaining({ code: "ERR_MESSAGE_SCHEMA" }) as Error,
    );
    expect(() => parseAttestationRequest(challengeRequest(), LIMIT)).toThrow(
      expect.objectContaining({ code: "ERR_MESSAGE_SCHEMA" }) as Error,
    );
  });
});

describe("parseMessage: size limit comes first", () => {
  const json = JSON.stringify(attestationRequest());
  const size = Buffer.byteLength(json);

  it("accepts a body of exactly maxBytes", () => {
    expect(parseMessage(json, { maxBytes: size }).type).toBe("attestation-request");
  });

  it("refuses a string, bytes or an object one byte over the limit", () => {
    expect(failure(json, { maxBytes: size - 1 }).code).toBe("ERR_INPUT_TOO_LARGE");
    expect(failure(Buffer.from(json), { maxBytes: size - 1 }).code).toBe("ERR_INPUT_TOO_LARGE");
    expect(failure(JSON.parse(json), { maxBytes: size - 1 }).code).toBe("ERR_INPUT_TOO_LARGE");
  });

  it("counts UTF-8 bytes, not characters", () => {
    const text = JSON.stringify({ type: "é".repeat(60), version: 1 });
    expect(failure(text, { maxBytes: text.length }).code).toBe("ERR_INPUT_TOO_LARGE");
  });

  it("refuses an oversize body even when it is not JSON", () => {
    expect(failure("x".repeat(101), { maxBytes: 100 }).code).toBe("ERR_INPUT_TOO_LARGE");
  });

  it("treats a bad maxBytes as caller misuse", () => {
    for (const maxBytes of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => parseMessage("{}", { maxBytes })).toThrow(TypeError);
    }
    expect(() => parseMessage("{}", undefined as unknown as { maxBytes: number })).toThrow(TypeError);
  });
});

describe("parseMessage: JSON and envelope", () => {
  it("refuses text that is not JSON without quoting it", () => {
    const error = failure('{"type": SECRET-EVIDENCE-BYTES}');
    expect(error.code).toBe("ERR_MESSAGE_SCHEMA");
    expect(error.message).not.toContain("SECRET");
    expect(error.cause).toBeUndefined();
  });

  it("refuses bytes that are not UTF-8", () => {
    expect(failure(Buffer.from([0x7b, 0xff, 0xfe, 0x7d])).code).toBe("ERR_MESSAGE_SCHEMA");
  });

  it("refuses bodies that are not JSON data", () => {
    const cyclic: Record<string, unknown> = {};
    cyclic["self"] = cyclic;
    expect(failure(cyclic).code).toBe("ERR_MESSAGE_SCHEMA");
    expect(failure({ version: 1n }).code).toBe("ERR_MESSAGE_SCHEMA");
    expect(failure(undefined).code).toBe("ERR_MESSAGE_SCHEMA");
    expect(failure(() => 1).code).toBe("ERR_MESSAGE_SCHEMA");
    let deep: unknown = [];
    for (let i = 0; i < 20_000; i += 1) deep = [deep];
    expect(failure(deep, { maxBytes: 10_000_000 }).code).toBe("ERR_MESSAGE_SCHEMA");
  });

  it("refuses JSON that is not an object", () => {
    for (const body of ["[]", "null", "1", '"text"', "true"]) {
      const error = failure(body);
      expect(error.code).toBe("ERR_MESSAGE_SCHEMA");
      expect(error.violations[0]?.field).toBe("(message)");
    }
  });
});

describe("parseMessage: version", () => {
  it("refuses an unknown version with ERR_MESSAGE_VERSION naming the supported ones", () => {
    for (const version of [0, 2, 99]) {
      const error = failure(challenge({ version }));
      expect(error.code).toBe("ERR_MESSAGE_VERSION");
      expect(error.message).toBe(`message version ${version} is not supported; supported versions: 1`);
      expect(error.violations).toEqual([{ field: "version", expected: "one of 1", actual: String(version) }]);
    }
  });

  it("checks the version before the type", () => {
    expect(failure(challenge({ version: 2, type: "something-new" })).code).toBe("ERR_MESSAGE_VERSION");
  });

  it("refuses a missing or non-integer version as a schema error, without guessing", () => {
    for (const version of [undefined, "1", 1.5, null, [1]]) {
      const error = failure(challenge({ version }));
      expect(error.code).toBe("ERR_MESSAGE_SCHEMA");
      expect(error.violations[0]?.field).toBe("version");
    }
  });
});

describe("parseMessage: type", () => {
  it("refuses an unknown or missing type", () => {
    for (const type of ["attestation", "", undefined, 7, "ATTESTATION-REQUEST"]) {
      const error = failure(challenge({ type }));
      expect(error.code).toBe("ERR_MESSAGE_SCHEMA");
      expect(error.message).toBe("unknown message type");
      expect(error.violations[0]?.field).toBe("type");
    }
  });
});

describe("attestation-request fields", () => {
  it("bounds agentId to a Service Bus session id and a safe Table key", () => {
    expect(
      parseAttestationRequest(attestationRequest({ agentId: "a".repeat(128) }), LIMIT).agentId,
    ).toHaveLength(128);
    for (const agentId of [
      "a".repeat(129),
      "",
      "ns/pod",
      "a\\b",
      "a#b",
      "a?b",
      "a\u0001b",
      " a",
      "-a",
      "ä",
      7,
    ]) {
      expect(failingFields(attestationRequest({ agentId }))).toEqual(["agentId"]);
    }
  });

  it("checks requestId and workload the same way", () => {
    expect(failingFields(attestationRequest({ requestId: "r/1" }))).toEqual(["requestId"]);
    expect(failingFields(attestationRequest({ workload: "w".repeat(129) }))).toEqual(["workload"]);
  });

  it("requires unpadded base64url runtime data within bounds", () => {
    expect(failingFields(attestationRequest({ runtimeData: "" }))).toEqual(["runtimeData"]);
    expect(failingFields(attestationRequest({ runtimeData: "abc=" }))).toEqual(["runtimeData"]);
    expect(failingFields(attestationRequest({ runtimeData: "ab+/" }))).toEqual(["runtimeData"]);
    expect(failingFields(attestationRequest({ runtimeData: "abcde" }))).toEqual(["runtimeData"]); // cannot decode
    expect(failingFields(attestationRequest({ runtimeData: b64url(12_289) }))).toEqual(["runtimeData"]);
  });

  it("requires the challenge it answers, and refuses a malformed one", () => {
    const nonce = b64url(32);
    expect(parseAttestationRequest(attestationRequest({ challenge: nonce }), LIMIT).challenge).toBe(nonce);
    const absent = failure(attestationRequest({ challenge: undefined }));
    expect(absent).toMatchObject({ code: "ERR_MESSAGE_SCHEMA" });
    expect(absent.violations).toEqual([
      { field: "challenge", expected: "nonce: 16..128 characters of unpadded base64url", actual: "missing" },
    ]);
    expect(failingFields(attestationRequest({ challenge: "a".repeat(15) }))).toEqual(["challenge"]);
    expect(failingFields(attestationRequest({ challenge: "short" }))).toEqual(["challenge"]);
    expect(failingFields(attestationRequest({ challenge: "a".repeat(129) }))).toEqual(["challenge"]);
    expect(failingFields(attestationRequest({ challenge: null }))).toEqual(["challenge"]);
  });

  it("takes 1..32 distinct Key Vault key names", () => {
    const names = (n: number) => Array.from({ length: n }, (_, i) => `key-${i}`);
    expect(parseAttestationRequest(attestationRequest({ keys: names(32) }), LIMIT).keys).toHaveLength(32);
    expect(failingFields(attestationRequest({ keys: [] }))).toEqual(["keys"]);
    expect(failingFields(attestationRequest({ keys: names(33) }))).toEqual(["keys"]);
    expect(failingFields(attestationRequest({ keys: ["a", "b", "a"] }))).toEqual(["keys[2]"]);
    expect(failingFields(attestationRequest({ keys: ["ok", "not_ok"] }))).toEqual(["keys[1]"]);
    expect(failingFields(attestationRequest({ keys: ["k".repeat(128)] }))).toEqual(["keys[0]"]);
    expect(failingFields(attestationRequest({ keys: "payments-db" }))).toEqual(["keys"]);
  });

  it("requires sentAt as an ISO 8601 date-time with a zone that names a real instant", () => {
    for (const sentAt of [
      "2026-03-01T12:00:00.123Z",
      "2026-03-01T12:00:00+01:00",
      "2024-02-29T23:59:59-05:30",
    ]) {
      expect(parseAttestationRequest(attestationRequest({ sentAt }), LIMIT).sentAt).toBe(sentAt);
    }
    for (const sentAt of [
      "2026-03-01T12:00:00",
      "2026-03-01 12:00:00Z",
      "2026-02-30T00:00:00Z",
      "2026-03-01T24:00:00Z",
      "2026-03-01T12:00Z",
      "2026-03-01T12:00:00+25:00",
      "yesterday",
      1_767_225_600,
    ]) {
      expect(failingFields(attestationRequest({ sentAt }))).toEqual(["sentAt"]);
    }
  });

  it("refuses unknown properties, naming them only when the name is plain", () => {
    expect(failingFields(attestationRequest({ extra: 1 }))).toEqual(["extra"]);
    expect(failingFields(attestationRequest({ "<evidence-as-a-key>": 1 }))).toEqual([
      "(unrecognized property)",
    ]);
  });

  it("lists every violation at once", () => {
    const fields = failingFields(attestationRequest({ agentId: "", requestId: "", keys: [], sentAt: "x" }));
    expect(fields.sort()).toEqual(["agentId", "keys", "requestId", "sentAt"]);
  });
});

describe("attestation-request evidence", () => {
  it("accepts each evidence format", () => {
    expect(
      parseAttestationRequest(attestationRequest({ evidence: sevSnpRawEvidence() }), LIMIT).evidence.format,
    ).toBe("raw");
    const maa = sevSnpMaaReportEvidence();
    expect(maa.report).toMatch(/=$/);
    expect(parseAttestationRequest(attestationRequest({ evidence: maa }), LIMIT).evidence.format).toBe(
      "maa-report",
    );
    const sgx = parseAttestationRequest(attestationRequest({ tee: "sgx", evidence: sgxEvidence() }), LIMIT);
    expect(sgx.evidence).toMatchObject({ tee: "sgx", format: "dcap-quote" });
  });

  it("accepts raw SEV-SNP evidence without UVM endorsements", () => {
    const { uvmEndorsements: _, ...evidence } = sevSnpRawEvidence();
    expect(parseAttestationRequest(attestationRequest({ evidence }), LIMIT).evidence).not.toHaveProperty(
      "uvmEndorsements",
    );
  });

  it("refuses an unknown tee or format, naming the choices", () => {
    const error = failure(attestationRequest({ evidence: { tee: "tdx", quote: "AAAA" } }));
    expect(error.violations).toContainEqual({
      field: "evidence.tee",
      expected: "one of sevsnp, sgx",
      actual: "string of length 3",
    });
    const format = failure(attestationRequest({ evidence: { ...sevSnpRawEvidence(), format: "configfs" } }));
    expect(format.violations).toContainEqual({
      field: "evidence.format",
      expected: "one of raw, maa-report",
      actual: "string of length 8",
    });
  });

  it("requires the evidence tee to match the message tee", () => {
    expect(failingFields(attestationRequest({ tee: "sgx" }))).toEqual(["evidence.tee"]);
  });

  it("checks each evidence field's encoding and bounds", () => {
    const raw = sevSnpRawEvidence();
    expect(failingFields(attestationRequest({ evidence: { ...raw, report: "AAAA=" } }))).toEqual([
      "evidence.report",
    ]);
    expect(failingFields(attestationRequest({ evidence: { ...raw, report: b64url(3073) } }))).toEqual([
      "evidence.report",
    ]);
    expect(failingFields(attestationRequest({ evidence: { ...raw, vcekChain: "not a pem" } }))).toEqual([
      "evidence.vcekChain",
    ]);
    expect(
      failingFields(
        attestationRequest({ evidence: { ...raw, vcekChain: "-----BEGIN CERTIFICATE-----\n<>" } }),
      ),
    ).toEqual(["evidence.vcekChain"]);
    expect(failingFields(attestationRequest({ evidence: { ...raw, uvmEndorsements: "a.b" } }))).toEqual([
      "evidence.uvmEndorsements",
    ]);
    const { vcekChain: _, ...noChain } = raw;
    expect(failingFields(attestationRequest({ evidence: noChain }))).toEqual(["evidence.vcekChain"]);
    expect(
      failingFields(attestationRequest({ evidence: { ...sevSnpMaaReportEvidence(), report: "a==b" } })),
    ).toEqual(["evidence.report"]);
    expect(failingFields(attestationRequest({ evidence: { ...raw, quote: b64url(10) } }))).toEqual([
      "evidence.quote",
    ]);
    expect(
      failingFields(
        attestationRequest({ tee: "sgx", evidence: { ...sgxEvidence(), quote: b64url(24_577) } }),
      ),
    ).toEqual(["evidence.quote"]);
    expect(failingFields(attestationRequest({ evidence: "raw-bytes" }))).toEqual(["evidence"]);
  });

  it("never repeats evidence or token content in the error", () => {
    const marker = "EVIDENCEMARKER0123456789";
    const bodies = [
      attestationRequest({ evidence: { ...sevSnpRawEvidence(), report: `${marker}!!` } }),
      attestationRequest({ runtimeData: `${marker}=` }),
      attestationRequest({ evidence: { tee: marker } }),
      attestationRequest({ [`${marker}:`]: 1 }),
      attestationRequest({ type: marker }),
      attestationRequest({ version: marker }),
      trustedResult({ keys: [{ name: "k", version: "v", releaseResponse: `eyJ${marker}` }] }),
    ];
    for (const body of bodies) {
      const error = failure(body);
      expect(JSON.stringify(error.toJSON())).not.toContain(marker);
      expect(error.message).not.toContain(marker);
    }
  });
});

describe("attestation-result", () => {
  it("requires attestedUntil and no denial when trusted", () => {
    expect(failingFields(trustedResult({ attestedUntil: undefined }))).toEqual(["attestedUntil"]);
    expect(failingFields(trustedResult({ denial: deniedResult()["denial"] }))).toEqual(["denial"]);
  });

  it("requires a denial and no keys when denied or failed", () => {
    expect(failingFields(deniedResult({ denial: undefined }))).toEqual(["denial"]);
    expect(failingFields(deniedResult({ keys: trustedResult()["keys"] }))).toEqual(["keys"]);
    expect(failingFields(deniedResult({ attestedUntil: "2026-03-01T20:00:00Z" }))).toEqual(["attestedUntil"]);
  });

  it("refuses an unknown verdict", () => {
    const error = failure(trustedResult({ verdict: "maybe" }));
    expect(error.violations).toEqual([
      { field: "verdict", expected: "one of trusted, denied, error", actual: "string of length 5" },
    ]);
  });

  it("checks released keys: name, version, a compact JWS, no duplicates", () => {
    const key = (trustedResult()["keys"] as Record<string, unknown>[])[0]!;
    expect(failingFields(trustedResult({ keys: [{ ...key, releaseResponse: "not-a-jws" }] }))).toEqual([
      "keys[0].releaseResponse",
    ]);
    expect(failingFields(trustedResult({ keys: [{ ...key, version: "v/1" }] }))).toEqual(["keys[0].version"]);
    expect(failingFields(trustedResult({ keys: [key, key] }))).toEqual(["keys[1].name"]);
    expect(parseAttestationResult(trustedResult({ keys: [] }), LIMIT).keys).toEqual([]);
  });

  it("checks the denial's code, message and violations", () => {
    const denial = deniedResult()["denial"] as Record<string, unknown>;
    expect(failingFields(deniedResult({ denial: { ...denial, code: "denied" } }))).toEqual(["denial.code"]);
    expect(failingFields(deniedResult({ denial: { ...denial, message: "" } }))).toEqual(["denial.message"]);
    expect(failingFields(deniedResult({ denial: { ...denial, message: "a\nb" } }))).toEqual([
      "denial.message",
    ]);
    const many = Array.from({ length: 65 }, () => ({ field: "f", expected: "e", actual: "a" }));
    expect(failingFields(deniedResult({ denial: { ...denial, violations: many } }))).toEqual([
      "denial.violations",
    ]);
    expect(failingFields(deniedResult({ denial: { ...denial, violations: [{ field: "f" }] } }))).toEqual([
      "denial.violations[0].expected",
      "denial.violations[0].actual",
    ]);
  });
});

describe("challenge-request", () => {
  it("accepts a valid challenge request for either tee, unchanged", () => {
    for (const tee of ["sevsnp", "sgx"]) {
      const body = challengeRequest({ tee });
      expect(parseChallengeRequest(body, LIMIT)).toEqual(body);
      expect(parseMessage(JSON.stringify(body), LIMIT)).toEqual(body);
    }
  });

  it("refuses unknown properties: it carries no evidence, keys or request id", () => {
    expect(failingFields(challengeRequest({ extra: 1 }))).toEqual(["extra"]);
    expect(failingFields(challengeRequest({ keys: ["payments-db"] }))).toEqual(["keys"]);
    expect(failingFields(challengeRequest({ requestId: "r-1" }))).toEqual(["requestId"]);
    expect(failure(challengeRequest({ evidence: sevSnpRawEvidence() }))).toMatchObject({
      code: "ERR_MESSAGE_SCHEMA",
      violations: [{ field: "evidence", expected: "no such property", actual: "present" }],
    });
  });

  it("requires the agent id, as an identifier", () => {
    const missing = failure(challengeRequest({ agentId: undefined }));
    expect(missing).toMatchObject({ code: "ERR_MESSAGE_SCHEMA" });
    expect(missing.violations).toEqual([
      {
        field: "agentId",
        expected: "agent id: 1..128 characters of A-Z a-z 0-9 . _ : - starting with a letter or digit",
        actual: "missing",
      },
    ]);
    for (const agentId of ["", "ns/pod", "a".repeat(129), 7]) {
      expect(failingFields(challengeRequest({ agentId }))).toEqual(["agentId"]);
    }
  });

  it("checks workload, tee, sentAt and version", () => {
    expect(failingFields(challengeRequest({ workload: undefined }))).toEqual(["workload"]);
    expect(failingFields(challengeRequest({ tee: "tdx" }))).toEqual(["tee"]);
    expect(failingFields(challengeRequest({ sentAt: "now" }))).toEqual(["sentAt"]);
    expect(failure(challengeRequest({ version: 2 }))).toMatchObject({ code: "ERR_MESSAGE_VERSION" });
  });
});

describe("challenge, key-event, policy-update, rotate-key", () => {
  it("checks challenge fields", () => {
    expect(failingFields(challenge({ nonce: "a+b".repeat(8) }))).toEqual(["nonce"]);
    expect(failingFields(challenge({ deadline: "soon" }))).toEqual(["deadline"]);
  });

  it("checks key-event fields", () => {
    expect(parseKeyEvent(keyEvent(), LIMIT).agentId).toBe("payments.pod-7f9c:0");
    expect(failingFields(keyEvent({ event: "deleted" }))).toEqual(["event"]);
    expect(failingFields(keyEvent({ keyVersion: undefined }))).toEqual(["keyVersion"]);
    expect(parseKeyEvent(keyEvent({ event: "revoked" }), LIMIT).event).toBe("revoked");
  });

  it("requires a key-event to name the agent it is for", () => {
    const missing = failure(keyEvent({ agentId: undefined }));
    expect(missing).toMatchObject({ code: "ERR_MESSAGE_SCHEMA" });
    expect(missing.violations.map((v) => [v.field, v.actual])).toEqual([["agentId", "missing"]]);
    expect(failingFields(keyEvent({ agentId: "a b" }))).toEqual(["agentId"]);
  });

  it("checks policy-update measurements, grace and dry run", () => {
    const sgx = { tee: "sgx", mrsigner: hex(32) };
    expect(parsePolicyUpdate(policyUpdate({ add: [sgx], retire: [] }), LIMIT).add).toEqual([sgx]);
    expect(failingFields(policyUpdate({ add: [], retire: [] }))).toEqual(["add"]);
    expect(failingFields(policyUpdate({ add: [{ tee: "sgx" }], retire: [] }))).toEqual(["add[0]"]);
    expect(
      failingFields(policyUpdate({ add: [{ tee: "sevsnp", hostData: hex(32).toUpperCase() }] })),
    ).toEqual(["add[0].hostData"]);
    expect(
      failingFields(policyUpdate({ add: [{ tee: "sevsnp", hostData: hex(32), mrenclave: hex(32) }] })),
    ).toEqual(["add[0].mrenclave"]);
    const same = { tee: "sevsnp", hostData: hex(32) };
    expect(failingFields(policyUpdate({ add: [same], retire: [same] }))).toEqual(["retire[0]"]);
    expect(failingFields(policyUpdate({ graceSeconds: 1.5 }))).toEqual(["graceSeconds"]);
    expect(failingFields(policyUpdate({ graceSeconds: -1 }))).toEqual(["graceSeconds"]);
    expect(failingFields(policyUpdate({ graceSeconds: 365 * 86_400 + 1 }))).toEqual(["graceSeconds"]);
    expect(failingFields(policyUpdate({ dryRun: "false" }))).toEqual(["dryRun"]);
    const tooMany = Array.from({ length: 17 }, () => ({ tee: "sevsnp", hostData: hex(32) }));
    expect(failingFields(policyUpdate({ add: tooMany }))).toEqual(["add"]);
  });

  it("reports a number it refuses as it is (numbers are never secrets here)", () => {
    expect(failure(policyUpdate({ graceSeconds: -1 })).violations).toEqual([
      { field: "graceSeconds", expected: "integer number of seconds, 0..31536000", actual: "-1" },
    ]);
  });

  it("checks rotate-key fields", () => {
    for (const reason of ["near-expiry", "expired", "schedule", "revocation", "manual"]) {
      expect(parseRotateKey(rotateKey({ reason }), LIMIT).reason).toBe(reason);
    }
    expect(failingFields(rotateKey({ reason: "whim" }))).toEqual(["reason"]);
    expect(failingFields(rotateKey({ sourceEventId: "" }))).toEqual(["sourceEventId"]);
    expect(parseRotateKey(rotateKey({ keyVersion: undefined }), LIMIT).keyVersion).toBeUndefined();
  });
});

describe("violation reporting", () => {
  it("caps the number of reported violations", () => {
    const extra = Object.fromEntries(Array.from({ length: 200 }, (_, i) => [`extra${i}`, i]));
    const error = failure(attestationRequest(extra), { maxBytes: 1_000_000 });
    expect(error.violations.length).toBeLessThanOrEqual(32);
    expect(error.message).toBe(
      "attestation-request message does not match its schema (200 violations, first 32 listed)",
    );
  });
});
