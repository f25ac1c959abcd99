/**
 * The agent's end of the bus, chosen by `SHIELD_BUS`: Azure Service Bus (requests on
 * `attestation-requests`, its own session on `attestation-results`, signed in with
 * DefaultAzureCredential — the pod's managed or workload identity — or, when
 * SHIELD_SERVICEBUS_CONNECTION_STRING is set, with its shared access key) or Azure Storage Queues
 * (Azurite in the embedded default; a connection string), spoken over REST without the SDK to
 * keep the agent's memory small. Each adapter and its SDK is loaded
 * only when chosen, with a dynamic import of a fixed module, so a bundle holds both and a start
 * pays only for one.
 */
import type { ServiceBusClientLike } from "../adapters/servicebus/client.js";
import type { AgentInbox, RequestChannel } from "../core/ports/bus.js";
import type { Logger } from "../core/ports/logger.js";
import type { AgentConfig } from "./config.js";

export interface AgentBus {
  readonly requests: RequestChannel;
  readonly inbox: AgentInbox;
  /** Closes what was opened here (the inbox too, should the agent not have closed it). */
  close(): Promise<void>;
}

export async function openAgentBus(config: AgentConfig, logger: Logger): Promise<AgentBus> {
  return config.bus.transport === "storage-queue"
    ? openStorageQueueBus(config, logger)
    : openServiceBus(config, logger);
}

async function openStorageQueueBus(config: AgentConfig, logger: Logger): Promise<AgentBus> {
  const connectionString = config.bus.storageConnectionString;
  if (connectionString === undefined) throw new TypeError("SHIELD_STORAGE_CONNECTION_STRING is required");
  const { createStorageQueueAgentBus } = await import("./storage-queue-rest.js");
  const bus = createStorageQueueAgentBus({
    connectionString: connectionString.reveal(),
    requestsQueue: config.bus.requestQueue,
    logger,
  });
  const inbox = bus.openInbox(config.agentId);
  return {
    requests: bus.requests,
    inbox,
    async close() {
      await inbox.close();
      await bus.close();
    },
  };
}

async function openServiceBus(config: AgentConfig, logger: Logger): Promise<AgentBus> {
  const { createServiceBusAgentInbox, createServiceBusRequestChannel } =
    await import("../adapters/servicebus/bus.js");
  // One AMQP connection for both directions.
  const client = await serviceBusClient(config);
  const requests = createServiceBusRequestChannel({ client, requestsQueue: config.bus.requestQueue, logger });
  const inbox = createServiceBusAgentInbox({
    client,
    agentId: config.agentId,
    resultsQueue: config.bus.resultQueue,
    logger,
  });
  return {
    requests,
    inbox,
    async close() {
      await inbox.close();
      await requests.close();
      await client.close();
    },
  };
}

/** A connection string when one is set (the local endpoint); else the namespace and the pod's identity. */
async function serviceBusClient(config: AgentConfig): Promise<ServiceBusClientLike> {
  const { createServiceBusClient, createServiceBusClientFromConnectionString } =
    await import("../adapters/servicebus/client.js");
  const connectionString = config.bus.serviceBusConnectionString;
  if (connectionString !== undefined)
    return createServiceBusClientFromConnectionString(connectionString.reveal());
  const namespace = config.bus.serviceBusNamespace;
  if (namespace === undefined) throw new TypeError("SHIELD_SERVICEBUS_NAMESPACE is required");
  const { DefaultAzureCredential } = await import("@azure/identity");
  return createServiceBusClient(namespace, new DefaultAzureCredential());
}
