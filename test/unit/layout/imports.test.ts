/**
 * The layout rule of DESIGN §4: adapters sit at the edge and never import the functions app or
 * the agent (the whole system's composition lives in `local/`). Every import specifier in every
 * TypeScript file under `adapters/` is resolved against its file and checked.
 */
import { readdir, readFile } from "node:fs/promises";
import { dirname, join, relative, resolve } from "node:path";
import { describe, expect, it } from "vitest";

const ROOT = resolve(import.meta.dirname, "../../..");

async function tsFiles(dir: string): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) found.push(...(await tsFiles(path)));
    else if (entry.name.endsWith(".ts")) found.push(path);
  }
  return found;
}

/** Static `import … from`, `export … from`, side-effect `import "…"` and dynamic `import("…")`. */
export function importSpecifiers(source: string): string[] {
  const specifiers: string[] = [];
  const patterns = [
    /\b(?:import|export)\s[^;]*?\sfrom\s*["']([^"']+)["']/g,
    /\bimport\s*["']([^"']+)["']/g,
    /\bimport\s*\(\s*["']([^"']+)["']\s*\)/g,
  ];
  for (const pattern of patterns) for (const match of source.matchAll(pattern)) specifiers.push(match[1]!);
  return specifiers;
}

/** Files under `adapters/` that import from `functions/` or `agent/`, with what they import. */
async function forbiddenImports(): Promise<string[]> {
  const offences: string[] = [];
  for (const file of await tsFiles(join(ROOT, "adapters"))) {
    for (const specifier of importSpecifiers(await readFile(file, "utf8"))) {
      if (!specifier.startsWith(".")) continue;
      const target = relative(ROOT, resolve(dirname(file), specifier));
      if (/^(functions|agent)([\\/]|$)/.test(target)) offences.push(`${relative(ROOT, file)} → ${target}`);
    }
  }
  return offences;
}

describe("layout", () => {
  it("no file in adapters/ imports from functions/ or agent/", async () => {
    expect(await forbiddenImports()).toEqual([]);
  });

  it("recognises every import form it checks", () => {
    const source = [
      'import { a } from "../../functions/attest.js";',
      'import type { B } from "../agent/agent.js";',
      'export { c } from "./c.js";',
      'import "../side-effect.js";',
      'const m = await import("../../agent/main.js");',
    ].join("\n");
    expect(importSpecifiers(source).sort()).toEqual(
      [
        "../../functions/attest.js",
        "../agent/agent.js",
        "./c.js",
        "../side-effect.js",
        "../../agent/main.js",
      ].sort(),
    );
  });
});
