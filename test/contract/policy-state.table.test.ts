import { createTablePolicyStateStore } from "../../adapters/state/policy-table.js";
import { azuriteConnectionString, uniqueTableName } from "../support/storage.js";
import { definePolicyStateContract } from "./policy-state.contract.js";

definePolicyStateContract("Azure Table Storage (Azurite)", async () =>
  createTablePolicyStateStore({
    connectionString: azuriteConnectionString(),
    tableName: uniqueTableName("policystate"),
    createTable: true,
  }),
);
