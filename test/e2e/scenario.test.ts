/**
 * `npm start` as a user runs it, in a child process with a temporary directory of its own:
 * `--scenario demo --exit` prints one progress line per step and the JSON verdict and exits 0;
 * plain `npm start` shows the events as they happen and stops on SIGINT / SIGTERM. After either,
 * no process it started is left in the process table and no temporary file is left behind.
 */
import { spawn, execFileSync } from "node:child_process";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { DEMO_STEPS } from "../../local/scenario.js";

const ROOT = resolve(import.meta.dirname, "../..");
const dirs: string[] = [];

afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

/** Every process descending from `pid` (ps reads the process table). */
function descendants(pid: number): number[] {
  const table = execFileSync("ps", ["-eo", "pid=,ppid="], { encoding: "utf8" })
    .trim()
    .split("\n")
    .map((line) => line.trim().split(/\s+/).map(Number) as [number, number]);
  const found: number[] = [];
  const walk = (parent: number) => {
    for (const [child, ppid] of table) {
      if (ppid === parent && !found.includes(child)) {
        found.push(child);
        walk(child);
      }
    }
  };
  walk(pid);
  return found;
}

/**
 * A process's start time, parent and command line; "" when no such process exists (ps then
 * prints nothing, or, for a pid that names a thread of another process, no start time).
 */
function identity(pid: number): string {
  try {
    const line = execFileSync("ps", ["-o", "lstart=,args=", "-p", String(pid)], { encoding: "utf8" }).trim();
    return /\d{2}:\d{2}:\d{2} \d{4}/.test(line) ? line : "";
  } catch {
    return "";
  }
}

/** Processes seen while running that still run (the same process: same start time and command). */
async function leftOver(seen: ReadonlyMap<number, string>): Promise<string[]> {
  const deadline = Date.now() + 3_000;
  for (;;) {
    const running = [...seen].filter(([pid, id]) => id !== "" && identity(pid) === id).map(([, id]) => id);
    if (running.length === 0 || Date.now() > deadline) return running;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** What is left in the run's TMPDIR, but for tsx's compile cache (`tsx-<uid>`, kept by design). */
async function ourTemporaryFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((name) => !/^tsx-\d+$/.test(name));
}

async function start(args: string[]) {
  const tmp = await mkdtemp(join(tmpdir(), "shield-start-test-"));
  dirs.push(tmp);
  const child = spawn(process.execPath, ["--import", "tsx", "local/embedded.ts", ...args], {
    cwd: ROOT,
    env: { ...process.env, TMPDIR: tmp },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines: string[] = [];
  let buffered = "";
  child.stdout.on("data", (chunk: Buffer) => {
    buffered += chunk.toString("utf8");
    const parts = buffered.split("\n");
    buffered = parts.pop() ?? "";
    lines.push(...parts);
  });
  let stderr = "";
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
  // pid → its start time and command line: a pid the system reuses for another process is not ours.
  const seen = new Map<number, string>();
  const watch = setInterval(() => {
    for (const pid of descendants(child.pid!)) if (!seen.has(pid)) seen.set(pid, identity(pid));
  }, 500);
  const exited = new Promise<number | null>((resolve) =>
    child.on("exit", (code) => {
      clearInterval(watch);
      resolve(code);
    }),
  );
  return { child, lines, tmp, seen, exited, stderr: () => stderr };
}

describe("npm start", () => {
  it("--scenario demo --exit runs every step, prints the verdict, exits 0 and leaves nothing behind", async () => {
    const run = await start(["--scenario", "demo", "--exit"]);
    const code = await run.exited;
    const verdictLine = run.lines.findLast((line) => line.startsWith("{"));
    expect(verdictLine, run.stderr() + run.lines.join("\n")).toBeDefined();
    const verdict = JSON.parse(verdictLine!) as {
      ok: boolean;
      steps: { name: string; ok: boolean; ms: number }[];
    };
    expect(verdict.steps.map((s) => s.name)).toEqual([...DEMO_STEPS]);
    expect(verdict.steps.filter((s) => !s.ok)).toEqual([]);
    expect(verdict.ok).toBe(true);
    expect(code).toBe(0);
    for (const name of DEMO_STEPS) {
      expect(run.lines.filter((line) => line.includes(`step ${name}: ok`))).toHaveLength(1);
    }
    const output = run.lines.join("\n");
    expect(output).toMatch(/released demo-orders-key v1 to snp-agent-1/);
    expect(output).toMatch(/denied agent-evil: .*ERR_APPRAISAL_DENIED/);
    expect(output).toMatch(/rotated demo-orders-key to v2 \(near-expiry\)/);
    expect(output).toMatch(/revoked snp-agent-1: .*ERR_CHALLENGE_MISSED/);
    expect(output).not.toMatch(/eyJ[A-Za-z0-9_-]{20,}\./); // no token or signed message printed
    expect(await leftOver(run.seen)).toEqual([]);
    expect(await ourTemporaryFiles(run.tmp)).toEqual([]);
  }, 120_000);

  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    it(`serves until ${signal}, then stops every process and removes its temporary files`, async () => {
      const run = await start([]);
      const deadline = Date.now() + 60_000;
      while (!run.lines.some((line) => /released demo-orders-key v1 to sgx-agent-1/.test(line))) {
        if (Date.now() > deadline)
          throw new Error(`no release seen:\n${run.lines.join("\n")}\n${run.stderr()}`);
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      expect(run.lines.join("\n")).toMatch(
        /status page: http:\/\/127\.0\.0\.1:\d+\/api\/status\/page\?code=/,
      );
      run.child.kill(signal);
      expect(await run.exited).toBe(0);
      expect(await leftOver(run.seen)).toEqual([]);
      expect(await ourTemporaryFiles(run.tmp)).toEqual([]);
    }, 120_000);
  }
});
