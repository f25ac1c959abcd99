import { describe, expect, it } from "vitest";
import { createStateTableClient, createTableStateStore } from "../../adapters/state/table.js";
import { ShieldError } from "../../core/errors.js";
import { azuriteConnectionString, uniqueTableName } from "../support/storage.js";
import { defineStateStoreContract } from "./state-store.contract.js";

defineStateStoreContract("Azure Table Storage (Azurite)", async () => {
  const options = {
    connectionString: azuriteConnectionString(),
    tableName: uniqueTableName("statecontract"),
  };
  const store = await createTableStateStore({ ...options, createTable: true });
  // A second client on the same table plays the part of someone editing storage directly.
  const raw = createStateTableClient(options);
  const rowKey = (sequence: number) => String(sequence).padStart(16, "0");
  return {
    store,
    editAuditEntry: async (partition, sequence, change) => {
      await raw.updateEntity(
        {
          partitionKey: `audit~${partition}`,
          rowKey: rowKey(sequence),
          ...(change.subject === undefined ? {} : { subject: change.subject }),
          ...(change.details === undefined ? {} : { details: JSON.stringify(change.details) }),
        },
        "Merge",
      );
    },
    deleteAuditEntry: async (partition, sequence) => {
      await raw.deleteEntity(`audit~${partition}`, rowKey(sequence));
    },
    dumpEverything: async () => {
      const rows: unknown[] = [];
      for await (const entity of raw.listEntities()) rows.push(entity);
      return JSON.stringify(rows, (_key, value: unknown) =>
        value instanceof Uint8Array ? Buffer.from(value).toString("utf8") : value,
      );
    },
  };
});

describe("Table state store configuration", () => {
  const credential = { getToken: () => Promise.resolve({ token: "t", expiresOnTimestamp: 0 }) };

  it("accepts https, and plain http only on loopback", () => {
    expect(
      createStateTableClient({
        tableName: "shieldstate",
        endpoint: "https://acct.table.core.windows.net",
        credential,
      }).url,
    ).toBe("https://acct.table.core.windows.net");
    expect(
      createStateTableClient({
        tableName: "shieldstate",
        endpoint: "http://127.0.0.1:10002/devstoreaccount1",
        credential,
      }).url,
    ).toBe("http://127.0.0.1:10002/devstoreaccount1");
    expect(
      createStateTableClient({ tableName: "shieldstate", connectionString: "UseDevelopmentStorage=true" })
        .url,
    ).toMatch(/^http:\/\/127\.0\.0\.1:10002/);
    for (const endpoint of ["http://acct.table.core.windows.net", "http://10.0.0.4:10002/devstoreaccount1"]) {
      expect(() => createStateTableClient({ tableName: "shieldstate", endpoint, credential })).toThrow(
        expect.objectContaining({ code: "ERR_CONFIG" }) as Error,
      );
    }
    const insecure =
      "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=AAAA;TableEndpoint=http://storage.example:10002/a";
    expect(() => createStateTableClient({ tableName: "shieldstate", connectionString: insecure })).toThrow(
      ShieldError,
    );
  });

  it("refuses a table name Azure would refuse", () => {
    for (const tableName of ["ab", "1abc", "has-dash", "x".repeat(64)]) {
      expect(() =>
        createStateTableClient({ tableName, endpoint: "https://acct.table.core.windows.net", credential }),
      ).toThrow(expect.objectContaining({ code: "ERR_CONFIG" }) as Error);
    }
  });

  it("reports a missing table as a configuration error, not as a missing row", async () => {
    const store = await createTableStateStore({
      connectionString: azuriteConnectionString(),
      tableName: uniqueTableName("missing"),
    });
    await expect(store.getAgent("agent-1")).rejects.toMatchObject({ code: "ERR_CONFIG" });
    await expect(
      store.consumeNonce("s", "nonce-1", { at: new Date(0), expiresAt: new Date(1) }),
    ).rejects.toMatchObject({
      code: "ERR_CONFIG",
    });
  });
});

describe("Table state store connection settings", () => {
  it("does not repeat an invalid connection string, which may hold an account key", () => {
    let caught: unknown;
    try {
      createStateTableClient({
        tableName: "shieldstate",
        connectionString: "AccountKey=SECRETKEYMATERIAL;nonsense",
      });
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(ShieldError);
    expect((caught as ShieldError).code).toBe("ERR_CONFIG");
    expect(JSON.stringify((caught as ShieldError).toJSON())).not.toContain("SECRETKEYMATERIAL");
    expect((caught as ShieldError).cause).toBeUndefined();
  });
});
