/**
 * The shield-agent chart, rendered by Go's text/template with the sprig functions and Helm's
 * own (test/infra/helm-render), as Helm renders it: every object validates against the
 * Kubernetes schemas (kubernetes-models), the values validate against values.schema.json, the
 * templates reference only values that values.yaml defines (statically, and by rendering with
 * missingkey=error), the pod is confidential and locked down, the probes work against a key
 * API, and missing required values fail clearly. Not validated: Helm's own binary, `lookup`
 * and `.Capabilities` (the chart uses neither), and a real cluster admitting the pod.
 */
import { spawn } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Deployment } from "kubernetes-models/apps/v1";
import { ServiceAccount } from "kubernetes-models/v1";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { CHART, ROOT, go, objectsOf, read, renderChart, type KubeObject } from "./support.js";
import { validateSchema } from "./schema.js";

const EXAMPLE_VALUES = join(ROOT, "examples", "confidential-db", "deploy", "values.yaml");

function tempValues(values: unknown): string {
  const dir = mkdtempSync(join(tmpdir(), "shield-values-"));
  const file = join(dir, "values.yaml");
  writeFileSync(file, JSON.stringify(values));
  return file;
}

interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: { name: string; value?: string; valueFrom?: unknown }[];
  ports?: unknown[];
  livenessProbe?: { exec?: { command: string[] }; httpGet?: unknown };
  readinessProbe?: { exec?: { command: string[] }; httpGet?: unknown };
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: Record<string, unknown>;
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
}

interface PodSpec {
  runtimeClassName?: string;
  serviceAccountName?: string;
  initContainers?: Container[];
  containers: Container[];
  volumes?: { name: string; [key: string]: unknown }[];
}

function podOf(objects: KubeObject[]): { spec: PodSpec; metadata: Record<string, unknown> } {
  const deployment = objects.find((o) => o.kind === "Deployment");
  if (deployment === undefined) throw new Error("no Deployment rendered");
  return (deployment["spec"] as { template: { spec: PodSpec; metadata: Record<string, unknown> } }).template;
}

/** The values a deployment of the example renders with (what docs/deploy.md passes with --set). */
const exampleOverrides = {
  agent: {
    serviceBusNamespace: "sb-shield-abc.servicebus.windows.net",
    keyVaultUrl: "https://kv-shield-abc.vault.azure.net",
    releaseSignerHost: "kv-shield-abc.vault.azure.net",
  },
};

function validateObjects(objects: KubeObject[]): void {
  expect(objects.length).toBeGreaterThan(0);
  for (const object of objects) {
    if (object.kind === "Deployment") new Deployment(object).validate();
    else if (object.kind === "ServiceAccount") new ServiceAccount(object).validate();
    else throw new Error(`no schema check for kind ${object.kind}`);
  }
}

/** Helm's coalescing of a values file over the chart's (maps merge, the rest is replaced). */
function mergeValues(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(over)) {
    const current = out[key];
    const isMap = (v: unknown): v is Record<string, unknown> =>
      typeof v === "object" && v !== null && !Array.isArray(v);
    out[key] = isMap(current) && isMap(value) ? mergeValues(current, value) : value;
  }
  return out;
}

/** `.Values.a.b.c` paths in the templates. */
function valueReferences(templatesDir: string): Set<string> {
  const refs = new Set<string>();
  for (const file of readdirSync(templatesDir)) {
    const text = readFileSync(join(templatesDir, file), "utf8");
    for (const m of text.matchAll(/\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)/g)) refs.add(m[1]!.slice(1));
  }
  return refs;
}

function hasPath(values: unknown, path: string): boolean {
  let node = values;
  for (const part of path.split(".")) {
    if (node === null || typeof node !== "object" || Array.isArray(node) || !(part in node)) return false;
    node = (node as Record<string, unknown>)[part];
  }
  return true;
}

describe.skipIf(go.skip)(`the shield-agent chart${go.skip ? ` (skipped: ${go.reason})` : ""}`, () => {
  const schema = JSON.parse(read("infra/helm/shield-agent/values.schema.json")) as Record<string, unknown>;
  const defaults = parse(read("infra/helm/shield-agent/values.yaml")) as Record<string, unknown>;

  it("values.yaml defines every value the templates reference (static scan)", () => {
    const refs = valueReferences(join(CHART, "templates"));
    expect(refs.size).toBeGreaterThan(30);
    expect([...refs].filter((ref) => !hasPath(defaults, ref))).toEqual([]);
  });

  it("the chart's README documents every value", () => {
    const readme = read("infra/helm/shield-agent/README.md");
    const documented: string[] = [];
    for (const row of readme.split("\n").filter((l) => l.startsWith("| `"))) {
      let parent = "";
      for (const m of row.split(" | ")[0]!.matchAll(/`([^`]+)`/g)) {
        const token = m[1]!.replace(/\.\*$/, "");
        const path = token.startsWith(".") ? `${parent}${token}` : token;
        parent = path.slice(0, path.lastIndexOf("."));
        documented.push(path);
      }
    }
    const leaves: string[] = [];
    const walk = (node: unknown, path: string) => {
      if (node !== null && typeof node === "object" && !Array.isArray(node) && Object.keys(node).length > 0)
        for (const [k, v] of Object.entries(node)) walk(v, path === "" ? k : `${path}.${k}`);
      else leaves.push(path);
    };
    walk(defaults, "");
    const covered = (leaf: string) => documented.some((d) => leaf === d || leaf.startsWith(`${d}.`));
    expect(leaves.length).toBeGreaterThan(40);
    expect(leaves.filter((leaf) => !covered(leaf))).toEqual([]);
  });

  it("the defaults and the example's values satisfy values.schema.json; a wrong value does not", () => {
    expect(validateSchema(schema, defaults)).toEqual([]);
    const example = parse(readFileSync(EXAMPLE_VALUES, "utf8")) as Record<string, unknown>;
    expect(validateSchema(schema, mergeValues(defaults, example))).toEqual([]);
    const wrong = structuredClone(defaults) as { agent: Record<string, unknown>; bogus?: number };
    wrong.agent["port"] = "8280";
    wrong.agent["tee"] = "simulated";
    wrong.bogus = 1;
    expect(validateSchema(schema, wrong)).toEqual([
      "agent.port: expected integer, got string",
      'agent.tee: expected one of ["auto","sevsnp-configfs","sevsnp-sidecar","sgx-gramine"]',
      "bogus: not allowed",
    ]);
  });

  it("renders the confidential-database example with missingkey=error into valid Kubernetes objects", () => {
    const result = renderChart([EXAMPLE_VALUES, tempValues(exampleOverrides)]);
    expect(result.stderr).toBe("");
    expect(result.ok).toBe(true);
    const objects = objectsOf(result);
    expect(objects.map((o) => o.kind).sort()).toEqual(["Deployment", "ServiceAccount"]);
    validateObjects(objects);
  });

  it("is a confidential pod: kata-cc-isolation, workload identity, the policy annotation, locked-down containers", () => {
    const policy = Buffer.from("package policy\n").toString("base64");
    const objects = objectsOf(
      renderChart([EXAMPLE_VALUES, tempValues({ ...exampleOverrides, confidentialPolicy: policy })]),
    );
    const pod = podOf(objects);
    expect(pod.spec.runtimeClassName).toBe("kata-cc-isolation");
    expect((pod.metadata["labels"] as Record<string, string>)["azure.workload.identity/use"]).toBe("true");
    expect(
      (pod.metadata["annotations"] as Record<string, string>)["io.katacontainers.config.agent.policy"],
    ).toBe(policy);
    const account = objects.find((o) => o.kind === "ServiceAccount")!;
    expect(pod.spec.serviceAccountName).toBe(account.metadata.name);
    expect(
      (account.metadata["annotations"] as Record<string, string>)["azure.workload.identity/client-id"],
    ).toBe("00000000-0000-0000-0000-000000000000");
    const all = [...(pod.spec.initContainers ?? []), ...pod.spec.containers];
    expect(all.map((c) => c.name)).toEqual(["control-keys", "orders", "shield-agent"]);
    for (const c of all) {
      expect(c.securityContext, c.name).toMatchObject({
        runAsNonRoot: true,
        readOnlyRootFilesystem: true,
        allowPrivilegeEscalation: false,
        privileged: false,
        capabilities: { drop: ["ALL"] },
      });
      expect(Object.keys(c.resources?.requests ?? {}).sort(), c.name).toEqual(["cpu", "memory"]);
      expect(Object.keys(c.resources?.limits ?? {}).sort(), c.name).toEqual(["cpu", "memory"]);
    }
    const agent = pod.spec.containers.find((c) => c.name === "shield-agent")!;
    // The key API is reachable only inside the pod: loopback, no container port.
    expect(agent.ports).toBeUndefined();
    const env = Object.fromEntries((agent.env ?? []).map((e) => [e.name, e.value]));
    expect(env["SHIELD_LISTEN"]).toBe("127.0.0.1:8280");
    expect(env["SHIELD_ALLOW_NON_LOOPBACK"]).toBeUndefined();
    expect(env["SHIELD_SERVE_KEYS"]).toBe("false");
    expect(env["SHIELD_KEYS"]).toBe("orders-key");
    expect(agent.livenessProbe?.exec?.command.join(" ")).toContain("path:'/healthz'");
    expect(agent.readinessProbe?.exec?.command.join(" ")).toContain("path:'/readyz'");
    // The control-plane keys come from a measured environment variable, onto a memory volume.
    const init = pod.spec.initContainers![0]!;
    expect(init.env?.[0]?.name).toBe("SHIELD_CONTROL_KEYS_JSON");
    expect(JSON.parse(init.env?.[0]?.value ?? "")).toHaveProperty("keys");
    expect(pod.spec.volumes?.find((v) => v.name === "control-keys")).toEqual({
      name: "control-keys",
      emptyDir: { medium: "Memory", sizeLimit: "64Ki" },
    });
    expect(agent.volumeMounts?.find((m) => m.name === "control-keys")).toMatchObject({
      mountPath: "/etc/shield",
      readOnly: true,
    });
  });

  it("renders the optional parts (key files, attestation sidecar) and the SGX variant validly", () => {
    const withOptions = renderChart([
      EXAMPLE_VALUES,
      tempValues({
        ...exampleOverrides,
        agent: {
          ...exampleOverrides.agent,
          serveKeys: true,
          keyFiles: { enabled: true },
          tee: "sevsnp-sidecar",
        },
        attestationSidecar: { enabled: true, image: { repository: "mcr.microsoft.com/aci/skr", tag: "2.7" } },
      }),
    ]);
    expect(withOptions.stderr).toBe("");
    const objects = objectsOf(withOptions);
    validateObjects(objects);
    const pod = podOf(objects);
    expect(pod.spec.containers.map((c) => c.name)).toEqual(["orders", "shield-agent", "attestation-sidecar"]);
    const agentEnv = pod.spec.containers[1]!.env!.map((e) => `${e.name}=${e.value ?? ""}`);
    expect(agentEnv).toContain("SHIELD_SIDECAR_URL=http://127.0.0.1:8080");
    expect(agentEnv).toContain("SHIELD_KEY_DIR=/run/shield-keys");
    expect(pod.spec.containers[0]!.volumeMounts).toContainEqual({
      name: "key-files",
      mountPath: "/run/shield-keys",
      readOnly: true,
    });

    const sgx = renderChart([
      tempValues({
        variant: "sgx",
        serviceAccount: { clientId: "00000000-0000-0000-0000-000000000000" },
        app: { image: { repository: "registry.example/orders-enclave", tag: "1" } },
        agent: { serviceBusNamespace: "sb.servicebus.windows.net" },
      }),
    ]);
    expect(sgx.stderr).toBe("");
    const sgxObjects = objectsOf(sgx);
    validateObjects(sgxObjects);
    const sgxPod = podOf(sgxObjects);
    expect(sgxPod.spec.runtimeClassName).toBeUndefined();
    expect(sgxPod.spec.containers).toHaveLength(1);
    const enclave = sgxPod.spec.containers[0]!;
    expect(enclave.resources?.limits?.["sgx.intel.com/epc"]).toBe("64Mi");
    expect(enclave.resources?.requests?.["sgx.intel.com/epc"]).toBe("64Mi");
    expect(enclave.command).toEqual(["gramine-sgx", "shield-enclave"]);
    expect(enclave.volumeMounts).toContainEqual({ name: "aesmd", mountPath: "/var/run/aesmd" });
  });

  it("fails clearly when a required value is missing", () => {
    const cases: [unknown, string][] = [
      [{}, "agent.controlKeys.json is required"],
      [{ ...exampleOverrides, app: { image: { repository: "" } } }, "app.image.repository is required"],
      [
        { ...exampleOverrides, agent: { ...exampleOverrides.agent, keys: [] } },
        "agent.keys needs at least one key name",
      ],
      [{ ...exampleOverrides, serviceAccount: { clientId: "" } }, "serviceAccount.clientId is required"],
      [
        { ...exampleOverrides, agent: { ...exampleOverrides.agent, controlKeys: { json: "" } } },
        "agent.controlKeys.json is required",
      ],
      [{ agent: { ...exampleOverrides.agent, keyVaultUrl: "" } }, "agent.keyVaultUrl is required"],
    ];
    for (const [override, message] of cases) {
      const files = Object.keys(override as object).length === 0 ? [] : [EXAMPLE_VALUES];
      const result = renderChart([...files, tempValues(override)]);
      expect(result.ok, message).toBe(false);
      expect(result.stderr).toContain(message);
    }
  });

  it("a broken value reference fails both the static scan and the strict render", () => {
    const copy = mkdtempSync(join(tmpdir(), "shield-chart-"));
    cpSync(CHART, copy, { recursive: true });
    const file = join(copy, "templates", "deployment.yaml");
    const text = readFileSync(file, "utf8");
    expect(text).toContain(".Values.agent.probes.liveness.periodSeconds");
    writeFileSync(
      file,
      text.replace(".Values.agent.probes.liveness.periodSeconds", ".Values.agent.probes.liveness.period"),
    );
    expect([...valueReferences(join(copy, "templates"))].filter((ref) => !hasPath(defaults, ref))).toEqual([
      "agent.probes.liveness.period",
    ]);
    const result = renderChart([EXAMPLE_VALUES, tempValues(exampleOverrides)], { chart: copy });
    expect(result.ok).toBe(false);
    expect(result.stderr).toMatch(/map has no entry for key "period"/);
  });

  describe("the agent's exec probes against a key API on loopback", () => {
    let server: Server;
    let port = 0;
    const token = "t".repeat(48);
    let ready = false;
    beforeAll(async () => {
      server = createServer((request, response) => {
        // As agent/key-api.ts: Host must name loopback with the bound port; /readyz needs the token.
        const hostOk = request.headers.host === `127.0.0.1:${port}`;
        const authOk = request.headers.authorization === `Bearer ${token}`;
        if (!hostOk) response.writeHead(421).end();
        else if (request.url === "/healthz") response.writeHead(200).end();
        else if (request.url === "/readyz") response.writeHead(authOk ? (ready ? 200 : 503) : 401).end();
        else response.writeHead(404).end();
      });
      await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
      port = (server.address() as AddressInfo).port;
    });
    afterAll(async () => {
      await new Promise<void>((done) => server.close(() => done()));
    });

    it("liveness passes, readiness follows /readyz and sends the token", async () => {
      const pod = podOf(
        objectsOf(
          renderChart([
            EXAMPLE_VALUES,
            tempValues({ ...exampleOverrides, agent: { ...exampleOverrides.agent, port } }),
          ]),
        ),
      );
      const agent = pod.spec.containers.find((c) => c.name === "shield-agent")!;
      const tokenFile = join(mkdtempSync(join(tmpdir(), "shield-token-")), "token");
      writeFileSync(tokenFile, `${token}\n`);
      const env = { ...process.env, SHIELD_KEY_API_TOKEN_FILE: tokenFile };
      // The image's node is /nodejs/bin/node; here the test's own runs the same script.
      // (Asynchronously: the key API answers from this process's event loop.)
      const probe = (command: string[], probeEnv: NodeJS.ProcessEnv) => {
        expect(command[0]).toBe("/nodejs/bin/node");
        return new Promise<number | null>((done) => {
          const child = spawn(process.execPath, command.slice(1), { env: probeEnv, stdio: "ignore" });
          child.on("exit", (code) => done(code));
        });
      };
      expect(await probe(agent.livenessProbe!.exec!.command, env)).toBe(0);
      ready = false;
      expect(await probe(agent.readinessProbe!.exec!.command, env)).toBe(1);
      ready = true;
      expect(await probe(agent.readinessProbe!.exec!.command, env)).toBe(0);
      const { SHIELD_KEY_API_TOKEN_FILE: _unused, ...withoutToken } = env;
      expect(await probe(agent.readinessProbe!.exec!.command, withoutToken)).toBe(1);
    });
  });
});
