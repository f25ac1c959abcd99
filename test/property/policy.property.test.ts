/**
 * Properties of the release-policy evaluator (core/policy), the one place that says whether Key
 * Vault would release:
 *
 * - evaluation never throws, whatever the claims and the issuer (for parsed arbitrary policies
 *   and rendered ones);
 * - render → evaluate round trips: a rendered policy releases to exactly the measurements it was
 *   rendered for (and never to a debuggable or other-type workload);
 * - adding a measurement — by rendering with one more, or through the rollout's own edit —
 *   never takes access away from anything that had it;
 * - Key Vault's normalised form of a policy (members reordered, booleans and numbers as strings,
 *   azure-wire-formats.md §9; and what the local Key Vault server actually stores) evaluates
 *   like the original on every claim set.
 */
import fc from "fast-check";
import { randomBytes } from "node:crypto";
import { beforeAll, describe, expect, it } from "vitest";
import { createLocalKeyVault, type LocalKeyVault } from "../../adapters/local/keyvault/engine.js";
import {
  checkSafePolicyChange,
  encodeReleasePolicy,
  evaluateReleasePolicy,
  parseReleasePolicy,
  releasePolicyToJson,
  renderReleasePolicy,
  COMPLIANCE_STATUSES,
  type ReleasePolicy,
} from "../../core/policy/index.js";
import { fixedClock } from "../../core/ports/clock.js";
import { editMeasurements } from "../../core/rollout/policy-edit.js";

const AUTHORITY = "https://shield-property.attest.example";
const hex32 = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b).toString("hex"));
const compliance = fc.option(fc.constantFrom(...COMPLIANCE_STATUSES), { nil: undefined });
const vmpl = fc.option(fc.integer({ min: 0, max: 3 }), { nil: undefined });

interface SnpAllowed {
  readonly hostData: readonly string[];
  readonly complianceStatus?: (typeof COMPLIANCE_STATUSES)[number];
  readonly vmpl?: number;
}
const snpAllowed: fc.Arbitrary<SnpAllowed> = fc
  .record({
    hostData: fc.uniqueArray(hex32, { minLength: 1, maxLength: 5 }),
    complianceStatus: compliance,
    vmpl,
  })
  .map(
    (m) => Object.fromEntries(Object.entries(m).filter(([, v]) => v !== undefined)) as unknown as SnpAllowed,
  );

/** What MAA says about a SEV-SNP workload that meets `m` with host data `hostData`. */
function snpClaims(m: SnpAllowed, hostData: string): Record<string, unknown> {
  return {
    iss: AUTHORITY,
    "x-ms-attestation-type": "sevsnpvm",
    "x-ms-sevsnpvm-is-debuggable": false,
    "x-ms-sevsnpvm-hostdata": hostData,
    "x-ms-compliance-status": m.complianceStatus ?? "azure-compliant-uvm",
    "x-ms-sevsnpvm-vmpl": m.vmpl ?? 0,
  };
}

/** Claim sets near real ones: each member kept, dropped, or given another (maybe wrongly typed) value. */
function nearClaims(
  base: Record<string, unknown>,
  otherHostData: readonly string[],
): fc.Arbitrary<Record<string, unknown>> {
  const keys = Object.keys(base);
  const altered = fc.oneof(
    { weight: 6, arbitrary: fc.constant<"keep">("keep") },
    fc.constant<"drop">("drop"),
    fc.oneof(
      fc.constantFrom(true, false, "true", "false", 0, 1, "0", "1", "sgx", "sevsnpvm", null, [], {}),
      fc.constantFrom(...otherHostData),
      fc.jsonValue(),
    ),
  );
  return fc.tuple(...keys.map(() => altered)).map((choices) => {
    const out: Record<string, unknown> = {};
    keys.forEach((key, i) => {
      const choice = choices[i];
      if (choice === "keep") out[key] = base[key];
      else if (choice !== "drop") out[key] = choice;
    });
    return out;
  });
}

const released = (
  policy: ReleasePolicy,
  claims: Record<string, unknown>,
  issuer: string | undefined = AUTHORITY,
) => evaluateReleasePolicy(policy, { issuer, claims }).released;

// ---- arbitrary (parsed) policies over a small vocabulary, so claims and conditions collide

const CLAIM_NAMES = ["a", "b", "c.d", "x-ms-sevsnpvm-vmpl", "x-ms-attestation-type"] as const;
const scalar = fc.oneof(
  fc.constantFrom("true", "false", "0", "1", "2", "a", "sevsnpvm", "A"),
  fc.integer({ min: -3, max: 3 }),
  fc.constantFrom(0.5, 1.5),
  fc.boolean(),
);
const claimCondition = fc.oneof(
  fc.record({ claim: fc.constantFrom(...CLAIM_NAMES), equals: scalar }),
  fc.record({ claim: fc.constantFrom(...CLAIM_NAMES), notEquals: scalar }),
  fc.record({ claim: fc.constantFrom(...CLAIM_NAMES), greater: fc.integer({ min: -3, max: 3 }) }),
  fc.record({
    claim: fc.constantFrom(...CLAIM_NAMES),
    lessOrEquals: fc.oneof(fc.integer({ min: -3, max: 3 }), fc.constant(0.5)),
  }),
  fc.record({ claim: fc.constantFrom(...CLAIM_NAMES), exists: fc.boolean() }),
);
const condition: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  node: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    claimCondition,
    fc.record({ anyOf: fc.array(tie("node"), { minLength: 1, maxLength: 3 }) }),
    fc.record({ allOf: fc.array(tie("node"), { minLength: 1, maxLength: 3 }) }),
  ),
})).node;
const policyDocument = fc.record({
  version: fc.constant("1.0.0"),
  anyOf: fc.array(
    fc.oneof(
      fc.record({
        authority: fc.constantFrom(AUTHORITY, `${AUTHORITY}/`, "https://other.example"),
        allOf: fc.array(condition, { minLength: 1, maxLength: 3 }),
      }),
      fc.record({
        authority: fc.constantFrom(AUTHORITY, "https://other.example"),
        anyOf: fc.array(condition, { minLength: 1, maxLength: 3 }),
      }),
    ),
    { minLength: 1, maxLength: 3 },
  ),
});
const smallValue = fc.oneof(scalar, fc.constantFrom(null, [], {}, [1]), fc.string({ maxLength: 3 }));
const smallClaims = fc.record(
  {
    a: smallValue,
    b: smallValue,
    c: fc.oneof(fc.record({ d: smallValue }, { requiredKeys: [] }), smallValue),
    "x-ms-sevsnpvm-vmpl": smallValue,
    "x-ms-attestation-type": smallValue,
  },
  { requiredKeys: [] },
);

/**
 * Key Vault's normalised form as the wire shows it: every object's members in another order,
 * JSON booleans and numbers as strings. `order` picks the permutation.
 */
function normalised(value: unknown, order: number): unknown {
  if (typeof value === "boolean" || typeof value === "number") return String(value);
  if (Array.isArray(value)) return value.map((v) => normalised(v, order));
  if (typeof value !== "object" || value === null) return value;
  const entries = Object.entries(value).map(([k, v]) => [k, normalised(v, order)] as const);
  const rank = (key: string) =>
    [...key].reduce((h, c) => (h * 31 + c.charCodeAt(0) + order) % 1_000_003, order);
  entries.sort(([a], [b]) => rank(a) - rank(b));
  return Object.fromEntries(entries);
}

describe("evaluateReleasePolicy", () => {
  it("never throws, whatever the policy, the claims and the issuer", () => {
    fc.assert(
      fc.property(
        policyDocument,
        fc.oneof(
          smallClaims,
          fc.dictionary(fc.string(), fc.jsonValue()),
          fc.jsonValue().filter((v) => typeof v === "object" && v !== null && !Array.isArray(v)),
        ),
        fc.option(fc.oneof(fc.constant(AUTHORITY), fc.string()), { nil: undefined }),
        (document, claims, issuer) => {
          const decision = evaluateReleasePolicy(parseReleasePolicy(document), {
            issuer,
            claims: claims as Record<string, unknown>,
          });
          expect(typeof decision.released).toBe("boolean");
          if (!decision.released) expect(decision.violations.length).toBeGreaterThan(0);
        },
      ),
      { numRuns: 300 },
    );
  });

  it("render → evaluate: releases to exactly the rendered measurements, never to debug or another TEE", () => {
    fc.assert(
      fc.property(snpAllowed, hex32, (m, stranger) => {
        fc.pre(!m.hostData.includes(stranger));
        const policy = parseReleasePolicy(
          JSON.stringify(
            releasePolicyToJson(renderReleasePolicy({ authority: AUTHORITY, measurements: { sevsnpvm: m } })),
          ),
        );
        for (const h of m.hostData) {
          expect(released(policy, snpClaims(m, h))).toBe(true);
          expect(released(policy, snpClaims(m, h.toUpperCase()))).toBe(false);
          expect(released(policy, { ...snpClaims(m, h), "x-ms-sevsnpvm-is-debuggable": true })).toBe(false);
          expect(released(policy, { ...snpClaims(m, h), "x-ms-attestation-type": "sgx" })).toBe(false);
          expect(released(policy, snpClaims(m, h), "https://other.attest.example")).toBe(false);
        }
        expect(released(policy, snpClaims(m, stranger))).toBe(false);
      }),
      { numRuns: 200 },
    );
  });

  it("render → evaluate for SGX: the allowed enclaves, and SVN minimums, exactly", () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(hex32, { minLength: 1, maxLength: 4 }),
        fc.option(fc.integer({ min: 0, max: 10 }), { nil: undefined }),
        fc.integer({ min: 0, max: 12 }),
        hex32,
        (mrEnclave, minSvn, svn, stranger) => {
          fc.pre(!mrEnclave.includes(stranger));
          const policy = renderReleasePolicy({
            authority: AUTHORITY,
            measurements: { sgx: { mrEnclave, ...(minSvn === undefined ? {} : { minSvn }) } },
          });
          const claims = (enclave: string) => ({
            "x-ms-attestation-type": "sgx",
            "x-ms-sgx-is-debuggable": false,
            "x-ms-sgx-mrenclave": enclave,
            "x-ms-sgx-svn": svn,
          });
          for (const e of mrEnclave)
            expect(released(policy, claims(e))).toBe(minSvn === undefined || svn >= minSvn);
          expect(released(policy, claims(stranger))).toBe(false);
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe("adding a measurement never removes another's access", () => {
  it("rendering with one more host data releases to everything the smaller policy released to", () => {
    fc.assert(
      fc.property(
        snpAllowed.chain((m) =>
          fc.tuple(fc.constant(m), hex32, nearClaims(snpClaims(m, m.hostData[0]!), m.hostData)),
        ),
        ([m, added, claims]) => {
          const before = renderReleasePolicy({ authority: AUTHORITY, measurements: { sevsnpvm: m } });
          const after = renderReleasePolicy({
            authority: AUTHORITY,
            measurements: { sevsnpvm: { ...m, hostData: [...m.hostData, added] } },
          });
          if (released(before, claims)) expect(released(after, claims)).toBe(true);
          for (const h of m.hostData) expect(released(after, snpClaims(m, h))).toBe(true);
          expect(released(after, snpClaims(m, added))).toBe(true);
        },
      ),
      { numRuns: 200 },
    );
  });

  it("the rollout's edit (add, nothing retired) keeps every grant, grants the new one, and keeps the safety conditions", () => {
    fc.assert(
      fc.property(
        snpAllowed.chain((m) =>
          fc.tuple(
            fc.constant(m),
            fc.uniqueArray(hex32, { minLength: 1, maxLength: 3 }),
            nearClaims(snpClaims(m, m.hostData[0]!), m.hostData),
          ),
        ),
        fc.uniqueArray(hex32, { minLength: 1, maxLength: 2 }),
        ([m, added, claims], mrEnclave) => {
          // A key released to SEV-SNP and SGX workloads alike.
          const before = renderReleasePolicy({
            authority: AUTHORITY,
            measurements: { sevsnpvm: m, sgx: { mrEnclave } },
          });
          const after = editMeasurements(before, {
            add: added.map((hostData) => ({ tee: "sevsnp" as const, hostData })),
            remove: [],
          });
          expect(checkSafePolicyChange(before, after)).toEqual([]);
          if (released(before, claims)) expect(released(after, claims)).toBe(true);
          for (const h of [...m.hostData, ...added]) expect(released(after, snpClaims(m, h))).toBe(true);
          const sgx = {
            "x-ms-attestation-type": "sgx",
            "x-ms-sgx-is-debuggable": false,
            "x-ms-sgx-mrenclave": mrEnclave[0],
          };
          expect(released(after, sgx)).toBe(true);
          expect(released(after, { ...snpClaims(m, added[0]!), "x-ms-sevsnpvm-is-debuggable": true })).toBe(
            false,
          );
        },
      ),
      { numRuns: 150 },
    );
  });
});

describe("Key Vault's normalised form evaluates like the original", () => {
  it("members reordered, booleans and numbers as strings: the same decision on every claim set", () => {
    fc.assert(
      fc.property(
        policyDocument,
        fc.nat(),
        fc.array(smallClaims, { minLength: 1, maxLength: 8 }),
        (document, order, claimSets) => {
          const original = parseReleasePolicy(document);
          const wire = JSON.stringify(normalised(document, order));
          const readBack = parseReleasePolicy(wire);
          for (const claims of claimSets) {
            expect(released(readBack, claims)).toBe(released(original, claims));
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it("the same for rendered policies, on claims near real ones", () => {
    fc.assert(
      fc.property(
        snpAllowed.chain((m) =>
          fc.tuple(
            fc.constant(m),
            fc.array(nearClaims(snpClaims(m, m.hostData[0]!), m.hostData), { minLength: 1, maxLength: 6 }),
          ),
        ),
        fc.nat(),
        ([m, claimSets], order) => {
          const rendered = renderReleasePolicy({
            authority: AUTHORITY,
            measurements: { sevsnpvm: m, sgx: { mrEnclave: m.hostData, minSvn: 2 } },
          });
          const readBack = parseReleasePolicy(
            JSON.stringify(normalised(releasePolicyToJson(rendered), order)),
          );
          for (const claims of claimSets) expect(released(readBack, claims)).toBe(released(rendered, claims));
        },
      ),
      { numRuns: 200 },
    );
  });

  describe("as the local Key Vault server stores it", () => {
    let vault: LocalKeyVault;
    let n = 0;
    beforeAll(async () => {
      vault = await createLocalKeyVault({
        vaultUrl: "https://shield-property.vault.azure.net",
        masterKey: randomBytes(32),
        clock: fixedClock(new Date("2030-01-01T00:00:00Z")),
        tokenKeys: () => ({ getKey: () => Promise.reject(new Error("no token is checked here")) }),
      });
    });

    it("a policy read back from the local Key Vault decides every claim set as the one written", async () => {
      await fc.assert(
        fc.asyncProperty(
          policyDocument,
          fc.array(smallClaims, { minLength: 1, maxLength: 8 }),
          async (document, claimSets) => {
            const original = parseReleasePolicy(document);
            const name = `p${++n}`;
            await vault.createKey(name, {
              kty: "oct-HSM",
              exportable: true,
              releasePolicy: encodeReleasePolicy(original),
            });
            const stored = (await vault.getKey(name)).releasePolicy;
            expect(stored).toBeDefined();
            const readBack = parseReleasePolicy({ contentType: stored!.contentType, data: stored!.data });
            for (const claims of claimSets)
              expect(released(readBack, claims)).toBe(released(original, claims));
          },
        ),
        { numRuns: 40 },
      );
    });
  });
});
