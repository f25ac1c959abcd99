/**
 * The Functions app's cold start, as the Node worker pays it: a fresh `node` process imports
 * every top-level file of the compiled app (`package.json` `main`, `dist/functions/*.js`), each
 * registering its function — beside a bare `@azure/functions` app making the same number of
 * registrations, in alternating child processes of the same run. The app is compiled the way
 * the build does (one JavaScript file per TypeScript file; esbuild here, for speed), and also
 * measured bundled into one file, the alternative the issue asks about.
 *
 * Then the first invocation: in the same fresh process, the `attest` function answering one
 * `challenge-request` against the local stack (the composition root is built on that first
 * call: settings, adapters, the state table, the control-plane signer), beside the same
 * invocation once warm.
 */
import { spawn } from "node:child_process";
import { readdir, rm, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { startAzurite } from "../adapters/local/azurite.js";
import { startLocalStack } from "../local/stack.js";
import { createSimulatedSnpPlatform } from "../core/evidence/simulated/sevsnp.js";

const ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));
/** Inside the repository, so that the compiled files resolve packages from its node_modules. */
const OUT = join(ROOT, "node_modules", ".cache", "shield-bench-cold-start");

export interface ColdStartResult {
  readonly functions: number;
  /** Median ms to import and register every function, as compiled (one file per source file). */
  readonly appMs: number;
  /** The same, bundled into one file. */
  readonly bundledMs: number;
  /** A bare @azure/functions app with as many registrations. */
  readonly bareMs: number;
  /** The first `attest` invocation in a fresh process, and the median of the next few. */
  readonly firstInvocationMs: number;
  readonly warmInvocationMs: number;
  readonly rounds: number;
}

const median = (values: readonly number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
};

async function compileApp(): Promise<{ files: string[]; bundled: string }> {
  await rm(OUT, { recursive: true, force: true });
  const sources = (dir: string) =>
    readdir(join(ROOT, dir), { recursive: true }).then((names) =>
      names.filter((n) => n.endsWith(".ts") && !n.endsWith(".d.ts")).map((n) => join(ROOT, dir, n)),
    );
  const entryPoints = [
    ...(await sources("functions")),
    ...(await sources("core")),
    ...(await sources("adapters")),
  ];
  await build({
    entryPoints,
    outdir: join(OUT, "app"),
    outbase: ROOT,
    format: "esm",
    platform: "node",
    target: "node20",
    bundle: false,
    logLevel: "silent",
  });
  const top = (await readdir(join(ROOT, "functions"))).filter((n) => n.endsWith(".ts"));
  const files = top.map((n) => join(OUT, "app", "functions", n.replace(/\.ts$/, ".js")));
  // One entry importing every function file, bundled with its dependencies.
  const entry = join(OUT, "bundle-entry.ts");
  await writeFile(entry, top.map((n) => `import ${JSON.stringify(join(ROOT, "functions", n))};`).join("\n"));
  const bundled = join(OUT, "bundle", "app.mjs");
  await build({
    entryPoints: [entry],
    outfile: bundled,
    format: "esm",
    platform: "node",
    target: "node20",
    bundle: true,
    // Provided by the Functions worker at run time, never packaged.
    external: ["@azure/functions-core"],
    logLevel: "silent",
    // CommonJS packages in an ESM bundle need require.
    banner: {
      js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);",
    },
  });
  await writeFile(join(OUT, "package.json"), JSON.stringify({ type: "module", private: true }));
  // The bare app: as many registrations of the same trigger kinds.
  const bare = [
    `import { app } from "@azure/functions";`,
    `const handler = async () => undefined;`,
    ...top.map((_, i) => `app.http("bare-${i}", { methods: ["GET"], handler });`),
  ].join("\n");
  await writeFile(join(OUT, "bare.mjs"), bare);
  return { files, bundled };
}

/** Runs one fresh process that imports `files` and reports the ms it took. */
function timeImports(
  files: readonly string[],
  env: Record<string, string> = {},
  invoke = false,
): Promise<{
  importMs: number;
  firstMs?: number;
  warmMs?: number;
}> {
  const script = `
    const t0 = performance.now();
    for (const f of ${JSON.stringify(files.map((f) => `file://${f}`))}) await import(f);
    const importMs = performance.now() - t0;
    let firstMs, warmMs;
    if (${invoke}) {
      const { attest } = await import(${JSON.stringify(`file://${join(OUT, "app", "functions", "attest.js")}`)});
      const { InvocationContext } = (await import("@azure/functions")).default;
      const call = async (i) => {
        const started = performance.now();
        await attest(
          { type: "challenge-request", version: 1, agentId: "cold-" + i + "-" + process.pid, workload: "bench", tee: "sevsnp", sentAt: new Date().toISOString() },
          new InvocationContext({ functionName: "attest", invocationId: "cold-" + i, triggerMetadata: { messageId: "cold-" + i + "-" + process.pid, deliveryCount: 1 }, logHandler: () => undefined }),
        );
        return performance.now() - started;
      };
      firstMs = await call(0);
      const warm = [];
      for (let i = 1; i <= 5; i++) warm.push(await call(i));
      warm.sort((a, b) => a - b);
      warmMs = warm[2];
    }
    process.stdout.write(JSON.stringify({ importMs, firstMs, warmMs }) + "\\n");
    process.exit(0);
  `;
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
      cwd: OUT,
      stdio: ["ignore", "pipe", "ignore"],
      env: { PATH: process.env["PATH"] ?? "", ...env },
    });
    let out = "";
    child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString("utf8")));
    child.on("exit", (code) => {
      const last = out.trim().split("\n").pop() ?? "";
      try {
        resolvePromise(JSON.parse(last) as { importMs: number; firstMs?: number; warmMs?: number });
      } catch {
        reject(new Error(`cold-start child exited with ${code}`));
      }
    });
  });
}

export async function benchColdStart(options: { rounds?: number } = {}): Promise<ColdStartResult> {
  const rounds = options.rounds ?? 7;
  const { files, bundled } = await compileApp();
  const app: number[] = [];
  const bundle: number[] = [];
  const bare: number[] = [];
  for (let r = 0; r < rounds; r++) {
    app.push((await timeImports(files)).importMs);
    bare.push((await timeImports([join(OUT, "bare.mjs")])).importMs);
    bundle.push((await timeImports([bundled])).importMs);
  }
  // First invocation: a fresh process against the local stack.
  const azurite = await startAzurite();
  const stack = await startLocalStack({
    storageConnectionString: azurite.connectionString,
    platform: createSimulatedSnpPlatform({ rsaBits: 2048 }),
    appraisalPolicy: JSON.stringify({ sevsnpvm: { hostData: ["00".repeat(32)] } }),
    tableName: "benchcold",
  });
  const first: number[] = [];
  const warm: number[] = [];
  try {
    for (let r = 0; r < Math.max(3, Math.floor(rounds / 2)); r++) {
      const run = await timeImports(files, { ...stack.settings }, true);
      first.push(run.firstMs!);
      warm.push(run.warmMs!);
    }
  } finally {
    await stack.close();
    await azurite.stop();
  }
  return {
    functions: files.length,
    appMs: median(app),
    bundledMs: median(bundle),
    bareMs: median(bare),
    firstInvocationMs: median(first),
    warmInvocationMs: median(warm),
    rounds,
  };
}

export function formatColdStartBench(r: ColdStartResult): string {
  const ms = (n: number) => `${n.toFixed(0).padStart(6)} ms`;
  return [
    `functions cold start: import and register all ${r.functions} functions in a fresh node process (median of ${r.rounds})`,
    `  the app, one file per source file (as built)   ${ms(r.appMs)}   ratio ${(r.appMs / r.bareMs).toFixed(2)}× bare, target ≤ 1.50×`,
    `  the app bundled into one file                  ${ms(r.bundledMs)}   ratio ${(r.bundledMs / r.bareMs).toFixed(2)}× bare`,
    `  bare @azure/functions app, same registrations  ${ms(r.bareMs)}`,
    `  first attest invocation (builds the composition) ${ms(r.firstInvocationMs)}   warm invocation ${ms(r.warmInvocationMs)}`,
  ].join("\n");
}
