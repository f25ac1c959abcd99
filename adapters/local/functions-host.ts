/**
 * A local stand-in for the Azure Functions host, for the embedded default: it takes the same
 * exported handlers the function files register, feeds them messages from a local queue with
 * a real `InvocationContext` (trigger metadata camel-cased as the Node worker does), and settles
 * each message the way Service Bus would after the function returns or throws — complete, or
 * abandon for redelivery, or, once the delivery count reaches the maximum, dead-letter with the
 * error's code as the reason. Timer functions run on their NCRONTAB schedules (`startLocalTimer`).
 */
// The package is CommonJS and Node's ESM loader cannot see `InvocationContext` as a named
// export, so the class is taken from the default export.
import functionsRuntime, { type InvocationContext } from "@azure/functions";
import { randomUUID } from "node:crypto";
import { Cron } from "croner";
import { isShieldError } from "../../core/errors.js";
import type { LockedMessage, RequestReceiver } from "../../core/ports/bus.js";
import { silentLogger, type Logger } from "../../core/ports/logger.js";

export type QueueFunctionHandler = (message: unknown, context: InvocationContext) => Promise<void>;

export interface LocalFunctionsHostOptions {
  readonly functionName: string;
  readonly handler: QueueFunctionHandler;
  readonly receiver: RequestReceiver;
  /** Deliveries before a failing message is dead-lettered (Service Bus default 10). */
  readonly maxDeliveryCount?: number;
  /** Messages handled at once (host.json `maxConcurrentCalls`). */
  readonly concurrency?: number;
  readonly logger?: Logger;
}

export interface LocalFunctionsHost {
  /** Counts since start, for status output and tests. */
  stats(): { completed: number; abandoned: number; deadLettered: number };
  /** Resolves when every in-flight invocation has settled. */
  idle(): Promise<void>;
  stop(): Promise<void>;
}

const RECEIVE_WAIT_MS = 1_000;

export function startLocalFunctionsHost(options: LocalFunctionsHostOptions): LocalFunctionsHost {
  const maxDeliveryCount = options.maxDeliveryCount ?? 10;
  const concurrency = options.concurrency ?? 4;
  const log = options.logger ?? silentLogger;
  const counts = { completed: 0, abandoned: 0, deadLettered: 0 };
  const inFlight = new Set<Promise<void>>();
  let stopping = false;

  async function invoke(message: LockedMessage): Promise<void> {
    const invocationId = randomUUID();
    const context: InvocationContext = new functionsRuntime.InvocationContext({
      functionName: options.functionName,
      invocationId,
      triggerMetadata: {
        messageId: message.messageId,
        deliveryCount: message.deliveryCount,
        enqueuedTimeUtc: message.enqueuedAt.toISOString(),
      },
      // The function's own log lines: forwarded as they are, never with the message body.
      logHandler: (level, ...args) =>
        log(
          level === "error"
            ? "error"
            : level === "warning"
              ? "warn"
              : level === "debug" || level === "trace"
                ? "debug"
                : "info",
          args.map(String).join(" "),
          {
            function: options.functionName,
            invocationId,
          },
        ),
    });
    try {
      await options.handler(message.body, context);
      await message.complete();
      counts.completed++;
    } catch (error) {
      const code = isShieldError(error) ? error.code : "Error";
      const description = error instanceof Error ? error.message : String(error);
      if (message.deliveryCount >= maxDeliveryCount) {
        await message.deadLetter(code, description);
        counts.deadLettered++;
        log("warn", "message dead-lettered", {
          function: options.functionName,
          messageId: message.messageId,
          reason: code,
        });
      } else {
        await message.abandon();
        counts.abandoned++;
      }
    }
  }

  async function loop(worker: number): Promise<void> {
    while (!stopping) {
      let message: LockedMessage | undefined;
      try {
        message = await options.receiver.receive(RECEIVE_WAIT_MS);
      } catch (error) {
        log("error", "receive failed", { worker, code: isShieldError(error) ? error.code : "Error" });
        await new Promise((resolve) => setTimeout(resolve, RECEIVE_WAIT_MS).unref());
        continue;
      }
      if (message === undefined) continue;
      const run = invoke(message).catch((error: unknown) => {
        log("error", "settlement failed", {
          messageId: message.messageId,
          code: isShieldError(error) ? error.code : "Error",
        });
      });
      inFlight.add(run);
      await run;
      inFlight.delete(run);
    }
  }

  const workers = Array.from({ length: concurrency }, (_, i) => loop(i));

  return {
    stats: () => ({ ...counts }),
    async idle() {
      await Promise.all([...inFlight]);
    },
    async stop() {
      stopping = true;
      await options.receiver.close();
      await Promise.all(workers);
    },
  };
}

export type TimerFunctionHandler = (
  timer: functionsRuntime.Timer,
  context: InvocationContext,
) => Promise<void>;

export interface LocalTimerOptions {
  readonly functionName: string;
  /** The NCRONTAB schedule the function registers with (six fields, seconds first). */
  readonly schedule: string;
  readonly handler: TimerFunctionHandler;
  readonly logger?: Logger;
}

export interface LocalTimer {
  stats(): { runs: number; failures: number; skipped: number };
  stop(): Promise<void>;
}

/**
 * A timer trigger as the Functions host runs one: on its NCRONTAB schedule (read with `croner`,
 * which takes the same six-field form), one run at a time — a tick that comes while the last
 * run is still going is skipped, and the next run is told it is past due, as the host's
 * singleton timer lock does. A failing run is logged; the schedule goes on.
 */
export function startLocalTimer(options: LocalTimerOptions): LocalTimer {
  const log = options.logger ?? silentLogger;
  const counts = { runs: 0, failures: 0, skipped: 0 };
  let running: Promise<void> | undefined;
  let pastDue = false;
  let last: Date | undefined;
  const job = new Cron(options.schedule, { protect: false }, () => {
    if (running !== undefined) {
      counts.skipped++;
      pastDue = true;
      return;
    }
    const now = new Date();
    const timer: functionsRuntime.Timer = {
      isPastDue: pastDue,
      schedule: { adjustForDST: true },
      scheduleStatus: {
        last: (last ?? now).toISOString(),
        next: job.nextRun()?.toISOString() ?? "",
        lastUpdated: now.toISOString(),
      },
    };
    pastDue = false;
    last = now;
    const invocationId = randomUUID();
    const context: InvocationContext = new functionsRuntime.InvocationContext({
      functionName: options.functionName,
      invocationId,
      logHandler: (level, ...args) =>
        log(level === "error" ? "error" : level === "warning" ? "warn" : "info", args.map(String).join(" "), {
          function: options.functionName,
          invocationId,
        }),
    });
    running = options
      .handler(timer, context)
      .then(() => {
        counts.runs++;
      })
      .catch((error: unknown) => {
        counts.failures++;
        log("error", "timer function failed", {
          function: options.functionName,
          code: isShieldError(error) ? error.code : "Error",
        });
      })
      .finally(() => {
        running = undefined;
      });
  });
  return {
    stats: () => ({ ...counts }),
    async stop() {
      job.stop();
      await running;
    },
  };
}
