/**
 * The StateStore contract: every adapter must pass these tests unchanged. Tests share one
 * store per file and keep apart by using fresh ids, so an adapter backed by a shared table
 * works the same as one created per test.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { beforeAll, describe, expect, it } from "vitest";
import { ShieldError } from "../../core/errors.js";
import {
  makeAttestationResult,
  type AttestationResult,
  type Measurement,
} from "../../core/messages/index.js";
import type { AgentState, AuditDetails, StateStore } from "../../core/ports/state.js";
import { changeAgent } from "../../core/state/agents.js";
import { parseReleasePolicy } from "../../core/policy/index.js";

export interface StateStoreHarness {
  readonly store: StateStore;
  /** Changes a stored audit entry behind the store's back, as someone with storage access could. */
  editAuditEntry(
    partition: string,
    sequence: number,
    change: { subject?: string; details?: AuditDetails },
  ): Promise<void>;
  deleteAuditEntry(partition: string, sequence: number): Promise<void>;
  /** Every stored value, as text, for checks that nothing secret was written. */
  dumpEverything(): Promise<string>;
}

const T0 = new Date("2026-03-01T00:00:00.000Z");
const at = (seconds: number): Date => new Date(T0.getTime() + seconds * 1000);
const hex = (bytes: number): string => randomBytes(bytes).toString("hex");
const b64url = (bytes: number): string => randomBytes(bytes).toString("base64url");
const fresh = (prefix: string): string => `${prefix}-${randomUUID()}`;
const snp = (): Measurement => ({ tee: "sevsnp", hostData: hex(32) });

function agent(agentId: string, overrides: Partial<AgentState> = {}): AgentState {
  return { agentId, workload: "payments", tee: "sevsnp", status: "untrusted", updatedAt: T0, ...overrides };
}

function trustedResult(
  agentId: string,
  requestId: string,
  keyCount = 1,
  responseChars = 600,
): AttestationResult {
  return makeAttestationResult({
    agentId,
    requestId,
    keys: Array.from({ length: keyCount }, (_, index) => ({
      name: `key-${index}`,
      version: hex(16),
      releaseResponse: `${b64url(60)}.${b64url(Math.floor((responseChars * 3) / 4))}.${b64url(64)}`,
    })),
    attestedUntil: at(3600),
    sentAt: at(1),
  });
}

async function expectCode(promise: Promise<unknown>, code: string): Promise<ShieldError> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  expect(error).toBeInstanceOf(ShieldError);
  expect((error as ShieldError).code).toBe(code);
  return error as ShieldError;
}

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

export function defineStateStoreContract(name: string, makeHarness: () => Promise<StateStoreHarness>): void {
  describe(`StateStore contract: ${name}`, () => {
    let harness: StateStoreHarness;
    let store: StateStore;
    beforeAll(async () => {
      harness = await makeHarness();
      store = harness.store;
    });

    describe("agents", () => {
      it("creates, reads and refuses a second create of the same agent", async () => {
        const id = fresh("agent");
        expect(await store.getAgent(id)).toBeUndefined();
        const measurement = snp();
        const created = await store.createAgent(
          agent(id, { status: "trusted", lastAttestedAt: at(10), attestedUntil: at(3610), measurement }),
        );
        expect(created.etag).toEqual(expect.any(String));
        const read = await store.getAgent(id);
        expect(read).toEqual({
          agentId: id,
          workload: "payments",
          tee: "sevsnp",
          status: "trusted",
          lastAttestedAt: at(10),
          attestedUntil: at(3610),
          measurement,
          updatedAt: T0,
          etag: created.etag,
        });
        const conflict = await expectCode(store.createAgent(agent(id)), "ERR_CONFLICT");
        expect(conflict.transient).toBe(true);
      });

      it("updates with the current ETag, refuses a stale one, and replaces the whole record", async () => {
        const id = fresh("agent");
        const challenge = {
          nonce: b64url(32),
          issuedAt: at(1),
          deadline: at(301),
          reason: "reattest" as const,
          sentAt: at(2),
        };
        const created = await store.createAgent(agent(id, { challenge }));
        // Every member of a pending challenge comes back as written.
        expect((await store.getAgent(id))?.challenge).toEqual(challenge);
        const updated = await store.updateAgent(
          agent(id, { status: "trusted", statusReason: "ok", updatedAt: at(5) }),
          created.etag,
        );
        expect(updated.etag).not.toBe(created.etag);
        const read = await store.getAgent(id);
        expect(read?.status).toBe("trusted");
        expect(read?.challenge).toBeUndefined(); // replaced, not merged
        expect(read?.etag).toBe(updated.etag);
        await expectCode(store.updateAgent(agent(id, { status: "revoked" }), created.etag), "ERR_CONFLICT");
        expect((await store.getAgent(id))?.status).toBe("trusted");
      });

      it("refuses to update an agent that does not exist", async () => {
        await expectCode(store.updateAgent(agent(fresh("agent")), 'W/"1"'), "ERR_CONFLICT");
      });

      it("lets exactly one of two concurrent updates from the same read win", async () => {
        const id = fresh("agent");
        const created = await store.createAgent(agent(id));
        const outcomes = await Promise.allSettled([
          store.updateAgent(agent(id, { status: "trusted" }), created.etag),
          store.updateAgent(agent(id, { status: "revoked" }), created.etag),
        ]);
        expect(outcomes.filter((o) => o.status === "fulfilled")).toHaveLength(1);
        const rejected = outcomes.filter((o) => o.status === "rejected");
        expect(rejected).toHaveLength(1);
        expect((rejected[0]?.reason as ShieldError).code).toBe("ERR_CONFLICT");
      });

      it("changeAgent re-reads and recomputes after losing a race", async () => {
        const id = fresh("agent");
        await store.createAgent(agent(id));
        // Another invocation writes between this one's read and its write.
        let interfered = false;
        const racing = new Proxy(store, {
          get(target, property) {
            if (property === "updateAgent") {
              return async (next: AgentState, etag: string) => {
                if (!interfered) {
                  interfered = true;
                  await target.updateAgent(agent(id, { statusReason: "other-writer" }), etag);
                }
                return target.updateAgent(next, etag);
              };
            }
            const value: unknown = Reflect.get(target, property, target);
            return typeof value === "function"
              ? (value as (...args: unknown[]) => unknown).bind(target)
              : value;
          },
        });
        let calls = 0;
        const result = await changeAgent(racing, id, (current) => {
          calls += 1;
          return agent(id, { status: "trusted", statusReason: current?.statusReason ?? "none" });
        });
        expect(calls).toBe(2);
        expect(result?.status).toBe("trusted");
        expect(result?.statusReason).toBe("other-writer");
        expect((await store.getAgent(id))?.etag).toBe(result?.etag);
      });

      it("changeAgent gives up with ERR_CONFLICT after its attempts", async () => {
        const id = fresh("agent");
        await store.createAgent(agent(id));
        const alwaysLosing = new Proxy(store, {
          get(target, property) {
            if (property === "updateAgent") {
              return async (next: AgentState, etag: string) => {
                await target.updateAgent(agent(id, { statusReason: "other-writer" }), etag);
                return target.updateAgent(next, etag);
              };
            }
            const value: unknown = Reflect.get(target, property, target);
            return typeof value === "function"
              ? (value as (...args: unknown[]) => unknown).bind(target)
              : value;
          },
        });
        await expectCode(
          changeAgent(alwaysLosing, id, () => agent(id, { status: "trusted" }), { attempts: 2 }),
          "ERR_CONFLICT",
        );
      });

      it("lists agents by status, by age of the last attestation and by challenge deadline", async () => {
        const stale = fresh("agent");
        const recent = fresh("agent");
        const silent = fresh("agent");
        const revoked = fresh("agent");
        await store.createAgent(agent(stale, { status: "trusted", lastAttestedAt: at(-7200) }));
        await store.createAgent(agent(recent, { status: "trusted", lastAttestedAt: at(-60) }));
        await store.createAgent(
          agent(silent, {
            status: "trusted",
            lastAttestedAt: at(-60),
            challenge: { nonce: b64url(32), issuedAt: at(-400), deadline: at(-100) },
          }),
        );
        await store.createAgent(agent(revoked, { status: "revoked", statusReason: "ERR_POLICY_DENIED" }));
        const mine = new Set([stale, recent, silent, revoked]);
        const ids = async (query: Parameters<StateStore["listAgents"]>[0]) =>
          (await collect(store.listAgents(query)))
            .map((a) => a.agentId)
            .filter((a) => mine.has(a))
            .sort();

        expect(await ids({ status: "trusted" })).toEqual([stale, recent, silent].sort());
        expect(await ids({ status: "revoked" })).toEqual([revoked]);
        expect(await ids({ status: "trusted", lastAttestedBefore: at(-3600) })).toEqual([stale]);
        expect(await ids({ challengeDeadlineBefore: at(0) })).toEqual([silent]);
        expect(await ids(undefined)).toEqual([...mine].sort());
        const listed = (await collect(store.listAgents({ status: "revoked" }))).find(
          (a) => a.agentId === revoked,
        );
        expect(listed?.etag).toBe((await store.getAgent(revoked))?.etag);
      });

      it("lists agents due for re-attestation or past a deadline, earliest first, bounded, following each change", async () => {
        // Times in 2001 keep these agents apart from every other test's (all in 2026).
        const base = new Date("2001-01-01T00:00:00.000Z").getTime();
        const t = (seconds: number) => new Date(base + seconds * 1000);
        const ids = Array.from({ length: 5 }, () => fresh("due"));
        // Trusted agents, attested until t(50), t(10), t(40), t(30); one revoked (never due).
        const until = [50, 10, 40, 30];
        for (const [index, seconds] of until.entries()) {
          await store.createAgent(
            agent(ids[index]!, {
              status: "trusted",
              lastAttestedAt: t(seconds - 300),
              attestedUntil: t(seconds),
            }),
          );
        }
        await store.createAgent(agent(ids[4]!, { status: "revoked", attestedUntil: t(1) }));
        const due = async (kind: "attest" | "deadline", before: number, limit = 10) =>
          (await store.listAgentsDue(kind, t(before), limit)).map((a) => a.agentId);

        expect(await due("attest", 45)).toEqual([ids[1], ids[3], ids[2]]);
        expect(await due("attest", 45, 2)).toEqual([ids[1], ids[3]]);
        expect(await due("attest", 10)).toEqual([]); // strictly before
        expect(await due("deadline", 1000)).toEqual([]);

        // Challenged for re-attestation: out of `attest`, into `deadline` by the challenge's deadline.
        const challenged = await store.getAgent(ids[1]!);
        const challenge = {
          nonce: b64url(32),
          issuedAt: t(5),
          deadline: t(305),
          reason: "reattest" as const,
        };
        const { etag, ...rest } = challenged!;
        const updated = await store.updateAgent({ ...rest, challenge }, etag);
        expect(await due("attest", 45)).toEqual([ids[3], ids[2]]);
        expect(await due("deadline", 305)).toEqual([]);
        expect(await due("deadline", 306)).toEqual([ids[1]]);
        const listed = await store.listAgentsDue("deadline", t(306), 10);
        expect(listed[0]?.etag).toBe(updated.etag);

        // Answered (validated): no longer waiting on the deadline; attested again: due later.
        const { etag: etag2, ...rest2 } = updated;
        const answered = await store.updateAgent(
          { ...rest2, challenge: { ...challenge, answeredBy: "req-1" } },
          etag2,
        );
        expect(await due("deadline", 1000)).toEqual([]);
        const { etag: etag3, challenge: _done, ...rest3 } = answered;
        await store.updateAgent({ ...rest3, attestedUntil: t(600) }, etag3);
        expect(await due("attest", 45)).toEqual([ids[3], ids[2]]);
        expect(await due("attest", 601)).toEqual([ids[3], ids[2], ids[0], ids[1]]);

        // A `requested` challenge does not count against an agent.
        const requested = await store.getAgent(ids[3]!);
        const { etag: etag4, ...rest4 } = requested!;
        await store.updateAgent(
          { ...rest4, challenge: { nonce: b64url(32), issuedAt: t(1), deadline: t(2), reason: "requested" } },
          etag4,
        );
        expect(await due("deadline", 1000)).toEqual([]);
        expect(await due("attest", 45)).toEqual([ids[3], ids[2]]);
      });

      it("refuses identifiers that are unsafe as keys", async () => {
        await expect(store.createAgent(agent("a/b"))).rejects.toBeInstanceOf(TypeError);
        await expect(store.getAgent("a#b")).rejects.toBeInstanceOf(TypeError);
        await expect(store.createAgent(agent("x".repeat(129)))).rejects.toBeInstanceOf(TypeError);
      });
    });

    describe("attestation records", () => {
      it("records once per request, reads back, and lists newest first", async () => {
        const agentId = fresh("agent");
        const measurement = snp();
        const tokenHash = createHash("sha256").update("token").digest("hex");
        const first = {
          agentId,
          requestId: fresh("req"),
          at: at(10),
          verdict: "trusted" as const,
          violations: [],
          tokenHash,
          claimsDigest: hex(32),
          measurement,
          attestedUntil: at(3610),
          keys: ["db-key", "api-key"],
        };
        const second = {
          agentId,
          requestId: fresh("req"),
          at: at(20),
          verdict: "denied" as const,
          reasonCode: "ERR_APPRAISAL_DENIED",
          violations: [
            { field: "x-ms-sevsnpvm-hostdata", expected: "one of 2 measurements", actual: hex(32) },
          ],
          keys: ["db-key"],
        };
        expect(await store.recordAttestation(first)).toBe(true);
        expect(await store.recordAttestation(second)).toBe(true);
        expect(await store.recordAttestation({ ...first, verdict: "denied" })).toBe(false);
        expect(await store.getAttestation(agentId, first.requestId)).toEqual(first);
        expect(await store.getAttestation(agentId, fresh("req"))).toBeUndefined();
        expect(await store.listAttestations(agentId)).toEqual([second, first]);
        expect(await store.listAttestations(agentId, { limit: 1 })).toEqual([second]);
        expect(await store.listAttestations(agentId, { since: at(15) })).toEqual([second]);
        expect(await store.listAttestations(fresh("agent"))).toEqual([]);
      });

      it("accepts only sha256 hex where a hash belongs, so a token cannot be stored by mistake", async () => {
        const record = {
          agentId: fresh("agent"),
          requestId: fresh("req"),
          at: T0,
          verdict: "error" as const,
          violations: [],
          keys: [],
        };
        await expect(
          store.recordAttestation({ ...record, tokenHash: "eyJhbGciOiJSUzI1NiJ9.e30.sig" }),
        ).rejects.toBeInstanceOf(TypeError);
        await expect(store.recordAttestation({ ...record, claimsDigest: hex(31) })).rejects.toBeInstanceOf(
          TypeError,
        );
      });

      it("refuses more violations than the limit with ERR_INPUT_TOO_LARGE", async () => {
        const violations = Array.from({ length: 65 }, (_, i) => ({
          field: `f${i}`,
          expected: "a",
          actual: "b",
        }));
        await expectCode(
          store.recordAttestation({
            agentId: fresh("agent"),
            requestId: fresh("req"),
            at: T0,
            verdict: "denied",
            violations,
            keys: [],
          }),
          "ERR_INPUT_TOO_LARGE",
        );
      });
    });

    describe("key holdings", () => {
      it("answers who holds which key version, by agent and by key", async () => {
        const a1 = fresh("agent");
        const a2 = fresh("agent");
        const keyA = `ka-${hex(6)}`;
        const keyB = `kb-${hex(6)}`;
        const m1 = snp();
        const m2: Measurement = { tee: "sgx", mrenclave: hex(32), mrsigner: hex(32) };
        const h = (
          agentId: string,
          keyName: string,
          keyVersion: string,
          measurement: Measurement,
          seconds: number,
        ) => ({
          agentId,
          keyName,
          keyVersion,
          measurement,
          releasedAt: at(seconds),
          requestId: fresh("req"),
        });
        const holdings = [
          h(a1, keyA, "v1", m1, 1),
          h(a1, keyB, "v1", m1, 2),
          h(a2, keyA, "v1", m2, 3),
          h(a2, keyA, "v2", m2, 4),
        ];
        for (const holding of holdings) await store.recordHolding(holding);

        expect(await store.listHoldingsByAgent(a1)).toEqual([holdings[0], holdings[1]]);
        expect(await store.listHoldingsByAgent(a2)).toEqual([holdings[2], holdings[3]]);
        expect(await store.listHoldingsByKey(keyA)).toEqual(
          [holdings[0], holdings[2], holdings[3]].sort((x, y) =>
            `${x!.keyVersion}${x!.agentId}` < `${y!.keyVersion}${y!.agentId}` ? -1 : 1,
          ),
        );
        expect(await store.listHoldingsByKey(keyA, { keyVersion: "v2" })).toEqual([holdings[3]]);
        expect(await store.listHoldingsByKey(keyB)).toEqual([holdings[1]]);
        expect(await store.listHoldingsByKey(`none-${hex(4)}`)).toEqual([]);

        // Re-releasing the same version refreshes the holding instead of adding a second one.
        const again = { ...holdings[0]!, releasedAt: at(100), requestId: fresh("req") };
        await store.recordHolding(again);
        expect(await store.listHoldingsByAgent(a1)).toEqual([again, holdings[1]]);
        expect(await store.listHoldingsByKey(keyA, { keyVersion: "v1" })).toContainEqual(again);

        // A revocation is recorded on the holding, which stays as history.
        const revoked = { ...holdings[3]!, revokedAt: at(200) };
        await store.recordHolding(revoked);
        expect(await store.listHoldingsByKey(keyA, { keyVersion: "v2" })).toEqual([revoked]);
        expect(await store.listHoldingsByAgent(a2)).toEqual([holdings[2], revoked]);
      });
    });

    describe("managed keys", () => {
      const policy = parseReleasePolicy({
        version: "1.0.0",
        anyOf: [
          {
            authority: "https://maa.example",
            allOf: [{ claim: "x-ms-sevsnpvm-hostdata", equals: "ab".repeat(32) }],
          },
        ],
      });
      it("creates once, updates with the ETag read, refuses a stale one, and lists", async () => {
        const keyName = `mk-${hex(6)}`;
        const state = {
          keyName,
          releasePolicy: policy,
          versions: [{ version: "v1", createdAt: at(0), origin: "initial" as const }],
          updatedAt: at(0),
        };
        const created = await store.putManagedKey(state);
        expect(created).toMatchObject(state);
        await expectCode(store.putManagedKey(state), "ERR_CONFLICT");
        const next = {
          ...state,
          versions: [
            { ...state.versions[0]!, retiredAt: at(20), revokedAt: at(30) },
            {
              version: "v2",
              createdAt: at(10),
              origin: "rotated" as const,
              reason: "near-expiry" as const,
              sourceEventId: fresh("event"),
            },
          ],
          updatedAt: at(10),
        };
        const updated = await store.putManagedKey(next, created.etag);
        await expectCode(store.putManagedKey(next, created.etag), "ERR_CONFLICT");
        const { etag: _etag, ...read } = (await store.getManagedKey(keyName))!;
        expect(read).toEqual(next);
        expect((await store.getManagedKey(keyName))?.etag).toBe(updated.etag);
        expect((await store.listManagedKeys()).map((k) => k.keyName)).toContain(keyName);
        expect(await store.getManagedKey(`none-${hex(4)}`)).toBeUndefined();
      });

      it("keeps at most 100 versions per key", async () => {
        const versions = Array.from({ length: 101 }, (_, i) => ({
          version: `v${i}`,
          createdAt: at(i),
          origin: "rotated" as const,
        }));
        await expectCode(
          store.putManagedKey({ keyName: `mk-${hex(6)}`, releasePolicy: policy, versions, updatedAt: at(0) }),
          "ERR_INPUT_TOO_LARGE",
        );
      });
    });

    describe("request idempotency", () => {
      it("claims a new request once, reports it in progress, then returns the stored result", async () => {
        const key = { scope: fresh("agent"), requestId: fresh("req") };
        const claim = await store.claimRequest(key, { at: at(0), leaseUntil: at(60) });
        expect(claim.state).toBe("new");
        if (claim.state !== "new") return;
        expect(claim.lease.attempt).toBe(1);
        expect(await store.claimRequest(key, { at: at(1), leaseUntil: at(61) })).toEqual({
          state: "in-progress",
          leaseUntil: at(60),
          attempt: 1,
        });
        const result = trustedResult(key.scope, key.requestId, 2);
        await store.completeRequest(claim.lease, result, at(2));
        const again = await store.claimRequest(key, { at: at(3), leaseUntil: at(63) });
        expect(again).toEqual({ state: "completed", result, completedAt: at(2) });
        // Long after the lease, a completed request still answers with the same result.
        expect(await store.claimRequest(key, { at: at(86_400), leaseUntil: at(86_460) })).toEqual(again);
      });

      it("lets exactly one of several concurrent claims win", async () => {
        const key = { scope: fresh("agent"), requestId: fresh("req") };
        const claims = await Promise.all(
          Array.from({ length: 4 }, () => store.claimRequest(key, { at: at(0), leaseUntil: at(60) })),
        );
        expect(claims.filter((c) => c.state === "new")).toHaveLength(1);
        expect(claims.filter((c) => c.state === "in-progress")).toHaveLength(3);
      });

      it("hands an expired lease to the next claimant and refuses the old lease", async () => {
        const key = { scope: fresh("agent"), requestId: fresh("req") };
        const first = await store.claimRequest(key, { at: at(0), leaseUntil: at(60) });
        if (first.state !== "new") throw new Error("expected a new claim");
        const second = await store.claimRequest(key, { at: at(61), leaseUntil: at(121) });
        expect(second.state).toBe("new");
        if (second.state !== "new") return;
        expect(second.lease.attempt).toBe(2);
        await expectCode(
          store.completeRequest(first.lease, trustedResult(key.scope, key.requestId), at(62)),
          "ERR_CONFLICT",
        );
        await expectCode(store.releaseRequest(first.lease), "ERR_CONFLICT");
        await store.completeRequest(second.lease, trustedResult(key.scope, key.requestId), at(63));
      });

      it("releases a claim so a redelivery can take it at once", async () => {
        const key = { scope: fresh("agent"), requestId: fresh("req") };
        const first = await store.claimRequest(key, { at: at(0), leaseUntil: at(60) });
        if (first.state !== "new") throw new Error("expected a new claim");
        await store.releaseRequest(first.lease);
        const second = await store.claimRequest(key, { at: at(1), leaseUntil: at(61) });
        expect(second.state === "new" && second.lease.attempt).toBe(2);
      });

      it("keeps claims apart by scope", async () => {
        const requestId = fresh("req");
        const a = await store.claimRequest(
          { scope: fresh("agent"), requestId },
          { at: at(0), leaseUntil: at(60) },
        );
        const b = await store.claimRequest(
          { scope: fresh("agent"), requestId },
          { at: at(0), leaseUntil: at(60) },
        );
        expect([a.state, b.state]).toEqual(["new", "new"]);
      });

      it("stores a large result across storage limits and refuses one over the limit", async () => {
        const key = { scope: fresh("agent"), requestId: fresh("req") };
        const claim = await store.claimRequest(key, { at: at(0), leaseUntil: at(60) });
        if (claim.state !== "new") throw new Error("expected a new claim");
        const large = trustedResult(key.scope, key.requestId, 32, 21_000); // about 680 KB, near the limit
        expect(JSON.stringify(large).length).toBeGreaterThan(650_000);
        await store.completeRequest(claim.lease, large, at(1));
        const again = await store.claimRequest(key, { at: at(2), leaseUntil: at(62) });
        expect(again.state === "completed" && again.result).toEqual(large);

        const other = { scope: fresh("agent"), requestId: fresh("req") };
        const otherClaim = await store.claimRequest(other, { at: at(0), leaseUntil: at(60) });
        if (otherClaim.state !== "new") throw new Error("expected a new claim");
        const huge = trustedResult(other.scope, other.requestId, 32, 23_000); // about 740 KB
        await expectCode(store.completeRequest(otherClaim.lease, huge, at(1)), "ERR_INPUT_TOO_LARGE");
      });

      it("refuses a lease that ends before the claim time", async () => {
        const key = { scope: fresh("agent"), requestId: fresh("req") };
        await expect(store.claimRequest(key, { at: at(10), leaseUntil: at(10) })).rejects.toBeInstanceOf(
          TypeError,
        );
      });
    });

    describe("nonces", () => {
      it("consumes a nonce once and refuses its replay, per scope", async () => {
        const nonce = b64url(32);
        const scope = fresh("challenge");
        const options = { at: at(0), expiresAt: at(300) };
        expect(await store.consumeNonce(scope, nonce, options)).toBe("consumed");
        expect(await store.consumeNonce(scope, nonce, { at: at(1), expiresAt: at(301) })).toBe("replayed");
        expect(await store.consumeNonce(fresh("webhook"), nonce, options)).toBe("consumed");
      });

      it("lets exactly one of concurrent uses of a nonce through", async () => {
        const nonce = b64url(32);
        const scope = fresh("challenge");
        const uses = await Promise.all(
          Array.from({ length: 4 }, () =>
            store.consumeNonce(scope, nonce, { at: at(0), expiresAt: at(300) }),
          ),
        );
        expect(uses.filter((u) => u === "consumed")).toHaveLength(1);
      });

      it("refuses nonces with characters unsafe as keys", async () => {
        await expect(
          store.consumeNonce("challenge", "a/b", { at: T0, expiresAt: at(1) }),
        ).rejects.toBeInstanceOf(TypeError);
      });
    });

    describe("audit log", () => {
      const event = (i: number, details: AuditDetails = {}) => ({
        at: at(i),
        kind: "attestation",
        subject: `agent-${i}`,
        requestId: `req-${i}`,
        details: {
          verdict: "trusted",
          attempt: i,
          hostData: "ab".repeat(32),
          retried: false,
          note: null,
          ...details,
        },
      });

      async function chainOf(length: number): Promise<string> {
        const partition = fresh("audit");
        for (let i = 1; i <= length; i += 1) await store.appendAudit(partition, event(i));
        return partition;
      }

      it("appends a hash chain that verifies and lists in order", async () => {
        const partition = fresh("audit");
        const empty = await store.verifyAuditChain(partition);
        expect(empty).toMatchObject({ ok: true, entries: 0, headHash: "0".repeat(64), problems: [] });
        const entries = [];
        for (let i = 1; i <= 5; i += 1) entries.push(await store.appendAudit(partition, event(i)));
        expect(entries.map((e) => e.sequence)).toEqual([1, 2, 3, 4, 5]);
        expect(entries[0]?.previousHash).toBe("0".repeat(64));
        for (let i = 1; i < entries.length; i += 1)
          expect(entries[i]?.previousHash).toBe(entries[i - 1]?.hash);
        expect(await store.listAudit(partition)).toEqual(entries);
        expect(await store.listAudit(partition, { fromSequence: 2, limit: 2 })).toEqual(entries.slice(1, 3));
        expect(await store.verifyAuditChain(partition)).toEqual({
          ok: true,
          partition,
          entries: 5,
          headHash: entries[4]?.hash,
          problems: [],
        });
      });

      it("appends an event with an id once, however often it is appended", async () => {
        const partition = fresh("audit");
        const first = await store.appendAudit(partition, { ...event(1), eventId: "rotation:k1:event-7" });
        await store.appendAudit(partition, event(2));
        const again = await store.appendAudit(partition, {
          ...event(3),
          eventId: "rotation:k1:event-7",
        });
        expect(again).toEqual(first);
        expect(first.eventId).toBe("rotation:k1:event-7");
        const racing = await Promise.all(
          Array.from({ length: 3 }, () => store.appendAudit(partition, { ...event(4), eventId: "once" })),
        );
        expect(new Set(racing.map((e) => e.sequence)).size).toBe(1);
        const entries = await store.listAudit(partition);
        expect(entries.map((e) => e.sequence)).toEqual([1, 2, 3]);
        expect(await store.verifyAuditChain(partition)).toMatchObject({ ok: true, entries: 3 });
      });

      it("keeps the chain whole when appends race", async () => {
        const partition = fresh("audit");
        const entries = await Promise.all(
          Array.from({ length: 4 }, (_, i) => store.appendAudit(partition, event(i + 1))),
        );
        expect(entries.map((e) => e.sequence).sort()).toEqual([1, 2, 3, 4]);
        expect((await store.verifyAuditChain(partition)).ok).toBe(true);
      });

      it("detects an edited entry", async () => {
        const partition = await chainOf(4);
        await harness.editAuditEntry(partition, 3, { details: { verdict: "denied", attempt: 3 } });
        const result = await store.verifyAuditChain(partition);
        expect(result.ok).toBe(false);
        expect(result.problems).toContainEqual({ sequence: 3, kind: "hash-mismatch" });
      });

      it("detects an edited subject", async () => {
        const partition = await chainOf(2);
        await harness.editAuditEntry(partition, 1, { subject: "someone-else" });
        expect((await store.verifyAuditChain(partition)).problems).toEqual([
          { sequence: 1, kind: "hash-mismatch" },
        ]);
      });

      it("detects a deleted entry in the middle", async () => {
        const partition = await chainOf(4);
        await harness.deleteAuditEntry(partition, 2);
        const result = await store.verifyAuditChain(partition);
        expect(result.ok).toBe(false);
        expect(result.problems).toContainEqual({ sequence: 2, kind: "sequence-gap" });
        expect(result.problems).toContainEqual({ sequence: 3, kind: "broken-link" });
      });

      it("detects a cut tail", async () => {
        const partition = await chainOf(3);
        await harness.deleteAuditEntry(partition, 3);
        const result = await store.verifyAuditChain(partition);
        expect(result.ok).toBe(false);
        expect(result.problems).toEqual([{ sequence: 3, kind: "head-mismatch" }]);
      });

      it("refuses details beyond the storage limit", async () => {
        await expectCode(
          store.appendAudit(fresh("audit"), event(1, { big: "x".repeat(20_000) })),
          "ERR_INPUT_TOO_LARGE",
        );
      });
    });

    it("stores no token and no evidence, only their digests and wrapped release responses", async () => {
      const token = `eyJ${b64url(200)}.${b64url(400)}.${b64url(256)}`;
      const agentId = fresh("agent");
      const requestId = fresh("req");
      await store.recordAttestation({
        agentId,
        requestId,
        at: T0,
        verdict: "trusted",
        violations: [],
        tokenHash: createHash("sha256").update(token).digest("hex"),
        claimsDigest: hex(32),
        keys: ["k"],
      });
      const claim = await store.claimRequest({ scope: agentId, requestId }, { at: T0, leaseUntil: at(60) });
      if (claim.state !== "new") throw new Error("expected a new claim");
      await store.completeRequest(claim.lease, trustedResult(agentId, requestId), at(1));
      await store.appendAudit(fresh("audit"), {
        at: T0,
        kind: "attestation",
        subject: agentId,
        details: { tokenHash: createHash("sha256").update(token).digest("hex") },
      });
      const everything = await harness.dumpEverything();
      expect(everything).toContain(agentId);
      expect(everything).not.toContain(token.slice(0, 40));
      expect(everything).not.toContain(token.slice(-40));
    });
  });
}
