import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ShieldError } from "../../../core/errors.js";
import {
  IDENTIFIER_PATTERN,
  KEY_NAME_PATTERN,
  makeAttestationRequest,
  makeChallenge,
  makeChallengeRequest,
  makeKeyEvent,
  makePolicyUpdate,
  parseMessage,
} from "../../../core/messages/index.js";
import { ALL_VALID, sevSnpRawEvidence } from "./fixtures.js";

const LIMIT = { maxBytes: 64 * 1024 };

/** Runs the parser and returns the outcome; anything thrown other than a ShieldError fails the property. */
function outcome(body: unknown): "accepted" | ShieldError {
  try {
    parseMessage(body, LIMIT);
    return "accepted";
  } catch (error) {
    if (!(error instanceof ShieldError)) throw error;
    return error;
  }
}

type Path = (string | number)[];

function pathsOf(value: unknown, prefix: Path = []): Path[] {
  if (typeof value !== "object" || value === null) return [prefix];
  const entries = Array.isArray(value) ? value.map((v, i) => [i, v] as const) : Object.entries(value);
  return [prefix, ...entries.flatMap(([key, child]) => pathsOf(child, [...prefix, key]))];
}

function withValueAt(root: unknown, path: Path, value: unknown, remove: boolean): unknown {
  if (path.length === 0) return value;
  const copy = structuredClone(root) as Record<string | number, unknown>;
  let parent = copy;
  for (const segment of path.slice(0, -1)) parent = parent[segment] as Record<string | number, unknown>;
  const last = path.at(-1)!;
  if (remove && !Array.isArray(parent)) delete parent[last];
  else parent[last] = value;
  return copy;
}

const messages = Object.values(ALL_VALID).map((make) => make());

describe("parseMessage never throws anything but ShieldError", () => {
  it("on random JSON values", () => {
    fc.assert(fc.property(fc.jsonValue(), (value) => void outcome(value)));
  });

  it("on random JSON text and random strings", () => {
    fc.assert(
      fc.property(
        fc.oneof(fc.json(), fc.string(), fc.string({ unit: "binary" })),
        (text) => void outcome(text),
      ),
    );
  });

  it("on random bytes", () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 2048 }), (bytes) => void outcome(bytes)));
  });

  it("on arbitrary JavaScript values", () => {
    fc.assert(
      fc.property(
        fc.anything({ withBigInt: true, withMap: true, withSet: true, withDate: true }),
        (v) => void outcome(v),
      ),
    );
  });

  it("on random envelopes with a known type and version", () => {
    const envelope = fc.record({
      type: fc.constantFrom(...messages.map((m) => m["type"] as string), "unknown"),
      version: fc.oneof(fc.constant(1), fc.integer(), fc.jsonValue()),
      rest: fc.dictionary(fc.string(), fc.jsonValue()),
    });
    fc.assert(fc.property(envelope, ({ type, version, rest }) => void outcome({ ...rest, type, version })));
  });

  it("on valid messages with one value replaced or removed, and never echoes a replaced string", () => {
    const mutation = fc.constantFrom(...messages).chain((message) =>
      fc.tuple(
        fc.constant(message),
        fc.constantFrom(...pathsOf(message)),
        fc.oneof(
          fc.jsonValue(),
          fc.string({ minLength: 12 }).map((s) => `QZX${s}`),
        ),
        fc.boolean(),
      ),
    );
    fc.assert(
      fc.property(mutation, ([message, path, value, remove]) => {
        const result = outcome(withValueAt(message, path, value, remove));
        if (result === "accepted" || typeof value !== "string" || !value.startsWith("QZX")) return;
        expect(JSON.stringify(result.toJSON())).not.toContain(value);
      }),
      { numRuns: 500 },
    );
  });
});

describe("built messages parse back unchanged", () => {
  const identifier = fc.stringMatching(IDENTIFIER_PATTERN);
  const keyName = fc.stringMatching(KEY_NAME_PATTERN);
  const when = fc.date({
    min: new Date("2000-01-01T00:00:00Z"),
    max: new Date("2099-12-31T23:59:59Z"),
    noInvalidDate: true,
  });
  const base64url = (min: number, max: number) =>
    fc.uint8Array({ minLength: min, maxLength: max }).map((b) => Buffer.from(b).toString("base64url"));
  const hex64 = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b).toString("hex"));

  it("attestation-request", () => {
    const fields = fc.record({
      agentId: identifier,
      requestId: identifier,
      workload: identifier,
      runtimeData: base64url(1, 600),
      challenge: base64url(12, 96),
      keys: fc.uniqueArray(keyName, { minLength: 1, maxLength: 32 }),
      sentAt: when,
    });
    fc.assert(
      fc.property(fields, (f) => {
        const message = makeAttestationRequest({
          ...f,
          tee: "sevsnp",
          evidence: sevSnpRawEvidence() as never,
        });
        expect(parseMessage(JSON.stringify(message), LIMIT)).toEqual(JSON.parse(JSON.stringify(message)));
      }),
      { numRuns: 50 },
    );
  });

  it("attestation-request without its challenge is always refused", () => {
    fc.assert(
      fc.property(
        identifier,
        identifier,
        base64url(1, 600),
        when,
        (agentId, requestId, runtimeData, sentAt) => {
          const message = {
            type: "attestation-request",
            version: 1,
            agentId,
            requestId,
            workload: "payments",
            tee: "sevsnp",
            evidence: sevSnpRawEvidence(),
            runtimeData,
            keys: ["payments-db"],
            sentAt: sentAt.toISOString(),
          };
          const result = outcome(message);
          expect(result).toBeInstanceOf(ShieldError);
          expect(result).toMatchObject({ code: "ERR_MESSAGE_SCHEMA", violations: [{ field: "challenge" }] });
        },
      ),
      { numRuns: 25 },
    );
  });

  it("challenge-request", () => {
    fc.assert(
      fc.property(
        identifier,
        identifier,
        fc.constantFrom("sevsnp" as const, "sgx" as const),
        when,
        (agentId, workload, tee, sentAt) => {
          const message = makeChallengeRequest({ agentId, workload, tee, sentAt });
          expect(parseMessage(JSON.stringify(message), LIMIT)).toEqual(message);
        },
      ),
    );
  });

  it("key-event", () => {
    const keyVersion = fc.stringMatching(/^[0-9a-zA-Z]{1,64}$/);
    fc.assert(
      fc.property(
        identifier,
        fc.constantFrom("rotated" as const, "revoked" as const),
        keyName,
        keyVersion,
        when,
        (agentId, event, name, version, sentAt) => {
          const message = makeKeyEvent({ agentId, event, keyName: name, keyVersion: version, sentAt });
          expect(parseMessage(message, LIMIT)).toEqual(message);
        },
      ),
    );
  });

  it("challenge", () => {
    fc.assert(
      fc.property(identifier, base64url(12, 96), when, when, (agentId, nonce, deadline, sentAt) => {
        const message = makeChallenge({ agentId, nonce, deadline, sentAt });
        expect(parseMessage(JSON.stringify(message), LIMIT)).toEqual(message);
      }),
    );
  });

  it("policy-update", () => {
    const measurement = fc.oneof(
      hex64.map((hostData) => ({ tee: "sevsnp" as const, hostData })),
      fc.record({ tee: fc.constant("sgx" as const), mrenclave: hex64, mrsigner: hex64 }),
    );
    fc.assert(
      fc.property(
        identifier,
        fc.uniqueArray(keyName, { minLength: 1, maxLength: 8 }),
        fc.array(measurement, { minLength: 1, maxLength: 16 }),
        fc.integer({ min: 0, max: 86_400 * 365 }),
        fc.boolean(),
        when,
        (deploymentId, keys, add, graceSeconds, dryRun, sentAt) => {
          const message = makePolicyUpdate({
            deploymentId,
            keys,
            add,
            retire: [],
            graceSeconds,
            dryRun,
            sentAt,
          });
          expect(parseMessage(message, LIMIT)).toEqual(message);
        },
      ),
      { numRuns: 50 },
    );
  });
});
