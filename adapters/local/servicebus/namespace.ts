/**
 * The project's Service Bus namespace in miniature, on the local endpoint: `attestation-requests`
 * (MaxDeliveryCount from the settings, Service Bus's default lock duration) and
 * `attestation-results` with sessions (session id = agent id), and two shared access rules —
 * one for the functions, one for agents — each with the Send and Listen rights its side needs
 * and no Manage. Used by the embedded default (`npm start -- --bus servicebus`) and the
 * benchmarks, so both run the agent's and the functions' real Service Bus transports.
 */
import { randomBytes } from "node:crypto";
import { REQUESTS_QUEUE, RESULTS_QUEUE } from "../../../core/ports/bus.js";
import type { Logger } from "../../../core/ports/logger.js";
import { startLocalServiceBus, type LocalServiceBus } from "./server.js";
import type { QueueSettings } from "./engine.js";

export interface LocalServiceBusNamespaceOptions {
  /** MaxDeliveryCount of the request queue (default 10, Service Bus's). */
  readonly maxDeliveryCount?: number;
  /** The queues to make instead of the two above (a whole function app's). */
  readonly queues?: readonly QueueSettings[];
  readonly logger?: Logger;
}

export interface LocalServiceBusNamespace {
  readonly endpoint: LocalServiceBus;
  /** For the Functions app's `ServiceBusConnection` setting. Secret. */
  readonly functionsConnectionString: string;
  /** For agents' SHIELD_SERVICEBUS_CONNECTION_STRING. Secret. */
  readonly agentConnectionString: string;
  close(): Promise<void>;
}

export async function startLocalServiceBusNamespace(
  options: LocalServiceBusNamespaceOptions = {},
): Promise<LocalServiceBusNamespace> {
  const endpoint = await startLocalServiceBus({
    queues: options.queues ?? [
      { name: REQUESTS_QUEUE, maxDeliveryCount: options.maxDeliveryCount ?? 10 },
      { name: RESULTS_QUEUE, requiresSession: true },
    ],
    rules: [
      { keyName: "shield-functions", key: randomBytes(32).toString("base64"), rights: ["Send", "Listen"] },
      { keyName: "shield-agents", key: randomBytes(32).toString("base64"), rights: ["Send", "Listen"] },
    ],
    ...(options.logger === undefined ? {} : { logger: options.logger }),
  });
  return {
    endpoint,
    functionsConnectionString: endpoint.connectionString("shield-functions"),
    agentConnectionString: endpoint.connectionString("shield-agents"),
    close: () => endpoint.close(),
  };
}
