/**
 * Operator endpoints (function key; behind App Service authentication with Entra ID the
 * caller's name comes from `x-ms-client-principal-name`):
 *
 * - `POST /api/agents/{agentId}/revoke` — revoke an agent now: its keys are revoked to it, keys
 *   set to rotate on revocation are rotated, and `attest` refuses it;
 * - `POST /api/agents/{agentId}/reinstate` — let a revoked agent attest again.
 *
 * Both are audited with the operator's name and the invocation id. 404 for an unknown agent,
 * 400 for a malformed agent id.
 */
import { app, type HttpRequest, type HttpResponseInit, type InvocationContext } from "@azure/functions";
import { isShieldError } from "../core/errors.js";
import { composition } from "./composition/lazy.js";
import { contextLogger } from "./composition/invocation.js";
import { json, operatorOf, requestIdOf } from "./composition/operator.js";

async function act(
  action: "revoke" | "reinstate",
  request: HttpRequest,
  context: InvocationContext,
): Promise<HttpResponseInit> {
  const agentId = request.params["agentId"] ?? "";
  // Loaded here, not at import: the message schemas are not needed to register the function.
  const { IDENTIFIER_PATTERN } = await import("../core/messages/fields.js");
  if (!IDENTIFIER_PATTERN.test(agentId)) {
    return json(400, { error: { code: "ERR_INPUT_MALFORMED", message: "agentId is not a valid agent id" } });
  }
  const { operator } = await composition();
  const by = { operator: operatorOf(request), requestId: `${action}-${requestIdOf(context)}` };
  try {
    const outcome =
      action === "revoke"
        ? await operator.revoke(agentId, by, contextLogger(context))
        : await operator.reinstate(agentId, by, contextLogger(context));
    return json(200, { agentId, action, ...outcome });
  } catch (error) {
    if (isShieldError(error) && error.code === "ERR_CONFIG") {
      return json(404, { error: { code: "ERR_AGENT_UNKNOWN", message: `no agent ${agentId} is known` } });
    }
    const code = isShieldError(error) ? error.code : "ERR_INTERNAL";
    return json(isShieldError(error) && !error.transient ? 400 : 503, {
      error: { code, message: "not done" },
    });
  }
}

export const revokeAgent = (request: HttpRequest, context: InvocationContext) =>
  act("revoke", request, context);
export const reinstateAgent = (request: HttpRequest, context: InvocationContext) =>
  act("reinstate", request, context);

app.http("agent-revoke", {
  methods: ["POST"],
  authLevel: "function",
  route: "agents/{agentId}/revoke",
  handler: revokeAgent,
});
app.http("agent-reinstate", {
  methods: ["POST"],
  authLevel: "function",
  route: "agents/{agentId}/reinstate",
  handler: reinstateAgent,
});
