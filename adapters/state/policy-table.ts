/**
 * The PolicyStateStore on Azure Table Storage. It shares the state table (one table to
 * provision and grant) under partitions of its own, so its rows never meet the StateStore's:
 *
 * | record            | PartitionKey          | RowKey        |
 * |-------------------|-----------------------|---------------|
 * | key policy        | `rollout-policy`      | keyName       |
 * | key lease         | `rollout-lease`       | keyName       |
 * | deployment        | `rollout-deployment`  | deploymentId  |
 * | webhook delivery  | `rollout-delivery`    | deliveryId    |
 *
 * Records are one JSON `document` property (core/state/policy-records). Conditional writes
 * are the service's own: `createEntity` (409 when the row exists) and `If-Match` ETags (412 when
 * it changed). A lease or a remembered delivery that has expired is taken over by an
 * ETag-conditional replace, so two takers of one expired row cannot both win.
 */
import { randomUUID } from "node:crypto";
import { RestError, odata, type TableClient, type TableEntityResult } from "@azure/data-tables";
import { ShieldError, type ShieldErrorCode } from "../../core/errors.js";
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
import { createStateTableClient, type TableStateStoreOptions } from "./table.js";

type Entity = TableEntityResult<Record<string, unknown>>;

const POLICY = "rollout-policy";
const LEASE = "rollout-lease";
const DEPLOYMENT = "rollout-deployment";
const DELIVERY = "rollout-delivery";

export async function createTablePolicyStateStore(
  options: TableStateStoreOptions,
): Promise<PolicyStateStore> {
  const client = createStateTableClient(options);
  if (options.createTable === true) await call("create table", () => client.createTable());
  return tablePolicyStateStore(client);
}

export function tablePolicyStateStore(client: TableClient): PolicyStateStore {
  async function get(partitionKey: string, rowKey: string): Promise<Entity | undefined> {
    try {
      return await client.getEntity<Record<string, unknown>>(partitionKey, rowKey);
    } catch (error) {
      if (statusOf(error) === 404) return undefined;
      throw tableError("read", error);
    }
  }

  async function insert(
    partitionKey: string,
    rowKey: string,
    document: string,
    what: string,
  ): Promise<string> {
    try {
      const response = await client.createEntity({ partitionKey, rowKey, document });
      return requireEtag(response.etag);
    } catch (error) {
      if (statusOf(error) === 409) throw new ShieldError("ERR_CONFLICT", `${what} exists already`);
      throw tableError(`create ${what}`, error);
    }
  }

  async function replace(
    partitionKey: string,
    rowKey: string,
    fields: Record<string, unknown>,
    etag: string,
    what: string,
  ): Promise<string> {
    try {
      const response = await client.updateEntity({ partitionKey, rowKey, ...fields }, "Replace", { etag });
      return requireEtag(response.etag);
    } catch (error) {
      const status = statusOf(error);
      if (status === 412 || status === 404)
        throw new ShieldError("ERR_CONFLICT", `${what} was changed concurrently`);
      throw tableError(`update ${what}`, error);
    }
  }

  async function list(partitionKey: string): Promise<Entity[]> {
    const out: Entity[] = [];
    await call("list", async () => {
      const filter = odata`PartitionKey eq ${partitionKey}`;
      for await (const entity of client.listEntities<Record<string, unknown>>({ queryOptions: { filter } }))
        out.push(entity);
    });
    return out;
  }

  const policyRecord = (entity: Entity): KeyPolicyRecord => ({
    ...decodeKeyPolicy(entity["document"]),
    etag: requireEtag(entity.etag),
  });
  const deploymentRecord = (entity: Entity): DeploymentRecord => ({
    ...decodeDeployment(entity["document"]),
    etag: requireEtag(entity.etag),
  });

  /** Inserts the row, or replaces it when its `until` lies before `at` (conditional on its ETag). */
  async function claimUnlessLive(
    partitionKey: string,
    rowKey: string,
    fields: { until: Date; holder?: string },
    at: Date,
    mayTakeOver: (entity: Entity) => boolean,
  ): Promise<boolean> {
    // Marks this call's write: a create the SDK sent again because its answer was lost finds
    // the row the first try made, and must not take it for someone else's (a false replay).
    const claimToken = randomUUID();
    try {
      await client.createEntity({ partitionKey, rowKey, ...fields, claimToken });
      return true;
    } catch (error) {
      if (statusOf(error) !== 409) throw tableError("claim", error);
    }
    const current = await get(partitionKey, rowKey);
    if (current === undefined) return false; // deleted meanwhile: the caller may try again
    if (current["claimToken"] === claimToken) return true;
    const until = current["until"];
    const expired = until instanceof Date ? until.getTime() <= at.getTime() : true;
    if (!expired && !mayTakeOver(current)) return false;
    try {
      await client.updateEntity({ partitionKey, rowKey, ...fields, claimToken }, "Replace", {
        etag: requireEtag(current.etag),
      });
      return true;
    } catch (error) {
      const status = statusOf(error);
      if (status === 412 || status === 404)
        return (await get(partitionKey, rowKey))?.["claimToken"] === claimToken;
      throw tableError("claim", error);
    }
  }

  return {
    async getKeyPolicy(keyName) {
      checkPolicyKeyName(keyName);
      const entity = await get(POLICY, keyName);
      return entity === undefined ? undefined : policyRecord(entity);
    },
    async createKeyPolicy(state: KeyPolicyState) {
      const document = encodeKeyPolicy(state);
      const etag = await insert(POLICY, state.keyName, document, `key policy ${state.keyName}`);
      return { ...decodeKeyPolicy(document), etag };
    },
    async updateKeyPolicy(state: KeyPolicyState, etag: string) {
      const document = encodeKeyPolicy(state);
      const next = await replace(POLICY, state.keyName, { document }, etag, `key policy ${state.keyName}`);
      return { ...decodeKeyPolicy(document), etag: next };
    },
    async listKeyPolicies() {
      return (await list(POLICY)).map(policyRecord).sort((a, b) => a.keyName.localeCompare(b.keyName));
    },

    async acquireKeyLease(keyName, holder, options) {
      checkPolicyKeyName(keyName);
      checkLeaseHolder(holder);
      return claimUnlessLive(
        LEASE,
        keyName,
        { until: options.leaseUntil, holder },
        options.at,
        (entity) => entity["holder"] === holder,
      );
    },
    async releaseKeyLease(keyName, holder) {
      const current = await get(LEASE, keyName);
      if (current === undefined || current["holder"] !== holder) return;
      try {
        await client.deleteEntity(LEASE, keyName, { etag: requireEtag(current.etag) });
      } catch (error) {
        const status = statusOf(error);
        if (status !== 412 && status !== 404) throw tableError("release lease", error);
      }
    },

    async createDeployment(state: DeploymentState) {
      const document = encodeDeployment(state);
      const etag = await insert(DEPLOYMENT, state.deploymentId, document, `deployment ${state.deploymentId}`);
      return { ...decodeDeployment(document), etag };
    },
    async getDeployment(deploymentId) {
      checkDeploymentId(deploymentId);
      const entity = await get(DEPLOYMENT, deploymentId);
      return entity === undefined ? undefined : deploymentRecord(entity);
    },
    async updateDeployment(state: DeploymentState, etag: string) {
      const document = encodeDeployment(state);
      const next = await replace(
        DEPLOYMENT,
        state.deploymentId,
        { document },
        etag,
        `deployment ${state.deploymentId}`,
      );
      return { ...decodeDeployment(document), etag: next };
    },
    async listDeployments(options = {}) {
      return (await list(DEPLOYMENT))
        .map(deploymentRecord)
        .sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime())
        .slice(0, options.limit ?? 100);
    },

    async rememberDelivery(deliveryId, options): Promise<DeliveryUse> {
      checkDeliveryId(deliveryId);
      const claimed = await claimUnlessLive(
        DELIVERY,
        deliveryId,
        { until: options.expiresAt },
        options.at,
        () => false,
      );
      return claimed ? "new" : "replayed";
    },
  };
}

function requireEtag(etag: string | undefined): string {
  if (etag === undefined || etag === "") throw new ShieldError("ERR_IO", "table storage returned no ETag");
  return etag;
}

function statusOf(error: unknown): number | undefined {
  if (!(error instanceof RestError)) return undefined;
  const code = (error.details as { odataError?: { code?: unknown } } | undefined)?.odataError?.code;
  // A missing table answers 404 like a missing row: that is not "absent", it is a broken setup.
  return error.statusCode === 404 && (error.code ?? code) === "TableNotFound" ? 500 : error.statusCode;
}

/** A RestError is not kept as the cause: it carries the request, entity bodies included. */
function tableError(operation: string, error: unknown): ShieldError {
  if (error instanceof ShieldError) return error;
  if (!(error instanceof RestError)) {
    return new ShieldError("ERR_IO", `table storage: ${operation} failed`, { cause: error });
  }
  const status = error.statusCode;
  let code: ShieldErrorCode;
  if (status === undefined) code = "ERR_NETWORK";
  else if (status === 401 || status === 403 || status === 404) code = "ERR_CONFIG";
  else if (status === 408) code = "ERR_TIMEOUT";
  else if (status === 429) code = "ERR_THROTTLED";
  else if (status >= 500) code = "ERR_UPSTREAM_UNAVAILABLE";
  else code = "ERR_IO";
  return new ShieldError(
    code,
    `table storage: ${operation} failed${status === undefined ? "" : ` (status ${status})`}`,
  );
}

async function call<T>(operation: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (error) {
    throw tableError(operation, error);
  }
}
