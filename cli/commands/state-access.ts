/**
 * How the operator commands reach Shield's Table Storage: a connection string
 * (`--connection-string`, or `SHIELD_STATE_CONNECTION`), or an endpoint with
 * `DefaultAzureCredential` (`--endpoint`, or `SHIELD_STATE_TABLE_ENDPOINT`), and the table name
 * (`--table`, default `shield`). The connection string is never printed.
 */
import { createStateTableClient, TableStateStore } from "../../adapters/state/table.js";
import { UsageError, optionalString, type OptionSpec, type OptionValues } from "../command.js";

export const STATE_OPTIONS: OptionSpec = {
  "connection-string": { type: "string" },
  endpoint: { type: "string" },
  table: { type: "string" },
};

export const STATE_USAGE = [
  "  --connection-string CS   Table Storage connection string (or SHIELD_STATE_CONNECTION)",
  "  --endpoint URL           Table endpoint, signed in with DefaultAzureCredential (or SHIELD_STATE_TABLE_ENDPOINT)",
  "  --table T                the state table (default shield, or SHIELD_STATE_TABLE)",
];

export async function openStateTable(values: OptionValues): Promise<{
  store: TableStateStore;
  client: ReturnType<typeof createStateTableClient>;
}> {
  const tableName = optionalString(values, "table") ?? process.env["SHIELD_STATE_TABLE"] ?? "shield";
  const connectionString =
    optionalString(values, "connection-string") ?? process.env["SHIELD_STATE_CONNECTION"];
  const endpoint = optionalString(values, "endpoint") ?? process.env["SHIELD_STATE_TABLE_ENDPOINT"];
  let client;
  if (connectionString !== undefined) {
    client = createStateTableClient({ tableName, connectionString });
  } else if (endpoint !== undefined) {
    const { DefaultAzureCredential } = await import("@azure/identity");
    client = createStateTableClient({ tableName, endpoint, credential: new DefaultAzureCredential() });
  } else {
    throw new UsageError("give --connection-string or --endpoint (or set SHIELD_STATE_CONNECTION)");
  }
  return { store: new TableStateStore(client), client };
}
