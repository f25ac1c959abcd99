import { MemoryStateStore } from "../../adapters/state/memory.js";
import { defineStateStoreContract } from "./state-store.contract.js";

defineStateStoreContract("memory", () => {
  const store = new MemoryStateStore();
  return Promise.resolve({
    store,
    editAuditEntry: async (partition, sequence, change) => {
      store.tamperWithAuditEntry(partition, sequence, (entry) => ({ ...entry, ...change }));
      await Promise.resolve();
    },
    deleteAuditEntry: async (partition, sequence) => {
      store.tamperWithAuditEntry(partition, sequence, () => undefined);
      await Promise.resolve();
    },
    dumpEverything: async () => {
      await Promise.resolve();
      return store.dumpForInspection();
    },
  });
});
