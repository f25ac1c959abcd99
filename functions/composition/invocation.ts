/**
 * What every function adapter shares: a logger over the invocation's context (structured
 * fields, one JSON object per line, so log queries can filter on ids and codes) and reading
 * Service Bus trigger metadata, whose keys the Node worker camel-cases.
 */
import type { InvocationContext } from "@azure/functions";
import { ShieldError, isShieldErrorCode } from "../../core/errors.js";
import type { Logger } from "../../core/ports/logger.js";

/** What a queue use case asks of its trigger: complete, leave for redelivery, or dead-letter. */
export type QueueSettlement =
  | { readonly action: "complete" }
  | { readonly action: "retry"; readonly error: ShieldError }
  | { readonly action: "dead-letter"; readonly reason: string; readonly description: string };

/**
 * Maps a settlement to the Functions runtime's: return to complete; throw to abandon. Functions
 * has no explicit dead-letter call without the preview SDK bindings, so a final failure throws
 * too (Service Bus dead-letters it after its last delivery), and the error names the reason.
 */
export function settle(settlement: QueueSettlement): void {
  switch (settlement.action) {
    case "complete":
      return;
    case "retry":
      throw settlement.error;
    case "dead-letter":
      throw new ShieldError(
        isShieldErrorCode(settlement.reason) ? settlement.reason : "ERR_INTERNAL",
        `final delivery failed; dead-letter: ${settlement.description}`,
      );
  }
}

export function contextLogger(context: InvocationContext): Logger {
  return (level, message, fields) => {
    const line = fields === undefined ? message : `${message} ${JSON.stringify(fields)}`;
    switch (level) {
      case "debug":
        context.debug(line);
        break;
      case "info":
        context.info(line);
        break;
      case "warn":
        context.warn(line);
        break;
      case "error":
        context.error(line);
        break;
    }
  };
}

/** Service Bus delivery facts from trigger metadata (`deliveryCount` is 1 on first delivery). */
export function serviceBusDelivery(context: InvocationContext): { messageId: string; deliveryCount: number } {
  const meta = context.triggerMetadata ?? {};
  const count = Number(meta["deliveryCount"]);
  const messageId = meta["messageId"];
  return {
    messageId: typeof messageId === "string" && messageId.length > 0 ? messageId : context.invocationId,
    deliveryCount: Number.isSafeInteger(count) && count > 0 ? count : 1,
  };
}
