/**
 * A local stand-in for the Functions host's HTTP side, for the embedded default and tests: a
 * loopback server that hands each request to the exported handler registered for its method and
 * route as a real `HttpRequest`, and writes the handler's `HttpResponseInit` back — status,
 * headers and body as the handler set them, nothing added.
 */
import functionsRuntime, {
  type HttpRequest,
  type HttpResponseInit,
  type InvocationContext,
} from "@azure/functions";
import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";

export type HttpFunctionHandler = (
  request: HttpRequest,
  context: InvocationContext,
) => Promise<HttpResponseInit>;

export interface LocalHttpRoute {
  readonly method: string;
  /** As in `app.http(..., {route})`, under `/api/`: `status/page`, `deployments/{id}`. */
  readonly route: string;
  readonly functionName: string;
  readonly handler: HttpFunctionHandler;
}

export interface LocalHttpHost {
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  close(): Promise<void>;
}

const MAX_BODY_BYTES = 1024 * 1024;

function matchRoute(route: string, path: string): Record<string, string> | undefined {
  const want = route.split("/");
  const got = path.split("/");
  if (want.length !== got.length) return undefined;
  const params: Record<string, string> = {};
  for (const [i, part] of want.entries()) {
    const actual = got[i]!;
    if (part.startsWith("{") && part.endsWith("}")) params[part.slice(1, -1)] = decodeURIComponent(actual);
    else if (part !== actual) return undefined;
  }
  return params;
}

async function readBody(request: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) break;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

export async function startLocalHttpHost(
  routes: readonly LocalHttpRoute[],
  onError?: (error: unknown) => void,
): Promise<LocalHttpHost> {
  const server: Server = createServer((incoming, response) => {
    void (async () => {
      const url = new URL(incoming.url ?? "/", "http://127.0.0.1");
      const path = url.pathname.replace(/^\/api\//, "");
      const found = routes
        .map((r) => ({ r, params: r.method === incoming.method ? matchRoute(r.route, path) : undefined }))
        .find((m) => m.params !== undefined);
      if (found === undefined) {
        response.writeHead(404).end();
        return;
      }
      const headers: Record<string, string> = {};
      for (const [name, value] of Object.entries(incoming.headers)) {
        if (typeof value === "string") headers[name] = value;
      }
      const body =
        incoming.method === "GET" || incoming.method === "HEAD" ? undefined : await readBody(incoming);
      const request = new functionsRuntime.HttpRequest({
        method: incoming.method ?? "GET",
        url: url.toString(),
        headers,
        params: found.params!,
        ...(body === undefined ? {} : { body: { bytes: body } }),
      });
      const context = new functionsRuntime.InvocationContext({
        functionName: found.r.functionName,
        invocationId: randomUUID(),
        logHandler: () => undefined,
      });
      try {
        const result = await found.r.handler(request, context);
        const out: Record<string, string> = {};
        new Headers(result.headers).forEach((value, name) => {
          out[name] = value;
        });
        let text = "";
        if (result.jsonBody !== undefined) {
          text = JSON.stringify(result.jsonBody);
          out["content-type"] ??= "application/json";
        } else if (typeof result.body === "string") text = result.body;
        response.writeHead(result.status ?? 200, out).end(text);
      } catch (error) {
        onError?.(error);
        response.writeHead(500).end();
      }
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
