/**
 * The local Functions host: runs a function app from its own registrations
 * (`registrations.ts`), the way the Azure Functions host runs it from the metadata the worker
 * reports — nothing here names a function. Per trigger type:
 *
 * - `serviceBusTrigger` / `queueTrigger`: peek-lock receive from the queue the binding names
 *   (`%SETTING%` resolved from app settings) over the configured transport (queues.ts);
 *   complete when the handler returns, abandon when it throws, dead-letter at the max delivery
 *   count; `maxConcurrentCalls` / `maxConcurrentSessions` / `sessionIdleTimeout` from
 *   host.json `extensions.serviceBus`, `batchSize` / `maxDequeueCount` from
 *   `extensions.queues`;
 * - `timerTrigger`: its NCRONTAB schedule (a `%SETTING%` expression resolved as the host does)
 *   with `croner`, one run at a time, `runOnStartup` honoured;
 * - `httpTrigger`: routes under `/api/` (host.json `extensions.http.routePrefix`) on a loopback
 *   port; `authLevel` honoured — `function` takes the function key or the master key (`code`
 *   query parameter or `x-functions-key` header), `admin` only the master key, `anonymous`
 *   anything — 401 otherwise, as the host answers;
 * - `eventGridTrigger`: the host's Event Grid webhook, `POST
 *   /runtime/webhooks/eventgrid?functionName=<name>` with the `eventgrid_extension` system key,
 *   answering the subscription-validation handshake and handing each event of a notification
 *   to the function, one at a time (`deliverEventGrid` does the same in-process).
 *
 * Output bindings set through `context.extraOutputs` (Service Bus and Storage Queue outputs) are
 * sent once the handler returns, and only if it returns. `preInvocation` / `postInvocation`
 * hooks run around every invocation, `appStart` / `appTerminate` at start and stop. A trigger
 * type this host cannot run stops the start with a clear error, never a function left out.
 */
import functionsRuntime, { type HttpResponseInit, type InvocationContext } from "@azure/functions";
import { ServiceBusClient } from "@azure/service-bus";
import { randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { isShieldError } from "../../core/errors.js";
import { silentLogger, type Logger } from "../../core/ports/logger.js";
import { startLocalTimer, type LocalTimer } from "../../adapters/local/functions-host.js";
import { registeredHooks, type Binding, type HookName, type Registration } from "./registrations.js";
import {
  serviceBusSink,
  serviceBusSource,
  storageQueueSink,
  storageQueueSource,
  type QueueSink,
  type QueueSource,
} from "./queues.js";

export type Transport =
  /** Service Bus triggers and outputs on Storage Queues of the same names (Azurite). */
  | { readonly kind: "storage-queue"; readonly connectionString: string }
  /** Service Bus through `@azure/service-bus`; connection strings from the bindings' `connection` settings. */
  | { readonly kind: "servicebus"; readonly storageConnectionString?: string };

/** The parts of host.json this host reads. */
export interface HostJson {
  readonly extensions?: {
    readonly serviceBus?: {
      readonly maxConcurrentCalls?: number;
      readonly maxConcurrentSessions?: number;
      readonly sessionIdleTimeout?: string;
    };
    readonly queues?: {
      readonly batchSize?: number;
      readonly maxDequeueCount?: number;
      readonly visibilityTimeout?: string;
    };
    readonly http?: { readonly routePrefix?: string };
  };
}

/** What happened in one invocation, for output and tests. */
export interface InvocationEvent {
  readonly functionName: string;
  readonly trigger: string;
  readonly invocationId: string;
  readonly outcome: "succeeded" | "failed";
  readonly settlement?: "completed" | "abandoned" | "dead-lettered";
  readonly errorCode?: string;
  readonly ms: number;
}

export interface FunctionAppHostOptions {
  readonly registrations: readonly Registration[];
  /** App settings: `%NAME%` expressions and binding connections are read here (default process.env). */
  readonly settings?: Readonly<Record<string, string | undefined>>;
  readonly transport: Transport;
  readonly hostJson?: HostJson;
  /** Deliveries before a failing message is dead-lettered on Storage Queues (Service Bus: the queue's own). */
  readonly maxDeliveryCount?: number;
  /** Storage Queue polling, ms (tests and the scenario poll faster). */
  readonly pollMs?: { readonly min: number; readonly max: number };
  /** Keys for HTTP functions (default: random). */
  readonly keys?: { readonly functionKey?: string; readonly masterKey?: string };
  /** Loopback port of the HTTP side (default: any free port). */
  readonly port?: number;
  readonly logger?: Logger;
  readonly onInvocation?: (event: InvocationEvent) => void;
}

export interface FunctionAppHost {
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  /** The default function key (`code=`) and the master key. Secrets. */
  readonly keys: { readonly functionKey: string; readonly masterKey: string; readonly eventGridKey: string };
  /** The functions it runs, by trigger type. */
  readonly functions: readonly { readonly name: string; readonly trigger: string; readonly detail: string }[];
  /** The webhook an Event Grid subscription for `functionName` posts to (with its key). */
  eventGridWebhookUrl(functionName: string): string;
  /** Hands events to an Event Grid-triggered function as the webhook does, one at a time. */
  deliverEventGrid(functionName: string, events: readonly unknown[]): Promise<void>;
  stats(): { invocations: number; failures: number };
  /** Resolves when no invocation is running. */
  idle(): Promise<void>;
  stop(): Promise<void>;
}

const RECEIVE_WAIT_MS = 1_000;
const MAX_HTTP_BODY_BYTES = 4 * 1024 * 1024;

/** `%NAME%` expressions in a binding value resolved from app settings, as the host does. */
export function resolveSettingExpression(
  value: string,
  settings: Readonly<Record<string, string | undefined>>,
  what: string,
): string {
  return value.replace(/%([^%]+)%/g, (_, name: string) => {
    const resolved = settings[name];
    if (resolved === undefined || resolved === "") {
      throw new Error(`${what}: '%${name}%' does not resolve to a value (app setting ${name} is not set)`);
    }
    return resolved;
  });
}

/** host.json timespans (`hh:mm:ss[.fff]`) in ms. */
export function timeSpanMs(text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const match = /^(\d+):(\d{2}):(\d{2})(?:\.(\d{1,3}))?$/.exec(text);
  if (match === null) return fallback;
  const [, h, m, s, f] = match;
  return ((Number(h) * 60 + Number(m)) * 60 + Number(s)) * 1000 + Number((f ?? "0").padEnd(3, "0"));
}

function equalSecret(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** A string option of a binding ("" when absent or not a string). */
function option(binding: Binding, name: string): string {
  const value = binding[name];
  return typeof value === "string" ? value : "";
}

function code(error: unknown): string {
  return isShieldError(error) ? error.code : error instanceof Error ? error.name : "Error";
}

function effectiveOptions(registration: Registration): Record<string, unknown> {
  return {
    trigger: registration.trigger,
    return: registration.returnBinding,
    extraInputs: [],
    extraOutputs: registration.extraOutputs,
  };
}

/** Matches `deployments/{id}` (and `{id?}`, `{*rest}`, `{id:int}`) against a path; params or undefined. */
export function matchRoute(route: string, path: string): Record<string, string> | undefined {
  const want = route.replace(/^\/+|\/+$/g, "").split("/");
  const got = path.replace(/^\/+|\/+$/g, "").split("/");
  const params: Record<string, string> = {};
  for (const [i, part] of want.entries()) {
    const param = /^\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::[^}?]+)?(\??)\}$/.exec(part);
    const actual = got[i];
    if (param === null) {
      if (actual === undefined || part.toLowerCase() !== actual.toLowerCase()) return undefined;
      continue;
    }
    const [, catchAll, name, optional] = param;
    if (catchAll === "*") {
      params[name!] = got.slice(i).map(decodeURIComponent).join("/");
      return params;
    }
    if (actual === undefined || actual === "") {
      if (optional === "?") continue;
      return undefined;
    }
    params[name!] = decodeURIComponent(actual);
  }
  return got.length <= want.length ? params : undefined;
}

async function readBody(request: IncomingMessage): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_HTTP_BODY_BYTES) return undefined;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

export async function startFunctionAppHost(options: FunctionAppHostOptions): Promise<FunctionAppHost> {
  const settings = options.settings ?? process.env;
  const log = options.logger ?? silentLogger;
  const hostJson = options.hostJson ?? {};
  const keys = {
    functionKey: options.keys?.functionKey ?? randomBytes(24).toString("base64url"),
    masterKey: options.keys?.masterKey ?? randomBytes(24).toString("base64url"),
    eventGridKey: randomBytes(24).toString("base64url"),
  };
  const routePrefix = (hostJson.extensions?.http?.routePrefix ?? "api").replace(/^\/+|\/+$/g, "");
  const counts = { invocations: 0, failures: 0 };
  const inFlight = new Set<Promise<unknown>>();
  const stops: (() => Promise<void>)[] = [];
  const functions: { name: string; trigger: string; detail: string }[] = [];
  let stopping = false;
  const appHookData: Record<string, unknown> = {};

  const serviceBusClients = new Map<string, ServiceBusClient>();
  const serviceBusClient = (binding: Binding, functionName: string): ServiceBusClient => {
    const setting =
      typeof binding["connection"] === "string" ? binding["connection"] : "AzureWebJobsServiceBus";
    const connectionString = settings[setting];
    if (connectionString === undefined || connectionString === "") {
      throw new Error(
        `function ${functionName}: the Service Bus connection setting ${setting} is not set (a connection string is needed locally)`,
      );
    }
    let client = serviceBusClients.get(connectionString);
    if (client === undefined) {
      client = new ServiceBusClient(connectionString, {
        retryOptions: { maxRetries: 2, timeoutInMs: 10_000 },
      });
      serviceBusClients.set(connectionString, client);
    }
    return client;
  };
  const storageConnection = (): string => {
    const fromTransport =
      options.transport.kind === "storage-queue"
        ? options.transport.connectionString
        : options.transport.storageConnectionString;
    const connection = fromTransport ?? settings["AzureWebJobsStorage"];
    if (connection === undefined) throw new Error("no Storage connection for Storage Queue bindings");
    return connection;
  };
  let storageSink: QueueSink | undefined;
  const sinkFor = (binding: Binding, functionName: string): QueueSink => {
    if (binding.type === "serviceBus" && options.transport.kind === "servicebus") {
      return serviceBusSink(serviceBusClient(binding, functionName));
    }
    return (storageSink ??= storageQueueSink(storageConnection()));
  };
  const sinks = new Map<string, QueueSink>();

  async function runHooks(name: HookName, context: Record<string, unknown>): Promise<void> {
    for (const hook of registeredHooks(name)) await hook(context);
  }

  /** One invocation with hooks and outputs; returns the handler's result or throws its error. */
  async function invoke(
    registration: Registration,
    input: unknown,
    context: InvocationContext,
  ): Promise<unknown> {
    const hookData: Record<string, unknown> = {};
    const pre: Record<string, unknown> = {
      invocationContext: context,
      functionCallback: registration.handler,
      inputs: [input],
      hookData,
      appHookData,
    };
    await runHooks("preInvocation", pre);
    let result: unknown;
    let error: unknown;
    let failed = false;
    try {
      const callback = pre["functionCallback"] as Registration["handler"];
      result = await callback(...(pre["inputs"] as unknown[]), context);
      for (const output of registration.extraOutputs) {
        const value = context.extraOutputs.get(output.name);
        if (value === undefined) continue;
        if (output.type !== "serviceBus" && output.type !== "queue") {
          throw new Error(
            `function ${registration.name}: output binding type ${output.type} is not supported here`,
          );
        }
        const queueName = resolveSettingExpression(
          option(output, "queueName"),
          settings,
          `function ${registration.name} output`,
        );
        const key = `${output.type}|${option(output, "connection")}`;
        let sink = sinks.get(key);
        if (sink === undefined) {
          sink = sinkFor(output, registration.name);
          sinks.set(key, sink);
        }
        for (const item of Array.isArray(value) ? value : [value]) await sink.send(queueName, item);
      }
    } catch (thrown) {
      failed = true;
      error = thrown;
    }
    const post: Record<string, unknown> = {
      invocationContext: context,
      inputs: pre["inputs"],
      result,
      error,
      hookData,
      appHookData,
    };
    await runHooks("postInvocation", post);
    if (failed && post["error"] !== undefined) {
      throw post["error"] instanceof Error ? post["error"] : new Error("the function failed");
    }
    return post["result"];
  }

  function newContext(
    registration: Registration,
    triggerMetadata?: Record<string, unknown>,
  ): InvocationContext {
    const invocationId = randomUUID();
    return new functionsRuntime.InvocationContext({
      functionName: registration.name,
      invocationId,
      ...(triggerMetadata === undefined ? {} : { triggerMetadata }),
      options: effectiveOptions(registration),
      logHandler: (level, ...args) =>
        log(
          level === "error" || level === "critical"
            ? "error"
            : level === "warning"
              ? "warn"
              : level === "debug" || level === "trace"
                ? "debug"
                : "info",
          args.map(String).join(" "),
          { function: registration.name, invocationId },
        ),
    });
  }

  function track<T>(run: Promise<T>): Promise<T> {
    inFlight.add(run);
    void run.finally(() => inFlight.delete(run)).catch(() => undefined);
    return run;
  }

  function report(event: InvocationEvent): void {
    counts.invocations++;
    if (event.outcome === "failed") counts.failures++;
    options.onInvocation?.(event);
  }

  // ------------------------------------------------------------ queue triggers
  function startQueueTrigger(registration: Registration): void {
    const trigger = registration.trigger;
    const queueName = resolveSettingExpression(
      option(trigger, "queueName"),
      settings,
      `function ${registration.name} trigger`,
    );
    if (queueName === "") throw new Error(`function ${registration.name}: the trigger names no queue`);
    const serviceBus = trigger.type.toLowerCase() === "servicebustrigger";
    const sessions = serviceBus && trigger["isSessionsEnabled"] === true;
    const sb = hostJson.extensions?.serviceBus ?? {};
    const queues = hostJson.extensions?.queues ?? {};
    const concurrency = serviceBus
      ? sessions
        ? (sb.maxConcurrentSessions ?? 8)
        : (sb.maxConcurrentCalls ?? 16)
      : (queues.batchSize ?? 16);
    const overSb = serviceBus && options.transport.kind === "servicebus";
    const makeSource = (): QueueSource =>
      overSb
        ? serviceBusSource(queueName, {
            client: serviceBusClient(trigger, registration.name),
            sessions,
            sessionIdleTimeoutMs: timeSpanMs(sb.sessionIdleTimeout, 1_000),
          })
        : storageQueueSource(queueName, {
            connectionString: storageConnection(),
            maxDeliveryCount: serviceBus ? (options.maxDeliveryCount ?? 10) : (queues.maxDequeueCount ?? 5),
            ...(serviceBus ? {} : { deadLetterQueue: `${queueName}-poison` }),
            ...(queues.visibilityTimeout === undefined
              ? {}
              : { lockDurationMs: Math.max(1_000, timeSpanMs(queues.visibilityTimeout, 60_000)) }),
            ...(options.pollMs === undefined
              ? {}
              : { minPollMs: options.pollMs.min, maxPollMs: options.pollMs.max }),
          });
    // One receiver per worker: the SDK lets a receiver run one receive at a time, and a
    // session is held by one receiver.
    const sources: QueueSource[] = [];
    const loop = async (worker: number): Promise<void> => {
      const source = makeSource();
      sources.push(source);
      while (!stopping) {
        let delivery;
        try {
          delivery = await source.receive(RECEIVE_WAIT_MS);
        } catch (error) {
          if (stopping) break;
          log("warn", "receive failed", { function: registration.name, worker, code: code(error) });
          await new Promise((resolve) => setTimeout(resolve, 500));
          continue;
        }
        if (delivery === undefined) continue;
        const started = Date.now();
        const context = newContext(registration, delivery.triggerMetadata);
        const run = (async (): Promise<InvocationEvent> => {
          try {
            await invoke(registration, delivery.input, context);
            await delivery.complete();
            return {
              functionName: registration.name,
              trigger: trigger.type,
              invocationId: context.invocationId,
              outcome: "succeeded",
              settlement: "completed",
              ms: Date.now() - started,
            };
          } catch (error) {
            const settlement = await delivery.fail(error).catch((settleError: unknown) => {
              log("error", "settlement failed", { function: registration.name, code: code(settleError) });
              return "abandoned" as const;
            });
            if (settlement === "dead-lettered") {
              log("warn", "message dead-lettered", {
                function: registration.name,
                messageId: delivery.messageId,
                reason: code(error),
              });
            }
            return {
              functionName: registration.name,
              trigger: trigger.type,
              invocationId: context.invocationId,
              outcome: "failed",
              settlement,
              errorCode: code(error),
              ms: Date.now() - started,
            };
          }
        })();
        report(await track(run));
      }
    };
    const workers = Array.from({ length: Math.max(1, concurrency) }, (_, i) => loop(i));
    stops.push(async () => {
      for (const source of sources) await source.close();
      await Promise.all(workers);
    });
    functions.push({
      name: registration.name,
      trigger: trigger.type,
      detail: `${overSb ? "Service Bus" : "Storage Queue"} ${queueName}${sessions ? " (sessions)" : ""}`,
    });
  }

  // ------------------------------------------------------------ timers
  const timers: LocalTimer[] = [];
  function startTimer(registration: Registration): void {
    const schedule = resolveSettingExpression(
      option(registration.trigger, "schedule"),
      settings,
      `function ${registration.name} schedule`,
    );
    const fire = async (timer: functionsRuntime.Timer): Promise<void> => {
      const started = Date.now();
      const context = newContext(registration);
      try {
        await track(invoke(registration, timer, context));
        report({
          functionName: registration.name,
          trigger: "timerTrigger",
          invocationId: context.invocationId,
          outcome: "succeeded",
          ms: Date.now() - started,
        });
      } catch (error) {
        report({
          functionName: registration.name,
          trigger: "timerTrigger",
          invocationId: context.invocationId,
          outcome: "failed",
          errorCode: code(error),
          ms: Date.now() - started,
        });
        throw error;
      }
    };
    const timer = startLocalTimer({
      functionName: registration.name,
      schedule,
      handler: (tick) => fire(tick),
      logger: log,
    });
    timers.push(timer);
    if (registration.trigger["runOnStartup"] === true) {
      const now = new Date().toISOString();
      void fire({
        isPastDue: false,
        schedule: { adjustForDST: true },
        scheduleStatus: { last: now, next: now, lastUpdated: now },
      }).catch(() => undefined);
    }
    functions.push({ name: registration.name, trigger: "timerTrigger", detail: `schedule ${schedule}` });
  }

  // ------------------------------------------------------------ HTTP and Event Grid
  const httpRoutes: { registration: Registration; route: string; methods: string[]; authLevel: string }[] =
    [];
  const eventGrid = new Map<string, Registration>();

  function authorized(level: string, url: URL, request: IncomingMessage): boolean {
    if (level === "anonymous") return true;
    const header = request.headers["x-functions-key"];
    const given = url.searchParams.get("code") ?? (typeof header === "string" ? header : undefined);
    if (given === undefined || given === null) return false;
    if (equalSecret(given, keys.masterKey)) return true;
    return level === "function" && equalSecret(given, keys.functionKey);
  }

  async function deliverEventGrid(functionName: string, events: readonly unknown[]): Promise<void> {
    const registration = eventGrid.get(functionName);
    if (registration === undefined) throw new Error(`no Event Grid function ${functionName}`);
    for (const event of events) {
      const started = Date.now();
      const context = newContext(registration, {});
      try {
        await track(invoke(registration, event, context));
        report({
          functionName,
          trigger: "eventGridTrigger",
          invocationId: context.invocationId,
          outcome: "succeeded",
          ms: Date.now() - started,
        });
      } catch (error) {
        report({
          functionName,
          trigger: "eventGridTrigger",
          invocationId: context.invocationId,
          outcome: "failed",
          errorCode: code(error),
          ms: Date.now() - started,
        });
        throw error;
      }
    }
  }

  async function handleEventGridWebhook(
    url: URL,
    incoming: IncomingMessage,
    response: ServerResponse,
  ): Promise<void> {
    const given = url.searchParams.get("code");
    if (given === null || !equalSecret(given, keys.eventGridKey)) {
      response.writeHead(401).end();
      return;
    }
    const functionName = url.searchParams.get("functionName") ?? "";
    if (!eventGrid.has(functionName)) {
      response.writeHead(404).end();
      return;
    }
    const body = await readBody(incoming);
    if (body === undefined) {
      response.writeHead(413).end();
      return;
    }
    let events: unknown;
    try {
      events = JSON.parse(body.toString("utf8"));
    } catch {
      response.writeHead(400).end();
      return;
    }
    const list = Array.isArray(events) ? events : [events];
    if (incoming.headers["aeg-event-type"] === "SubscriptionValidation") {
      const first = list[0] as { data?: { validationCode?: unknown } } | undefined;
      response
        .writeHead(200, { "content-type": "application/json" })
        .end(JSON.stringify({ validationResponse: first?.data?.validationCode }));
      return;
    }
    try {
      await deliverEventGrid(functionName, list);
      response.writeHead(202).end();
    } catch {
      // Event Grid retries a delivery that did not succeed.
      response.writeHead(500).end();
    }
  }

  async function handleHttp(incoming: IncomingMessage, response: ServerResponse): Promise<void> {
    const url = new URL(incoming.url ?? "/", "http://127.0.0.1");
    if (url.pathname === "/runtime/webhooks/eventgrid" && incoming.method === "POST") {
      await handleEventGridWebhook(url, incoming, response);
      return;
    }
    const prefix = routePrefix === "" ? "/" : `/${routePrefix}/`;
    if (!url.pathname.startsWith(prefix) && url.pathname !== `/${routePrefix}`) {
      response.writeHead(404).end();
      return;
    }
    const path = url.pathname.slice(prefix.length);
    const method = incoming.method ?? "GET";
    const matches = httpRoutes
      .map((r) => ({ r, params: matchRoute(r.route, path) }))
      .filter((m) => m.params !== undefined);
    const found = matches.find((m) => m.r.methods.includes(method));
    if (found === undefined) {
      response.writeHead(matches.length > 0 ? 405 : 404).end();
      return;
    }
    if (!authorized(found.r.authLevel, url, incoming)) {
      response.writeHead(401).end();
      return;
    }
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(incoming.headers)) {
      if (typeof value === "string") headers[name] = value;
      else if (Array.isArray(value)) headers[name] = value.join(", ");
    }
    const body = method === "GET" || method === "HEAD" ? Buffer.alloc(0) : await readBody(incoming);
    if (body === undefined) {
      response.writeHead(413).end();
      return;
    }
    const request = new functionsRuntime.HttpRequest({
      method,
      url: url.toString(),
      headers,
      params: found.params!,
      ...(body.length === 0 ? {} : { body: { bytes: body } }),
    });
    const started = Date.now();
    const context = newContext(found.r.registration);
    let result: HttpResponseInit | undefined;
    try {
      result = (await track(invoke(found.r.registration, request, context))) ?? {};
    } catch (error) {
      report({
        functionName: found.r.registration.name,
        trigger: "httpTrigger",
        invocationId: context.invocationId,
        outcome: "failed",
        errorCode: code(error),
        ms: Date.now() - started,
      });
      response.writeHead(500).end();
      return;
    }
    report({
      functionName: found.r.registration.name,
      trigger: "httpTrigger",
      invocationId: context.invocationId,
      outcome: "succeeded",
      ms: Date.now() - started,
    });
    const out: Record<string, string> = {};
    new Headers(result.headers).forEach((value, name) => {
      out[name] = value;
    });
    let payload: string | Buffer = "";
    if (result.jsonBody !== undefined) {
      payload = JSON.stringify(result.jsonBody);
      out["content-type"] ??= "application/json";
    } else if (typeof result.body === "string") payload = result.body;
    else if (result.body instanceof Uint8Array) payload = Buffer.from(result.body);
    else if (result.body !== undefined && result.body !== null) {
      payload = Buffer.from(
        await new Response(result.body as ConstructorParameters<typeof Response>[0]).arrayBuffer(),
      );
    }
    response.writeHead(result.status ?? 200, out).end(payload);
  }

  // ------------------------------------------------------------ start
  try {
    for (const registration of options.registrations) {
      const type = registration.trigger.type.toLowerCase();
      if (type === "servicebustrigger" || type === "queuetrigger") startQueueTrigger(registration);
      else if (type === "timertrigger") startTimer(registration);
      else if (type === "httptrigger") {
        const methods = (registration.trigger["methods"] as string[] | undefined) ?? ["GET", "POST"];
        const route = option(registration.trigger, "route") || registration.name;
        const authLevel = (option(registration.trigger, "authLevel") || "function").toLowerCase();
        httpRoutes.push({ registration, route, methods: methods.map((m) => m.toUpperCase()), authLevel });
        functions.push({
          name: registration.name,
          trigger: "httpTrigger",
          detail: `${methods.join(",")} /${routePrefix}/${route} (${authLevel})`,
        });
      } else if (type === "eventgridtrigger") {
        eventGrid.set(registration.name, registration);
        functions.push({
          name: registration.name,
          trigger: "eventGridTrigger",
          detail: "Event Grid webhook",
        });
      } else {
        throw new Error(
          `function ${registration.name}: trigger type ${registration.trigger.type} is not supported by the local host`,
        );
      }
    }
  } catch (error) {
    stopping = true;
    for (const timer of timers) await timer.stop();
    for (const stop of stops) await stop();
    throw error;
  }

  const server = createServer((incoming, response) => {
    handleHttp(incoming, response).catch((error: unknown) => {
      log("error", "http request failed", { code: code(error) });
      if (!response.headersSent) response.writeHead(500);
      response.end();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, "127.0.0.1", () => resolve());
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  await runHooks("appStart", { hookData: {}, appHookData });

  return {
    url,
    keys,
    functions,
    eventGridWebhookUrl: (functionName) =>
      `${url}/runtime/webhooks/eventgrid?functionName=${encodeURIComponent(functionName)}&code=${keys.eventGridKey}`,
    deliverEventGrid,
    stats: () => ({ ...counts }),
    async idle() {
      while (inFlight.size > 0) await Promise.allSettled([...inFlight]);
    },
    async stop() {
      if (stopping) return;
      stopping = true;
      for (const timer of timers) await timer.stop();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      for (const stop of stops) await stop();
      await Promise.allSettled([...inFlight]);
      for (const sink of sinks.values()) await sink.close();
      for (const client of serviceBusClients.values()) await client.close().catch(() => undefined);
      await runHooks("appTerminate", { hookData: {}, appHookData }).catch(() => undefined);
    },
  };
}
