/**
 * One function worker process of the scale simulation (scripts/sim.ts): the real `attest`,
 * `rotate` and `policy-updates` handlers under the local functions host, each on its Storage
 * queue, with the composition root built from the settings the simulation passes in
 * `SHIELD_SIM_SETTINGS` (JSON). It prints `ready` once listening and, on SIGTERM, one JSON line
 * with its hosts' counts before it exits.
 */
import { createStorageQueueBus } from "../adapters/storage-queue/bus.js";
import { startLocalFunctionsHost, type LocalFunctionsHost } from "../adapters/local/functions-host.js";
import { attest } from "../functions/attest.js";
import { rotate } from "../functions/rotate.js";
import { policyUpdates } from "../functions/policy-updates.js";
import { composition, resetComposition } from "../functions/composition/root.js";
import type { Logger } from "../core/ports/logger.js";

interface WorkerSettings {
  readonly env: Readonly<Record<string, string>>;
  readonly connectionString: string;
  readonly requestsQueue: string;
  readonly rotateQueue: string;
  readonly policyQueue: string;
  readonly maxDeliveryCount: number;
  readonly concurrency: number;
}

/** Warnings and errors of the hosts and functions go to stderr (never a message body). */
const logger: Logger = (level, message, fields) => {
  if (level === "warn" || level === "error" || process.env["SHIELD_SIM_VERBOSE"] === "1")
    process.stderr.write(`sim worker ${process.pid} ${level}: ${message} ${JSON.stringify(fields ?? {})}\n`);
};

async function main(): Promise<void> {
  const settings = JSON.parse(process.env["SHIELD_SIM_SETTINGS"] ?? "{}") as WorkerSettings;
  Object.assign(process.env, settings.env);
  await composition();
  const queue = (requestsQueue: string) =>
    createStorageQueueBus({
      connectionString: settings.connectionString,
      requestsQueue,
      maxDeliveryCount: settings.maxDeliveryCount,
      minPollMs: 20,
      maxPollMs: 200,
    });
  const buses = [queue(settings.requestsQueue), queue(settings.rotateQueue), queue(settings.policyQueue)];
  const [requests, rotations, policies] = buses as [
    ReturnType<typeof queue>,
    ReturnType<typeof queue>,
    ReturnType<typeof queue>,
  ];
  const hosts: Record<string, LocalFunctionsHost> = {
    attest: startLocalFunctionsHost({
      functionName: "attest",
      handler: attest,
      receiver: requests.openRequestReceiver(),
      maxDeliveryCount: settings.maxDeliveryCount,
      concurrency: settings.concurrency,
      logger,
    }),
    rotate: startLocalFunctionsHost({
      functionName: "rotate",
      handler: rotate,
      receiver: rotations.openRequestReceiver(),
      maxDeliveryCount: settings.maxDeliveryCount,
      concurrency: 1,
      logger,
    }),
    policyUpdates: startLocalFunctionsHost({
      functionName: "policy-updates",
      handler: policyUpdates,
      receiver: policies.openRequestReceiver(),
      maxDeliveryCount: settings.maxDeliveryCount,
      concurrency: 1,
      logger,
    }),
  };
  // The hosts' polling timers do not hold the process open; this does, until SIGTERM.
  const keepAlive = setInterval(() => undefined, 1 << 30);
  process.stdout.write("ready\n");
  process.once("SIGTERM", () => {
    clearInterval(keepAlive);
    void (async () => {
      for (const host of Object.values(hosts)) await host.stop();
      const counts = Object.fromEntries(Object.entries(hosts).map(([name, host]) => [name, host.stats()]));
      for (const bus of buses) await bus.close();
      await resetComposition();
      process.stdout.write(`${JSON.stringify(counts)}\n`);
      process.exit(0);
    })();
  });
}

main().catch((error: unknown) => {
  process.stderr.write(`sim worker failed: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
