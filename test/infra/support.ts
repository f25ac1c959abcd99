/**
 * Shared by the infrastructure tests: the repository's files, the external tools (Go for the
 * chart renderer, shellcheck) and the chart renderer itself. A missing tool fails the test under
 * CI (`.ci/run` installs them); outside CI the tests that need it are skipped, and say why.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseAllDocuments } from "yaml";

export const ROOT = resolve(import.meta.dirname, "..", "..");
export const CHART = join(ROOT, "infra", "helm", "shield-agent");
export const RENDERER_SOURCE = join(ROOT, "test", "infra", "helm-render", "main.go");

export function read(path: string): string {
  return readFileSync(join(ROOT, path), "utf8");
}

/** Tracked and untracked (not ignored) files, repository-relative. */
export function repositoryFiles(): string[] {
  const out = execFileSync("git", ["ls-files", "--cached", "--others", "--exclude-standard", "-z"], {
    cwd: ROOT,
    encoding: "utf8",
  });
  return out
    .split("\0")
    .filter((f) => f !== "" && existsSync(join(ROOT, f)))
    .sort();
}

export interface Tool {
  readonly name: string;
  readonly path?: string;
  /** True when the tests that need it should be skipped: missing, and not under CI. */
  readonly skip: boolean;
  /** Why it is skipped or must fail. */
  readonly reason: string;
}

export function findTool(name: string, debianPackage: string): Tool {
  const found = spawnSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" });
  const path = found.status === 0 ? found.stdout.trim() : undefined;
  const ci = process.env["CI"] === "true";
  return {
    name,
    ...(path === undefined ? {} : { path }),
    skip: path === undefined && !ci,
    reason: `${name} is not installed (Debian package ${debianPackage}; .ci/run installs it)`,
  };
}

export function requireTool(tool: Tool): string {
  if (tool.path === undefined) throw new Error(tool.reason);
  return tool.path;
}

export const go = findTool("go", "golang-go");
export const shellcheck = findTool("shellcheck", "shellcheck");

const GOPATH = "/usr/share/gocode";

/**
 * Builds the renderer once per source version (offline: GOPATH mode against Debian's sprig
 * sources) into the temp directory and returns its path. Concurrent test files build into
 * their own file and rename it into place.
 */
export function helmRenderer(): string {
  const goPath = requireTool(go);
  if (!existsSync(join(GOPATH, "src", "github.com", "Masterminds", "sprig"))) {
    throw new Error(
      "sprig's Go sources are not installed (Debian package golang-github-masterminds-sprig-dev)",
    );
  }
  const digest = createHash("sha256").update(readFileSync(RENDERER_SOURCE)).digest("hex").slice(0, 16);
  const dir = join(tmpdir(), `shield-helm-render-${digest}`);
  const binary = join(dir, "helm-render");
  if (existsSync(binary)) return binary;
  mkdirSync(dir, { recursive: true });
  const partial = `${binary}.${process.pid}`;
  const built = spawnSync(goPath, ["build", "-o", partial, "."], {
    cwd: join(ROOT, "test", "infra", "helm-render"),
    encoding: "utf8",
    env: {
      ...process.env,
      GOPATH,
      GO111MODULE: "off",
      GOFLAGS: "",
      GOPROXY: "off",
      GOCACHE: join(dir, "cache"),
    },
  });
  if (built.status !== 0) throw new Error(`building the chart renderer failed:\n${built.stderr}`);
  renameSync(partial, binary);
  return binary;
}

export interface RenderResult {
  readonly ok: boolean;
  /** Template path → rendered text. */
  readonly files: Readonly<Record<string, string>>;
  readonly stderr: string;
}

export function renderChart(
  valueFiles: readonly string[],
  options: { strict?: boolean; chart?: string; release?: string } = {},
): RenderResult {
  const args = [
    ...(options.strict === false ? [] : ["-strict"]),
    "-release",
    options.release ?? "orders",
    options.chart ?? CHART,
    ...valueFiles,
  ];
  const run = spawnSync(helmRenderer(), args, { encoding: "utf8" });
  if (run.status !== 0) return { ok: false, files: {}, stderr: run.stderr };
  return { ok: true, files: JSON.parse(run.stdout) as Record<string, string>, stderr: run.stderr };
}

export interface KubeObject {
  readonly apiVersion: string;
  readonly kind: string;
  readonly metadata: { readonly name: string; readonly [key: string]: unknown };
  readonly [key: string]: unknown;
}

/** Every YAML document of the rendered files that is not empty. */
export function objectsOf(result: RenderResult): KubeObject[] {
  const objects: KubeObject[] = [];
  for (const [name, text] of Object.entries(result.files)) {
    for (const doc of parseAllDocuments(text)) {
      if (doc.errors.length > 0) throw new Error(`${name}: ${doc.errors.map((e) => e.message).join("; ")}`);
      const value = doc.toJS() as unknown;
      if (value === null || value === undefined) continue;
      objects.push(value as KubeObject);
    }
  }
  return objects;
}

/** The code blocks of one language in a Markdown file, in order, without their indentation. */
export function codeBlocks(markdown: string, language: string): string[] {
  const fence = new RegExp("^( *)```" + language + "\\n([\\s\\S]*?)^\\1```$", "gm");
  return [...markdown.matchAll(fence)].map((m) => {
    const indent = m[1]!;
    return m[2]!
      .split("\n")
      .map((line) => (line.startsWith(indent) ? line.slice(indent.length) : line))
      .join("\n");
  });
}

export function shellBlocks(markdown: string): string[] {
  return codeBlocks(markdown, "sh");
}
