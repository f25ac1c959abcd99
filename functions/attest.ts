/**
 * `attest`: Service Bus trigger on `attestation-requests`. An adapter only: it reads the
 * delivery facts, runs the attest-and-release use case, and maps its settlement to the
 * runtime's — return to complete; throw to abandon (redelivery). On the last delivery the use
 * case has already told the agent and recorded why; throwing then lets Service Bus move the
 * message to the dead-letter queue (Functions has no explicit dead-letter call without the
 * preview SDK bindings), and the error names the reason.
 */
import { app, type InvocationContext } from "@azure/functions";
import { composition } from "./composition/lazy.js";
import { contextLogger, serviceBusDelivery, settle } from "./composition/invocation.js";

export const attestTrigger = {
  connection: "ServiceBusConnection",
  queueName: "attestation-requests",
} as const;

export async function attest(message: unknown, context: InvocationContext): Promise<void> {
  const { attest: handle } = await composition();
  const outcome = await handle(message, serviceBusDelivery(context), contextLogger(context));
  settle(outcome.settlement);
}

app.serviceBusQueue("attest", { ...attestTrigger, handler: attest });
