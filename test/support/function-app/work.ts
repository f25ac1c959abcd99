/**
 * Fixture: queue-triggered functions for the local host's tests. `work` (Service Bus, queue from
 * the app setting FIXTURE_QUEUE) fails while the body asks it to; `sessions` reads a
 * session-enabled queue; `produce` (HTTP) writes to FIXTURE_QUEUE through an output binding.
 */
import { app, output, type HttpRequest, type InvocationContext } from "@azure/functions";
import { calls } from "./lib/recorder.js";

export async function work(message: unknown, context: InvocationContext): Promise<void> {
  calls.push({
    functionName: "work",
    input: message,
    triggerMetadata: context.triggerMetadata,
    at: Date.now(),
  });
  await new Promise((resolve) => setTimeout(resolve, 20));
  const failUntil = (message as { failUntil?: number }).failUntil ?? 0;
  const count = Number(context.triggerMetadata?.["deliveryCount"]);
  if (count <= failUntil) throw new Error(`failing delivery ${count}`);
}

app.serviceBusQueue("work", { connection: "FixtureBus", queueName: "%FIXTURE_QUEUE%", handler: work });

app.serviceBusQueue("sessions", {
  connection: "FixtureBus",
  queueName: "%FIXTURE_SESSION_QUEUE%",
  isSessionsEnabled: true,
  handler: (message: unknown, context: InvocationContext) => {
    calls.push({
      functionName: "sessions",
      input: message,
      triggerMetadata: context.triggerMetadata,
      at: Date.now(),
    });
    return new Promise((resolve) => setTimeout(resolve, 30));
  },
});

const queued = output.serviceBusQueue({ connection: "FixtureBus", queueName: "%FIXTURE_QUEUE%" });

app.http("produce", {
  methods: ["POST"],
  authLevel: "anonymous",
  route: "produce",
  extraOutputs: [queued],
  handler: async (request: HttpRequest, context: InvocationContext) => {
    context.extraOutputs.set(queued, await request.json());
    return { status: 202 };
  },
});
