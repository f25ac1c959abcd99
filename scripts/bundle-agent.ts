/**
 * Bundles the agent into one ESM file (`dist/agent/shield-agent.mjs`) with everything it imports,
 * so its image holds a single script on a bare Node runtime: no node_modules, no TypeScript.
 */
import { build } from "esbuild";
import { mkdir, stat } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const AGENT_BUNDLE = resolve(root, "dist/agent/shield-agent.mjs");

export async function bundleAgent(outfile = AGENT_BUNDLE): Promise<{ outfile: string; bytes: number }> {
  await mkdir(dirname(outfile), { recursive: true });
  await build({
    entryPoints: [resolve(root, "agent/main.ts")],
    outfile,
    bundle: true,
    platform: "node",
    target: "node20",
    format: "esm",
    minify: true,
    sourcemap: false,
    legalComments: "none",
    logLevel: "warning",
    // Some bundled CommonJS dependencies call require(); give the ESM bundle one.
    banner: { js: "import { createRequire as __shieldRequire } from 'node:module'; const require = __shieldRequire(import.meta.url);" },
  });
  return { outfile, bytes: (await stat(outfile)).size };
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  bundleAgent().then(
    ({ outfile, bytes }) => console.log(`${outfile}: ${(bytes / 1024).toFixed(0)} KiB`),
    (error: unknown) => {
      console.error(error);
      process.exitCode = 1;
    },
  );
}
