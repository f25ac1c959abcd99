/**
 * Cold start: building the Key Vault adapter must not load `@azure/keyvault-keys`; the first
 * call does, once.
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, expect, it, vi } from "vitest";

const loads = vi.hoisted(() => ({ count: 0 }));

vi.mock("@azure/keyvault-keys", async (importOriginal) => {
  loads.count++;
  return importOriginal();
});

describe("Key Vault adapter loading", () => {
  it("loads the SDK on first use, not when the store is built", async () => {
    const { createKeyVaultKeyStore } = await import("../../../adapters/keyvault/key-store.js");
    const { localKeyVaultCredential } = await import("../../../adapters/local/keyvault/credential.js");
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));

    const store = createKeyVaultKeyStore({
      vaultUrl: `http://127.0.0.1:${port}`,
      credential: localKeyVaultCredential("token"),
      clientOptions: { retryOptions: { maxRetries: 0 } },
    });
    expect(loads.count).toBe(0);
    await expect(store.getKey("k1")).rejects.toMatchObject({ code: "ERR_NETWORK" });
    await expect(store.getKey("k1")).rejects.toMatchObject({ code: "ERR_NETWORK" });
    expect(loads.count).toBe(1);
  });
});
