/**
 * Azurite's Table and Queue services, started inside the calling process (the embedded default
 * and the test runs) on ports the OS picks (listen on port 0, then read the address back), with
 * in-memory persistence. Running in-process means nothing can outlive the process and no port is
 * ever guessed; it also skips Azurite's command-line entry, which is where its telemetry lives.
 *
 * Azurite publishes no programmatic API, so this reaches its server classes by path
 * (`azurite/dist/src/<service>/<Service>Server`). Those paths have been stable across 3.x;
 * if an upgrade moves them, the error below names the file that was not found.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface AzuriteServices {
  /** Account connection string with TableEndpoint and QueueEndpoint. */
  readonly connectionString: string;
  readonly tableEndpoint: string;
  readonly queueEndpoint: string;
  readonly version: string;
  stop(): Promise<void>;
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

export async function startAzurite(): Promise<AzuriteServices> {
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
  const location = await mkdtemp(join(tmpdir(), "shield-azurite-"));
  // Positional arguments as Azurite's own entry points pass them (host, port, keep-alive,
  // metadata path, ..., access log off, debug log off, loose, skipApiVersionCheck, no TLS,
  // no OAuth, product-style URLs off, in-memory persistence).
  const table = new TableServer(
    new TableConfiguration(
      HOST,
      0,
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
      true,
    ),
  );
  const queue = new QueueServer(
    new QueueConfiguration(
      HOST,
      0,
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
      true,
    ),
  );
  const started: AzuriteServer[] = [];
  const stop = async (): Promise<void> => {
    for (const server of started.splice(0).reverse()) {
      await server.close();
      await server.clean();
    }
    await rm(location, { recursive: true, force: true });
  };
  try {
    await table.start();
    started.push(table);
    await queue.start();
    started.push(queue);
  } catch (error) {
    await stop();
    throw error;
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
  return { connectionString, tableEndpoint, queueEndpoint, version, stop };
}
