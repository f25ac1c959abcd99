/**
 * The audit log's hash chain. Each entry's hash covers its content and the previous entry's
 * hash, and each partition keeps a head (last sequence and hash) written in the same atomic
 * step as the entry, so editing an entry, removing one from the middle, or cutting the tail is
 * visible to `verifyAuditEntries`. Whoever can rewrite every entry and the head can forge a
 * consistent chain; anchoring head hashes elsewhere is what defeats that, not this module.
 */
import { createHash } from "node:crypto";
import type { AuditEntry, AuditProblem, AuditVerification } from "../ports/state.js";

export const GENESIS_HASH = "0".repeat(64);
const CHAIN_FORMAT = "shield-audit-v1";

/** The canonical bytes of an entry: a JSON array in fixed order, details sorted by name. */
export function canonicalAuditEntry(entry: Omit<AuditEntry, "hash">): string {
  const details = Object.keys(entry.details)
    .sort()
    .map((name) => [name, entry.details[name] ?? null]);
  return JSON.stringify([
    CHAIN_FORMAT,
    entry.partition,
    entry.sequence,
    entry.at.toISOString(),
    entry.kind,
    entry.subject,
    entry.requestId ?? null,
    details,
    entry.previousHash,
    // Appended only when present, so entries written before event ids existed keep their hash.
    ...(entry.eventId === undefined ? [] : [entry.eventId]),
  ]);
}

export function auditEntryHash(entry: Omit<AuditEntry, "hash">): string {
  return createHash("sha256").update(canonicalAuditEntry(entry), "utf8").digest("hex");
}

/** The last entry of a partition as its head records it. */
export interface AuditHead {
  readonly sequence: number;
  readonly hash: string;
}

/**
 * Checks one partition's chain.
 *
 * 1. sequences run 1, 2, 3, ... without gaps (`sequence-gap`, reported at the first missing number);
 * 2. each entry's `previousHash` is the hash of the entry before it (`broken-link`);
 * 3. each entry's `hash` is the hash of its content (`hash-mismatch`);
 * 4. the head names the last entry's sequence and hash (`head-mismatch`).
 *
 * `entries` must be in ascending sequence order.
 */
export function verifyAuditEntries(
  partition: string,
  entries: readonly AuditEntry[],
  head: AuditHead | undefined,
): AuditVerification {
  const problems: AuditProblem[] = [];
  let expected = 1;
  let previousHash = GENESIS_HASH;
  for (const entry of entries) {
    if (entry.sequence !== expected) {
      problems.push({ sequence: expected, kind: "sequence-gap" });
      expected = entry.sequence;
    }
    if (entry.previousHash !== previousHash) problems.push({ sequence: entry.sequence, kind: "broken-link" });
    const { hash, ...content } = entry;
    if (auditEntryHash(content) !== hash) problems.push({ sequence: entry.sequence, kind: "hash-mismatch" });
    previousHash = hash;
    expected += 1;
  }
  const last = entries.at(-1);
  const headMatches =
    last === undefined
      ? head === undefined
      : head !== undefined && head.sequence === last.sequence && head.hash === last.hash;
  if (!headMatches) problems.push({ sequence: head?.sequence ?? last?.sequence ?? 0, kind: "head-mismatch" });
  return {
    ok: problems.length === 0,
    partition,
    entries: entries.length,
    headHash: last?.hash ?? GENESIS_HASH,
    problems,
  };
}
