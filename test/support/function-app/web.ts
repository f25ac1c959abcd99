/** Fixture: HTTP functions at each auth level, an Event Grid function, a timer and hooks. */
import { app, type HttpRequest, type InvocationContext, type Timer } from "@azure/functions";
import { calls, hookEvents } from "./lib/recorder.js";

app.http("open", {
  methods: ["GET"],
  authLevel: "anonymous",
  route: "open/{name}",
  handler: (request: HttpRequest) => ({ jsonBody: { hello: request.params["name"] } }),
});
app.http("keyed", {
  methods: ["GET"],
  authLevel: "function",
  route: "keyed",
  handler: () => ({ body: "keyed" }),
});
app.http("admin-only", {
  methods: ["GET"],
  authLevel: "admin",
  route: "admin",
  handler: () => ({ body: "admin" }),
});

app.eventGrid("events", {
  handler: (event: unknown, context: InvocationContext) => {
    calls.push({
      functionName: "events",
      input: event,
      triggerMetadata: context.triggerMetadata,
      at: Date.now(),
    });
  },
});

app.timer("tick", {
  schedule: "%FIXTURE_SCHEDULE%",
  handler: (timer: Timer) => {
    calls.push({ functionName: "tick", input: timer, triggerMetadata: undefined, at: Date.now() });
  },
});

app.hook.postInvocation((context) => {
  hookEvents.push(
    `${context.invocationContext.functionName}:${context.error === undefined ? "ok" : "error"}`,
  );
});
