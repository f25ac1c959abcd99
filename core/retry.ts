/**
 * Retry with exponential backoff and full jitter for transient failures at the edges (MAA, Key
 * Vault, storage, the bus). Only errors that say they are transient are retried; a bad token or
 * a policy denial fails at once. Retries wrap network ports — `retrying(port, policy)` — never the
 * decision logic, so a retried call can never skip a check.
 */
import { isShieldError } from "./errors.js";

export interface RetryPolicy {
  /** Attempts in all, including the first (default 4). */
  readonly attempts?: number;
  /** Delay cap before the first retry, in ms (default 200); doubles each time. */
  readonly baseDelayMs?: number;
  /** Upper bound of any one delay (default 5 000 ms). */
  readonly maxDelayMs?: number;
  /** Random source in [0, 1) for jitter (default Math.random). */
  readonly random?: () => number;
  /** How to wait (default setTimeout); tests pass a fake. */
  readonly sleep?: (ms: number) => Promise<void>;
  /** Called before each retry with the attempt number that failed and its error. */
  readonly onRetry?: (attempt: number, error: unknown, delayMs: number) => void;
}

export const defaultSleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** True for errors a retry could fix: transient ShieldErrors only. */
export function isRetryable(error: unknown): boolean {
  return isShieldError(error) && error.transient;
}

export async function withRetry<T>(operation: () => Promise<T>, policy: RetryPolicy = {}): Promise<T> {
  const attempts = Math.max(1, policy.attempts ?? 4);
  const base = policy.baseDelayMs ?? 200;
  const cap = policy.maxDelayMs ?? 5_000;
  const random = policy.random ?? Math.random;
  const sleep = policy.sleep ?? defaultSleep;
  for (let attempt = 1; ; attempt++) {
    try {
      return await operation();
    } catch (error) {
      if (attempt >= attempts || !isRetryable(error)) throw error;
      const delayMs = Math.floor(random() * Math.min(cap, base * 2 ** (attempt - 1)));
      policy.onRetry?.(attempt, error, delayMs);
      await sleep(delayMs);
    }
  }
}

/**
 * Wraps every method of a port so that each call is retried under `policy`. Properties that are
 * not functions are passed through unchanged.
 */
export function retrying<T extends object>(port: T, policy: RetryPolicy = {}): T {
  return new Proxy(port, {
    get(target, property, receiver) {
      const value: unknown = Reflect.get(target, property, receiver);
      if (typeof value !== "function") return value;
      return (...args: unknown[]) =>
        withRetry(() => Promise.resolve(value.apply(target, args) as unknown), policy);
    },
  });
}
