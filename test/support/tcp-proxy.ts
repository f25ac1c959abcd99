/**
 * A TCP proxy for fault tests, put in front of Azurite or the local Service Bus endpoint: it
 * passes bytes both ways until a test tells it to add latency, reset every connection, swallow
 * traffic (a blackhole: connections are accepted and their bytes go nowhere) or restart (stop
 * listening and drop every connection for a while, then accept again on the same port, as a
 * storage front end or a broker does when it restarts).
 */
import { createServer, connect, type Server, type Socket } from "node:net";

export type ProxyMode =
  | { readonly kind: "pass" }
  | { readonly kind: "latency"; readonly ms: number }
  | { readonly kind: "blackhole" };

export interface TcpProxy {
  readonly port: number;
  /** `host:port` of the proxy. */
  readonly address: string;
  /** How bytes flow from now on (connections already open follow the new mode too). */
  setMode(mode: ProxyMode): void;
  /** Destroys every open connection at once (the peers see a reset); new ones are accepted. */
  resetAll(): void;
  /** Stops listening and drops every connection; listens again after `downMs`. */
  restart(downMs: number): Promise<void>;
  /** Connections accepted so far, and those cut by resetAll or restart. */
  stats(): { accepted: number; cut: number };
  close(): Promise<void>;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export async function startTcpProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  let mode: ProxyMode = { kind: "pass" };
  const pairs = new Set<{ client: Socket; upstream: Socket }>();
  const counts = { accepted: 0, cut: 0 };
  let closed = false;

  /** Forwards `from` → `to` under the current mode, keeping chunk order under latency. */
  const pipe = (from: Socket, to: Socket) => {
    let chain = Promise.resolve();
    from.on("data", (chunk: Buffer) => {
      const current = mode;
      if (current.kind === "blackhole") return;
      if (current.kind === "pass") {
        chain = chain.then(() => {
          if (!to.destroyed) to.write(chunk);
        });
        return;
      }
      chain = chain.then(async () => {
        await sleep(current.ms);
        if (!to.destroyed) to.write(chunk);
      });
    });
    from.on("end", () => {
      void chain.then(() => to.end());
    });
  };

  const server: Server = createServer((client) => {
    counts.accepted++;
    const upstream = connect(target.port, target.host);
    const pair = { client, upstream };
    pairs.add(pair);
    const drop = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", drop);
    upstream.on("error", drop);
    client.on("close", drop);
    upstream.on("close", drop);
    pipe(client, upstream);
    pipe(upstream, client);
  });

  const listen = (port: number) =>
    new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => {
        server.off("error", reject);
        resolve();
      });
    });
  const cutAll = () => {
    for (const pair of [...pairs]) {
      counts.cut++;
      // resetAndDestroy sends an RST, as a crashed peer does.
      pair.client.resetAndDestroy();
      pair.upstream.destroy();
      pairs.delete(pair);
    }
  };
  const stopListening = () =>
    new Promise<void>((resolve) => {
      if (!server.listening) {
        resolve();
        return;
      }
      server.close(() => resolve());
      cutAll();
    });

  await listen(0);
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("the proxy has no port");
  const port = address.port;

  return {
    port,
    address: `127.0.0.1:${port}`,
    setMode(next) {
      mode = next;
    },
    resetAll: cutAll,
    async restart(downMs) {
      await stopListening();
      await sleep(downMs);
      if (!closed) await listen(port);
    },
    stats: () => ({ ...counts }),
    async close() {
      closed = true;
      await stopListening();
    },
  };
}

/** An Azurite connection string whose Table endpoint goes through `proxy`. */
export function tableEndpointThrough(connectionString: string, proxy: TcpProxy): string {
  return connectionString.replace(
    /TableEndpoint=http:\/\/127\.0\.0\.1:\d+/,
    `TableEndpoint=http://${proxy.address}`,
  );
}

/** The host and port of a connection string's Table endpoint. */
export function tableEndpointOf(connectionString: string): { host: string; port: number } {
  const match = /TableEndpoint=http:\/\/([^:/;]+):(\d+)/.exec(connectionString);
  if (match === null) throw new Error("the connection string has no http TableEndpoint");
  return { host: match[1]!, port: Number(match[2]) };
}
