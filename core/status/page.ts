/**
 * The status snapshot as one self-contained HTML page: no script, no external asset, one
 * `<style>` element whose sha256 the Content-Security-Policy names (so nothing else can style,
 * load or run), and a `<meta http-equiv="refresh">` so it keeps itself current. Every value is
 * HTML-escaped; long hex measurements are shortened for reading, with the full value in `title`.
 */
import { createHash } from "node:crypto";
import type { StatusSnapshot } from "./status.js";

const STYLE = `
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1b1f24;background:#f6f8fa}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
.meta{color:#57606a;margin-bottom:16px}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #d0d7de}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #d0d7de;vertical-align:top}
th{background:#eaeef2;font-weight:600}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.trusted,.applied{background:#dafbe1;color:#116329}.new,.queued,.applying{background:#ddf4ff;color:#0550ae}
.untrusted,.failed{background:#fff1e5;color:#953800}.revoked,.denied{background:#ffebe9;color:#a40e26}
.empty{color:#57606a;font-style:italic}
`;

export const STATUS_PAGE_STYLE_HASH = `sha256-${createHash("sha256").update(STYLE, "utf8").digest("base64")}`;

/** The header the page must be served with. */
export const STATUS_PAGE_CSP = [
  "default-src 'none'",
  `style-src '${STATUS_PAGE_STYLE_HASH}'`,
  "img-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

function escape(value: string): string {
  return value.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function shortHex(label: string): string {
  const full = escape(label);
  const short = escape(label.replace(/([0-9a-f]{8})[0-9a-f]{40,}([0-9a-f]{4})/g, "$1…$2"));
  return `<code title="${full}">${short}</code>`;
}

function badge(value: string): string {
  return `<span class="badge ${escape(value.replace(/[^a-z-]/g, ""))}">${escape(value)}</span>`;
}

function table(headers: readonly string[], rows: readonly string[][], empty: string): string {
  if (rows.length === 0) return `<p class="empty">${escape(empty)}</p>`;
  const head = headers.map((h) => `<th>${escape(h)}</th>`).join("");
  const body = rows.map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join("")}</tr>`).join("\n");
  return `<table><thead><tr>${head}</tr></thead><tbody>\n${body}\n</tbody></table>`;
}

function nextRotation(rotation: StatusSnapshot["keys"][number]["rotation"]): string {
  if (rotation === undefined) return "";
  return rotation.nextRotationAt === undefined
    ? `<span class="empty">on events only</span>`
    : escape(rotation.nextRotationAt);
}

export function renderStatusPage(
  snapshot: StatusSnapshot,
  options: { refreshSeconds?: number } = {},
): string {
  const refresh = Math.max(5, Math.floor(options.refreshSeconds ?? 30));
  const agents = table(
    ["Agent", "Workload", "Status", "Measurement", "Attested until", "Key versions held"],
    snapshot.agents.map((a) => [
      `<code>${escape(a.agentId)}</code>`,
      escape(a.workload),
      badge(a.status) + (a.statusReason === undefined ? "" : ` <code>${escape(a.statusReason)}</code>`),
      a.measurement === undefined ? "" : shortHex(a.measurement),
      escape(a.attestedUntil ?? ""),
      a.keyVersions
        .map((k) => `<code>${escape(k.keyName)}/${escape(k.keyVersion.slice(0, 8))}</code>`)
        .join("<br>"),
    ]),
    "No agents yet.",
  );
  const keys = table(
    [
      "Key",
      "Version",
      "Releasable",
      "Allowed measurements (release policy)",
      "Appraisal policy",
      "Next rotation",
    ],
    snapshot.keys.flatMap((k) =>
      (k.versions.length === 0 ? [undefined] : k.versions).map((v, i) => [
        i === 0
          ? `<code>${escape(k.keyName)}</code>` + (k.error ? ` <code>${escape(k.error)}</code>` : "")
          : "",
        v === undefined
          ? ""
          : `<code>${escape(v.version.slice(0, 12))}</code>${v.immutable ? " (immutable)" : ""}`,
        v === undefined ? "" : v.releasable ? "yes" : "no",
        v === undefined ? "" : v.measurements.map(shortHex).join("<br>"),
        i === 0
          ? k.appraisal
              .map((a) => shortHex(a.measurement) + (a.retireAt ? ` retires ${escape(a.retireAt)}` : ""))
              .join("<br>")
          : "",
        i === 0 ? nextRotation(k.rotation) : "",
      ]),
    ),
    "No keys yet.",
  );
  const rollouts = table(
    ["Deployment", "Status", "Keys", "Adds", "Retires", "Grace ends"],
    snapshot.rollouts.map((r) => [
      `<code>${escape(r.deploymentId)}</code>`,
      badge(r.status),
      r.keys.map((k) => `<code>${escape(k)}</code>`).join(" "),
      r.add.map(shortHex).join("<br>"),
      r.retire.map(shortHex).join("<br>"),
      escape(r.graceEndsAt),
    ]),
    "No rollout in progress.",
  );
  const denials = table(
    ["When", "Agent", "Code", "Failed checks"],
    snapshot.denials.map((d) => [
      escape(d.at),
      `<code>${escape(d.agentId)}</code>`,
      badge("denied") + ` <code>${escape(d.code)}</code>`,
      d.fields.map((f) => `<code>${escape(f)}</code>`).join(" "),
    ]),
    "No denials.",
  );
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="${refresh}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Shield status</title>
<style>${STYLE}</style>
</head>
<body>
<h1>Shield status</h1>
<div class="meta">Generated ${escape(snapshot.generatedAt)} · ${snapshot.agents.length} agent(s) · ${snapshot.keys.length} key(s) · refreshes every ${refresh} s</div>
<h2>Agents</h2>
${agents}
<h2>Keys</h2>
${keys}
<h2>Rollouts in progress</h2>
${rollouts}
<h2>Latest denials</h2>
${denials}
</body>
</html>
`;
}
