/**
 * `npm start -- --scenario demo --exit`: a scripted tour of the lifecycle on the local system,
 * every step through the production paths (agents over the bus, the functions under the local
 * host, MAA, Key Vault and its Event Grid events). Time is compressed through app settings only
 * (DEMO_SETTINGS): attestations last 75 s and are renewed 7 s after they are made, challenges
 * must be answered in 10 s, the re-attestation timer runs every 2 s.
 *
 * Steps, in order: attest-release, attest-release-sgx, deny-unknown-measurement,
 * deploy-new-measurement, rotate-near-expiry, revoke-silent-agent.
 */
import { randomUUID } from "node:crypto";
import {
  DELIVERY_HEADER,
  SIGNATURE_HEADER,
  TIMESTAMP_HEADER,
  webhookSignature,
} from "../core/deploy/authenticate.js";
import { DEMO_KEY, type AgentHandle, type LocalSystem } from "./system.js";

/** The compressed schedule of the demo scenario, as app settings. */
export const DEMO_SETTINGS: Readonly<Record<string, string>> = {
  SHIELD_ATTESTATION_PERIOD_SECONDS: "75",
  SHIELD_REATTEST_MARGIN_SECONDS: "68",
  SHIELD_CHALLENGE_SECONDS: "10",
  SHIELD_REATTEST_SCHEDULE: "*/2 * * * * *",
};

export const DEMO_STEPS = [
  "attest-release",
  "attest-release-sgx",
  "deny-unknown-measurement",
  "deploy-new-measurement",
  "rotate-near-expiry",
  "revoke-silent-agent",
] as const;

export const NEW_HOST_DATA = "6e".repeat(32);
export const UNKNOWN_HOST_DATA = "ee".repeat(32);

/** Posts a deployment body to the running system's webhook, signed as a pipeline signs it. */
export async function postSignedDeployment(system: LocalSystem, body: string): Promise<Response> {
  const timestamp = String(Math.floor(Date.now() / 1000));
  return await fetch(`${system.host.url}/api/deployments`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      [TIMESTAMP_HEADER]: timestamp,
      [DELIVERY_HEADER]: randomUUID(),
      [SIGNATURE_HEADER]: webhookSignature(system.deploySecret, timestamp, Buffer.from(body)),
    },
    body,
  });
}

export interface StepResult {
  readonly name: string;
  readonly ok: boolean;
  readonly ms: number;
  readonly detail?: string;
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${Math.round(timeoutMs / 1000)} s`);
    await new Promise((resolve) => setTimeout(resolve, 150));
  }
}

/** The key version an agent's key API serves, or undefined when it serves none. */
async function servedVersion(agent: AgentHandle): Promise<string | undefined> {
  const url = agent.keyApiUrl();
  if (url === undefined) return undefined;
  const response = await fetch(`${url}/keys/${DEMO_KEY}`);
  await response.arrayBuffer().then((bytes) => new Uint8Array(bytes).fill(0));
  return response.status === 200 ? (response.headers.get("x-key-version") ?? undefined) : undefined;
}

export async function runDemoScenario(
  system: LocalSystem,
  progress: (step: StepResult) => void,
): Promise<{ ok: boolean; steps: StepResult[] }> {
  const steps: StepResult[] = [];
  let firstVersion = "";
  const run = async (name: string, body: () => Promise<string>): Promise<void> => {
    const started = Date.now();
    let result: StepResult;
    try {
      const detail = await body();
      result = { name, ok: true, ms: Date.now() - started, detail };
    } catch (error) {
      result = {
        name,
        ok: false,
        ms: Date.now() - started,
        detail: error instanceof Error ? error.message : String(error),
      };
    }
    steps.push(result);
    progress(result);
  };

  await run("attest-release", async () => {
    const agent = system.startAgent({ agentId: "snp-agent-1", tee: "sevsnp" });
    firstVersion = await until("snp-agent-1 serves the key", () => servedVersion(agent), 30_000);
    return `snp-agent-1 holds ${DEMO_KEY} ${firstVersion.slice(0, 8)}`;
  });

  await run("attest-release-sgx", async () => {
    const agent = system.startAgent({ agentId: "sgx-agent-1", tee: "sgx" });
    const version = await until("sgx-agent-1 serves the key", () => servedVersion(agent), 20_000);
    return `sgx-agent-1 holds ${DEMO_KEY} ${version.slice(0, 8)}`;
  });

  await run("deny-unknown-measurement", async () => {
    const agent = system.startAgent({ agentId: "agent-evil", tee: "sevsnp", hostData: UNKNOWN_HOST_DATA });
    const denied = await until(
      "agent-evil is denied",
      async () => {
        const entries = await system.state.listAudit("agent-agent-evil");
        return entries.find((e) => e.kind === "attestation-denied");
      },
      20_000,
    );
    const code = String(denied.details["code"]);
    if (code !== "ERR_APPRAISAL_DENIED")
      throw new Error(`denied with ${code}, expected ERR_APPRAISAL_DENIED`);
    if ((await servedVersion(agent)) !== undefined) throw new Error("agent-evil serves a key");
    await agent.stop();
    return `agent-evil denied: ${code} (hostdata not allowed)`;
  });

  await run("deploy-new-measurement", async () => {
    const body = JSON.stringify({
      keys: [DEMO_KEY],
      add: [{ tee: "sevsnp", hostData: NEW_HOST_DATA }],
      graceSeconds: 60,
    });
    const response = await postSignedDeployment(system, body);
    const answer = (await response.json()) as { deploymentId?: string; id?: string };
    if (response.status !== 202)
      throw new Error(`webhook answered ${response.status}: ${JSON.stringify(answer)}`);
    const id = answer.deploymentId ?? answer.id ?? "";
    let last = "";
    await until(
      "the deployment is applied",
      async () => {
        const status = await fetch(
          `${system.host.url}/api/deployments/${id}?code=${system.host.keys.functionKey}`,
        );
        const text = await status.text();
        last = `${status.status} ${text.slice(0, 300)}`;
        if (/"status":"failed"/.test(text)) throw new Error(`deployment failed: ${text.slice(0, 300)}`);
        return /"status":"applied"/.test(text) ? text : undefined;
      },
      20_000,
    ).catch((error: unknown) => {
      throw new Error(`${error instanceof Error ? error.message : String(error)}; last answer ${last}`);
    });
    const agent = system.startAgent({ agentId: "snp-agent-2", tee: "sevsnp", hostData: NEW_HOST_DATA });
    const version = await until("snp-agent-2 serves the key", () => servedVersion(agent), 20_000);
    return `deployment ${id} applied; snp-agent-2 (new hostdata) holds ${version.slice(0, 8)}; the old measurement retires after 60 s`;
  });

  await run("rotate-near-expiry", async () => {
    // The key's expiry comes within Key Vault's 30-day notice: the vault sends KeyNearExpiry.
    await system.stack.vault.updateKey(DEMO_KEY, undefined, {
      expires: new Date(Date.now() + 29 * 24 * 3600 * 1000),
    });
    const holders = ["sgx-agent-1", "snp-agent-2"].map((id) => system.agents.get(id)!);
    const versions = await until(
      "the agents hold the new version",
      async () => {
        const served = await Promise.all(holders.map((agent) => servedVersion(agent)));
        return served.every((v) => v !== undefined && v !== firstVersion) ? served : undefined;
      },
      25_000,
    );
    return `rotated; sgx-agent-1 and snp-agent-2 now hold ${versions[0]!.slice(0, 8)}`;
  });

  await run("revoke-silent-agent", async () => {
    await system.agents.get("snp-agent-1")?.stop(); // stops answering challenges
    await until(
      "snp-agent-1 is revoked",
      async () => ((await system.state.getAgent("snp-agent-1"))?.status === "revoked" ? true : undefined),
      30_000,
    );
    const record = await system.state.getAgent("snp-agent-1");
    return `snp-agent-1 revoked: ${record?.statusReason ?? "?"}`;
  });

  return { ok: steps.length === DEMO_STEPS.length && steps.every((s) => s.ok), steps };
}
