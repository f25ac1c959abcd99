/**
 * `shield audit verify` checks every hash chain of the audit log in Table Storage and names the
 * first broken entry of each: an edited row (`hash-mismatch`), a removed or replaced one
 * (`broken-link`), a missing sequence number (`sequence-gap`), a cut tail (`head-mismatch`).
 * `shield audit who-has <key> [--version V]` says which agent holds which version of a key,
 * under which measurement, since which release.
 */
import { odata } from "@azure/data-tables";
import { ShieldError } from "../../core/errors.js";
import { measurementLabel } from "../../core/status/status.js";
import { UsageError, optionalString, type Command } from "../command.js";
import { openStateTable, STATE_OPTIONS, STATE_USAGE } from "./state-access.js";

const AUDIT_PREFIX = "audit~";

async function auditPartitions(
  client: Awaited<ReturnType<typeof openStateTable>>["client"],
): Promise<string[]> {
  const partitions = new Set<string>();
  try {
    const rows = client.listEntities({
      queryOptions: {
        filter: odata`PartitionKey ge ${AUDIT_PREFIX} and PartitionKey lt ${"audit\u007f"}`,
        select: ["PartitionKey"],
      },
    });
    for await (const row of rows) {
      if (typeof row.partitionKey === "string") partitions.add(row.partitionKey.slice(AUDIT_PREFIX.length));
    }
  } catch {
    throw new ShieldError("ERR_NETWORK", "could not read the audit log from Table Storage");
  }
  return [...partitions].sort();
}

export const auditVerify: Command = {
  words: ["audit", "verify"],
  summary: "check the hash-chained audit log in Table Storage and name the first broken entry",
  usage: [
    "Usage: shield audit verify (--connection-string CS | --endpoint URL) [--table T] [--partition P] [--json]",
    "",
    ...STATE_USAGE,
    "  --partition P            check only this chain (e.g. key-orders-key, agent-<id>)",
  ].join("\n"),
  options: { ...STATE_OPTIONS, partition: { type: "string" } },
  async run(values) {
    const { store, client } = await openStateTable(values);
    const only = optionalString(values, "partition");
    const partitions = only === undefined ? await auditPartitions(client) : [only];
    const results = [];
    for (const partition of partitions) results.push(await store.verifyAuditChain(partition));
    const broken = results.filter((r) => !r.ok);
    const firstBroken = broken.map((r) => ({
      partition: r.partition,
      sequence: r.problems[0]?.sequence,
      kind: r.problems[0]?.kind,
    }));
    return {
      ok: broken.length === 0,
      data: {
        verified: broken.length === 0,
        partitions: results.map((r) => ({
          partition: r.partition,
          entries: r.entries,
          ok: r.ok,
          headHash: r.headHash,
        })),
        firstBroken,
      },
      lines: [
        ...results.map(
          (r) =>
            `${r.ok ? "ok  " : "FAIL"}  ${r.partition}  ${r.entries} entries` +
            (r.ok ? "" : `  first broken: entry ${r.problems[0]?.sequence} (${r.problems[0]?.kind})`),
        ),
        broken.length === 0
          ? `audit log verified: ${results.length} chain(s)`
          : `audit log broken in ${broken.length} chain(s)`,
      ],
    };
  },
};

export const auditWhoHas: Command = {
  words: ["audit", "who-has"],
  summary: "which agent holds which version of a key, under which measurement",
  usage: [
    "Usage: shield audit who-has <key> [--version V] (--connection-string CS | --endpoint URL) [--table T] [--json]",
    "",
    ...STATE_USAGE,
    "  --version V              only this key version",
  ].join("\n"),
  options: { ...STATE_OPTIONS, version: { type: "string" } },
  positionals: true,
  async run(values, positionals) {
    const [keyName, ...extra] = positionals;
    if (keyName === undefined || extra.length > 0) throw new UsageError("give exactly one key name");
    if (!/^[0-9a-zA-Z-]{1,127}$/.test(keyName)) throw new UsageError("not a Key Vault key name");
    const version = optionalString(values, "version");
    const { store } = await openStateTable(values);
    const holdings = await store.listHoldingsByKey(
      keyName,
      version === undefined ? {} : { keyVersion: version },
    );
    const rows = holdings.map((h) => ({
      agentId: h.agentId,
      keyVersion: h.keyVersion,
      measurement: measurementLabel(h.measurement),
      releasedAt: h.releasedAt.toISOString(),
      requestId: h.requestId,
    }));
    return {
      ok: true,
      data: { keyName, ...(version === undefined ? {} : { keyVersion: version }), holders: rows },
      lines:
        rows.length === 0
          ? [`nobody holds ${keyName}${version === undefined ? "" : ` version ${version}`}`]
          : rows.map((r) => `${r.agentId}  ${r.keyVersion}  ${r.measurement}  since ${r.releasedAt}`),
    };
  },
};
