/**
 * Azurite's Table and Queue services, started inside the calling process (the embedded default
 * and the test runs) on ports the OS picks (listen on port 0, then read the address back), with
 * in-memory persistence. Running in-process means nothing can outlive the process and no port is
 * ever guessed; it also skips Azurite's command-line entry, which is where its telemetry lives.
 *
 * With `location` (`npm start -- --state DIR`), Azurite keeps its data on disk there instead, as
 * its own `--location` does: LokiJS databases (`table.json`, `queue.json`, `queue-extents.json`)
 * that it saves every 5 s and when it closes, and queue messages under `queue/`; stopping leaves
 * them in place. `ports` asks for the ports of an earlier run; one that is taken is replaced by a
 * free one, and `onPortTaken` is told.
 *
 * Azurite publishes no programmatic API, so this reaches its server classes by path
 * (`azurite/dist/src/<service>/<Service>Server`). Those paths have been stable across 3.x;
 * if an upgrade moves them, the error below names the file that was not found.
 */
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ShieldError } from "../../core/errors.js";

export interface AzuriteServices {
  /** Account connection string with TableEndpoint and QueueEndpoint. */
  readonly connectionString: string;
  readonly tableEndpoint: string;
  readonly queueEndpoint: string;
  readonly version: string;
  /** The ports the services listen on. */
  readonly ports: { readonly table: number; readonly queue: number };
  stop(): Promise<void>;
}

export interface AzuriteOptions {
  /** A directory for Azurite's data, kept when it stops; in memory when absent. */
  readonly location?: string;
  /** Ports to listen on (default: any free one each). */
  readonly ports?: { readonly table?: number; readonly queue?: number };
  /** Told when a requested port is taken and another is used. */
  readonly onPortTaken?: (service: "table" | "queue", port: number) => void;
}

/** The part of Azurite's ServerBase this harness uses. */
interface AzuriteServer {
  start(): Promise<void>;
  close(): Promise<void>;
  clean(): Promise<void>;
  getHttpServerAddress(): string;
}

type ServerConstructor = new (configuration: unknown) => AzuriteServer;
type ConfigurationConstructor = new (...args: unknown[]) => unknown;

const HOST = "127.0.0.1";
const require = createRequire(import.meta.url);

function load<T>(path: string): T {
  try {
    return (require(`azurite/dist/src/${path}`) as { default: T }).default;
  } catch (cause) {
    throw new Error(`Azurite module azurite/dist/src/${path} could not be loaded`, { cause });
  }
}

/** True when nothing listens on `port` of the loopback address (a probe: listen, then close). */
export async function isPortFree(port: number, host = HOST): Promise<boolean> {
  return await new Promise<boolean>((resolve) => {
    const probe = createServer();
    probe.once("error", () => resolve(false));
    probe.listen(port, host, () => probe.close(() => resolve(true)));
  });
}

export async function startAzurite(options: AzuriteOptions = {}): Promise<AzuriteServices> {
  const TableServer = load<ServerConstructor>("table/TableServer");
  const TableConfiguration = load<ConfigurationConstructor>("table/TableConfiguration");
  const QueueServer = load<ServerConstructor>("queue/QueueServer");
  const QueueConfiguration = load<ConfigurationConstructor>("queue/QueueConfiguration");
  const constants = require("azurite/dist/src/common/utils/constants") as {
    EMULATOR_ACCOUNT_NAME: string;
    EMULATOR_ACCOUNT_KEY: Buffer;
  };
  const { version } = require("azurite/package.json") as { version: string };

  // In-memory persistence writes nothing; the folder only gives the metadata paths a home.
  const inMemory = options.location === undefined;
  const location = inMemory ? await mkdtemp(join(tmpdir(), "shield-azurite-")) : options.location;
  if (!inMemory) await mkdir(location, { recursive: true, mode: 0o700 });
  const portFor = async (service: "table" | "queue"): Promise<number> => {
    const wanted = options.ports?.[service];
    if (wanted === undefined || wanted === 0) return 0;
    if (await isPortFree(wanted)) return wanted;
    options.onPortTaken?.(service, wanted);
    return 0;
  };
  // Positional arguments as Azurite's own entry points pass them (host, port, keep-alive,
  // metadata path, ..., access log off, debug log off, loose, skipApiVersionCheck, no TLS,
  // no OAuth, product-style URLs off, in-memory persistence or not).
  const table = new TableServer(
    new TableConfiguration(
      HOST,
      await portFor("table"),
      undefined,
      join(location, "table.json"),
      false,
      false,
      undefined,
      undefined,
      true,
      true,
      "",
      "",
      "",
      undefined,
      false,
      inMemory,
    ),
  );
  const queue = new QueueServer(
    new QueueConfiguration(
      HOST,
      await portFor("queue"),
      undefined,
      join(location, "queue.json"),
      join(location, "queue-extents.json"),
      [{ locationId: "Default", locationPath: join(location, "queue"), maxConcurrency: 1 }],
      false,
      undefined,
      false,
      undefined,
      true,
      true,
      "",
      "",
      "",
      undefined,
      false,
      inMemory,
    ),
  );
  const started: AzuriteServer[] = [];
  const stop = async (): Promise<void> => {
    for (const server of started.splice(0).reverse()) {
      await server.close();
      if (inMemory) await server.clean();
    }
    if (inMemory) await rm(location, { recursive: true, force: true });
  };
  try {
    await table.start();
    started.push(table);
    await queue.start();
    started.push(queue);
  } catch (error) {
    await stop();
    if (inMemory) throw error;
    throw new ShieldError("ERR_IO", `Azurite could not open its data in ${location}`, { cause: error });
  }

  const account = constants.EMULATOR_ACCOUNT_NAME;
  const tableEndpoint = `${table.getHttpServerAddress()}/${account}`;
  const queueEndpoint = `${queue.getHttpServerAddress()}/${account}`;
  const connectionString = [
    "DefaultEndpointsProtocol=http",
    `AccountName=${account}`,
    `AccountKey=${constants.EMULATOR_ACCOUNT_KEY.toString("base64")}`,
    `TableEndpoint=${tableEndpoint}`,
    `QueueEndpoint=${queueEndpoint}`,
  ].join(";");
  const portOf = (address: string) => Number(new URL(address).port);
  const ports = { table: portOf(tableEndpoint), queue: portOf(queueEndpoint) };
  return { connectionString, tableEndpoint, queueEndpoint, version, ports, stop };
}
