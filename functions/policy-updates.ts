/**
 * `policy-updates`: Service Bus queue trigger on `policy-updates` — applies a deployment's
 * `policy-update` key by key (core/rollout), one key at a time under its lease. An adapter only:
 * the body is parsed from unknown with the message schema and a size limit; a malformed one is
 * recorded in the intake audit and completed (it can never succeed), a transient failure is
 * thrown so Service Bus redelivers it, and a refusal is recorded on the deployment by the use
 * case.
 */
import { app, type InvocationContext } from "@azure/functions";
import { ShieldError, isShieldError } from "../core/errors.js";
import { composition } from "./composition/lazy.js";
import { contextLogger, serviceBusDelivery } from "./composition/invocation.js";

export const POLICY_UPDATE_MAX_BYTES = 64 * 1024;

export async function policyUpdates(message: unknown, context: InvocationContext): Promise<void> {
  const log = contextLogger(context);
  // Loaded here, not at import: the message schemas are not needed to register the function.
  const { parsePolicyUpdate } = await import("../core/messages/index.js");
  let update;
  try {
    update = parsePolicyUpdate(message, { maxBytes: POLICY_UPDATE_MAX_BYTES });
  } catch (caught) {
    const error = isShieldError(caught)
      ? caught
      : new ShieldError("ERR_INTERNAL", "the policy-update could not be read", { cause: caught });
    log("error", "policy-update refused", { code: error.code });
    // Completed, not redelivered (it will never parse), so it is recorded first.
    const { rollout } = await composition();
    await rollout.rejectPolicyUpdate(error, serviceBusDelivery(context).messageId);
    return;
  }
  const { rollout } = await composition();
  await rollout.applyPolicyUpdate(update);
  log("info", "policy-update handled", { deploymentId: update.deploymentId, keys: update.keys.length });
}

app.serviceBusQueue("policy-updates", {
  connection: "ServiceBusConnection",
  queueName: "policy-updates",
  handler: policyUpdates,
});
