/**
 * Side-by-side measurement: two workloads run in alternating rounds in one process, so machine
 * noise hits both alike and the ratio between them is what gets reported, not absolute speed.
 */
import { performance } from "node:perf_hooks";

export interface Comparison {
  readonly name: string;
  readonly subject: string;
  readonly baseline: string;
  readonly subjectOpsPerSec: number;
  readonly baselineOpsPerSec: number;
  /**
   * subject rate / baseline rate: the median of the per-round ratios (each round times both
   * back to back, so slow drift of the machine cancels within a pair).
   */
  readonly ratio: number;
  readonly rounds: number;
}

type Workload = () => unknown;

async function timeRound(fn: Workload, iterations: number): Promise<number> {
  const start = performance.now();
  for (let i = 0; i < iterations; i++) {
    const r = fn();
    if (r instanceof Promise) await r;
  }
  return performance.now() - start;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Picks an iteration count so one round of `fn` takes roughly `targetMs`. */
async function calibrate(fn: Workload, targetMs: number): Promise<number> {
  let n = 1;
  for (;;) {
    const ms = await timeRound(fn, n);
    if (ms >= targetMs / 4 || n >= 1 << 20)
      return Math.max(1, Math.round((n * targetMs) / Math.max(ms, 0.001)));
    n *= 2;
  }
}

export async function compare(
  name: string,
  subject: { label: string; run: Workload },
  baseline: { label: string; run: Workload },
  options: { rounds?: number; roundMs?: number } = {},
): Promise<Comparison> {
  const rounds = options.rounds ?? 21;
  const roundMs = options.roundMs ?? 150;
  // Warm both paths (JIT, caches) before anything is timed.
  await timeRound(subject.run, 50);
  await timeRound(baseline.run, 50);
  const nSubject = await calibrate(subject.run, roundMs);
  const nBaseline = await calibrate(baseline.run, roundMs);
  const subjectRates: number[] = [];
  const baselineRates: number[] = [];
  for (let r = 0; r < rounds; r++) {
    // Alternate which goes first so neither always runs on a warmer or cooler machine.
    const order = r % 2 === 0 ? (["s", "b"] as const) : (["b", "s"] as const);
    for (const which of order) {
      if (which === "s") subjectRates.push((nSubject * 1000) / (await timeRound(subject.run, nSubject)));
      else baselineRates.push((nBaseline * 1000) / (await timeRound(baseline.run, nBaseline)));
    }
  }
  const s = median(subjectRates);
  const b = median(baselineRates);
  return {
    name,
    subject: subject.label,
    baseline: baseline.label,
    subjectOpsPerSec: s,
    baselineOpsPerSec: b,
    ratio: median(subjectRates.map((rate, i) => rate / baselineRates[i]!)),
    rounds,
  };
}

export function formatComparison(c: Comparison): string {
  const fmt = (n: number) => n.toFixed(0).padStart(9);
  return [
    `${c.name}`,
    `  ${c.subject.padEnd(44)} ${fmt(c.subjectOpsPerSec)} ops/s`,
    `  ${c.baseline.padEnd(44)} ${fmt(c.baselineOpsPerSec)} ops/s`,
    `  ratio ${(c.ratio * 100).toFixed(1)}% of baseline (median of ${c.rounds} paired, alternating rounds)`,
  ].join("\n");
}
