/**
 * `key-rotate`: HTTP trigger, `POST /api/keys/{keyName}/rotate` (function key; behind App Service
 * authentication with Entra ID the operator's name comes from `x-ms-client-principal-name`) —
 * rotate a key now. It queues a `rotate-key` with reason `manual` and answers 202: the `rotate`
 * function makes the version, serialised with the key's other rotations and policy updates, and
 * tells its holders. Audited with the operator's name and the invocation id. 404 for a key the
 * key store does not know, 400 for a malformed key name; nothing is queued then.
 */
import { app, type HttpRequest, type HttpResponseInit, type InvocationContext } from "@azure/functions";
import { isShieldError } from "../core/errors.js";
import { KEY_NAME_PATTERN } from "../core/messages/fields.js";
import { composition } from "./composition/root.js";
import { contextLogger } from "./composition/invocation.js";
import { json, operatorOf, requestIdOf } from "./composition/operator.js";

export async function rotateKeyNow(
  request: HttpRequest,
  context: InvocationContext,
): Promise<HttpResponseInit> {
  const keyName = request.params["keyName"] ?? "";
  if (!KEY_NAME_PATTERN.test(keyName)) {
    return json(400, { error: { code: "ERR_INPUT_MALFORMED", message: "keyName is not a valid key name" } });
  }
  const { operator } = await composition();
  const by = { operator: operatorOf(request), requestId: `rotate-${requestIdOf(context)}` };
  try {
    const queued = await operator.rotateKey(keyName, by, contextLogger(context));
    return json(202, { action: "rotate", queued: true, ...queued });
  } catch (error) {
    if (isShieldError(error) && error.code === "ERR_CONFIG") {
      return json(404, { error: { code: "ERR_KEY_UNKNOWN", message: `no key ${keyName} is known` } });
    }
    const code = isShieldError(error) ? error.code : "ERR_INTERNAL";
    return json(isShieldError(error) && !error.transient ? 400 : 503, {
      error: { code, message: "not done" },
    });
  }
}

app.http("key-rotate", {
  methods: ["POST"],
  authLevel: "function",
  route: "keys/{keyName}/rotate",
  handler: rotateKeyNow,
});
