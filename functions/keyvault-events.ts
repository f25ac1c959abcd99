/**
 * Key Vault key events (`KeyNearExpiry`, `KeyExpired`, `KeyNewVersionCreated`) into `rotate-key`
 * work, two ways:
 *
 * - `keyvault-events` (Event Grid trigger): the Functions host does the subscription handshake
 *   and hands over one event at a time, in the Event Grid schema;
 * - `keyvault-events-webhook` (HTTP, `POST /api/keyvault-events`, function key): an Event Grid
 *   webhook subscription in either schema — the Event Grid subscription-validation event is
 *   answered with `{"validationResponse": <code>}`, the CloudEvents handshake (`OPTIONS` with
 *   `WebHook-Request-Origin`) with `WebHook-Allowed-Origin`. A body that does not parse is 400
 *   with ERR_EVENT_MALFORMED, recorded, and nothing is queued; other failures are 503 so Event
 *   Grid delivers again.
 */
import { app, type HttpRequest, type HttpResponseInit, type InvocationContext } from "@azure/functions";
import { isShieldError } from "../core/errors.js";
import { composition } from "./composition/lazy.js";
import { contextLogger } from "./composition/invocation.js";

export async function keyVaultEvent(event: unknown, context: InvocationContext): Promise<void> {
  const { keyVaultEvents } = await composition();
  await keyVaultEvents(event, contextLogger(context));
}

export async function keyVaultEventsWebhook(
  request: HttpRequest,
  context: InvocationContext,
): Promise<HttpResponseInit> {
  if (request.method === "OPTIONS") {
    const origin = request.headers.get("webhook-request-origin");
    if (origin === null || origin.length > 256) {
      return json(400, {
        error: { code: "ERR_INPUT_MALFORMED", message: "WebHook-Request-Origin is required" },
      });
    }
    return { status: 200, headers: { "WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "120" } };
  }
  const declared = Number(request.headers.get("content-length") ?? "0");
  // Loaded here, not at import: the event schemas are not needed to register the function.
  const { MAX_EVENT_BATCH_BYTES } = await import("../core/lifecycle/keyvault-events.js");
  if (Number.isFinite(declared) && declared > MAX_EVENT_BATCH_BYTES) {
    return json(413, { error: { code: "ERR_INPUT_TOO_LARGE", message: "the event batch is too large" } });
  }
  const text = await request.text();
  const { keyVaultEvents } = await composition();
  try {
    const intake = await keyVaultEvents(text, contextLogger(context));
    if (intake.validationResponse !== undefined)
      return json(200, { validationResponse: intake.validationResponse });
    return json(200, { queued: intake.work.length, ignored: intake.ignored.length });
  } catch (error) {
    if (isShieldError(error) && !error.transient) {
      return json(400, { error: { code: error.code, message: error.message } });
    }
    return json(503, {
      error: { code: isShieldError(error) ? error.code : "ERR_INTERNAL", message: "try again" },
    });
  }
}

function json(status: number, body: unknown): HttpResponseInit {
  return { status, jsonBody: body, headers: { "content-type": "application/json" } };
}

app.eventGrid("keyvault-events", { handler: keyVaultEvent });
app.http("keyvault-events-webhook", {
  methods: ["POST", "OPTIONS"],
  authLevel: "function",
  route: "keyvault-events",
  handler: keyVaultEventsWebhook,
});
