/**
 * The durable state the functions share: agents and their trust status, attestation records,
 * key holdings, request idempotency, used nonces and a tamper-evident audit log.
 *
 * Every invocation may run twice (Service Bus delivers at least once) and two invocations may
 * run at once, so writes that can race are conditional: agent updates carry the ETag they read,
 * a request is claimed by exactly one invocation, a nonce is consumed once, and an audit entry
 * extends its chain only if nobody else did first. A lost race is `ERR_CONFLICT` (transient:
 * re-read and retry, or let the message be redelivered).
 *
 * Nothing here holds secrets: tokens appear only as `tokenHash`, claims only as `claimsDigest`,
 * and stored results carry Key Vault release responses, which are wrapped to an enclave key.
 * Times are always passed in; stores never read the clock.
 */
import type { Violation } from "../errors.js";
import type { Measurement, Message, RotationReason, TeeKind } from "../messages/index.js";
import type { ReleasePolicy } from "../policy/index.js";

/** `new`: challenged, never attested; the others as their names say. */
export type AgentStatus = "new" | "trusted" | "untrusted" | "revoked";

/** The challenge an agent must answer: a fresh nonce and the time by which to answer it. */
export interface PendingChallenge {
  readonly nonce: string;
  readonly issuedAt: Date;
  readonly deadline: Date;
  /**
   * The request that answered it, set atomically (ETag) when an answer passes validation: a
   * nonce is used once, and a takeover of that same request after a transient failure still
   * finds it its own.
   */
  readonly answeredBy?: string;
  /**
   * Why it was issued: `requested` (a challenge-request; a missed deadline means nothing) or
   * `reattest` (the control plane wants the agent to attest; a missed deadline counts against it).
   */
  readonly reason?: "requested" | "reattest";
  /** When it was last sent: an open challenge is sent again only so often. */
  readonly sentAt?: Date;
}

/** An agent as written: everything but the store's bookkeeping. */
export interface AgentState {
  readonly agentId: string;
  readonly workload: string;
  readonly tee: TeeKind;
  readonly status: AgentStatus;
  /** Why the agent is untrusted or revoked: an error code such as `ERR_POLICY_DENIED`. */
  readonly statusReason?: string;
  /** The last time evidence from this agent was judged trusted. */
  readonly lastAttestedAt?: Date;
  readonly attestedUntil?: Date;
  /** The measurement of the last trusted attestation. */
  readonly measurement?: Measurement;
  readonly challenge?: PendingChallenge;
  readonly updatedAt: Date;
}

/** An agent as read: its state and the ETag to pass back when updating it. */
export interface AgentRecord extends AgentState {
  readonly etag: string;
}

export interface AgentQuery {
  readonly status?: AgentStatus;
  /** Agents last attested before this time (due for re-attestation); never-attested agents do not match. */
  readonly lastAttestedBefore?: Date;
  /** Agents with a pending challenge whose deadline is before this time (silent past it). */
  readonly challengeDeadlineBefore?: Date;
}

/**
 * The two lifecycle steps the re-attestation timer looks for, each kept in an index ordered by
 * time so that a tick reads only what is due, oldest first:
 * - `attest`: a trusted agent, by its `attestedUntil` (no open re-attestation challenge);
 * - `deadline`: an agent with an unanswered `reattest` challenge, by that challenge's deadline.
 * An agent is in at most one of them (core/state/agents.ts `agentSchedule`).
 */
export type AgentDueKind = "attest" | "deadline";

export type Verdict = "trusted" | "denied" | "error";

export interface AttestationRecord {
  readonly agentId: string;
  readonly requestId: string;
  readonly at: Date;
  readonly verdict: Verdict;
  /** The error code of a denial or failure. */
  readonly reasonCode?: string;
  readonly violations: readonly Violation[];
  /** sha256 (hex) of the MAA token; never the token. */
  readonly tokenHash?: string;
  /** sha256 (hex) of the validated claims as appraised. */
  readonly claimsDigest?: string;
  readonly measurement?: Measurement;
  readonly attestedUntil?: Date;
  /** The key names the request asked for. */
  readonly keys: readonly string[];
}

/** Which agent received which key version, under which measurement, in answer to which request. */
export interface KeyHolding {
  readonly agentId: string;
  readonly keyName: string;
  readonly keyVersion: string;
  readonly measurement: Measurement;
  readonly releasedAt: Date;
  readonly requestId: string;
  /** Set when the control plane told the agent this version is revoked (the record stays: history). */
  readonly revokedAt?: Date;
}

/** Where a key version came from, as Shield recorded it. */
export type KeyVersionOrigin = "initial" | "rotated" | "adopted";

export interface ManagedKeyVersion {
  readonly version: string;
  readonly createdAt: Date;
  readonly origin: KeyVersionOrigin;
  /** Why it was made (rotations) or noticed (adopted). */
  readonly reason?: RotationReason;
  /** The event that caused it: rotating again for the same event is a no-op. */
  readonly sourceEventId?: string;
  /** When it stopped being releasable (disabled in the key store). */
  readonly retiredAt?: Date;
  /** When agents holding it were told it is revoked (after every holder had its successor). */
  readonly revokedAt?: Date;
}

/**
 * What Shield manages for one key: the release policy every releasable version must carry, and
 * the versions it knows, oldest first (at most {@link STATE_LIMITS.keyVersions}).
 */
export interface ManagedKeyState {
  readonly keyName: string;
  readonly releasePolicy: ReleasePolicy;
  readonly versions: readonly ManagedKeyVersion[];
  readonly updatedAt: Date;
}

export interface ManagedKeyRecord extends ManagedKeyState {
  readonly etag: string;
}

/** Identifies one unit of idempotent work: a request id within a scope (the agent id for attestations). */
export interface RequestKey {
  readonly scope: string;
  readonly requestId: string;
}

export interface ClaimOptions {
  readonly at: Date;
  /** Until when the claim is held; after it, a redelivery may take the request over. */
  readonly leaseUntil: Date;
}

/** Proof of owning a claimed request; pass it to `completeRequest` or `releaseRequest`. */
export interface RequestLease extends RequestKey {
  readonly etag: string;
  /** 1 for the first claim, 2 after one takeover of an expired lease, and so on. */
  readonly attempt: number;
  readonly leaseUntil: Date;
}

export type RequestClaim =
  | { readonly state: "new"; readonly lease: RequestLease }
  /** Done before: send `result` again, unchanged. */
  | { readonly state: "completed"; readonly result: Message; readonly completedAt: Date }
  /** Someone else holds an unexpired lease: try again after `leaseUntil`. */
  | { readonly state: "in-progress"; readonly leaseUntil: Date; readonly attempt: number };

export type NonceUse = "consumed" | "replayed";

/** A flat map of plain values; audit details hold ids, codes, digests and measurements only. */
export type AuditDetails = Readonly<Record<string, string | number | boolean | null>>;

export interface AuditEvent {
  readonly at: Date;
  /** What happened, e.g. `attestation`, `agent-untrusted`, `key-rotated`, `policy-updated`. */
  readonly kind: string;
  /** Whom or what it concerns: an agent id, a key name, a deployment id. */
  readonly subject: string;
  readonly requestId?: string;
  readonly details: AuditDetails;
  /**
   * Identifies the event itself: appending an event whose id the partition already holds adds
   * nothing and returns the entry recorded first, so redelivered work never logs twice.
   */
  readonly eventId?: string;
}

export interface AuditEntry extends AuditEvent {
  /** The chain this entry belongs to. */
  readonly partition: string;
  /** 1, 2, 3, ... without gaps within a partition. */
  readonly sequence: number;
  /** The `hash` of the previous entry; 64 zeros for the first. */
  readonly previousHash: string;
  /** sha256 (hex) over this entry's canonical form, including `previousHash`. */
  readonly hash: string;
}

export type AuditProblemKind =
  | "hash-mismatch" // the entry's content does not give its hash: edited
  | "broken-link" // previousHash is not the previous entry's hash: an entry was removed or replaced
  | "sequence-gap" // a sequence number is missing
  | "head-mismatch"; // the partition's head does not point at its last entry: the tail was cut

export interface AuditProblem {
  readonly sequence: number;
  readonly kind: AuditProblemKind;
}

export interface AuditVerification {
  readonly ok: boolean;
  readonly partition: string;
  readonly entries: number;
  /** The hash of the last entry (64 zeros for an empty partition). */
  readonly headHash: string;
  readonly problems: readonly AuditProblem[];
}

export interface StateStore {
  // agents
  getAgent(agentId: string): Promise<AgentRecord | undefined>;
  /** Inserts a new agent; ERR_CONFLICT if one with this id exists. */
  createAgent(agent: AgentState): Promise<AgentRecord>;
  /** Replaces an agent if it still has `etag`; ERR_CONFLICT if it changed or was removed. */
  updateAgent(agent: AgentState, etag: string): Promise<AgentRecord>;
  listAgents(query?: AgentQuery): AsyncIterable<AgentRecord>;
  /**
   * Agents whose `kind` step falls before `before`, earliest first, at most `limit` (bounded:
   * reads an index, never the whole table).
   */
  listAgentsDue(kind: AgentDueKind, before: Date, limit: number): Promise<AgentRecord[]>;

  // attestation records
  /** Records an attestation once; returns false when this (agentId, requestId) is already recorded. */
  recordAttestation(record: AttestationRecord): Promise<boolean>;
  getAttestation(agentId: string, requestId: string): Promise<AttestationRecord | undefined>;
  /** Newest first. */
  listAttestations(agentId: string, options?: { since?: Date; limit?: number }): Promise<AttestationRecord[]>;

  // key holdings
  /** Records (or refreshes) that an agent received a key version. */
  recordHolding(holding: KeyHolding): Promise<void>;
  listHoldingsByAgent(agentId: string): Promise<KeyHolding[]>;
  listHoldingsByKey(keyName: string, options?: { keyVersion?: string }): Promise<KeyHolding[]>;

  // managed keys
  getManagedKey(keyName: string): Promise<ManagedKeyRecord | undefined>;
  /** Creates (no `etag`) or replaces (with the ETag read) a managed key; ERR_CONFLICT on a lost race. */
  putManagedKey(key: ManagedKeyState, etag?: string): Promise<ManagedKeyRecord>;
  /** Every managed key, by name (at most STATE_LIMITS.listLimit). */
  listManagedKeys(): Promise<ManagedKeyRecord[]>;

  // request idempotency
  /**
   * Claims a request atomically. Of two concurrent claims exactly one gets `new`; a request
   * whose lease expired without completion is handed to the next claimant with `attempt + 1`.
   */
  claimRequest(key: RequestKey, options: ClaimOptions): Promise<RequestClaim>;
  /** Stores the answer so redeliveries resend it; ERR_CONFLICT if the lease was lost. */
  completeRequest(lease: RequestLease, result: Message, at: Date): Promise<void>;
  /** Gives a claim up early (after a transient failure) so a redelivery need not wait for the lease. */
  releaseRequest(lease: RequestLease): Promise<void>;

  // nonces
  /** Marks a nonce used within a scope; `replayed` if it was used before. */
  consumeNonce(scope: string, nonce: string, options: { at: Date; expiresAt: Date }): Promise<NonceUse>;

  // audit
  /** Appends to a partition's hash chain; retries internally on a lost race, then ERR_CONFLICT. */
  appendAudit(partition: string, event: AuditEvent): Promise<AuditEntry>;
  listAudit(partition: string, options?: { fromSequence?: number; limit?: number }): Promise<AuditEntry[]>;
  verifyAuditChain(partition: string): Promise<AuditVerification>;
}

/** Limits both adapters enforce, chosen to fit Azure Table Storage (64 KiB properties, 1 MiB entities). */
export const STATE_LIMITS = {
  /**
   * Largest stored result message, in bytes of UTF-8 JSON. Azurite measures an entity by its
   * request body, where binary travels as base64: 720,000 bytes become 960,000 characters,
   * which leaves room under 1 MiB for the other properties.
   */
  resultBytes: 720_000,
  /** Largest audit `details`, in characters of JSON. */
  auditDetailsChars: 16_000,
  auditDetailsEntries: 64,
  violations: 64,
  violationTextChars: 1024,
  listLimit: 1000,
  /** Versions remembered per managed key: Managed HSM's limit per key. */
  keyVersions: 100,
  eventIdChars: 256,
} as const;
