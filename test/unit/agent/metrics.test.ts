/**
 * `GET /metrics` on the key API: Prometheus text in the 0.0.4 exposition format (checked line by
 * line: HELP and TYPE before every family's samples, metric and label names, escaped label
 * values, numeric values), behind the same Host and bearer-token rules as every other route, and
 * never any key material.
 */
import { randomBytes } from "node:crypto";
import { request as httpRequest, type IncomingHttpHeaders, type OutgoingHttpHeaders } from "node:http";
import { afterEach, describe, expect, it } from "vitest";
import type { AgentStatus } from "../../../agent/agent.js";
import { Secret } from "../../../agent/config.js";
import { HeldKeys } from "../../../agent/held-keys.js";
import { startKeyApi, type KeyApi, type KeySource } from "../../../agent/key-api.js";
import { escapeLabelValue, renderAgentMetrics } from "../../../agent/metrics.js";

const AT = new Date("2030-01-01T00:00:00Z");
const OCT = randomBytes(32);
const TOKEN = "metrics-test-token-0123456789abcdefghijkl";

class FakeSource implements KeySource {
  readonly keys = new HeldKeys();
  readonly configuredKeys = ["orders", "ledger"] as const;
  status(): AgentStatus {
    return {
      agentId: "agent-1",
      workload: "orders",
      state: "trusted",
      provider: "simulated",
      tee: "sevsnp",
      runtimeKeyId: "runtime-key-thumbprint",
      configuredKeys: this.configuredKeys,
      keys: this.keys.summary(),
      attestedUntil: AT.toISOString(),
      inbox: { accepted: 3, dropped: { ERR_CONTROL_SIGNATURE: 2, "unsolicited-challenge": 1 } },
      attestations: { trusted: 2, denied: 1, error: 0, timeout: 1 },
    };
  }
}

const apis: KeyApi[] = [];
afterEach(async () => {
  for (const api of apis.splice(0)) await api.close();
});

async function serve(source: KeySource, bearerToken?: Secret): Promise<KeyApi> {
  const api = await startKeyApi({
    listen: { kind: "tcp", host: "127.0.0.1", port: 0 },
    agent: source,
    ...(bearerToken === undefined ? {} : { bearerToken }),
  });
  apis.push(api);
  return api;
}

function get(
  api: KeyApi,
  headers: OutgoingHttpHeaders,
): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  if (api.address.kind !== "tcp") throw new Error("not TCP");
  const port = api.address.port;
  return new Promise((resolve, reject) => {
    const request = httpRequest(
      { host: "127.0.0.1", port, path: "/metrics", headers, setHost: false, agent: false },
      (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("end", () =>
          resolve({
            status: response.statusCode ?? 0,
            headers: response.headers,
            body: Buffer.concat(chunks).toString("utf8"),
          }),
        );
      },
    );
    request.on("error", reject);
    request.end();
  });
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
/** A label value inside quotes: any character but `\`, `"` and line feed, or one of their escapes. */
const LABEL_PAIR = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"/;
const VALUE = /^(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|NaN|[+-]Inf)$/;

interface Sample {
  readonly name: string;
  readonly labels: Record<string, string>;
  readonly value: number;
}

/**
 * Parses the exposition format strictly, throwing at the first line that breaks it; returns the
 * samples with label values unescaped.
 */
function parseExposition(text: string): { samples: Sample[]; types: Map<string, string> } {
  expect(text.endsWith("\n")).toBe(true);
  const help = new Set<string>();
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const [index, line] of text.slice(0, -1).split("\n").entries()) {
    const where = `line ${index + 1}: ${line}`;
    if (line.startsWith("# HELP ")) {
      const name = line.slice(7).split(" ")[0]!;
      if (!METRIC_NAME.test(name) || help.has(name)) throw new Error(`bad or repeated HELP, ${where}`);
      help.add(name);
      continue;
    }
    if (line.startsWith("# TYPE ")) {
      const [name, type, ...rest] = line.slice(7).split(" ");
      if (!METRIC_NAME.test(name!) || rest.length > 0 || types.has(name!))
        throw new Error(`bad TYPE, ${where}`);
      if (!["counter", "gauge", "histogram", "summary", "untyped"].includes(type!))
        throw new Error(`unknown type, ${where}`);
      if (!help.has(name!)) throw new Error(`TYPE before HELP, ${where}`);
      types.set(name!, type!);
      continue;
    }
    if (line.startsWith("#") || line.trim() === "") throw new Error(`unexpected line, ${where}`);
    const name = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)?.[0];
    if (name === undefined) throw new Error(`no metric name, ${where}`);
    if (!types.has(name)) throw new Error(`sample without TYPE, ${where}`);
    let rest = line.slice(name.length);
    const labels: Record<string, string> = {};
    if (rest.startsWith("{")) {
      rest = rest.slice(1);
      while (!rest.startsWith("}")) {
        const pair = LABEL_PAIR.exec(rest);
        if (pair === null || !LABEL_NAME.test(pair[1]!)) throw new Error(`bad label, ${where}`);
        if (pair[1]! in labels) throw new Error(`repeated label, ${where}`);
        labels[pair[1]!] = pair[2]!.replace(/\\(["\\n])/g, (_m, c: string) => (c === "n" ? "\n" : c));
        rest = rest.slice(pair[0].length);
        if (rest.startsWith(",")) rest = rest.slice(1);
        else if (!rest.startsWith("}")) throw new Error(`bad label separator, ${where}`);
      }
      rest = rest.slice(1);
    }
    const fields = rest.split(" ");
    if (fields[0] !== "" || fields.length < 2 || fields.length > 3 || !VALUE.test(fields[1]!))
      throw new Error(`bad value, ${where}`);
    if (types.get(name) === "counter" && !name.endsWith("_total")) throw new Error(`counter name, ${where}`);
    samples.push({ name, labels, value: Number(fields[1]!.replace("Inf", "Infinity")) });
  }
  return { samples, types };
}

const sample = (samples: Sample[], name: string, labels: Record<string, string> = {}) =>
  samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;

describe("GET /metrics", () => {
  it("serves the agent's state, attestations, dropped messages and key versions as valid Prometheus text", async () => {
    const source = new FakeSource();
    source.keys.install("orders", "v1", "oct-HSM", Buffer.from(OCT), AT);
    source.keys.install("orders", "v2", "oct-HSM", Buffer.from(OCT), AT);
    const api = await serve(source);
    const answer = await get(api, { host: api.url.slice("http://".length) });
    expect(answer.status).toBe(200);
    expect(answer.headers["content-type"]).toBe("text/plain; version=0.0.4; charset=utf-8");
    expect(answer.headers["cache-control"]).toBe("no-store");
    const { samples, types } = parseExposition(answer.body);
    expect(types.get("shield_agent_attestations_total")).toBe("counter");
    expect(sample(samples, "shield_agent_state", { state: "trusted" })).toBe(1);
    expect(sample(samples, "shield_agent_state", { state: "revoked" })).toBe(0);
    expect(samples.filter((s) => s.name === "shield_agent_state" && s.value === 1)).toHaveLength(1);
    expect(sample(samples, "shield_agent_attested_until_seconds")).toBe(AT.getTime() / 1000);
    expect(sample(samples, "shield_agent_attestations_total", { verdict: "trusted" })).toBe(2);
    expect(sample(samples, "shield_agent_attestations_total", { verdict: "timeout" })).toBe(1);
    expect(sample(samples, "shield_agent_control_messages_accepted_total")).toBe(3);
    expect(
      sample(samples, "shield_agent_control_messages_dropped_total", { reason: "ERR_CONTROL_SIGNATURE" }),
    ).toBe(2);
    expect(sample(samples, "shield_agent_key_versions_held", { key: "orders" })).toBe(2);
    expect(sample(samples, "shield_agent_key_versions_held", { key: "ledger" })).toBe(0);
    expect(sample(samples, "shield_agent_key_current_version", { key: "orders", version: "v2" })).toBe(1);
    // Never the key material, in any encoding, nor the runtime key.
    for (const encoding of ["base64", "base64url", "hex"] as const) {
      expect(answer.body).not.toContain(OCT.toString(encoding));
    }
    expect(answer.body).not.toContain("runtime-key-thumbprint");
  });

  it("is behind the same Host check and bearer token as the key routes", async () => {
    const source = new FakeSource();
    const api = await serve(source, new Secret(TOKEN));
    const host = api.url.slice("http://".length);
    expect((await get(api, { host: "evil.example:80" })).status).toBe(421);
    expect((await get(api, { host })).status).toBe(401);
    expect(
      (await get(api, { host, authorization: "Bearer not-the-token-0123456789abcdefghij" })).status,
    ).toBe(401);
    const answer = await get(api, { host, authorization: `Bearer ${TOKEN}` });
    expect(answer.status).toBe(200);
    expect(answer.body).not.toContain(TOKEN);
  });

  it("escapes label values: backslash, double quote and line feed", () => {
    expect(escapeLabelValue('a\\b"c\nd')).toBe('a\\\\b\\"c\\nd');
    const status = new FakeSource().status();
    const text = renderAgentMetrics({
      ...status,
      workload: 'ord"ers\\\nnext',
      inbox: { accepted: 0, dropped: { 'odd "reason"\n': 4 } },
    });
    const { samples } = parseExposition(text);
    expect(sample(samples, "shield_agent_info")).toBe(1);
    expect(samples.find((s) => s.name === "shield_agent_info")?.labels["workload"]).toBe('ord"ers\\\nnext');
    expect(sample(samples, "shield_agent_control_messages_dropped_total", { reason: 'odd "reason"\n' })).toBe(
      4,
    );
  });
});
