/**
 * The chart renderer (helm-render/main.go) behaves as Helm 3's engine on the pieces the chart
 * uses: values merged over values.yaml (maps merge, lists replace, null removes), toYaml in
 * sigs.k8s.io/yaml's form (sorted keys, lists at the parent's indent, no trailing newline),
 * include, tpl, required (nil or "" fail; an empty list does not, as in Helm), default,
 * .Files.Get, .Release/.Chart, partials not rendered, and a missing value rendering as nothing
 * (Helm replaces "<no value>") unless strict.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { go, renderChart } from "./support.js";

function chart(
  templates: Record<string, string>,
  values: string,
  files: Record<string, string> = {},
): string {
  const dir = mkdtempSync(join(tmpdir(), "shield-fixture-"));
  mkdirSync(join(dir, "templates"));
  writeFileSync(
    join(dir, "Chart.yaml"),
    'apiVersion: v2\nname: fixture\nversion: 1.2.3\nappVersion: "4.5"\n',
  );
  writeFileSync(join(dir, "values.yaml"), values);
  for (const [name, text] of Object.entries(templates)) writeFileSync(join(dir, "templates", name), text);
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(join(dir, "files"), { recursive: true });
    writeFileSync(join(dir, name), text);
  }
  return dir;
}

function overrides(text: string): string {
  const file = join(mkdtempSync(join(tmpdir(), "shield-over-")), "values.yaml");
  writeFileSync(file, text);
  return file;
}

describe.skipIf(go.skip)(`the chart renderer${go.skip ? ` (skipped: ${go.reason})` : ""}`, () => {
  it("merges values and renders toYaml, include, tpl, default, .Files.Get, .Release and .Chart as Helm does", () => {
    const dir = chart(
      {
        "_helpers.tpl": '{{- define "fixture.name" -}}{{ .Chart.Name }}-{{ .Release.Name }}{{- end -}}',
        "out.yaml":
          'name: {{ include "fixture.name" . }}\n' +
          "version: {{ .Chart.Version }}/{{ .Chart.AppVersion }}\n" +
          "ns: {{ .Release.Namespace }}\n" +
          "port: {{ .Values.port }}\n" +
          'fallback: {{ .Values.empty | default "dflt" }}\n' +
          "tpl: {{ tpl .Values.templated . }}\n" +
          'file: {{ .Files.Get "files/a.txt" | trim }}\n' +
          "obj:\n  {{- toYaml .Values.obj | nindent 2 }}\n" +
          "list: {{ .Values.list | toJson }}\n" +
          'gone: {{ hasKey .Values "removed" }}\n',
      },
      'port: 8280\nempty: ""\ntemplated: "{{ .Values.port }}!"\nobj:\n  b: [1, {z: 2, x: 1}]\n  a: keep\nlist: [1, 2]\nremoved: 1\n',
      { "files/a.txt": "from a file\n" },
    );
    const result = renderChart([overrides("obj:\n  c: true\nlist: [3]\nremoved: null\n")], {
      chart: dir,
      release: "rel",
    });
    expect(result.stderr).toBe("");
    expect(Object.keys(result.files)).toEqual(["fixture/templates/out.yaml"]);
    expect(result.files["fixture/templates/out.yaml"]).toBe(
      [
        "name: fixture-rel",
        "version: 1.2.3/4.5",
        "ns: default",
        "port: 8280",
        "fallback: dflt",
        "tpl: 8280!",
        "file: from a file",
        "obj:",
        "  a: keep",
        "  b:",
        "  - 1",
        "  - x: 1",
        "    z: 2",
        "  c: true",
        "list: [3]",
        "gone: false",
        "",
      ].join("\n"),
    );
  });

  it("required fails on a missing or empty value, not on an empty list; a missing value is empty unless strict", () => {
    const dir = chart(
      {
        "a.yaml": 'a: {{ required "a is required" .Values.a }}\nl: {{ required "l" .Values.l | len }}\n',
        "b.yaml": "b: [{{ .Values.nope }}]\n",
      },
      'a: ""\nl: []\n',
    );
    const missing = renderChart([], { chart: dir, strict: false });
    expect(missing.ok).toBe(false);
    expect(missing.stderr).toContain("a is required");
    const given = renderChart([overrides("a: x\n")], { chart: dir, strict: false });
    expect(given.files).toEqual({
      "fixture/templates/a.yaml": "a: x\nl: 0\n",
      "fixture/templates/b.yaml": "b: []\n",
    });
    const strict = renderChart([overrides("a: x\n")], { chart: dir });
    expect(strict.ok).toBe(false);
    expect(strict.stderr).toContain('map has no entry for key "nope"');
  });
});
