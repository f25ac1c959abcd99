import { describe, expect, it } from "vitest";
import { openAgentBus } from "../../../agent/bus.js";
import { loadAgentConfig, type AgentConfig } from "../../../agent/config.js";

function config(env: Record<string, string>): AgentConfig {
  const loaded = loadAgentConfig({
    SHIELD_KEYS: "orders",
    SHIELD_RELEASE_SIGNER_HOST: "contoso.vault.azure.net",
    ...env,
  });
  if (!loaded.ok) throw new Error(loaded.problems.join("; "));
  return loaded.config;
}

describe("the agent's bus", () => {
  it("servicebus: one client for the request channel and the session inbox, opened without a network call", async () => {
    const bus = await openAgentBus(
      config({ SHIELD_BUS: "servicebus", SHIELD_SERVICEBUS_NAMESPACE: "contoso.servicebus.windows.net" }),
      () => undefined,
    );
    expect(typeof bus.requests.sendRequest).toBe("function");
    expect(typeof bus.inbox.receive).toBe("function");
    await bus.close();
  });

  it("storage-queue: refuses a request queue name Storage does not allow, before any call", async () => {
    await expect(
      openAgentBus(
        config({
          SHIELD_BUS: "storage-queue",
          SHIELD_STORAGE_CONNECTION_STRING: "UseDevelopmentStorage=true",
          SHIELD_REQUEST_QUEUE: "Requests_Queue",
        }),
        () => undefined,
      ),
    ).rejects.toMatchObject({ code: "ERR_CONFIG" });
  });

  it("storage-queue: opens the agent's own queue", async () => {
    const bus = await openAgentBus(
      config({
        SHIELD_BUS: "storage-queue",
        SHIELD_STORAGE_CONNECTION_STRING: "UseDevelopmentStorage=true",
        SHIELD_AGENT_ID: "agent-1",
      }),
      () => undefined,
    );
    expect(typeof bus.inbox.receive).toBe("function");
    await bus.close();
  });
});
