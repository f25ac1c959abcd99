/**
 * An in-process PolicyStateStore for tests and the embedded default, with the Table adapter's
 * semantics: records are stored encoded (callers only ever get fresh copies), every write gets a
 * new ETag, stale ETags and duplicate inserts are ERR_CONFLICT, and each operation runs to
 * completion within one turn of the event loop, which makes it atomic.
 */
import { ShieldError } from "../../core/errors.js";
import type {
  DeliveryUse,
  DeploymentRecord,
  DeploymentState,
  KeyPolicyRecord,
  KeyPolicyState,
  PolicyStateStore,
} from "../../core/ports/policy-state.js";
import {
  checkDeliveryId,
  checkDeploymentId,
  checkLeaseHolder,
  checkPolicyKeyName,
  decodeDeployment,
  decodeKeyPolicy,
  encodeDeployment,
  encodeKeyPolicy,
} from "../../core/state/policy-records.js";

interface Row {
  text: string;
  etag: string;
}

export function createMemoryPolicyStateStore(): PolicyStateStore {
  const policies = new Map<string, Row>();
  const deployments = new Map<string, Row & { createdAt: number }>();
  const leases = new Map<string, { holder: string; leaseUntil: number }>();
  const deliveries = new Map<string, number>();
  let etags = 0;
  const nextEtag = () => `W/"${++etags}"`;
  const conflict = (what: string) => new ShieldError("ERR_CONFLICT", `${what} was changed concurrently`);
  const policyRecord = (row: Row): KeyPolicyRecord => ({ ...decodeKeyPolicy(row.text), etag: row.etag });
  const deploymentRecord = (row: Row): DeploymentRecord => ({
    ...decodeDeployment(row.text),
    etag: row.etag,
  });

  return {
    async getKeyPolicy(keyName: string) {
      await Promise.resolve();
      checkPolicyKeyName(keyName);
      const row = policies.get(keyName);
      return row === undefined ? undefined : policyRecord(row);
    },
    async createKeyPolicy(state: KeyPolicyState) {
      await Promise.resolve();
      const text = encodeKeyPolicy(state);
      if (policies.has(state.keyName)) throw conflict(`key policy ${state.keyName}`);
      const row = { text, etag: nextEtag() };
      policies.set(state.keyName, row);
      return policyRecord(row);
    },
    async updateKeyPolicy(state: KeyPolicyState, etag: string) {
      await Promise.resolve();
      const text = encodeKeyPolicy(state);
      if (policies.get(state.keyName)?.etag !== etag) throw conflict(`key policy ${state.keyName}`);
      const row = { text, etag: nextEtag() };
      policies.set(state.keyName, row);
      return policyRecord(row);
    },
    async listKeyPolicies() {
      await Promise.resolve();
      return [...policies.keys()].sort().map((name) => policyRecord(policies.get(name)!));
    },

    async acquireKeyLease(keyName, holder, options) {
      await Promise.resolve();
      checkPolicyKeyName(keyName);
      checkLeaseHolder(holder);
      const current = leases.get(keyName);
      if (current !== undefined && current.holder !== holder && current.leaseUntil > options.at.getTime())
        return false;
      leases.set(keyName, { holder, leaseUntil: options.leaseUntil.getTime() });
      return true;
    },
    async releaseKeyLease(keyName, holder) {
      await Promise.resolve();
      if (leases.get(keyName)?.holder === holder) leases.delete(keyName);
    },

    async createDeployment(state: DeploymentState) {
      await Promise.resolve();
      const text = encodeDeployment(state);
      if (deployments.has(state.deploymentId)) throw conflict(`deployment ${state.deploymentId}`);
      const row = { text, etag: nextEtag(), createdAt: state.createdAt.getTime() };
      deployments.set(state.deploymentId, row);
      return deploymentRecord(row);
    },
    async getDeployment(deploymentId: string) {
      await Promise.resolve();
      checkDeploymentId(deploymentId);
      const row = deployments.get(deploymentId);
      return row === undefined ? undefined : deploymentRecord(row);
    },
    async updateDeployment(state: DeploymentState, etag: string) {
      await Promise.resolve();
      const text = encodeDeployment(state);
      const current = deployments.get(state.deploymentId);
      if (current?.etag !== etag) throw conflict(`deployment ${state.deploymentId}`);
      const row = { text, etag: nextEtag(), createdAt: current.createdAt };
      deployments.set(state.deploymentId, row);
      return deploymentRecord(row);
    },
    async listDeployments(options = {}) {
      await Promise.resolve();
      return [...deployments.values()]
        .sort((a, b) => b.createdAt - a.createdAt)
        .slice(0, options.limit ?? 100)
        .map(deploymentRecord);
    },

    async rememberDelivery(deliveryId, options): Promise<DeliveryUse> {
      await Promise.resolve();
      checkDeliveryId(deliveryId);
      const expiresAt = deliveries.get(deliveryId);
      if (expiresAt !== undefined && expiresAt > options.at.getTime()) return "replayed";
      deliveries.set(deliveryId, options.expiresAt.getTime());
      return "new";
    },
  };
}
