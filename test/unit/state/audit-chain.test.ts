import { describe, expect, it } from "vitest";
import type { AuditEntry } from "../../../core/ports/state.js";
import {
  auditEntryHash,
  canonicalAuditEntry,
  GENESIS_HASH,
  verifyAuditEntries,
} from "../../../core/state/audit-chain.js";

const first = {
  partition: "2026-03-01",
  sequence: 1,
  previousHash: GENESIS_HASH,
  at: new Date("2026-03-01T12:00:00.000Z"),
  kind: "attestation",
  subject: "payments.pod-1",
  requestId: "req-1",
  details: { verdict: "trusted", attempt: 1, debug: false, note: null },
};

function chain(length: number): AuditEntry[] {
  const entries: AuditEntry[] = [];
  for (let sequence = 1; sequence <= length; sequence += 1) {
    const content = {
      ...first,
      sequence,
      previousHash: entries.at(-1)?.hash ?? GENESIS_HASH,
      subject: `agent-${sequence}`,
    };
    entries.push({ ...content, hash: auditEntryHash(content) });
  }
  return entries;
}

const headOf = (entries: AuditEntry[]) => ({
  sequence: entries.at(-1)!.sequence,
  hash: entries.at(-1)!.hash,
});

describe("audit hash chain", () => {
  it("hashes a fixed canonical form (changing it would orphan every stored chain)", () => {
    expect(canonicalAuditEntry(first)).toBe(
      '["shield-audit-v1","2026-03-01",1,"2026-03-01T12:00:00.000Z","attestation","payments.pod-1","req-1",' +
        '[["attempt",1],["debug",false],["note",null],["verdict","trusted"]],' +
        '"0000000000000000000000000000000000000000000000000000000000000000"]',
    );
    expect(auditEntryHash(first)).toBe("b9f235dcd03542906e24785ad3d3f201cceb8191e5e28772f865c6bb64e786b1");
  });

  it("does not depend on the order details were written in", () => {
    const reordered = { ...first, details: { note: null, debug: false, attempt: 1, verdict: "trusted" } };
    expect(auditEntryHash(reordered)).toBe(auditEntryHash(first));
  });

  it("covers every field", () => {
    const base = auditEntryHash(first);
    const variants = [
      { partition: "2026-03-02" },
      { sequence: 2 },
      { previousHash: "1".repeat(64) },
      { at: new Date("2026-03-01T12:00:00.001Z") },
      { kind: "attestation2" },
      { subject: "other" },
      { requestId: undefined },
      { details: { ...first.details, attempt: 2 } },
      { details: { ...first.details, attempt: "1" } },
    ];
    for (const change of variants) expect(auditEntryHash({ ...first, ...change })).not.toBe(base);
  });

  it("verifies an intact chain and an empty one", () => {
    const entries = chain(4);
    expect(verifyAuditEntries("p", entries, headOf(entries))).toEqual({
      ok: true,
      partition: "p",
      entries: 4,
      headHash: entries[3]!.hash,
      problems: [],
    });
    expect(verifyAuditEntries("p", [], undefined).ok).toBe(true);
  });

  it("names each kind of damage", () => {
    const entries = chain(4);
    const head = headOf(entries);
    const edited = entries.map((e) => (e.sequence === 2 ? { ...e, subject: "x" } : e));
    expect(verifyAuditEntries("p", edited, head).problems).toEqual([{ sequence: 2, kind: "hash-mismatch" }]);

    const rehashed = entries.map((e) => {
      if (e.sequence !== 2) return e;
      const { hash: _, ...content } = { ...e, subject: "x" };
      return { ...content, hash: auditEntryHash(content) };
    });
    expect(verifyAuditEntries("p", rehashed, head).problems).toEqual([{ sequence: 3, kind: "broken-link" }]);

    const gap = entries.filter((e) => e.sequence !== 3);
    expect(verifyAuditEntries("p", gap, head).problems).toEqual([
      { sequence: 3, kind: "sequence-gap" },
      { sequence: 4, kind: "broken-link" },
    ]);

    expect(verifyAuditEntries("p", entries.slice(0, 3), head).problems).toEqual([
      { sequence: 4, kind: "head-mismatch" },
    ]);
    expect(verifyAuditEntries("p", entries, undefined).problems).toEqual([
      { sequence: 4, kind: "head-mismatch" },
    ]);
    expect(verifyAuditEntries("p", [], head).problems).toEqual([{ sequence: 4, kind: "head-mismatch" }]);
  });
});
