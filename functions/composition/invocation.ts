/**
 * What every function adapter shares: a logger over the invocation's context (structured
 * fields, one JSON object per line, so log queries can filter on ids and codes) and reading
 * Service Bus trigger metadata, whose keys the Node worker camel-cases.
 */
import type { InvocationContext } from "@azure/functions";
import type { Logger } from "../../core/ports/logger.js";

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
