/**
 * Time and randomness as ports: core logic never reads the wall clock or the system RNG
 * directly, so every time-dependent decision can be replayed (`shield ... --at`) and tested.
 */
import { randomBytes, randomUUID } from "node:crypto";

export interface Clock {
  now(): Date;
}

export interface Random {
  bytes(length: number): Buffer;
  uuid(): string;
}

export const systemClock: Clock = { now: () => new Date() };

export const systemRandom: Random = { bytes: (length) => randomBytes(length), uuid: () => randomUUID() };

/** A clock that stands still until moved; for tests and replays. */
export function fixedClock(start: Date): Clock & { set(at: Date): void; advance(ms: number): void } {
  let current = start.getTime();
  return {
    now: () => new Date(current),
    set: (at) => {
      current = at.getTime();
    },
    advance: (ms) => {
      current += ms;
    },
  };
}
