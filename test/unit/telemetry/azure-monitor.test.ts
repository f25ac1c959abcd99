/**
 * The Application Insights exporter starts only when a connection string is configured, with
 * that connection string, once per process — and the functions' composition without one never
 * loads Microsoft's distro.
 */
import { afterEach, describe, expect, it } from "vitest";
import {
  forgetAzureMonitorForTests,
  startAzureMonitor,
  type AzureMonitorLoader,
} from "../../../adapters/telemetry/azure-monitor.js";

const CONNECTION =
  "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://ingest.test/";

function fakeDistro() {
  const calls: unknown[] = [];
  let loads = 0;
  const load: AzureMonitorLoader = () => {
    loads += 1;
    return Promise.resolve({ useAzureMonitor: (options?: unknown) => void calls.push(options) });
  };
  return { load, calls, loads: () => loads };
}

afterEach(() => forgetAzureMonitorForTests());

describe("startAzureMonitor", () => {
  it("neither loads nor starts the distro without a connection string", async () => {
    const distro = fakeDistro();
    expect(await startAzureMonitor(undefined, distro.load)).toBe(false);
    expect(await startAzureMonitor("  ", distro.load)).toBe(false);
    expect(distro.loads()).toBe(0);
  });

  it("starts it once, with the connection string, however often it is asked", async () => {
    const distro = fakeDistro();
    expect(await startAzureMonitor(CONNECTION, distro.load)).toBe(true);
    expect(await startAzureMonitor(CONNECTION, distro.load)).toBe(true);
    expect(distro.loads()).toBe(1);
    expect(distro.calls).toEqual([{ azureMonitorExporterOptions: { connectionString: CONNECTION } }]);
  });

  it("a distro that fails to load is reported, and tried again next time", async () => {
    let attempts = 0;
    const failing: AzureMonitorLoader = () => {
      attempts += 1;
      return Promise.reject(new Error("cannot load"));
    };
    await expect(startAzureMonitor(CONNECTION, failing)).rejects.toThrow("cannot load");
    await expect(startAzureMonitor(CONNECTION, failing)).rejects.toThrow("cannot load");
    expect(attempts).toBe(2);
  });
});
