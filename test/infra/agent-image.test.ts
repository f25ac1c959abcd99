/**
 * The agent's image recipe (agent/Dockerfile), its configuration (agent/config.ts), its key API
 * (agent/key-api.ts), the chart, the Gramine manifest template and the ACI template agree: the
 * user, the port, the runtime flags, the probes and the environment variable names. The
 * confidential-database example's image and values agree with what the orders service reads.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { Pod } from "kubernetes-models/v1";
import { AGENT_VARIABLES } from "../../agent/config.js";
import { go, objectsOf, read, renderChart, type KubeObject } from "./support.js";
import { scanBicep } from "./bicep-scan.js";
import { join } from "node:path";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";

interface Dockerfile {
  readonly user: string;
  readonly expose: number[];
  readonly entrypoint: string[];
  readonly env: Record<string, string>;
}

/** The final stage of a Dockerfile: USER, EXPOSE, ENTRYPOINT (exec form) and ENV. */
function readDockerfile(path: string): Dockerfile {
  const lines = read(path)
    .replace(/\\\n/g, " ")
    .split("\n")
    .filter((l) => !l.trimStart().startsWith("#"));
  const lastFrom = lines.map((l) => /^FROM\s/i.test(l)).lastIndexOf(true);
  const stage = lines.slice(lastFrom);
  const directive = (name: string) =>
    stage.filter((l) => new RegExp(`^${name}\\s`, "i").test(l)).map((l) => l.slice(name.length).trim());
  const entrypoint = directive("ENTRYPOINT").at(-1);
  const env: Record<string, string> = {};
  for (const e of directive("ENV"))
    for (const m of e.matchAll(/([A-Z_][A-Z0-9_]*)=(\S+)/g)) env[m[1]!] = m[2]!;
  return {
    user: directive("USER").at(-1) ?? "root",
    expose: directive("EXPOSE").flatMap((e) => e.split(/\s+/).map(Number)),
    entrypoint: entrypoint === undefined ? [] : (JSON.parse(entrypoint) as string[]),
    env,
  };
}

/** gcr.io/distroless images name their non-root user `nonroot`, UID and GID 65532. */
const DISTROLESS_NONROOT = 65532;

const agentImage = readDockerfile("agent/Dockerfile");
const listenDefault = AGENT_VARIABLES.SHIELD_LISTEN.default;
const agentNames = new Set(Object.keys(AGENT_VARIABLES));
/** Set by AKS workload identity or ACI for @azure/identity, not by Shield's configuration. */
const IDENTITY_VARIABLES = new Set([
  "AZURE_CLIENT_ID",
  "AZURE_TENANT_ID",
  "AZURE_AUTHORITY_HOST",
  "AZURE_FEDERATED_TOKEN_FILE",
]);

function values(file: string, extra: unknown): string[] {
  const dir = mkdtempSync(join(tmpdir(), "shield-values-"));
  const path = join(dir, "values.yaml");
  writeFileSync(path, JSON.stringify(extra));
  return [join(process.cwd(), file), path];
}

const overrides = {
  agent: {
    serviceBusNamespace: "sb.servicebus.windows.net",
    keyVaultUrl: "https://kv.vault.azure.net",
    releaseSignerHost: "kv.vault.azure.net",
  },
};

interface Container {
  name: string;
  command?: string[];
  args?: string[];
  env?: { name: string; value?: string }[];
  ports?: { containerPort: number }[];
  livenessProbe?: { exec: { command: string[] } };
  readinessProbe?: { exec?: { command: string[] }; httpGet?: { path: string; port: number } };
  securityContext?: { runAsUser?: number; runAsNonRoot?: boolean };
}

function containers(objects: KubeObject[]): { init: Container[]; main: Container[] } {
  const d = objects.find((o) => o.kind === "Deployment")!;
  const spec = (
    d["spec"] as { template: { spec: { initContainers?: Container[]; containers: Container[] } } }
  ).template.spec;
  return { init: spec.initContainers ?? [], main: spec.containers };
}

describe("the agent image and its configuration", () => {
  it("runs as distroless nonroot on the port SHIELD_LISTEN defaults to, with the bundle as its entrypoint", () => {
    expect(agentImage.user).toBe("nonroot:nonroot");
    expect(listenDefault).toBe("127.0.0.1:8280");
    expect(agentImage.expose).toEqual([Number(listenDefault.split(":")[1])]);
    expect(agentImage.entrypoint[0]).toBe("/nodejs/bin/node");
    expect(agentImage.entrypoint.at(-1)).toBe("/app/shield-agent.mjs");
    expect(agentImage.entrypoint).toContain("--jitless");
  });

  it("serves the probe routes the chart uses", () => {
    const keyApi = read("agent/key-api.ts");
    expect(keyApi).toMatch(/path === "\/healthz"\) return sendJson\(response, 200/);
    expect(keyApi).toMatch(/path === "\/readyz"\) return readiness\(/);
    // /healthz is the one route without the token; the probe sends the token to the others.
    expect(keyApi).toMatch(/tokenDigest !== undefined && path !== "\/healthz"/);
  });
});

describe.skipIf(go.skip)(`the chart and the image agree${go.skip ? ` (skipped: ${go.reason})` : ""}`, () => {
  let rendered: { init: Container[]; main: Container[] };
  let agent: Container;
  beforeAll(() => {
    rendered = containers(
      objectsOf(renderChart(values("examples/confidential-db/deploy/values.yaml", overrides))),
    );
    agent = rendered.main.find((c) => c.name === "shield-agent")!;
  });
  const chartDefaults = parse(read("infra/helm/shield-agent/values.yaml")) as { agent: { port: number } };

  it("user: the agent and its init container run as the image's nonroot UID", () => {
    for (const c of [agent, ...rendered.init]) {
      expect(c.securityContext?.runAsUser, c.name).toBe(DISTROLESS_NONROOT);
      expect(c.securityContext?.runAsNonRoot).toBe(true);
    }
  });

  it("flags: the chart keeps the image's entrypoint (no command or args for the agent)", () => {
    expect(agent.command).toBeUndefined();
    expect(agent.args).toBeUndefined();
  });

  it("ports and probes: loopback on the image's port, exec probes with the image's node on /healthz and /readyz", () => {
    expect(chartDefaults.agent.port).toBe(agentImage.expose[0]);
    const env = Object.fromEntries((agent.env ?? []).map((e) => [e.name, e.value]));
    expect(env["SHIELD_LISTEN"]).toBe(listenDefault);
    expect(agent.ports).toBeUndefined();
    for (const [probe, path] of [
      [agent.livenessProbe!.exec.command, "/healthz"],
      [agent.readinessProbe!.exec!.command, "/readyz"],
    ] as const) {
      expect(probe[0]).toBe(agentImage.entrypoint[0]);
      expect(probe[2]).toContain(`host:'127.0.0.1',port:${agentImage.expose[0]},path:'${path}'`);
    }
    for (const c of rendered.init) expect(c.command?.[0]).toBe(agentImage.entrypoint[0]);
  });

  it("environment: every variable the chart gives the agent is one agent/config.ts reads", () => {
    const names = (agent.env ?? []).map((e) => e.name);
    expect(names.length).toBeGreaterThan(10);
    expect(names.filter((n) => !agentNames.has(n))).toEqual([]);
    const controlKeysFile = agent.env!.find((e) => e.name === "SHIELD_CONTROL_KEYS_FILE")!.value!;
    expect(rendered.init[0]!.command!.join(" ")).toContain(`writeFileSync('${controlKeysFile}'`);
  });

  it("the SGX variant passes only what the manifest lets through, and probes with its node", () => {
    const sgx = containers(
      objectsOf(
        renderChart(
          values("infra/helm/shield-agent/values.yaml", {
            variant: "sgx",
            serviceAccount: { clientId: "00000000-0000-0000-0000-000000000000" },
            app: { image: { repository: "r/enclave", tag: "1" } },
            agent: { serviceBusNamespace: "sb.servicebus.windows.net" },
          }),
        ),
      ),
    );
    const manifest = read("infra/helm/shield-agent/files/shield-enclave.manifest.template");
    const passthrough = new Set(
      [...manifest.matchAll(/^loader\.env\.([A-Z_]+) = \{ passthrough = true \}$/gm)].map((m) => m[1]!),
    );
    const fixed = [...manifest.matchAll(/^loader\.env\.([A-Z_]+) = "/gm)].map((m) => m[1]!);
    const enclave = sgx.main[0]!;
    expect(enclave.env!.map((e) => e.name).filter((n) => !passthrough.has(n))).toEqual([]);
    expect([...passthrough].filter((n) => !agentNames.has(n) && !IDENTITY_VARIABLES.has(n))).toEqual([]);
    // Everything fixed in the manifest is an agent setting (or the app's own SHIELD_API_URL / the runtime's).
    expect(
      fixed.filter(
        (n) => !agentNames.has(n) && !["LD_LIBRARY_PATH", "NODE_ENV", "SHIELD_API_URL"].includes(n),
      ),
    ).toEqual([]);
    // What decides whom the agent trusts is fixed (measured), never passed through.
    for (const name of [
      "SHIELD_KEYVAULT_URL",
      "SHIELD_RELEASE_SIGNER_HOST",
      "SHIELD_CONTROL_KEYS_FILE",
      "SHIELD_KEYS",
      "SHIELD_TEE",
    ]) {
      expect(fixed, name).toContain(name);
      expect(passthrough.has(name), name).toBe(false);
    }
    expect(manifest).toMatch(/"file:\/etc\/shield\/control-keys\.json"/);
    const probe = enclave.livenessProbe!.exec.command;
    expect(probe[0]).toBe("/usr/bin/node");
    expect(probe[2]).toContain(`port:${agentImage.expose[0]},path:'/healthz'`);
  });
});

describe("the Gramine manifest and the ACI template run the agent as the image does", () => {
  it("the manifest starts the bundle with the Dockerfile's flags, inside the enclave, with DCAP", () => {
    const manifest = read("infra/helm/shield-agent/files/shield-enclave.manifest.template");
    const argv = /loader\.argv = \[\s*"\/bin\/sh", "-c",\s*"([^"]+)",?\s*\]/.exec(manifest);
    expect(argv).not.toBeNull();
    const agentCommand = argv![1]!.split(" & ")[0]!.split(" ");
    expect(agentCommand[0]).toBe("{{");
    expect(agentCommand.slice(3)).toEqual(agentImage.entrypoint.slice(1));
    expect(manifest).toMatch(/^sgx\.remote_attestation = "dcap"$/m);
    expect(manifest).toMatch(/^sgx\.debug = false$/m);
    expect(manifest).toMatch(/^loader\.env\.SHIELD_TEE = "sgx-gramine"$/m);
    expect(manifest).toMatch(new RegExp(`^loader\\.env\\.SHIELD_LISTEN = "${listenDefault}"$`, "m"));
  });

  it("the ACI container group: Confidential SKU, ccePolicy, agent variables only, loopback port, no agent port", () => {
    const aci = scanBicep(read("infra/aci/shield-aci.bicep"));
    const group = aci.resources.find((r) => r.type === "Microsoft.ContainerInstance/containerGroups")!;
    expect(group.body).toMatch(/sku: 'Confidential'/);
    expect(group.body).toMatch(/confidentialComputeProperties: \{\s*ccePolicy: ccePolicy\s*\}/);
    const agentBlock = group.body.slice(group.body.indexOf("name: 'shield-agent'"));
    const names = [...agentBlock.matchAll(/\{ name: '([A-Z_]+)', value:/g)].map((m) => m[1]!);
    expect(names.length).toBeGreaterThan(10);
    expect(names.filter((n) => !agentNames.has(n) && !IDENTITY_VARIABLES.has(n))).toEqual([]);
    expect(agentBlock).toMatch(/ports: \[\]/);
    expect(aci.params.get("agentPort")?.defaultText).toBe(String(agentImage.expose[0]));
    expect(agentBlock).toContain("{ name: 'SHIELD_LISTEN', value: '127.0.0.1:${agentPort}' }");
  });
});

describe("the confidential-database example", () => {
  const image = readDockerfile("examples/confidential-db/Dockerfile");
  // What the service reads: main.ts, and database-settings.ts for where the database is.
  const main =
    read("examples/confidential-db/main.ts") + read("examples/confidential-db/database-settings.ts");
  const readsVariable = new Set(
    [...main.matchAll(/env\["([A-Z_]+)"\]|value\(env, "([A-Z_]+)"/g)].map((m) => (m[1] ?? m[2])!),
  );
  const example = parse(read("examples/confidential-db/deploy/values.yaml")) as {
    app: {
      env: { name: string; value?: string }[];
      ports: { containerPort: number }[];
      readinessProbe: { httpGet: { port: number; path: string } };
    };
    agent: { keys: string[]; serveKeys: boolean };
  };

  it("the plain pod spec is a valid Kubernetes Pod in the confidential runtime class", () => {
    const pod = parse(read("examples/confidential-db/deploy/pod.yaml")) as {
      spec: { runtimeClassName: string };
    };
    expect(() => new Pod(pod as never).validate()).not.toThrow();
    expect(pod.spec.runtimeClassName).toBe("kata-cc-isolation");
  });

  it("the values give the service what it reads, on the port its image listens on", () => {
    expect(image.user).toBe("nonroot:nonroot");
    expect(image.expose).toEqual([Number(image.env["ORDERS_PORT"])]);
    expect(image.env["ORDERS_HOST"]).toBe("0.0.0.0");
    expect(example.app.ports.map((p) => p.containerPort)).toEqual(image.expose);
    expect(example.app.readinessProbe.httpGet).toEqual({ path: "/healthz", port: image.expose[0] });
    const given = [...example.app.env.map((e) => e.name), "SHIELD_API_URL", "SHIELD_KEY_API_TOKEN_FILE"];
    expect(given.filter((n) => !readsVariable.has(n))).toEqual([]);
    expect(["DATABASE_URL", "ORDERS_KEY_NAME", "SHIELD_API_URL"].filter((n) => !given.includes(n))).toEqual(
      [],
    );
    const keyName = example.app.env.find((e) => e.name === "ORDERS_KEY_NAME")!.value!;
    expect(example.agent.keys).toEqual([keyName]);
    expect(example.agent.serveKeys).toBe(false);
  });
});
