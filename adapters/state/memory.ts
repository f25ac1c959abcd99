/**
 * An in-process StateStore for the embedded default and for tests. It keeps the semantics of
 * the Table Storage adapter that matter for correctness: every write gets a new ETag,
 * conditional writes fail with ERR_CONFLICT on a stale ETag, inserts fail when the row exists,
 * and callers only ever see copies, never the stored objects. Each operation is atomic because
 * it runs to completion within one turn of the event loop.
 */
import { ShieldError } from "../../core/errors.js";
import type { Message } from "../../core/messages/index.js";
import { parseMessage } from "../../core/messages/index.js";
import {
  auditEntryHash,
  GENESIS_HASH,
  verifyAuditEntries,
  type AuditHead,
} from "../../core/state/audit-chain.js";
import {
  checkAgentId,
  checkAgentState,
  checkAttestationRecord,
  checkAuditEvent,
  checkAuditPartition,
  checkClaimOptions,
  checkKeyHolding,
  checkKeyName,
  checkManagedKey,
  checkListLimit,
  checkNonce,
  checkRequestKey,
  serializeResult,
} from "../../core/state/records.js";
import { agentSchedule } from "../../core/state/agents.js";
import {
  STATE_LIMITS,
  type AgentDueKind,
  type AgentQuery,
  type AgentRecord,
  type AgentState,
  type AttestationRecord,
  type AuditEntry,
  type AuditEvent,
  type AuditVerification,
  type ClaimOptions,
  type KeyHolding,
  type ManagedKeyRecord,
  type ManagedKeyState,
  type NonceUse,
  type RequestClaim,
  type RequestKey,
  type RequestLease,
  type StateStore,
} from "../../core/ports/state.js";

interface Stored<T> {
  value: T;
  etag: string;
}

interface RequestRow {
  attempt: number;
  leaseUntil: Date;
  claimedAt: Date;
  result?: string;
  completedAt?: Date;
}

interface AuditPartition {
  entries: AuditEntry[];
  head?: AuditHead;
  /** Event id → sequence of the entry that recorded it. */
  events: Map<string, number>;
}

const copy = <T>(value: T): T => structuredClone(value);

export class MemoryStateStore implements StateStore {
  readonly #agents = new Map<string, Stored<AgentState>>();
  readonly #attestations = new Map<string, Map<string, AttestationRecord>>();
  readonly #holdings = new Map<string, KeyHolding>();
  readonly #requests = new Map<string, Stored<RequestRow>>();
  readonly #nonces = new Map<string, Date>();
  readonly #audit = new Map<string, AuditPartition>();
  readonly #managedKeys = new Map<string, Stored<ManagedKeyState>>();
  #writes = 0;

  #etag(): string {
    this.#writes += 1;
    return `W/"${this.#writes}"`;
  }

  async getAgent(agentId: string): Promise<AgentRecord | undefined> {
    checkAgentId(agentId);
    await Promise.resolve();
    const stored = this.#agents.get(agentId);
    return stored === undefined ? undefined : { ...copy(stored.value), etag: stored.etag };
  }

  async createAgent(agent: AgentState): Promise<AgentRecord> {
    const state = checkAgentState(agent);
    await Promise.resolve();
    if (this.#agents.has(state.agentId)) throw agentConflict(state.agentId);
    return this.#putAgent(state);
  }

  async updateAgent(agent: AgentState, etag: string): Promise<AgentRecord> {
    const state = checkAgentState(agent);
    await Promise.resolve();
    if (this.#agents.get(state.agentId)?.etag !== etag) throw agentConflict(state.agentId);
    return this.#putAgent(state);
  }

  #putAgent(agent: AgentState): AgentRecord {
    const stored = { value: copy(agent), etag: this.#etag() };
    this.#agents.set(agent.agentId, stored);
    return { ...copy(stored.value), etag: stored.etag };
  }

  async *listAgents(query: AgentQuery = {}): AsyncIterable<AgentRecord> {
    await Promise.resolve();
    const matches = [...this.#agents.values()].filter(({ value }) => agentMatches(value, query));
    matches.sort((a, b) => (a.value.agentId < b.value.agentId ? -1 : 1));
    for (const { value, etag } of matches) yield { ...copy(value), etag };
  }

  async listAgentsDue(kind: AgentDueKind, before: Date, limit: number): Promise<AgentRecord[]> {
    const max = checkListLimit(limit);
    await Promise.resolve();
    const due: { at: number; agentId: string; stored: Stored<AgentState> }[] = [];
    for (const stored of this.#agents.values()) {
      const schedule = agentSchedule(stored.value);
      if (schedule?.kind === kind && schedule.at.getTime() < before.getTime()) {
        due.push({ at: schedule.at.getTime(), agentId: stored.value.agentId, stored });
      }
    }
    due.sort((a, b) => a.at - b.at || (a.agentId < b.agentId ? -1 : 1));
    return due.slice(0, max).map(({ stored }) => ({ ...copy(stored.value), etag: stored.etag }));
  }

  async getManagedKey(keyName: string): Promise<ManagedKeyRecord | undefined> {
    checkKeyName(keyName);
    await Promise.resolve();
    const stored = this.#managedKeys.get(keyName);
    return stored === undefined ? undefined : { ...copy(stored.value), etag: stored.etag };
  }

  async putManagedKey(input: ManagedKeyState, etag?: string): Promise<ManagedKeyRecord> {
    const key = checkManagedKey(input);
    await Promise.resolve();
    const existing = this.#managedKeys.get(key.keyName);
    if (etag === undefined ? existing !== undefined : existing?.etag !== etag) {
      throw new ShieldError("ERR_CONFLICT", `managed key ${key.keyName} was changed concurrently`);
    }
    const stored = { value: copy(key), etag: this.#etag() };
    this.#managedKeys.set(key.keyName, stored);
    return { ...copy(stored.value), etag: stored.etag };
  }

  async listManagedKeys(): Promise<ManagedKeyRecord[]> {
    await Promise.resolve();
    return [...this.#managedKeys.values()]
      .sort((a, b) => (a.value.keyName < b.value.keyName ? -1 : 1))
      .slice(0, STATE_LIMITS.listLimit)
      .map((stored) => ({ ...copy(stored.value), etag: stored.etag }));
  }

  async recordAttestation(input: AttestationRecord): Promise<boolean> {
    const record = checkAttestationRecord(input);
    await Promise.resolve();
    const byRequest = this.#attestations.get(record.agentId) ?? new Map<string, AttestationRecord>();
    this.#attestations.set(record.agentId, byRequest);
    if (byRequest.has(record.requestId)) return false;
    byRequest.set(record.requestId, copy(record));
    return true;
  }

  async getAttestation(agentId: string, requestId: string): Promise<AttestationRecord | undefined> {
    checkAgentId(agentId);
    await Promise.resolve();
    const record = this.#attestations.get(agentId)?.get(requestId);
    return record === undefined ? undefined : copy(record);
  }

  async listAttestations(
    agentId: string,
    options: { since?: Date; limit?: number } = {},
  ): Promise<AttestationRecord[]> {
    checkAgentId(agentId);
    const limit = checkListLimit(options.limit);
    await Promise.resolve();
    const records = [...(this.#attestations.get(agentId)?.values() ?? [])].filter(
      (record) => options.since === undefined || record.at.getTime() >= options.since.getTime(),
    );
    return records.sort(newestFirst).slice(0, limit).map(copy);
  }

  async recordHolding(input: KeyHolding): Promise<void> {
    const holding = checkKeyHolding(input);
    await Promise.resolve();
    this.#holdings.set(`${holding.agentId}\n${holding.keyName}\n${holding.keyVersion}`, copy(holding));
  }

  async listHoldingsByAgent(agentId: string): Promise<KeyHolding[]> {
    checkAgentId(agentId);
    await Promise.resolve();
    return [...this.#holdings.values()]
      .filter((holding) => holding.agentId === agentId)
      .sort(byKeyThenVersionThenAgent)
      .map(copy);
  }

  async listHoldingsByKey(keyName: string, options: { keyVersion?: string } = {}): Promise<KeyHolding[]> {
    checkKeyName(keyName, options.keyVersion);
    await Promise.resolve();
    return [...this.#holdings.values()]
      .filter(
        (holding) =>
          holding.keyName === keyName &&
          (options.keyVersion === undefined || holding.keyVersion === options.keyVersion),
      )
      .sort(byKeyThenVersionThenAgent)
      .map(copy);
  }

  async claimRequest(key: RequestKey, options: ClaimOptions): Promise<RequestClaim> {
    checkRequestKey(key);
    checkClaimOptions(options);
    await Promise.resolve();
    const id = requestRowId(key);
    const stored = this.#requests.get(id);
    if (stored === undefined)
      return this.#lease(key, id, { attempt: 1, leaseUntil: options.leaseUntil, claimedAt: options.at });
    const row = stored.value;
    if (row.result !== undefined) {
      return {
        state: "completed",
        result: parseStoredResult(row.result),
        completedAt: new Date(row.completedAt ?? row.claimedAt),
      };
    }
    if (row.leaseUntil.getTime() > options.at.getTime()) {
      return { state: "in-progress", leaseUntil: new Date(row.leaseUntil), attempt: row.attempt };
    }
    return this.#lease(key, id, {
      attempt: row.attempt + 1,
      leaseUntil: options.leaseUntil,
      claimedAt: options.at,
    });
  }

  #lease(key: RequestKey, id: string, row: RequestRow): RequestClaim {
    const etag = this.#etag();
    this.#requests.set(id, { value: row, etag });
    return {
      state: "new",
      lease: {
        scope: key.scope,
        requestId: key.requestId,
        etag,
        attempt: row.attempt,
        leaseUntil: new Date(row.leaseUntil),
      },
    };
  }

  async completeRequest(lease: RequestLease, result: Message, at: Date): Promise<void> {
    checkRequestKey(lease);
    const json = serializeResult(result);
    await Promise.resolve();
    const id = requestRowId(lease);
    const stored = this.#requests.get(id);
    if (stored?.etag !== lease.etag) throw leaseLost(lease);
    this.#requests.set(id, {
      value: { ...stored.value, result: json, completedAt: new Date(at) },
      etag: this.#etag(),
    });
  }

  async releaseRequest(lease: RequestLease): Promise<void> {
    checkRequestKey(lease);
    await Promise.resolve();
    const id = requestRowId(lease);
    const stored = this.#requests.get(id);
    if (stored?.etag !== lease.etag) throw leaseLost(lease);
    // Keep the attempt count; an expired lease is what lets the next claim take over.
    this.#requests.set(id, { value: { ...stored.value, leaseUntil: new Date(0) }, etag: this.#etag() });
  }

  async consumeNonce(
    scope: string,
    nonce: string,
    options: { at: Date; expiresAt: Date },
  ): Promise<NonceUse> {
    checkNonce(scope, nonce, options);
    await Promise.resolve();
    const id = `${scope}\n${nonce}`;
    if (this.#nonces.has(id)) return "replayed";
    this.#nonces.set(id, new Date(options.expiresAt));
    return "consumed";
  }

  async appendAudit(partition: string, input: AuditEvent): Promise<AuditEntry> {
    checkAuditPartition(partition);
    const event = checkAuditEvent(input);
    await Promise.resolve();
    const chain = this.#audit.get(partition) ?? { entries: [], events: new Map<string, number>() };
    this.#audit.set(partition, chain);
    const seen = event.eventId === undefined ? undefined : chain.events.get(event.eventId);
    const first = chain.entries.find((entry) => entry.sequence === seen);
    if (first !== undefined) return copy(first);
    const content = {
      partition,
      sequence: (chain.head?.sequence ?? 0) + 1,
      previousHash: chain.head?.hash ?? GENESIS_HASH,
      at: new Date(event.at),
      kind: event.kind,
      subject: event.subject,
      ...(event.requestId === undefined ? {} : { requestId: event.requestId }),
      details: { ...event.details },
      ...(event.eventId === undefined ? {} : { eventId: event.eventId }),
    };
    const entry: AuditEntry = { ...content, hash: auditEntryHash(content) };
    chain.entries.push(entry);
    if (event.eventId !== undefined) chain.events.set(event.eventId, entry.sequence);
    chain.head = { sequence: entry.sequence, hash: entry.hash };
    return copy(entry);
  }

  async listAudit(
    partition: string,
    options: { fromSequence?: number; limit?: number } = {},
  ): Promise<AuditEntry[]> {
    checkAuditPartition(partition);
    const limit = checkListLimit(options.limit);
    await Promise.resolve();
    const from = options.fromSequence ?? 1;
    return (this.#audit.get(partition)?.entries ?? [])
      .filter((entry) => entry.sequence >= from)
      .slice(0, limit)
      .map(copy);
  }

  async verifyAuditChain(partition: string): Promise<AuditVerification> {
    checkAuditPartition(partition);
    await Promise.resolve();
    const chain = this.#audit.get(partition);
    const entries = [...(chain?.entries ?? [])].sort((a, b) => a.sequence - b.sequence);
    return verifyAuditEntries(partition, entries, chain?.head);
  }

  /**
   * Rewrites or (when `edit` returns undefined) removes a stored audit entry without touching
   * the chain, the way someone with write access to the storage could. It exists so tests can
   * show that `verifyAuditChain` notices; nothing else should call it.
   */
  tamperWithAuditEntry(
    partition: string,
    sequence: number,
    edit: (entry: AuditEntry) => AuditEntry | undefined,
  ): void {
    const entries = this.#audit.get(partition)?.entries ?? [];
    const index = entries.findIndex((entry) => entry.sequence === sequence);
    const entry = entries[index];
    if (entry === undefined) throw new TypeError(`no audit entry ${sequence} in ${partition}`);
    const edited = edit(copy(entry));
    if (edited === undefined) entries.splice(index, 1);
    else entries[index] = copy(edited);
  }

  /** Everything stored, as JSON text, so tests can check that no secret was ever written. */
  dumpForInspection(): string {
    const everything = {
      agents: this.#agents,
      attestations: this.#attestations,
      holdings: this.#holdings,
      requests: this.#requests,
      nonces: this.#nonces,
      audit: this.#audit,
      managedKeys: this.#managedKeys,
    };
    return JSON.stringify(everything, (_key, value: unknown) =>
      value instanceof Map ? [...value.entries()] : value,
    );
  }
}

export function createMemoryStateStore(): MemoryStateStore {
  return new MemoryStateStore();
}

function agentMatches(agent: AgentState, query: AgentQuery): boolean {
  if (query.status !== undefined && agent.status !== query.status) return false;
  if (
    query.lastAttestedBefore !== undefined &&
    !(
      agent.lastAttestedAt !== undefined &&
      agent.lastAttestedAt.getTime() < query.lastAttestedBefore.getTime()
    )
  ) {
    return false;
  }
  if (
    query.challengeDeadlineBefore !== undefined &&
    !(
      agent.challenge !== undefined &&
      agent.challenge.deadline.getTime() < query.challengeDeadlineBefore.getTime()
    )
  ) {
    return false;
  }
  return true;
}

function newestFirst(a: AttestationRecord, b: AttestationRecord): number {
  return b.at.getTime() - a.at.getTime() || (a.requestId < b.requestId ? -1 : 1);
}

function byKeyThenVersionThenAgent(a: KeyHolding, b: KeyHolding): number {
  const left = `${a.keyName}\n${a.keyVersion}\n${a.agentId}`;
  const right = `${b.keyName}\n${b.keyVersion}\n${b.agentId}`;
  return left < right ? -1 : left > right ? 1 : 0;
}

function requestRowId(key: RequestKey): string {
  return `${key.scope}\n${key.requestId}`;
}

function parseStoredResult(json: string): Message {
  return parseMessage(json, { maxBytes: STATE_LIMITS.resultBytes });
}

function agentConflict(agentId: string): ShieldError {
  return new ShieldError("ERR_CONFLICT", `agent ${agentId} was changed concurrently`);
}

function leaseLost(key: RequestKey): ShieldError {
  return new ShieldError("ERR_CONFLICT", `the claim on request ${key.requestId} is no longer held`);
}
