/**
 * The operator commands over a running back end: `shield deploy` signs and posts to a webhook
 * served over loopback by the real use case (HMAC key from the local Key Vault's secrets),
 * `shield status` reads `/api/status`, and `shield audit verify` / `audit who-has` read Table
 * Storage on Azurite — where the test edits one audit row behind Shield's back and the command
 * must name that entry.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../../cli/main.js";
import { createStateTableClient, createTableStateStore } from "../../adapters/state/table.js";
import { NEW_HOST_DATA, OLD_HOST_DATA, startDeployHarness, type DeployHarness } from "../support/deploy.js";
import { azuriteConnectionString, uniqueTableName } from "../support/storage.js";

interface Run {
  code: number;
  stdout: string[];
  stderr: string[];
  json: Record<string, unknown>;
}

async function shield(...argv: string[]): Promise<Run> {
  const stdout: string[] = [];
  const stderr: string[] = [];
  const code = await runCli(argv, { stdout: (l) => stdout.push(l), stderr: (l) => stderr.push(l) });
  const json = argv.includes("--json") ? (JSON.parse(stdout.at(-1) ?? "{}") as Record<string, unknown>) : {};
  return { code, stdout, stderr, json };
}

let dir: string;
let h: DeployHarness;
let server: Server;
let url: string;
let keyName: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "shield-ops-"));
  h = await startDeployHarness();
  keyName = await h.createKey(2);
  server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (c: Buffer) => chunks.push(c));
    request.on("end", () => {
      void (async () => {
        const headers: Record<string, string> = {};
        for (const [k, v] of Object.entries(request.headers)) if (typeof v === "string") headers[k] = v;
        const answer =
          request.method === "POST" && request.url === "/api/deployments"
            ? await h.handler.post(headers, Buffer.concat(chunks))
            : request.url === "/api/status" && headers["x-functions-key"] === "status-key-for-tests"
              ? {
                  status: 200,
                  body: {
                    generatedAt: "2026-01-01T00:00:00.000Z",
                    agents: [
                      {
                        agentId: "agent-1",
                        workload: "orders",
                        tee: "sevsnp",
                        status: "trusted",
                        keyVersions: [],
                      },
                    ],
                    keys: [],
                    rollouts: [],
                    denials: [],
                  },
                }
              : { status: 404, body: {} };
        response
          .writeHead(answer.status, { "content-type": "application/json" })
          .end(JSON.stringify(answer.body));
      })();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise<void>((resolve) => server?.close(() => resolve()));
  await h?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe("shield deploy", () => {
  const secretFile = () => {
    const path = join(dir, "hmac");
    writeFileSync(path, h.hmacSecret);
    return path;
  };

  it("--dry-run prints the diff per key and version and changes nothing", async () => {
    const run = await shield(
      "deploy",
      "--url",
      url,
      "--keys",
      keyName,
      "--measurement",
      NEW_HOST_DATA,
      "--grace-seconds",
      "3600",
      "--dry-run",
      "--secret-file",
      secretFile(),
    );
    expect(run.code).toBe(0);
    const added = run.stdout.filter((l) =>
      l.includes(`+ measurement x-ms-sevsnpvm-hostdata ${NEW_HOST_DATA}`),
    );
    expect(added).toHaveLength(2);
    expect(run.stdout.filter((l) => l.includes(": update"))).toHaveLength(2);
    expect(h.queued).toEqual([]);
  });

  it("--apply queues the deployment and prints its id", async () => {
    const run = await shield(
      "deploy",
      "--url",
      url,
      "--keys",
      keyName,
      "--measurement",
      NEW_HOST_DATA,
      "--grace-seconds",
      "3600",
      "--apply",
      "--secret-file",
      secretFile(),
      "--json",
    );
    expect(run.code).toBe(0);
    expect(run.json).toMatchObject({ ok: true, httpStatus: 202, status: "queued" });
    expect(h.queued.map((m) => m.deploymentId)).toEqual([run.json["deploymentId"]]);
    expect(h.queued[0]!.retire).toEqual([{ tee: "sevsnp", hostData: OLD_HOST_DATA }]);
    h.queued.splice(0);
  });

  it("exits 1 with the webhook's code when the key is wrong, and never prints the key", async () => {
    const wrong = join(dir, "wrong");
    writeFileSync(wrong, "a-wrong-key-of-enough-length");
    const run = await shield(
      "deploy",
      "--url",
      url,
      "--keys",
      keyName,
      "--measurement",
      NEW_HOST_DATA,
      "--grace-seconds",
      "3600",
      "--apply",
      "--secret-file",
      wrong,
      "--json",
    );
    expect(run.code).toBe(1);
    expect((run.json["error"] as { code: string }).code).toBe("ERR_WEBHOOK_SIGNATURE");
    expect(JSON.stringify(run)).not.toContain("a-wrong-key-of-enough-length");
  });

  it("is a usage error (exit 2) for a measurement of the wrong length, before anything is sent", async () => {
    const run = await shield(
      "deploy",
      "--url",
      url,
      "--keys",
      keyName,
      "--measurement",
      "abcd",
      "--grace-seconds",
      "3600",
      "--apply",
      "--secret-file",
      secretFile(),
    );
    expect(run.code).toBe(2);
  });
});

describe("shield status", () => {
  it("prints the status as a table and as JSON", async () => {
    const keyFile = join(dir, "function-key");
    writeFileSync(keyFile, "status-key-for-tests");
    const table = await shield("status", "--url", url, "--function-key-file", keyFile);
    expect(table.code).toBe(0);
    expect(table.stdout.some((l) => l.startsWith("agent-1") && l.includes("trusted"))).toBe(true);
    const json = await shield("status", "--url", url, "--function-key-file", keyFile, "--json");
    expect(json.json).toMatchObject({ ok: true, agents: [{ agentId: "agent-1" }] });
  });
});

describe("shield audit", () => {
  let connectionString: string;
  let tableName: string;

  beforeAll(async () => {
    connectionString = azuriteConnectionString();
    tableName = uniqueTableName("auditcli");
    const store = await createTableStateStore({ connectionString, tableName, createTable: true });
    const at = new Date("2026-02-01T00:00:00Z");
    for (let i = 1; i <= 4; i++) {
      await store.appendAudit("key-orders-key", {
        at: new Date(at.getTime() + i * 1000),
        kind: "key-released",
        subject: "orders-key",
        details: { agentId: `agent-${i}`, keyVersion: "v1" },
      });
    }
    await store.appendAudit("agent-agent-1", {
      at,
      kind: "attestation",
      subject: "agent-1",
      details: { verdict: "trusted" },
    });
    await store.recordHolding({
      agentId: "agent-1",
      keyName: "orders-key",
      keyVersion: "v1",
      measurement: { tee: "sevsnp", hostData: OLD_HOST_DATA },
      releasedAt: at,
      requestId: "req-1",
    });
    await store.recordHolding({
      agentId: "agent-2",
      keyName: "orders-key",
      keyVersion: "v2",
      measurement: { tee: "sevsnp", hostData: NEW_HOST_DATA },
      releasedAt: at,
      requestId: "req-2",
    });
  });

  it("verify passes on the log as produced", async () => {
    const run = await shield(
      "audit",
      "verify",
      "--connection-string",
      connectionString,
      "--table",
      tableName,
      "--json",
    );
    expect(run.code).toBe(0);
    expect(run.json["partitions"]).toEqual([
      expect.objectContaining({ partition: "agent-agent-1", entries: 1, ok: true }),
      expect.objectContaining({ partition: "key-orders-key", entries: 4, ok: true }),
    ]);
  });

  it("who-has names each holder, version and measurement", async () => {
    const all = await shield(
      "audit",
      "who-has",
      "orders-key",
      "--connection-string",
      connectionString,
      "--table",
      tableName,
      "--json",
    );
    expect(all.code).toBe(0);
    expect((all.json["holders"] as { agentId: string }[]).map((r) => r.agentId).sort()).toEqual([
      "agent-1",
      "agent-2",
    ]);
    const v2 = await shield(
      "audit",
      "who-has",
      "orders-key",
      "--version",
      "v2",
      "--connection-string",
      connectionString,
      "--table",
      tableName,
      "--json",
    );
    expect(v2.json["holders"]).toEqual([
      expect.objectContaining({
        agentId: "agent-2",
        keyVersion: "v2",
        measurement: `sevsnp:${NEW_HOST_DATA}`,
      }),
    ]);
  });

  it("verify names the first tampered entry when one row is edited in Azurite", async () => {
    const raw = createStateTableClient({ connectionString, tableName });
    await raw.updateEntity(
      {
        partitionKey: "audit~key-orders-key",
        rowKey: String(3).padStart(16, "0"),
        details: JSON.stringify({ agentId: "mallory", keyVersion: "v1" }),
      },
      "Merge",
    );
    const run = await shield(
      "audit",
      "verify",
      "--connection-string",
      connectionString,
      "--table",
      tableName,
      "--json",
    );
    expect(run.code).toBe(1);
    expect(run.json["firstBroken"]).toEqual([
      { partition: "key-orders-key", sequence: 3, kind: "hash-mismatch" },
    ]);
    const text = await shield(
      "audit",
      "verify",
      "--connection-string",
      connectionString,
      "--table",
      tableName,
    );
    expect(text.stdout.join("\n")).toContain("first broken: entry 3 (hash-mismatch)");
  });
});
