import { createLocalKeyStore } from "../../adapters/local/keyvault/key-store.js";
import { defineKeyStoreContract } from "./key-store.contract.js";
import { createKeyVaultFixture } from "./key-store.fixtures.js";

defineKeyStoreContract("local engine, in-process", async () => {
  const fixture = await createKeyVaultFixture();
  const engine = await fixture.engine();
  return {
    store: createLocalKeyStore(engine),
    engine,
    fixture,
    structuredDenials: true,
    close: () => fixture.close(),
  };
});
