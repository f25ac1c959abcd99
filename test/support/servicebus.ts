/**
 * The local Service Bus endpoint for tests: one per test file, with a namespace-wide rule that
 * may do everything, one that may only listen and one that may only send, and queues made on
 * demand under names no other test uses. Clients are the unmodified `@azure/service-bus` one,
 * with retries off so that a refusal shows at once.
 */
import { randomBytes } from "node:crypto";
import { ServiceBusClient } from "@azure/service-bus";
import {
  startLocalServiceBus,
  type LocalServiceBus,
  type QueueSettings,
  type SharedAccessRule,
} from "../../adapters/local/servicebus/server.js";

export const RULES = {
  root: {
    keyName: "RootManageSharedAccessKey",
    key: randomBytes(32).toString("base64"),
    rights: ["Manage", "Send", "Listen"],
  },
  listen: { keyName: "listen-only", key: randomBytes(32).toString("base64"), rights: ["Listen"] },
  send: { keyName: "send-only", key: randomBytes(32).toString("base64"), rights: ["Send"] },
} as const satisfies Record<string, SharedAccessRule>;

export function startTestServiceBus(): Promise<LocalServiceBus> {
  return startLocalServiceBus({ queues: [], rules: Object.values(RULES) });
}

/** A queue name no other test uses, with the given settings, created on the endpoint. */
export function isolatedQueue(
  endpoint: LocalServiceBus,
  suffix: string,
  settings: Omit<QueueSettings, "name"> = {},
): string {
  const name = `t${randomBytes(5).toString("hex")}-${suffix}`;
  endpoint.createQueue({ ...settings, name });
  return name;
}

export function testClient(endpoint: LocalServiceBus, rule: keyof typeof RULES = "root"): ServiceBusClient {
  return new ServiceBusClient(endpoint.connectionString(RULES[rule].keyName), {
    retryOptions: { maxRetries: 0, timeoutInMs: 10_000 },
  });
}
