/**
 * Exporting to Application Insights through Microsoft's OpenTelemetry distro
 * (`@azure/monitor-opentelemetry`), only when `APPLICATIONINSIGHTS_CONNECTION_STRING` is set.
 * The distro is loaded with a dynamic import on the first composition, so a process without it
 * configured never loads it, and one with it pays once. `useAzureMonitor` registers the global
 * providers, so it runs at most once per process.
 */
import type { AzureMonitorOpenTelemetryOptions } from "@azure/monitor-opentelemetry";

export type AzureMonitorLoader = () => Promise<{
  useAzureMonitor(options?: AzureMonitorOpenTelemetryOptions): void;
}>;

const loadDistro: AzureMonitorLoader = () => import("@azure/monitor-opentelemetry");

let started: Promise<boolean> | undefined;

/**
 * Starts the distro when a connection string is given; resolves to whether it runs. A second
 * call returns the first call's answer.
 */
export function startAzureMonitor(
  connectionString: string | undefined,
  load: AzureMonitorLoader = loadDistro,
): Promise<boolean> {
  if (connectionString === undefined || connectionString.trim() === "") return Promise.resolve(false);
  started ??= load()
    .then((distro) => {
      distro.useAzureMonitor({ azureMonitorExporterOptions: { connectionString } });
      return true;
    })
    .catch((error: unknown) => {
      started = undefined;
      throw error;
    });
  return started;
}

/** Forgets that the distro was started (tests only: the global providers stay registered). */
export function forgetAzureMonitorForTests(): void {
  started = undefined;
}
