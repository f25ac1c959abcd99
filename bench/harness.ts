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

/**
 * One figure of `npm run bench -- --json`: a value beside the reference it is held against,
 * measured in the same run, and the target for their ratio (value ÷ reference). A `null` target
 * ratio means the issue sets none: the figure is reported, not judged.
 */
export interface BenchResult {
  readonly name: string;
  readonly value: number;
  readonly unit: string;
  readonly reference: { readonly name: string; readonly value: number };
  readonly ratio: number;
  readonly target: { readonly ratio: number | null; readonly better: "higher" | "lower" };
}

export function benchResult(
  name: string,
  value: { value: number; unit: string },
  reference: { name: string; value: number },
  target: { ratio: number | null; better: "higher" | "lower" },
  ratio: number = reference.value === 0
    ? value.value === 0
      ? 1
      : Number.POSITIVE_INFINITY
    : value.value / reference.value,
): BenchResult {
  return { name, value: value.value, unit: value.unit, reference, ratio, target };
}

/** A side-by-side comparison as a result: subject ops/s against the baseline's. */
export function comparisonResult(
  c: Comparison,
  target: { ratio: number | null; better: "higher" | "lower" } = { ratio: null, better: "higher" },
): BenchResult {
  return benchResult(
    `${c.name}: ${c.subject}`,
    { value: c.subjectOpsPerSec, unit: "ops/s" },
    { name: c.baseline, value: c.baselineOpsPerSec },
    target,
    c.ratio,
  );
}

/** Whether a result meets its target (true when it has none). */
export function meetsTarget(r: BenchResult): boolean {
  if (r.target.ratio === null) return true;
  return r.target.better === "higher" ? r.ratio >= r.target.ratio : r.ratio <= r.target.ratio;
}

export function formatResults(results: readonly BenchResult[]): string {
  const num = (n: number) =>
    Math.abs(n) >= 100 ? n.toFixed(0) : Math.abs(n) >= 10 ? n.toFixed(1) : n.toFixed(2);
  const rows = results.map((r) => [
    r.name,
    `${num(r.value)} ${r.unit}`,
    `${r.reference.name}: ${num(r.reference.value)}`,
    r.ratio.toFixed(2),
    r.target.ratio === null ? "-" : `${r.target.better === "higher" ? "≥" : "≤"} ${r.target.ratio}`,
    r.target.ratio === null ? "" : meetsTarget(r) ? "met" : "MISSED",
  ]);
  const header = ["figure", "value", "reference", "ratio", "target", ""];
  const widths = header.map((h, i) => Math.min(70, Math.max(h.length, ...rows.map((row) => row[i]!.length))));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (c.length > widths[i]! ? `${c.slice(0, widths[i]! - 1)}…` : c.padEnd(widths[i]!)))
      .join("  ");
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n");
}
