/**
 * `npm run -s bench -- --json` prints, as the last line of stdout, one JSON object whose results
 * all have the agreed shape. Only the shape is checked (the core figures, in quick rounds): the
 * figures themselves are never part of pass or fail.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";

const run = promisify(execFile);

describe("bench --json", () => {
  it("ends stdout with one {results: [...]} object of name, value, unit, reference, ratio, target", async () => {
    const { stdout } = await run(
      process.execPath,
      ["--import", "tsx", "bench/run.ts", "--core", "--quick", "--json"],
      { maxBuffer: 8 * 1024 * 1024 },
    );
    // Stdout carries nothing but the JSON under --json.
    expect(stdout.trim().split("\n")).toHaveLength(1);
    const parsed = JSON.parse(stdout.trim()) as { results: unknown[] };
    expect(Object.keys(parsed)).toEqual(["results"]);
    expect(parsed.results.length).toBeGreaterThanOrEqual(3);
    for (const result of parsed.results) {
      const r = result as Record<string, unknown>;
      expect(Object.keys(r).sort()).toEqual(["name", "ratio", "reference", "target", "unit", "value"]);
      expect(typeof r["name"]).toBe("string");
      expect(typeof r["unit"]).toBe("string");
      expect(Number.isFinite(r["value"])).toBe(true);
      expect(Number.isFinite(r["ratio"])).toBe(true);
      const reference = r["reference"] as Record<string, unknown>;
      expect(Object.keys(reference).sort()).toEqual(["name", "value"]);
      expect(typeof reference["name"]).toBe("string");
      expect(Number.isFinite(reference["value"])).toBe(true);
      const target = r["target"] as Record<string, unknown>;
      expect(Object.keys(target).sort()).toEqual(["better", "ratio"]);
      expect(target["ratio"] === null || typeof target["ratio"] === "number").toBe(true);
      expect(["higher", "lower"]).toContain(target["better"]);
    }
    const names = parsed.results.map((r) => (r as { name: string }).name);
    expect(names.some((n) => n.includes("validateMaaToken"))).toBe(true);
    expect(names.some((n) => n.includes("SnpVerifier"))).toBe(true);
  }, 120_000);
});
