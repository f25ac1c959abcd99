/**
 * Fault injection for the local MAA- and Key Vault-compatible servers: a plan of faults per
 * route that tests set through a small typed API, to show what the functions do when a
 * dependency is slow, throttles, fails, drops the connection, never answers or restarts. An
 * empty plan — the default, and all that `npm start` ever has — changes nothing; production code
 * paths (the Azure adapters) never see this module.
 *
 * A rule applies to one route (the server's operation name, e.g. `release` or `attestSevSnpVm`)
 * or to every route (`"*"`), a given number of times (default: until cleared). On each request
 * every matching `latency` rule adds its delay, then the first matching other rule decides what
 * the request gets instead of an answer.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Server } from "node:http";

export type InjectedFault =
  /** The request is handled normally, `ms` later. */
  | { readonly kind: "latency"; readonly ms: number }
  /** 429 with `Retry-After` (seconds), as Azure front ends throttle. */
  | { readonly kind: "throttle"; readonly retryAfterSeconds: number }
  /** 503, with `Retry-After` when given. */
  | { readonly kind: "unavailable"; readonly retryAfterSeconds?: number }
  /** Any other error status (408, 500, 502, 504, ...). */
  | { readonly kind: "status"; readonly status: number; readonly retryAfterSeconds?: number }
  /** The connection is destroyed before an answer: the client sees a reset. */
  | { readonly kind: "reset" }
  /** The request is read and never answered; the client's own timeout has to end it. */
  | { readonly kind: "timeout" }
  /** The server stops listening and drops every connection, and listens again after `downMs`. */
  | { readonly kind: "restart"; readonly downMs: number };

export interface FaultOptions {
  /** How many requests the rule applies to (default: every one until cleared). */
  readonly times?: number;
}

/** What to do with one request: wait `delayMs`, then (when present) answer with the fault. */
export interface FaultDecision {
  readonly delayMs: number;
  readonly fault?: Exclude<InjectedFault, { kind: "latency" }>;
}

interface Rule<R extends string> {
  readonly route: R | "*";
  readonly fault: InjectedFault;
  remaining: number;
}

/** Error codes Azure front ends put in the body of these statuses. */
const STATUS_CODES: Readonly<Record<number, string>> = {
  408: "RequestTimeout",
  429: "TooManyRequests",
  500: "InternalServerError",
  502: "BadGateway",
  503: "ServiceUnavailable",
  504: "GatewayTimeout",
};

export function faultStatusCode(status: number): string {
  return STATUS_CODES[status] ?? "InjectedFault";
}

function checkFault(fault: InjectedFault): void {
  const nonNegative = (n: unknown) => typeof n === "number" && Number.isFinite(n) && n >= 0;
  switch (fault.kind) {
    case "latency":
      if (!nonNegative(fault.ms)) throw new TypeError("latency ms must be a non-negative number");
      return;
    case "throttle":
      if (!Number.isInteger(fault.retryAfterSeconds) || fault.retryAfterSeconds < 0)
        throw new TypeError("retryAfterSeconds must be a non-negative integer");
      return;
    case "unavailable":
      return;
    case "status":
      if (!Number.isInteger(fault.status) || fault.status < 400 || fault.status > 599)
        throw new TypeError("status must be an HTTP error status (400..599)");
      return;
    case "reset":
    case "timeout":
      return;
    case "restart":
      if (!nonNegative(fault.downMs)) throw new TypeError("downMs must be a non-negative number");
      return;
    default:
      throw new TypeError("unknown fault kind");
  }
}

export class FaultPlan<R extends string> {
  private rules: Rule<R>[] = [];
  private applied = 0;

  /** Adds a rule; faults on the same route apply in the order they were added. */
  inject(route: R | "*", fault: InjectedFault, options: FaultOptions = {}): void {
    checkFault(fault);
    const times = options.times ?? Number.POSITIVE_INFINITY;
    if (times !== Number.POSITIVE_INFINITY && (!Number.isInteger(times) || times < 0))
      throw new TypeError("times must be a non-negative integer");
    if (times > 0) this.rules.push({ route, fault, remaining: times });
  }

  clear(route?: R | "*"): void {
    this.rules = route === undefined ? [] : this.rules.filter((rule) => rule.route !== route);
  }

  /** Faults answered so far (latency counts as one when it was the only fault). */
  count(): number {
    return this.applied;
  }

  /** Takes what applies to one request on `route` (consuming one use of each rule taken). */
  take(route: R): FaultDecision {
    let delayMs = 0;
    let fault: FaultDecision["fault"];
    for (const rule of this.rules) {
      if (rule.remaining <= 0 || (rule.route !== "*" && rule.route !== route)) continue;
      if (rule.fault.kind === "latency") {
        delayMs += rule.fault.ms;
        rule.remaining--;
      } else if (fault === undefined) {
        fault = rule.fault;
        rule.remaining--;
      }
    }
    this.rules = this.rules.filter((rule) => rule.remaining > 0);
    if (delayMs > 0 || fault !== undefined) this.applied++;
    return fault === undefined ? { delayMs } : { delayMs, fault };
  }
}

/** Timers of pending injected delays, ended at once when the server closes. */
export class FaultSleeper {
  private readonly sleeping = new Map<NodeJS.Timeout, () => void>();

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.sleeping.delete(timer);
        resolve();
      }, ms);
      this.sleeping.set(timer, resolve);
    });
  }

  wakeAll(): void {
    for (const [timer, wake] of this.sleeping) {
      clearTimeout(timer);
      wake();
    }
    this.sleeping.clear();
  }
}

/**
 * A server that can be stopped and started again on the same port, as a restart of the real
 * service looks to its clients: connections drop, new ones are refused for `downMs`, then
 * accepted again.
 */
export function restartable(
  server: Server,
  closing: () => boolean,
): { restart(downMs: number): Promise<void> } {
  let restarting: Promise<void> | undefined;
  return {
    restart(downMs: number): Promise<void> {
      restarting ??= (async () => {
        const address = server.address();
        if (address === null || typeof address === "string") return;
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections();
        });
        await new Promise((resolve) => setTimeout(resolve, downMs));
        if (closing()) return; // closed for good while it was down
        await new Promise<void>((resolve, reject) => {
          server.once("error", reject);
          server.listen(address.port, address.address, () => {
            server.off("error", reject);
            resolve();
          });
        });
      })().finally(() => {
        restarting = undefined;
      });
      return restarting;
    },
  };
}

/** Closes a server that may be down for a restart at the moment. */
export function closeListening(server: Server): Promise<void> {
  return new Promise((resolve, reject) => {
    if (!server.listening) {
      resolve();
      return;
    }
    server.close((error) => (error === undefined ? resolve() : reject(error)));
    server.closeAllConnections();
  });
}

/**
 * Applies a decision's connection-level fault (reset, timeout, restart) to a request; answers
 * nothing for status faults (the server answers those in its own error shape). Returns whether
 * the request is done with.
 */
export function applyConnectionFault(
  fault: NonNullable<FaultDecision["fault"]>,
  request: IncomingMessage,
  response: ServerResponse,
  server: { restart(downMs: number): Promise<void> },
): boolean {
  switch (fault.kind) {
    case "reset":
      request.socket.destroy();
      return true;
    case "timeout":
      // Read and drop the body; never answer. The socket ends when the client gives up.
      request.resume();
      response.once("close", () => undefined);
      return true;
    case "restart":
      request.socket.destroy();
      void server.restart(fault.downMs);
      return true;
    default:
      return false;
  }
}

/** Status and `Retry-After` for a status fault; undefined for connection-level faults. */
export function statusOf(
  fault: NonNullable<FaultDecision["fault"]>,
): { status: number; retryAfterSeconds?: number } | undefined {
  switch (fault.kind) {
    case "throttle":
      return { status: 429, retryAfterSeconds: fault.retryAfterSeconds };
    case "unavailable":
      return fault.retryAfterSeconds === undefined
        ? { status: 503 }
        : { status: 503, retryAfterSeconds: fault.retryAfterSeconds };
    case "status":
      return fault.retryAfterSeconds === undefined
        ? { status: fault.status }
        : { status: fault.status, retryAfterSeconds: fault.retryAfterSeconds };
    default:
      return undefined;
  }
}
