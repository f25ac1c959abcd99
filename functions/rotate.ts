/**
 * `rotate`: Service Bus trigger on the session-enabled `rotate-key` queue (session = key name,
 * so one key's rotations run one at a time; the use case also holds a lease per key in state).
 * Idempotent by `sourceEventId`. Settlement as in `attest`: return to complete, throw to abandon;
 * a final transient failure is recorded and then thrown so Service Bus dead-letters it.
 */
import { app, type InvocationContext } from "@azure/functions";
import { composition } from "./composition/lazy.js";
import { contextLogger, serviceBusDelivery, settle } from "./composition/invocation.js";

export const rotateTrigger = {
  connection: "ServiceBusConnection",
  queueName: "rotate-key",
  isSessionsEnabled: true,
} as const;

export async function rotate(message: unknown, context: InvocationContext): Promise<void> {
  const { rotate: handle } = await composition();
  const outcome = await handle(message, serviceBusDelivery(context), contextLogger(context));
  settle(outcome.settlement);
}

app.serviceBusQueue("rotate", { ...rotateTrigger, handler: rotate });
