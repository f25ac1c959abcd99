/**
 * Both ends of the bus over one Service Bus client, as the embedded default and the contract
 * tests need them: the agent's request channel and inbox (its session on
 * `attestation-results`), the functions' agent channel and request receiver. Each piece is the
 * production adapter; this only shares the client and closes what it opened.
 */
import type { AgentInbox, LocalBus, RequestReceiver } from "../../core/ports/bus.js";
import type { Logger } from "../../core/ports/logger.js";
import {
  createServiceBusAgentChannel,
  createServiceBusAgentInbox,
  createServiceBusRequestChannel,
} from "./bus.js";
import type { ServiceBusReceivingClientLike } from "./client.js";
import { createServiceBusRequestReceiver } from "./receiver.js";

export interface ServiceBusLocalBusOptions {
  /** The client every piece shares; closed by `close()` when `ownsClient` is set. */
  readonly client: ServiceBusReceivingClientLike;
  readonly ownsClient?: boolean;
  readonly requestsQueue?: string;
  readonly resultsQueue?: string;
  /** Largest body sent, in bytes of JSON (default 256 KiB). */
  readonly maxBodyBytes?: number;
  readonly logger?: Logger;
}

export function createServiceBusLocalBus(options: ServiceBusLocalBusOptions): LocalBus {
  const common = {
    client: options.client,
    ...(options.maxBodyBytes === undefined ? {} : { maxBodyBytes: options.maxBodyBytes }),
    ...(options.logger === undefined ? {} : { logger: options.logger }),
  };
  const queues = {
    ...(options.requestsQueue === undefined ? {} : { requestsQueue: options.requestsQueue }),
    ...(options.resultsQueue === undefined ? {} : { resultsQueue: options.resultsQueue }),
  };
  const requests = createServiceBusRequestChannel({ ...common, ...queues });
  const agents = createServiceBusAgentChannel({ ...common, ...queues });
  const opened: (AgentInbox | RequestReceiver)[] = [];
  return {
    sendRequest: (request) => requests.sendRequest(request),
    sendToAgent: (agentId, message) => agents.sendToAgent(agentId, message),
    openRequestReceiver() {
      const receiver = createServiceBusRequestReceiver({ ...common, ...queues });
      opened.push(receiver);
      return receiver;
    },
    openAgentInbox(agentId: string) {
      const inbox = createServiceBusAgentInbox({ ...common, ...queues, agentId });
      opened.push(inbox);
      return inbox;
    },
    async close() {
      for (const piece of opened.splice(0)) await piece.close().catch(() => undefined);
      await requests.close();
      await agents.close();
      if (options.ownsClient === true) await options.client.close();
    },
  };
}
