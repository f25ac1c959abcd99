/**
 * The StateStore on Azure Table Storage, through `@azure/data-tables`.
 *
 * One table holds every record kind; the kind is the PartitionKey's prefix, so kinds never
 * collide, each query reads one partition, and there is one table to provision and grant.
 * Conditional writes use the service's own primitives: `createEntity` (409 when the row exists)
 * for insert-if-absent, `If-Match` ETags (412 when the row changed) for updates, and an entity
 * group transaction (one partition, all or nothing) to append an audit entry and move its
 * chain head together.
 *
 * | record            | PartitionKey                  | RowKey                      |
 * |-------------------|-------------------------------|-----------------------------|
 * | agent             | `agents`                      | agentId                     |
 * | agent schedule    | `agents`                      | `~due~<kind>~<ms>~<agentId>` |
 * | managed key       | `managed-keys`                | keyName                     |
 * | attestation       | `attestations~<agentId>`      | requestId                   |
 * | holding by agent  | `holdings-agent~<agentId>`    | `<keyName>~<keyVersion>`    |
 * | holding by key    | `holdings-key~<keyName>`      | `<keyVersion>~<agentId>`    |
 * | request claim     | `requests~<scope>`            | requestId                   |
 * | used nonce        | `nonces~<scope>`              | nonce                       |
 * | audit entry       | `audit~<partition>`           | sequence, 16 digits         |
 * | audit chain head  | `audit~<partition>`           | `head`                      |
 * | audit event id    | `audit~<partition>`           | `id~<sha256 of event id>`   |
 *
 * The schedule rows index agents by their next lifecycle step (core/state/agents.ts
 * `agentSchedule`) so that the re-attestation timer reads a range of them, oldest first, rather
 * than the whole table. Each is written in one transaction with its agent; a row left behind
 * when an agent's schedule moves is noticed (it no longer matches the agent) and deleted the
 * first time a query meets it.
 * `~` cannot occur in identifiers, key names or versions, so keys never collide. Rows hold
 * hashes, digests, measurements and wrapped release responses only; a stored result is split
 * into binary properties of 64,000 bytes to stay under the 64 KiB property limit.
 */
import { isLoopbackUrlHost } from "../loopback.js";
import {
  RestError,
  TableClient,
  odata,
  type TableEntityResult,
  type TransactionAction,
} from "@azure/data-tables";
import type { TokenCredential } from "@azure/core-auth";
import { ShieldError, type ShieldErrorCode, type Violation } from "../../core/errors.js";
import { parseMessage, type Measurement, type Message } from "../../core/messages/index.js";
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
  checkListLimit,
  checkManagedKey,
  checkNonce,
  checkRequestKey,
  serializeResult,
} from "../../core/state/records.js";
import { agentSchedule } from "../../core/state/agents.js";
import { parseReleasePolicy, serializeReleasePolicy } from "../../core/policy/index.js";
import { createHash, randomUUID } from "node:crypto";
import {
  STATE_LIMITS,
  type AgentDueKind,
  type ManagedKeyRecord,
  type ManagedKeyState,
  type AgentQuery,
  type AgentRecord,
  type AgentState,
  type AgentStatus,
  type PendingChallenge,
  type AttestationRecord,
  type AuditDetails,
  type AuditEntry,
  type AuditEvent,
  type AuditVerification,
  type ClaimOptions,
  type KeyHolding,
  type NonceUse,
  type RequestClaim,
  type RequestKey,
  type RequestLease,
  type StateStore,
  type Verdict,
} from "../../core/ports/state.js";

export type TableStateStoreOptions = {
  readonly tableName: string;
  /** Create the table when it does not exist (the embedded default and tests; Azure provisions it). */
  readonly createTable?: boolean;
} & (
  | { readonly connectionString: string }
  /** A managed identity in Azure: `https://<account>.table.core.windows.net` and e.g. DefaultAzureCredential. */
  | { readonly endpoint: string; readonly credential: TokenCredential }
);

const TABLE_NAME = /^[A-Za-z][A-Za-z0-9]{2,62}$/;
const RESULT_CHUNK_BYTES = 64_000;
const AUDIT_APPEND_ATTEMPTS = 8;
const CLAIM_ATTEMPTS = 5;

/**
 * Builds the TableClient for the state table. Plain `http` is accepted only for a loopback
 * endpoint (Azurite); anything else must be `https`.
 */
export function createStateTableClient(options: TableStateStoreOptions): TableClient {
  if (typeof options.tableName !== "string" || !TABLE_NAME.test(options.tableName)) {
    throw new ShieldError(
      "ERR_CONFIG",
      "table name must be 3..63 letters and digits, starting with a letter",
    );
  }
  const make = (allowInsecureConnection: boolean): TableClient =>
    "connectionString" in options
      ? TableClient.fromConnectionString(options.connectionString, options.tableName, {
          allowInsecureConnection,
        })
      : new TableClient(options.endpoint, options.tableName, options.credential, { allowInsecureConnection });
  let client: TableClient;
  let url: URL;
  try {
    client = make(false);
    url = new URL(client.url);
  } catch {
    // The SDK's error may quote the connection string, account key included: not kept.
    throw new ShieldError("ERR_CONFIG", "table storage connection settings are invalid");
  }
  if (url.protocol === "https:") return client;
  if (url.protocol === "http:" && isLoopbackUrlHost(url.hostname)) return make(true);
  throw new ShieldError("ERR_CONFIG", "table storage endpoint must use https (plain http only on loopback)");
}

export async function createTableStateStore(options: TableStateStoreOptions): Promise<TableStateStore> {
  const client = createStateTableClient(options);
  if (options.createTable === true) {
    await call("create table", () => client.createTable());
  }
  return new TableStateStore(client);
}

type Entity = TableEntityResult<Record<string, unknown>>;

export class TableStateStore implements StateStore {
  readonly #client: TableClient;

  constructor(client: TableClient) {
    this.#client = client;
  }

  // ---- agents ----

  async getAgent(agentId: string): Promise<AgentRecord | undefined> {
    checkAgentId(agentId);
    const entity = await this.#get("agents", agentId);
    return entity === undefined ? undefined : readAgent(entity);
  }

  async createAgent(agent: AgentState): Promise<AgentRecord> {
    const state = checkAgentState(agent);
    return this.#writeAgent(state, ["create", agentEntity(state)], "create agent");
  }

  async updateAgent(agent: AgentState, etag: string): Promise<AgentRecord> {
    const state = checkAgentState(agent);
    return this.#writeAgent(state, ["update", agentEntity(state), "Replace", { etag }], "update agent");
  }

  /** The agent and its schedule row in one transaction: both land or neither does. */
  async #writeAgent(state: AgentState, write: TransactionAction, what: string): Promise<AgentRecord> {
    const actions: TransactionAction[] = [write];
    const schedule = scheduleRow(state);
    if (schedule !== undefined) actions.push(["upsert", schedule, "Replace"]);
    try {
      const response = await this.#client.submitTransaction(actions);
      const written = response.subResponses[0]; // sub-responses come in the order of the actions
      return { ...state, etag: requireEtag(written?.etag) };
    } catch (error) {
      const status = statusOf(error);
      if (status === 409 || status === 412 || status === 404) throw agentConflict(state.agentId);
      throw tableError(what, error);
    }
  }

  async listAgentsDue(kind: AgentDueKind, before: Date, limit: number): Promise<AgentRecord[]> {
    const max = checkListLimit(limit);
    const prefix = `~due~${kind}~`;
    const filter = odata`PartitionKey eq ${"agents"} and RowKey ge ${prefix} and RowKey lt ${prefix + scheduleTime(before)}`;
    const due: AgentRecord[] = [];
    let scanned = 0;
    for await (const row of this.#query(filter)) {
      scanned += 1;
      const rowKey = row.rowKey ?? "";
      const agentId = rowKey.slice(rowKey.lastIndexOf("~") + 1);
      const agent = agentId === "" ? undefined : await this.getAgent(agentId);
      const schedule = agent === undefined ? undefined : scheduleRow(agent);
      if (agent !== undefined && schedule?.rowKey === rowKey) due.push(agent);
      else await this.#client.deleteEntity("agents", rowKey).catch(() => undefined); // left behind
      // Stale rows are deleted as they are met, so a bounded scan always makes progress.
      if (due.length >= max || scanned >= max * 4) break;
    }
    return due;
  }

  // ---- managed keys ----

  async getManagedKey(keyName: string): Promise<ManagedKeyRecord | undefined> {
    checkKeyName(keyName);
    const entity = await this.#get("managed-keys", keyName);
    return entity === undefined ? undefined : readManagedKey(entity);
  }

  async putManagedKey(input: ManagedKeyState, etag?: string): Promise<ManagedKeyRecord> {
    const key = checkManagedKey(input);
    const entity = {
      partitionKey: "managed-keys",
      rowKey: key.keyName,
      recordType: "managed-key",
      releasePolicy: serializeReleasePolicy(key.releasePolicy),
      versions: JSON.stringify(key.versions),
      updatedAt: key.updatedAt,
    };
    try {
      const response =
        etag === undefined
          ? await this.#client.createEntity(entity)
          : await this.#client.updateEntity(entity, "Replace", { etag });
      return { ...key, etag: requireEtag(response.etag) };
    } catch (error) {
      const status = statusOf(error);
      if (status === 409 || status === 412 || status === 404) {
        throw new ShieldError("ERR_CONFLICT", `managed key ${key.keyName} was changed concurrently`);
      }
      throw tableError("write managed key", error);
    }
  }

  async listManagedKeys(): Promise<ManagedKeyRecord[]> {
    const keys: ManagedKeyRecord[] = [];
    for await (const entity of this.#query(odata`PartitionKey eq ${"managed-keys"}`)) {
      keys.push(readManagedKey(entity));
      if (keys.length >= STATE_LIMITS.listLimit) break;
    }
    return keys;
  }

  async *listAgents(query: AgentQuery = {}): AsyncIterable<AgentRecord> {
    const clauses = [odata`PartitionKey eq ${"agents"} and RowKey lt ${"~"}`];
    if (query.status !== undefined) clauses.push(odata`status eq ${query.status}`);
    if (query.lastAttestedBefore !== undefined)
      clauses.push(odata`lastAttestedAt lt ${query.lastAttestedBefore}`);
    if (query.challengeDeadlineBefore !== undefined) {
      clauses.push(odata`challengeDeadline lt ${query.challengeDeadlineBefore}`);
    }
    for await (const entity of this.#query(clauses.join(" and "))) yield readAgent(entity);
  }

  // ---- attestations ----

  async recordAttestation(input: AttestationRecord): Promise<boolean> {
    const record = checkAttestationRecord(input);
    try {
      await this.#client.createEntity({
        partitionKey: `attestations~${record.agentId}`,
        rowKey: record.requestId,
        recordType: "attestation",
        agentId: record.agentId,
        requestId: record.requestId,
        at: record.at,
        verdict: record.verdict,
        ...optional("reasonCode", record.reasonCode),
        violations: JSON.stringify(record.violations),
        ...optional("tokenHash", record.tokenHash),
        ...optional("claimsDigest", record.claimsDigest),
        ...optional(
          "measurement",
          record.measurement === undefined ? undefined : JSON.stringify(record.measurement),
        ),
        ...optional("attestedUntil", record.attestedUntil),
        keys: JSON.stringify(record.keys),
      });
      return true;
    } catch (error) {
      if (statusOf(error) === 409) return false;
      throw tableError("record attestation", error);
    }
  }

  async getAttestation(agentId: string, requestId: string): Promise<AttestationRecord | undefined> {
    checkAgentId(agentId);
    checkRequestKey({ scope: agentId, requestId });
    const entity = await this.#get(`attestations~${agentId}`, requestId);
    return entity === undefined ? undefined : readAttestation(entity);
  }

  async listAttestations(
    agentId: string,
    options: { since?: Date; limit?: number } = {},
  ): Promise<AttestationRecord[]> {
    checkAgentId(agentId);
    const limit = checkListLimit(options.limit);
    let filter = odata`PartitionKey eq ${`attestations~${agentId}`}`;
    if (options.since !== undefined) filter += odata` and at ge ${options.since}`;
    const records: AttestationRecord[] = [];
    for await (const entity of this.#query(filter)) records.push(readAttestation(entity));
    records.sort((a, b) => b.at.getTime() - a.at.getTime() || (a.requestId < b.requestId ? -1 : 1));
    return records.slice(0, limit);
  }

  // ---- key holdings ----

  async recordHolding(input: KeyHolding): Promise<void> {
    const holding = checkKeyHolding(input);
    const columns = {
      recordType: "holding",
      agentId: holding.agentId,
      keyName: holding.keyName,
      keyVersion: holding.keyVersion,
      measurement: JSON.stringify(holding.measurement),
      releasedAt: holding.releasedAt,
      requestId: holding.requestId,
      ...optional("revokedAt", holding.revokedAt),
    };
    // Two index rows in two partitions, so not atomic; both are idempotent upserts and a
    // redelivery repairs a half-written pair. The by-key row goes first: rotation and
    // revocation read it, and a holding recorded there but not by agent errs on the safe side.
    await call("record holding", () =>
      this.#client.upsertEntity(
        {
          partitionKey: `holdings-key~${holding.keyName}`,
          rowKey: `${holding.keyVersion}~${holding.agentId}`,
          ...columns,
        },
        "Replace",
      ),
    );
    await call("record holding", () =>
      this.#client.upsertEntity(
        {
          partitionKey: `holdings-agent~${holding.agentId}`,
          rowKey: `${holding.keyName}~${holding.keyVersion}`,
          ...columns,
        },
        "Replace",
      ),
    );
  }

  async listHoldingsByAgent(agentId: string): Promise<KeyHolding[]> {
    checkAgentId(agentId);
    const holdings: KeyHolding[] = [];
    for await (const entity of this.#query(odata`PartitionKey eq ${`holdings-agent~${agentId}`}`)) {
      holdings.push(readHolding(entity));
    }
    return holdings.sort(byKeyThenVersionThenAgent);
  }

  async listHoldingsByKey(keyName: string, options: { keyVersion?: string } = {}): Promise<KeyHolding[]> {
    checkKeyName(keyName, options.keyVersion);
    let filter = odata`PartitionKey eq ${`holdings-key~${keyName}`}`;
    if (options.keyVersion !== undefined) filter += odata` and keyVersion eq ${options.keyVersion}`;
    const holdings: KeyHolding[] = [];
    for await (const entity of this.#query(filter)) holdings.push(readHolding(entity));
    return holdings.sort(byKeyThenVersionThenAgent);
  }

  // ---- request idempotency ----

  async claimRequest(key: RequestKey, options: ClaimOptions): Promise<RequestClaim> {
    checkRequestKey(key);
    checkClaimOptions(options);
    const partitionKey = `requests~${key.scope}`;
    // Marks this call's own writes: when the answer to a write is lost and the SDK sends it
    // again, the second try meets the row the first one made (409 / 412) and must know it as
    // its own claim, not as another invocation's (which would hold the request for a lease).
    const claimToken = randomUUID();
    for (let attempt = 0; attempt < CLAIM_ATTEMPTS; attempt += 1) {
      const existing = await this.#get(partitionKey, key.requestId);
      if (existing === undefined) {
        const row = {
          partitionKey,
          rowKey: key.requestId,
          recordType: "request",
          attempt: 1,
          claimedAt: options.at,
          claimToken,
        };
        try {
          const response = await this.#client.createEntity({ ...row, leaseUntil: options.leaseUntil });
          return newLease(key, requireEtag(response.etag), 1, options.leaseUntil);
        } catch (error) {
          if (statusOf(error) === 409) continue; // someone claimed it first: read what they wrote
          throw tableError("claim request", error);
        }
      }
      const chunks = readNumber(existing, "resultChunks", 0);
      if (chunks > 0) {
        return {
          state: "completed",
          result: readResult(existing, chunks),
          completedAt: readDate(existing, "completedAt"),
        };
      }
      const leaseUntil = readDate(existing, "leaseUntil");
      const previousAttempt = readNumber(existing, "attempt");
      if (existing["claimToken"] === claimToken) {
        return newLease(key, requireEtag(existing.etag), previousAttempt, leaseUntil);
      }
      if (leaseUntil.getTime() > options.at.getTime()) {
        return { state: "in-progress", leaseUntil, attempt: previousAttempt };
      }
      try {
        const next = previousAttempt + 1;
        const response = await this.#client.updateEntity(
          {
            partitionKey,
            rowKey: key.requestId,
            recordType: "request",
            attempt: next,
            claimedAt: options.at,
            leaseUntil: options.leaseUntil,
            claimToken,
          },
          "Replace",
          { etag: existing.etag },
        );
        return newLease(key, requireEtag(response.etag), next, options.leaseUntil);
      } catch (error) {
        const status = statusOf(error);
        if (status === 412 || status === 404) continue; // taken over or released meanwhile: read again
        throw tableError("claim request", error);
      }
    }
    throw new ShieldError("ERR_CONFLICT", `request ${key.requestId} is contended; try again`);
  }

  async completeRequest(lease: RequestLease, result: Message, at: Date): Promise<void> {
    checkRequestKey(lease);
    const bytes = Buffer.from(serializeResult(result), "utf8");
    const columns: Record<string, unknown> = { completedAt: at, resultChunks: 0 };
    let chunks = 0;
    for (let offset = 0; offset < bytes.length; offset += RESULT_CHUNK_BYTES) {
      columns[`result${chunks}`] = new Uint8Array(bytes.subarray(offset, offset + RESULT_CHUNK_BYTES));
      chunks += 1;
    }
    columns["resultChunks"] = chunks;
    await this.#mergeLeased(lease, columns, "complete request");
  }

  async releaseRequest(lease: RequestLease): Promise<void> {
    checkRequestKey(lease);
    // Keeps the attempt count; an expired lease is what lets the next claim take over.
    await this.#mergeLeased(lease, { leaseUntil: new Date(0) }, "release request");
  }

  async #mergeLeased(
    lease: RequestLease,
    columns: Record<string, unknown>,
    operation: string,
  ): Promise<void> {
    try {
      await this.#client.updateEntity(
        { partitionKey: `requests~${lease.scope}`, rowKey: lease.requestId, ...columns },
        "Merge",
        { etag: lease.etag },
      );
    } catch (error) {
      const status = statusOf(error);
      if (status === 412 || status === 404) {
        throw new ShieldError("ERR_CONFLICT", `the claim on request ${lease.requestId} is no longer held`);
      }
      throw tableError(operation, error);
    }
  }

  // ---- nonces ----

  async consumeNonce(
    scope: string,
    nonce: string,
    options: { at: Date; expiresAt: Date },
  ): Promise<NonceUse> {
    checkNonce(scope, nonce, options);
    // As for claims: a create sent twice because its answer was lost finds its own row.
    const useToken = randomUUID();
    const partitionKey = `nonces~${scope}`;
    try {
      await this.#client.createEntity({
        partitionKey,
        rowKey: nonce,
        recordType: "nonce",
        usedAt: options.at,
        expiresAt: options.expiresAt,
        useToken,
      });
      return "consumed";
    } catch (error) {
      if (statusOf(error) !== 409) throw tableError("consume nonce", error);
      const existing = await this.#get(partitionKey, nonce);
      return existing?.["useToken"] === useToken ? "consumed" : "replayed";
    }
  }

  // ---- audit ----

  async appendAudit(partition: string, input: AuditEvent): Promise<AuditEntry> {
    checkAuditPartition(partition);
    const event = checkAuditEvent(input);
    const partitionKey = `audit~${partition}`;
    const marker = event.eventId === undefined ? undefined : eventMarkerKey(event.eventId);
    for (let attempt = 1; attempt <= AUDIT_APPEND_ATTEMPTS; attempt += 1) {
      const recorded = marker === undefined ? undefined : await this.#recordedEvent(partitionKey, marker);
      if (recorded !== undefined) return recorded;
      const headEntity = await this.#get(partitionKey, "head");
      const head = headEntity === undefined ? undefined : readHead(headEntity);
      const content = {
        partition,
        sequence: (head?.sequence ?? 0) + 1,
        previousHash: head?.hash ?? GENESIS_HASH,
        at: new Date(event.at),
        kind: event.kind,
        subject: event.subject,
        ...(event.requestId === undefined ? {} : { requestId: event.requestId }),
        details: event.details,
        ...(event.eventId === undefined ? {} : { eventId: event.eventId }),
      };
      const entry: AuditEntry = { ...content, hash: auditEntryHash(content) };
      const newHead = {
        partitionKey,
        rowKey: "head",
        recordType: "audit-head",
        sequence: entry.sequence,
        hash: entry.hash,
      };
      const actions: TransactionAction[] = [
        ["create", auditEntity(partitionKey, entry)],
        headEntity === undefined
          ? ["create", newHead]
          : ["update", newHead, "Replace", { etag: headEntity.etag }],
      ];
      if (marker !== undefined) {
        actions.push([
          "create",
          { partitionKey, rowKey: marker, recordType: "audit-event-id", sequence: entry.sequence },
        ]);
      }
      try {
        await this.#client.submitTransaction(actions);
        return entry;
      } catch (error) {
        const status = statusOf(error);
        if (status !== 409 && status !== 412) throw tableError("append audit entry", error);
        // Another writer extended the chain first: back off a little, then build on its head.
        await new Promise((resolve) => setTimeout(resolve, attempt * 5 + Math.floor(Math.random() * 10)));
      }
    }
    throw new ShieldError("ERR_CONFLICT", `audit partition ${partition} is contended; try again`);
  }

  /** The entry an event id was first recorded as, if it was. */
  async #recordedEvent(partitionKey: string, marker: string): Promise<AuditEntry | undefined> {
    const row = await this.#get(partitionKey, marker);
    if (row === undefined) return undefined;
    const entry = await this.#get(partitionKey, sequenceKey(readNumber(row, "sequence")));
    if (entry === undefined) throw malformed();
    return readAuditEntry(partitionKey.slice("audit~".length), entry);
  }

  async listAudit(
    partition: string,
    options: { fromSequence?: number; limit?: number } = {},
  ): Promise<AuditEntry[]> {
    checkAuditPartition(partition);
    const limit = checkListLimit(options.limit);
    const from = options.fromSequence ?? 1;
    if (!Number.isSafeInteger(from) || from < 1)
      throw new TypeError("fromSequence must be a positive integer");
    const filter = odata`PartitionKey eq ${`audit~${partition}`} and RowKey ge ${sequenceKey(from)} and RowKey lt ${"head"}`;
    const entries: AuditEntry[] = [];
    for await (const entity of this.#query(filter)) {
      entries.push(readAuditEntry(partition, entity));
      if (entries.length >= limit) break;
    }
    return entries;
  }

  async verifyAuditChain(partition: string): Promise<AuditVerification> {
    checkAuditPartition(partition);
    const entries: AuditEntry[] = [];
    let head: AuditHead | undefined;
    for await (const entity of this.#query(odata`PartitionKey eq ${`audit~${partition}`}`)) {
      if (entity.rowKey === "head") head = readHeadOrBroken(entity);
      else if (entity.rowKey?.startsWith("id~") === true) continue;
      else entries.push(readAuditEntryOrBroken(partition, entity));
    }
    entries.sort((a, b) => a.sequence - b.sequence);
    return verifyAuditEntries(partition, entries, head);
  }

  // ---- plumbing ----

  async #get(partitionKey: string, rowKey: string): Promise<Entity | undefined> {
    try {
      return await this.#client.getEntity<Record<string, unknown>>(partitionKey, rowKey);
    } catch (error) {
      if (statusOf(error) === 404) return undefined;
      throw tableError("read", error);
    }
  }

  async *#query(filter: string): AsyncIterable<Entity> {
    const pages = this.#client.listEntities<Record<string, unknown>>({ queryOptions: { filter } });
    const iterator = pages[Symbol.asyncIterator]();
    for (;;) {
      let next: IteratorResult<Entity>;
      try {
        next = await iterator.next();
      } catch (error) {
        throw tableError("query", error);
      }
      if (next.done === true) return;
      yield next.value;
    }
  }
}

// ---- entity mapping ----

function optional<K extends string, V>(name: K, value: V | undefined): { [P in K]?: V } {
  return (value === undefined ? {} : { [name]: value }) as { [P in K]?: V };
}

function agentEntity(agent: AgentState) {
  return {
    partitionKey: "agents",
    rowKey: agent.agentId,
    recordType: "agent",
    workload: agent.workload,
    tee: agent.tee,
    status: agent.status,
    ...optional("statusReason", agent.statusReason),
    ...optional("lastAttestedAt", agent.lastAttestedAt),
    ...optional("attestedUntil", agent.attestedUntil),
    ...optional(
      "measurement",
      agent.measurement === undefined ? undefined : JSON.stringify(agent.measurement),
    ),
    ...optional("challengeNonce", agent.challenge?.nonce),
    ...optional("challengeIssuedAt", agent.challenge?.issuedAt),
    ...optional("challengeDeadline", agent.challenge?.deadline),
    ...optional("challengeAnsweredBy", agent.challenge?.answeredBy),
    ...optional("challengeReason", agent.challenge?.reason),
    ...optional("challengeSentAt", agent.challenge?.sentAt),
    updatedAt: agent.updatedAt,
  };
}

/** Milliseconds since 1970, 15 digits: sorts as text the way it sorts as time (until year 33658). */
function scheduleTime(at: Date): string {
  return String(Math.max(0, at.getTime())).padStart(15, "0");
}

function scheduleRow(
  agent: AgentState,
): { partitionKey: string; rowKey: string; recordType: string } | undefined {
  const schedule = agentSchedule(agent);
  if (schedule === undefined) return undefined;
  return {
    partitionKey: "agents",
    rowKey: `~due~${schedule.kind}~${scheduleTime(schedule.at)}~${agent.agentId}`,
    recordType: "agent-schedule",
  };
}

function eventMarkerKey(eventId: string): string {
  return `id~${createHash("sha256").update(eventId, "utf8").digest("hex")}`;
}

/** A date inside a JSON column (ISO text); anything else becomes an invalid Date, which the check refuses. */
function storedDate(value: unknown): Date {
  return new Date(typeof value === "string" ? value : Number.NaN);
}

function readManagedKey(entity: Entity): ManagedKeyRecord {
  const versions = readJson<Record<string, unknown>[]>(entity, "versions").map((v) => ({
    ...v,
    createdAt: storedDate(v["createdAt"]),
    ...(v["retiredAt"] === undefined ? {} : { retiredAt: storedDate(v["retiredAt"]) }),
    ...(v["revokedAt"] === undefined ? {} : { revokedAt: storedDate(v["revokedAt"]) }),
  }));
  const key = checkStored(() =>
    checkManagedKey({
      keyName: readString(entity, "rowKey"),
      releasePolicy: parseReleasePolicy(readJson<unknown>(entity, "releasePolicy")),
      versions: versions as unknown as ManagedKeyState["versions"],
      updatedAt: readDate(entity, "updatedAt"),
    }),
  );
  return { ...key, etag: requireEtag(entity.etag) };
}

function readAgent(entity: Entity): AgentRecord {
  const nonce = readOptionalString(entity, "challengeNonce");
  const agent: AgentState = {
    agentId: readString(entity, "rowKey"),
    workload: readString(entity, "workload"),
    tee: readString(entity, "tee") as AgentState["tee"],
    status: readString(entity, "status") as AgentStatus,
    ...optional("statusReason", readOptionalString(entity, "statusReason")),
    ...optional("lastAttestedAt", readOptionalDate(entity, "lastAttestedAt")),
    ...optional("attestedUntil", readOptionalDate(entity, "attestedUntil")),
    ...optional("measurement", readOptionalJson<Measurement>(entity, "measurement")),
    ...optional(
      "challenge",
      nonce === undefined
        ? undefined
        : {
            nonce,
            issuedAt: readDate(entity, "challengeIssuedAt"),
            deadline: readDate(entity, "challengeDeadline"),
            ...optional("answeredBy", readOptionalString(entity, "challengeAnsweredBy")),
            ...optional(
              "reason",
              readOptionalString(entity, "challengeReason") as PendingChallenge["reason"] | undefined,
            ),
            ...optional("sentAt", readOptionalDate(entity, "challengeSentAt")),
          },
    ),
    updatedAt: readDate(entity, "updatedAt"),
  };
  // A row edited outside this code must not reach decisions in an unexpected shape.
  return { ...checkStored(() => checkAgentState(agent)), etag: requireEtag(entity.etag) };
}

function readAttestation(entity: Entity): AttestationRecord {
  const record: AttestationRecord = {
    agentId: readString(entity, "agentId"),
    requestId: readString(entity, "requestId"),
    at: readDate(entity, "at"),
    verdict: readString(entity, "verdict") as Verdict,
    ...optional("reasonCode", readOptionalString(entity, "reasonCode")),
    violations: readOptionalJson<Violation[]>(entity, "violations") ?? [],
    ...optional("tokenHash", readOptionalString(entity, "tokenHash")),
    ...optional("claimsDigest", readOptionalString(entity, "claimsDigest")),
    ...optional("measurement", readOptionalJson<Measurement>(entity, "measurement")),
    ...optional("attestedUntil", readOptionalDate(entity, "attestedUntil")),
    keys: readOptionalJson<string[]>(entity, "keys") ?? [],
  };
  return checkStored(() => checkAttestationRecord(record));
}

function readHolding(entity: Entity): KeyHolding {
  const holding: KeyHolding = {
    agentId: readString(entity, "agentId"),
    keyName: readString(entity, "keyName"),
    keyVersion: readString(entity, "keyVersion"),
    measurement: readJson<Measurement>(entity, "measurement"),
    releasedAt: readDate(entity, "releasedAt"),
    requestId: readString(entity, "requestId"),
    ...optional("revokedAt", readOptionalDate(entity, "revokedAt")),
  };
  return checkStored(() => checkKeyHolding(holding));
}

function readResult(entity: Entity, chunks: number): Message {
  const parts: Uint8Array[] = [];
  for (let index = 0; index < chunks; index += 1) {
    const part = entity[`result${index}`];
    if (!(part instanceof Uint8Array)) throw malformed();
    parts.push(part);
  }
  return parseMessage(Buffer.concat(parts), { maxBytes: STATE_LIMITS.resultBytes });
}

function sequenceKey(sequence: number): string {
  return String(sequence).padStart(16, "0");
}

function auditEntity(partitionKey: string, entry: AuditEntry) {
  return {
    partitionKey,
    rowKey: sequenceKey(entry.sequence),
    recordType: "audit-entry",
    sequence: entry.sequence,
    at: entry.at,
    kind: entry.kind,
    subject: entry.subject,
    ...optional("requestId", entry.requestId),
    details: JSON.stringify(entry.details),
    ...optional("eventId", entry.eventId),
    previousHash: entry.previousHash,
    hash: entry.hash,
  };
}

function readHead(entity: Entity): AuditHead {
  return { sequence: readNumber(entity, "sequence"), hash: readString(entity, "hash") };
}

function readAuditEntry(partition: string, entity: Entity): AuditEntry {
  return {
    partition,
    sequence: Number(readString(entity, "rowKey")),
    previousHash: readString(entity, "previousHash"),
    at: readDate(entity, "at"),
    kind: readString(entity, "kind"),
    subject: readString(entity, "subject"),
    ...optional("requestId", readOptionalString(entity, "requestId")),
    details: readJson<AuditDetails>(entity, "details"),
    ...optional("eventId", readOptionalString(entity, "eventId")),
    hash: readString(entity, "hash"),
  };
}

/** For verification, an unreadable row is a tampered row, not an outage: it fails its checks. */
function readAuditEntryOrBroken(partition: string, entity: Entity): AuditEntry {
  try {
    return readAuditEntry(partition, entity);
  } catch {
    const sequence = Number(entity.rowKey);
    return {
      partition,
      sequence: Number.isSafeInteger(sequence) ? sequence : 0,
      previousHash: "",
      at: new Date(0),
      kind: "",
      subject: "",
      details: {},
      hash: "",
    };
  }
}

function readHeadOrBroken(entity: Entity): AuditHead {
  try {
    return readHead(entity);
  } catch {
    return { sequence: -1, hash: "" };
  }
}

function newLease(key: RequestKey, etag: string, attempt: number, leaseUntil: Date): RequestClaim {
  return {
    state: "new",
    lease: { scope: key.scope, requestId: key.requestId, etag, attempt, leaseUntil: new Date(leaseUntil) },
  };
}

function byKeyThenVersionThenAgent(a: KeyHolding, b: KeyHolding): number {
  const left = `${a.keyName}\n${a.keyVersion}\n${a.agentId}`;
  const right = `${b.keyName}\n${b.keyVersion}\n${b.agentId}`;
  return left < right ? -1 : left > right ? 1 : 0;
}

// ---- column readers ----

function malformed(): ShieldError {
  return new ShieldError("ERR_IO", "a stored state row is malformed");
}

function checkStored<T>(read: () => T): T {
  try {
    return read();
  } catch (error) {
    if (error instanceof TypeError) throw malformed();
    throw error;
  }
}

function readString(entity: Entity, name: string): string {
  const value = entity[name];
  if (typeof value !== "string") throw malformed();
  return value;
}

function readOptionalString(entity: Entity, name: string): string | undefined {
  return entity[name] === undefined || entity[name] === null ? undefined : readString(entity, name);
}

function readNumber(entity: Entity, name: string, fallback?: number): number {
  const value = entity[name];
  if ((value === undefined || value === null) && fallback !== undefined) return fallback;
  const number = typeof value === "bigint" ? Number(value) : value;
  if (typeof number !== "number" || !Number.isSafeInteger(number)) throw malformed();
  return number;
}

function readDate(entity: Entity, name: string): Date {
  const value = entity[name];
  if (!(value instanceof Date) || Number.isNaN(value.getTime())) throw malformed();
  return value;
}

function readOptionalDate(entity: Entity, name: string): Date | undefined {
  return entity[name] === undefined || entity[name] === null ? undefined : readDate(entity, name);
}

function readJson<T>(entity: Entity, name: string): T {
  try {
    return JSON.parse(readString(entity, name)) as T;
  } catch {
    throw malformed();
  }
}

function readOptionalJson<T>(entity: Entity, name: string): T | undefined {
  return entity[name] === undefined || entity[name] === null ? undefined : readJson<T>(entity, name);
}

function requireEtag(etag: string | undefined): string {
  if (etag === undefined || etag === "") throw new ShieldError("ERR_IO", "table storage returned no ETag");
  return etag;
}

// ---- errors ----

/**
 * The HTTP status of a failed call. A missing table answers 404 like a missing entity does; it
 * is reported as 500 here so that no caller mistakes it for "no such row" (tableError names it).
 */
function statusOf(error: unknown): number | undefined {
  if (!(error instanceof RestError)) return undefined;
  return error.statusCode === 404 && isTableMissing(error) ? 500 : error.statusCode;
}

function isTableMissing(error: RestError): boolean {
  return serviceErrorCode(error) === "TableNotFound";
}

function agentConflict(agentId: string): ShieldError {
  return new ShieldError("ERR_CONFLICT", `agent ${agentId} was changed concurrently`);
}

/**
 * Maps an SDK failure to a code. A RestError is not kept as the cause: it carries the whole
 * request, entity bodies included, and a log line needs only the status and the service's
 * error code, which the message holds.
 */
function tableError(operation: string, error: unknown): ShieldError {
  if (error instanceof ShieldError) return error;
  if (!(error instanceof RestError)) {
    return new ShieldError("ERR_IO", `table storage: ${operation} failed`, { cause: error });
  }
  if (error.statusCode === 404 && isTableMissing(error)) {
    return new ShieldError("ERR_CONFIG", `table storage: ${operation} failed: the table does not exist`);
  }
  const status = error.statusCode;
  let code: ShieldErrorCode;
  if (status === undefined) code = "ERR_NETWORK";
  else if (status === 401 || status === 403) code = "ERR_CONFIG";
  else if (status === 408) code = "ERR_TIMEOUT";
  else if (status === 429) code = "ERR_THROTTLED";
  else if (status >= 500) code = "ERR_UPSTREAM_UNAVAILABLE";
  else code = "ERR_IO";
  const detail = [status === undefined ? undefined : `status ${status}`, serviceErrorCode(error)]
    .filter((part) => part !== undefined)
    .join(", ");
  return new ShieldError(code, `table storage: ${operation} failed${detail === "" ? "" : ` (${detail})`}`);
}

/** The service's error code (`EntityTooLarge`, `TableNotFound`) or the socket's (`ECONNREFUSED`), if plain. */
function serviceErrorCode(error: RestError): string | undefined {
  const details = error.details as { odataError?: { code?: unknown }; errorCode?: unknown } | undefined;
  const code = error.code ?? details?.odataError?.code ?? details?.errorCode;
  return typeof code === "string" && /^[A-Za-z0-9_]{1,64}$/.test(code) ? code : undefined;
}

async function call<T>(operation: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (error) {
    throw tableError(operation, error);
  }
}
