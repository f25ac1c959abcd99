/**
 * `npm start -- --state DIR`: a run does real work (two agents attest and get the key, a
 * deployment rolls a new measurement into the release policy, the key is rotated and the agents
 * move to the new version, a rotation policy is set), stops, and a second run on the same DIR
 * finds all of it: every row of the state table (agent records, audit chains, deployments,
 * rollouts), every key version with its attributes and release policy, the rotation policy, the
 * webhook's secret, the MAA's signing certificate and the agents' pinned keys; an agent of the
 * first run gets the same key material again, and `shield audit verify` passes. A damaged or
 * edited sealed file, or another sealing key, makes start fail with ERR_CONFIG. Last, `npm start
 * -- --state DIR` as a process resumes the same DIR (same MAA URL, the rotated version) and stops
 * on SIGINT; on a tampered copy it exits 1 naming ERR_CONFIG.
 */
import { TableClient } from "@azure/data-tables";
import { execFile, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { cp, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { postSignedDeployment } from "../../local/scenario.js";
import { CONTROL_KEY_NAME } from "../../local/stack.js";
import {
  DEMO_KEY,
  DEPLOY_SECRET_NAME,
  startSystem,
  type AgentHandle,
  type LocalSystem,
} from "../../local/system.js";

const ROOT = resolve(import.meta.dirname, "../..");
const NEW_HOST_DATA = "7a".repeat(32);
const dirs: string[] = [];
let running: LocalSystem | undefined;

afterAll(async () => {
  await running?.stop();
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

// No timer may write between the snapshot before the stop and the one after the restart.
const QUIET = {
  SHIELD_REATTEST_SCHEDULE: "0 0 0 1 1 *",
  SHIELD_ROTATION_SCHEDULE: "0 0 0 1 1 *",
};

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 150));
  }
}

/** What the agent's key API serves: the version and a digest of the key bytes. */
async function served(agent: AgentHandle): Promise<{ version: string; sha256: string } | undefined> {
  const url = agent.keyApiUrl();
  if (url === undefined) return undefined;
  const response = await fetch(`${url}/keys/${DEMO_KEY}`);
  const bytes = Buffer.from(await response.arrayBuffer());
  const sha256 = createHash("sha256").update(bytes).digest("hex");
  bytes.fill(0);
  const version = response.headers.get("x-key-version");
  return response.status === 200 && version !== null ? { version, sha256 } : undefined;
}

/** Every row of the state table but the service's own stamps (Timestamp, etag). */
async function tableRows(system: LocalSystem): Promise<Record<string, unknown>[]> {
  const client = TableClient.fromConnectionString(
    system.azurite.connectionString,
    system.settings["SHIELD_STATE_TABLE"] ?? "shield",
    { allowInsecureConnection: true },
  );
  const rows: Record<string, unknown>[] = [];
  for await (const row of client.listEntities()) {
    const { etag: _etag, timestamp: _timestamp, ...rest } = row as Record<string, unknown>;
    rows.push(rest);
  }
  return rows.sort((a, b) =>
    `${String(a["partitionKey"])}/${String(a["rowKey"])}`.localeCompare(
      `${String(b["partitionKey"])}/${String(b["rowKey"])}`,
    ),
  );
}

/** What a restart must keep, as comparable values. */
async function snapshot(system: LocalSystem) {
  const vault = system.stack.vault;
  return {
    rows: await tableRows(system),
    versions: {
      [DEMO_KEY]: await vault.listVersions(DEMO_KEY),
      [CONTROL_KEY_NAME]: await vault.listVersions(CONTROL_KEY_NAME),
    },
    rotationPolicy: await vault.getRotationPolicy(DEMO_KEY),
    deploySecret: system.stack.keyVault.secrets.get(DEPLOY_SECRET_NAME),
    maaUrl: system.stack.maa.url,
    maaCerts: await system.stack.maa.engine.getSigningCertificates(),
    controlPublicKey: system.stack.controlKeys.keys.map(({ n, e }) => ({ n, e })),
    signer: system.stack.vault.signerCertificates.map((c) => c.fingerprint256),
    functionKey: system.host.keys.functionKey,
  };
}

describe("npm start --state DIR", () => {
  it("keeps every record, key, policy, rollout and audit entry across a restart; refuses a tampered state", async () => {
    const dir = await mkdtemp(join(tmpdir(), "shield-state-test-"));
    dirs.push(dir);
    const state = join(dir, "state");

    // Run 1: real work.
    const first = await startSystem({ stateDir: state, settings: QUIET });
    running = first;
    expect(first.stateDir).toEqual({ directory: state, resumed: false });
    const snp = first.startAgent({ agentId: "snp-agent-1", tee: "sevsnp" });
    const sgx = first.startAgent({ agentId: "sgx-agent-1", tee: "sgx" });
    const v1 = await until("snp-agent-1 holds the key", () => served(snp));
    await until("sgx-agent-1 holds the key", () => served(sgx));
    await first.stack.vault.setRotationPolicy(DEMO_KEY, {
      lifetimeActions: [{ action: "Notify", timeBeforeExpiry: "P30D" }],
      expiryTime: "P90D",
    });

    const deployment = await postSignedDeployment(
      first,
      JSON.stringify({
        keys: [DEMO_KEY],
        add: [{ tee: "sevsnp", hostData: NEW_HOST_DATA }],
        graceSeconds: 86400,
      }),
    );
    expect(deployment.status).toBe(202);
    const { deploymentId } = (await deployment.json()) as { deploymentId: string };
    await until("the deployment is applied", async () => {
      const answer = await fetch(
        `${first.host.url}/api/deployments/${deploymentId}?code=${first.host.keys.functionKey}`,
      );
      return /"status":"applied"/.test(await answer.text()) ? true : undefined;
    });

    const rotate = await fetch(
      `${first.host.url}/api/keys/${DEMO_KEY}/rotate?code=${first.host.keys.functionKey}`,
      {
        method: "POST",
      },
    );
    expect(rotate.status).toBe(202);
    const v2 = await until("both agents hold the rotated version", async () => {
      const [a, b] = [await served(snp), await served(sgx)];
      return a !== undefined && b !== undefined && a.version !== v1.version && b.version === a.version
        ? a
        : undefined;
    });
    expect(v2.sha256).not.toBe(v1.sha256);
    for (const agent of [...first.agents.values()]) await agent.stop();

    const before = await snapshot(first);
    expect(before.versions[DEMO_KEY].map((v) => v.version)).toEqual([v1.version, v2.version]);
    expect(
      JSON.stringify(before.versions[DEMO_KEY][1]!.releasePolicy?.policy),
      "the deployment's measurement is in the rotated version's policy",
    ).toContain(NEW_HOST_DATA);
    const kinds = before.rows.map((r) => (typeof r["kind"] === "string" ? r["kind"] : ""));
    for (const kind of ["key-released", "key-rotated", "policy-updated"])
      expect(kinds, `an audit entry ${kind}`).toContain(kind);
    const partitions = new Set(before.rows.map((r) => String(r["partitionKey"])));
    expect([...partitions].some((p) => p.startsWith("audit~"))).toBe(true);
    await first.stop();
    running = undefined;
    expect(await readdir(state)).not.toContain("lock");

    // Run 2: the same directory.
    const second = await startSystem({ stateDir: state, settings: QUIET });
    running = second;
    expect(second.stateDir).toEqual({ directory: state, resumed: true });
    const after = await snapshot(second);
    expect(after.rows.length).toBe(before.rows.length);
    expect(after).toEqual(before);
    // The same agent, restarted as a new process would be, attests again and gets the same key;
    // meanwhile the operator checks the audit log of the restarted state.
    const again = second.startAgent({ agentId: "snp-agent-1", tee: "sevsnp" });
    const [servedAgain, { stdout }] = await Promise.all([
      until("snp-agent-1 holds the key again", () => served(again)),
      promisify(execFile)(
        process.execPath,
        [
          "--import",
          "tsx",
          "cli/shield.ts",
          "audit",
          "verify",
          "--connection-string",
          second.azurite.connectionString,
          "--json",
        ],
        { cwd: ROOT },
      ),
    ]);
    expect(servedAgain).toEqual(v2);
    const verdict = JSON.parse(stdout.trim().split("\n").at(-1)!) as {
      ok: boolean;
      verified: boolean;
      partitions: { partition: string; entries: number; ok: boolean }[];
    };
    expect(verdict.ok).toBe(true);
    expect(verdict.verified).toBe(true);
    const chains = new Set(
      before.rows
        .filter((r) => String(r["partitionKey"]).startsWith("audit~"))
        .map((r) => String(r["partitionKey"])),
    );
    expect(verdict.partitions.length).toBe(chains.size);
    expect(verdict.partitions.every((p) => p.ok && p.entries > 0)).toBe(true);
    await second.stop();
    running = undefined;

    // Tampering: each is refused at start, with the typed error, and changes nothing.
    const keyFile = join(state, "keyvault", "keys", `${DEMO_KEY}.json`);
    const systemFile = join(state, "system.sealed");
    const sealingKey = join(state, "sealing-key");
    const originals = new Map<string, string>();
    for (const file of [keyFile, systemFile, sealingKey]) originals.set(file, await readFile(file, "utf8"));
    const loosened = originals.get(keyFile)!.replace(/"enabled":true/, '"enabled":false');
    expect(loosened).not.toBe(originals.get(keyFile));
    const sealed = JSON.parse(originals.get(systemFile)!) as { ciphertext: string };
    const flipped = Buffer.from(sealed.ciphertext, "base64");
    flipped[100] = flipped[100]! ^ 1;
    const tampered: [string, string, RegExp][] = [
      [keyFile, loosened, /fails its MAC check/],
      [systemFile, JSON.stringify({ ...sealed, ciphertext: flipped.toString("base64") }), /does not open/],
      [sealingKey, randomBytes(32).toString("base64") + "\n", /does not open/],
    ];
    for (const [file, text, message] of tampered) {
      await writeFile(file, text, { mode: 0o600 });
      await expect(startSystem({ stateDir: state, settings: QUIET }), file).rejects.toMatchObject({
        code: "ERR_CONFIG",
        message: expect.stringMatching(message) as unknown,
      });
      expect(await readFile(file, "utf8")).toBe(text);
      await writeFile(file, originals.get(file)!, { mode: 0o600 });
    }

    // As processes, side by side: `npm start -- --state DIR` resumes DIR and stops on SIGINT; on
    // a copy whose sealed file was damaged it exits 1 with the typed error.
    const copy = join(dir, "tampered");
    await cp(state, copy, { recursive: true });
    await writeFile(join(copy, "system.sealed"), tampered[1]![1], { mode: 0o600 });
    const refused = new Promise<{ code: number | null; stderr: string }>((done) => {
      execFile(
        process.execPath,
        ["--import", "tsx", "local/embedded.ts", "--state", copy],
        { cwd: ROOT },
        (error, _stdout, stderr) => done({ code: error === null ? 0 : (error.code as number), stderr }),
      );
    });
    const run = spawn(process.execPath, ["--import", "tsx", "local/embedded.ts", "--state", state], {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    run.stdout.on("data", (chunk: Buffer) => (out += chunk.toString("utf8")));
    run.stderr.on("data", (chunk: Buffer) => (err += chunk.toString("utf8")));
    const exited = new Promise<number | null>((r) => run.on("exit", (code) => r(code)));
    await until(
      "the process resumes the state",
      () => Promise.resolve(/agents started/.test(out) ? true : undefined),
      60_000,
    ).catch((error: unknown) => {
      run.kill("SIGINT");
      throw new Error(`${String(error)}\n${out}\n${err}`);
    });
    expect(out).toMatch(/state: .* \(resumed from the last run/);
    expect(out).toContain(`local MAA ${before.maaUrl}`);
    expect(out).toContain(`?code=${before.functionKey}`);
    expect(out).not.toMatch(/released demo-orders-key/); // the history is not printed as news
    run.kill("SIGINT");
    expect(await exited).toBe(0);
    expect(await readdir(state)).not.toContain("lock");
    const { code, stderr } = await refused;
    expect(code).toBe(1);
    expect(stderr).toMatch(/error: ERR_CONFIG: .*system\.sealed does not open under/);
  }, 180_000);
});
