/**
 * The templates, the hooks and the deployment guide against the code: queue names and session
 * settings, app setting names (every one read by the code, the host or an SDK; the required ones
 * accepted by the app's own settings parser), function names and routes, role assignments
 * (least privilege, per queue, every GUID named and matching Azure's built-in table), and every
 * command of docs/deploy.md (shield commands and options, azd environment names, chart values,
 * template parameters and outputs, routes, error codes, files). Each check also runs on a
 * deliberately broken copy, to show it fails.
 *
 * Not validated (there is no Bicep compiler or Azure here): Bicep syntax beyond what the scanner
 * reads (test/infra/bicep-scan.ts), resource property names and API versions against the
 * resource providers' schemas, expressions' types, and whether Azure accepts the deployment.
 */
import type * as AzureFunctions from "@azure/functions";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { Script } from "node:vm";
import { beforeAll, describe, expect, it, vi } from "vitest";
import { parse } from "yaml";
import { Pod } from "kubernetes-models/v1";
import { commands } from "../../cli/commands/index.js";
import { FUNCTIONS_SETTING_NAMES, readSettings } from "../../functions/composition/settings.js";
import { REQUESTS_QUEUE, RESULTS_QUEUE, ROTATE_KEY_QUEUE } from "../../core/ports/bus.js";
import { AGENT_VARIABLES } from "../../agent/config.js";
import { parseAllowedMeasurements } from "../../core/policy/render.js";
import { parseAppraisalPolicy } from "../../core/appraisal/index.js";
import { isShieldErrorCode } from "../../core/errors.js";
import { scanBicep } from "./bicep-scan.js";
import {
  appSettingProblems,
  guideProblems,
  queueProblems,
  roleProblems,
  sampleEnvironment,
  type CodeFacts,
  type GuideContext,
  type Registration,
} from "./cross-check.js";
import { MANAGED_HSM_ROLES } from "./builtin-roles.js";
import { ROOT, read, shellBlocks } from "./support.js";

const captured = vi.hoisted(() => ({
  registrations: [] as { kind: string; name: string; options: Record<string, unknown> }[],
  outputs: [] as { connection: string; queueName: string }[],
}));

// Record what each functions/*.ts registers, as the Functions host would see it.
vi.mock("@azure/functions", async (importOriginal) => {
  const actual = await importOriginal<typeof AzureFunctions>();
  const record = (kind: string) => (name: string, options: Record<string, unknown>) => {
    captured.registrations.push({ kind, name, options });
  };
  return {
    ...actual,
    app: {
      ...actual.app,
      http: record("http"),
      serviceBusQueue: record("serviceBusQueue"),
      timer: record("timer"),
      eventGrid: record("eventGrid"),
    },
    output: {
      ...actual.output,
      serviceBusQueue: (options: { connection: string; queueName: string }) => {
        captured.outputs.push(options);
        return actual.output.serviceBusQueue(options);
      },
    },
  };
});

const mainSource = read("infra/main.bicep");
const main = scanBicep(mainSource);
const aci = scanBicep(read("infra/aci/shield-aci.bicep"));
let code: CodeFacts;

beforeAll(async () => {
  const dir = join(ROOT, "functions");
  for (const file of readdirSync(dir).filter((f) => f.endsWith(".ts"))) {
    await import(join(dir, file));
  }
  code = {
    registrations: captured.registrations as Registration[],
    outputs: captured.outputs,
    // attest sends results/challenges/key events (adapters/servicebus/bus.ts); revocation,
    // events and the schedule queue rotations (createServiceBusRotationQueue).
    sentByClients: [RESULTS_QUEUE, ROTATE_KEY_QUEUE],
    agentQueues: {
      send: AGENT_VARIABLES.SHIELD_REQUEST_QUEUE.default,
      receive: AGENT_VARIABLES.SHIELD_RESULT_QUEUE.default,
    },
    sessionQueues: [RESULTS_QUEUE, ROTATE_KEY_QUEUE],
    settingNames: FUNCTIONS_SETTING_NAMES,
  };
});

/** main.bicep with one edit, scanned. */
function broken(from: string, to: string): ReturnType<typeof scanBicep> {
  expect(mainSource).toContain(from);
  return scanBicep(mainSource.replace(from, to));
}

describe("Bicep against the code", () => {
  it("registers what the README lists, through one Service Bus connection", () => {
    const names = code.registrations.map((r) => r.name).sort();
    expect(names).toEqual([
      "agent-reinstate",
      "agent-revoke",
      "attest",
      "deployment-status",
      "deployments",
      "key-rotate",
      "keyvault-events",
      "keyvault-events-webhook",
      "policy-updates",
      "reattest",
      "retirement",
      "rotate",
      "rotation-schedule",
      "status",
      "status-page",
    ]);
    const readme = read("functions/README.md");
    expect(names.filter((n) => !readme.includes(`\`${n}\``))).toEqual([]);
    expect(
      code.registrations.filter((r) => r.kind === "serviceBusQueue").map((r) => r.options["connection"]),
    ).toEqual(["ServiceBusConnection", "ServiceBusConnection", "ServiceBusConnection"]);
    expect(REQUESTS_QUEUE).toBe(code.agentQueues.send);
  });

  it("declares exactly the queues the code uses, sessions where the code needs them", () => {
    expect(queueProblems(main, code)).toEqual([]);
  });

  it("a queue-name mismatch fails", () => {
    expect(
      queueProblems(
        broken("var rotateKeyQueueName = 'rotate-key'", "var rotateKeyQueueName = 'rotate-keys'"),
        code,
      ),
    ).toEqual([
      "queue rotate-key is used by the code but not declared in Bicep",
      "queue rotate-keys is declared in Bicep but no code uses it",
      "queue rotate-keys: requiresSession must be false",
    ]);
    expect(
      queueProblems(
        broken(
          "    requiresSession: true\n    lockDuration: 'PT5M'",
          "    requiresSession: false\n    lockDuration: 'PT5M'",
        ),
        code,
      ),
    ).toEqual(["queue attestation-results: requiresSession must be true"]);
  });

  it("sets only settings something reads, identity-based, and the app accepts them", () => {
    expect(appSettingProblems(main, code)).toEqual([]);
    const settings = readSettings(sampleEnvironment(main));
    expect(settings.bus).toEqual({ kind: "servicebus", fullyQualifiedNamespace: "sample" });
    expect(settings.state.kind).toBe("endpoint");
    expect(settings.rotateKeyQueue).toBe(ROTATE_KEY_QUEUE);
    expect(settings.deploy.hmacSecretName).toBe("shield-deploy-hmac");
  });

  it("an unknown app setting, a connection string or a missing identity setting fails", () => {
    const anchor = "    SHIELD_BUS: 'servicebus'\n";
    expect(appSettingProblems(broken(anchor, `${anchor}    SHIELD_BUS_NAMESPACE: 'x'\n`), code)).toEqual([
      "app setting SHIELD_BUS_NAMESPACE is read by nothing in the code or the host",
    ]);
    expect(
      appSettingProblems(broken(anchor, `${anchor}    FUNCTIONS_WORKER_RUNTIME: 'node'\n`), code),
    ).toEqual([
      "app setting FUNCTIONS_WORKER_RUNTIME is read by nothing in the code or the host",
      "app setting FUNCTIONS_WORKER_RUNTIME must not be set",
    ]);
    expect(
      appSettingProblems(
        broken("    ServiceBusConnection__clientId: functionsIdentity.properties.clientId\n", ""),
        code,
      ),
    ).toEqual(["binding connection ServiceBusConnection needs ServiceBusConnection__clientId"]);
  });

  it("assigns least privilege: named built-in roles, release not officer, Service Bus per queue", () => {
    expect(roleProblems(main, mainSource, code)).toEqual([]);
  });

  it("a misnamed role GUID, an officer role or a namespace-wide Service Bus role fails", () => {
    const misnamed = mainSource.replace(
      "'4633458b-17de-408a-b874-0445c86b69e6' // Key Vault Secrets User",
      "'4633458b-17de-408a-b874-0445c86b69e6' // Key Vault Secrets Officer",
    );
    const misnamedProblems = roleProblems(scanBicep(misnamed), misnamed, code);
    expect(misnamedProblems).toHaveLength(1);
    expect(misnamedProblems[0]).toMatch(
      /^line \d+: 4633458b-17de-408a-b874-0445c86b69e6 must be commented "Key Vault Secrets User", not "Key Vault Secrets Officer"$/,
    );
    const officer = mainSource.replace(
      "roles.keyVaultCryptoServiceReleaseUser) // Key Vault Crypto Service Release User",
      "roles.keyVaultCryptoOfficer) // Key Vault Crypto Officer",
    );
    expect(roleProblems(scanBicep(officer), officer, code)).toEqual([
      "funcRelease: the functions must not hold Key Vault Crypto Officer",
      "the functions need Key Vault Crypto Service Release User on vault",
    ]);
    const wide = mainSource.replace(
      "  scope: requestsQueue\n  properties: {\n    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataSender)",
      "  scope: serviceBus\n  properties: {\n    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataSender)",
    );
    expect(roleProblems(scanBicep(wide), wide, code)).toEqual([
      "agents Azure Service Bus Data Sender: assigned on [not a queue: serviceBus], the code needs [attestation-requests]",
    ]);
  });

  it("the Managed HSM hook grants the release role (never officer) by the names Managed HSM defines", () => {
    const hook = read("infra/hooks/postprovision.sh");
    const assigned = [...hook.matchAll(/^assign "([^"]+)"/gm)].map((m) => m[1]!);
    expect(assigned).toEqual([
      "Managed HSM Crypto Service Release User",
      "Managed HSM Crypto User",
      "$role_name",
    ]);
    for (const name of assigned.slice(0, 2)) expect(hook).toContain(`${name} (${MANAGED_HSM_ROLES[name]})`);
    expect(hook).not.toMatch(/Crypto Officer/);
  });

  it("azd's parameters, hooks and outputs fit the templates and the registered functions", () => {
    const parameters = JSON.parse(read("infra/main.parameters.json")) as {
      parameters: Record<string, unknown>;
    };
    const names = Object.keys(parameters.parameters);
    expect(names.filter((n) => !main.params.has(n))).toEqual([]);
    const required = [...main.params.values()].filter((p) => p.defaultText === undefined).map((p) => p.name);
    expect(required.filter((n) => !names.includes(n))).toEqual([]);
    const azure = parse(read("azure.yaml")) as {
      services: Record<string, { project: string; host: string; language: string }>;
      hooks: Record<string, { run: string }>;
      infra: { path: string; module: string };
    };
    expect(existsSync(join(ROOT, azure.infra.path, `${azure.infra.module}.bicep`))).toBe(true);
    expect(Object.keys(azure.services)).toEqual(["functions"]);
    expect(main.resources.find((r) => r.symbol === "functionApp")?.body).toContain(
      "'azd-service-name': 'functions'",
    );
    const outputs = new Set(main.outputs.keys());
    for (const hook of Object.values(azure.hooks)) {
      const text = read(hook.run.replace(/^\.\//, ""));
      const used = [...text.matchAll(/\$\{?([A-Z_][A-Z0-9_]*)/g)].map((m) => m[1]!);
      expect(used.length).toBeGreaterThan(0);
      expect(
        used.filter((n) => !outputs.has(n)),
        hook.run,
      ).toEqual([]);
    }
    // The Event Grid subscription's endpoint is the registered Event Grid function.
    const endpoint = /\/functions\/([a-z-]+)"/.exec(read("infra/hooks/postdeploy.sh"))?.[1];
    expect(code.registrations.find((r) => r.name === endpoint)?.kind).toBe("eventGrid");
    // Flex Consumption on Node.js 22, with the app's identity.
    const site = main.resources.find((r) => r.symbol === "functionApp")!.body;
    expect(site).toMatch(/runtime: \{ name: 'node', version: '22' \}/);
    expect(main.resources.find((r) => r.symbol === "plan")!.body).toMatch(
      /sku: \{ name: 'FC1', tier: 'FlexConsumption' \}/,
    );
    expect(main.resources.find((r) => r.symbol === "storage")!.body).toMatch(/allowSharedKeyAccess: false/);
    expect(main.resources.find((r) => r.symbol === "serviceBus")!.body).toMatch(/disableLocalAuth: true/);
    expect(main.resources.find((r) => r.symbol === "appInsights")!.body).toMatch(/DisableLocalAuth: true/);
    expect(main.resources.find((r) => r.symbol === "vault")!.body).toMatch(
      /name: 'premium'[\s\S]*enableRbacAuthorization: true[\s\S]*enablePurgeProtection: true/,
    );
  });
});

describe("docs/deploy.md against the templates, the chart and the CLI", () => {
  const guide = read("docs/deploy.md");
  let ctx: GuideContext;
  beforeAll(() => {
    const parameterEnv = new Set(
      [...read("infra/main.parameters.json").matchAll(/\$\{([A-Z_][A-Z0-9_]*)\}/g)].map((m) => m[1]!),
    );
    const commandOptions = new Map(
      commands.map((c) => [c.words.join(" "), new Set([...Object.keys(c.options), "json", "help"])] as const),
    );
    ctx = {
      main,
      aci,
      parameterEnv,
      commands: commandOptions,
      chartValues: parse(read("infra/helm/shield-agent/values.yaml")),
      httpRoutes: code.registrations.filter((r) => r.kind === "http").map((r) => String(r.options["route"])),
      errorCodes: { has: (code: string) => isShieldErrorCode(code) },
      fileExists: (path) => existsSync(join(ROOT, path)),
    };
  });

  it("names only commands, options, variables, values, parameters, routes and codes that exist", () => {
    expect(guideProblems(guide, ctx)).toEqual([]);
  });

  it("covers what the issue asks: node pool, confcom, key, hostdata, verification, SGX, ACI, troubleshooting", () => {
    const script = shellBlocks(guide).join("\n");
    for (const needle of [
      "--workload-runtime KataCcIsolation",
      "az extension add --name confcom",
      "az confcom katapolicygen -y orders.yaml --print-policy | base64 -d | sha256sum",
      "npm run -s shield -- policy render",
      "az keyvault key create",
      "--exportable",
      "npm run -s shield -- token verify",
      "npm run -s shield -- policy test --policy release-policy.json --token token.jwt",
      "azd provision",
      "azd up",
      "helm template",
      "--enable-sgxquotehelper",
      "az confcom acipolicygen",
      "--template-file infra/aci/shield-aci.bicep",
    ])
      expect(script, needle).toContain(needle);
    for (const heading of ["## 11. SGX", "## 12. Azure Container Instances", "## 13. Troubleshooting"])
      expect(guide).toContain(heading);
    for (const topic of ["AKV.SKR.", "HTTP 401", "HTTP 403", "A denied appraisal", "A missed re-attestation"])
      expect(guide).toContain(topic);
  });

  it("its measurement files render release policies and its appraisal seeds parse", () => {
    const hex = "ab".repeat(32);
    const script = shellBlocks(guide).join("\n");
    const measurements = [
      ...[...script.matchAll(/<<EOF\n(\{"sevsnpvm"[^\n]*)\nEOF/g)].map((m) => m[1]!),
      ...[...script.matchAll(/printf '(\{[^']*\})\\n'/g)].map((m) => m[1]!),
    ].map((t) => t.replace(/\$[A-Z_]+|%s/g, hex));
    expect(measurements).toHaveLength(4);
    for (const m of measurements) expect(() => parseAllowedMeasurements(JSON.parse(m))).not.toThrow();
    const seeds = [
      ...script.matchAll(/azd env set SHIELD_APPRAISAL_POLICY (?:'([^']+)'|"((?:[^"\\]|\\.)+)")/g),
    ].map((m) => (m[1] ?? m[2]!.replace(/\\"/g, '"')).replace(/\$[A-Z_]+/g, hex));
    expect(seeds).toHaveLength(2);
    for (const s of seeds) expect(() => parseAppraisalPolicy(s)).not.toThrow();
  });

  it("its token probe is a valid confidential Pod whose script compiles", () => {
    const script = shellBlocks(guide).join("\n");
    const heredoc = /cat > token-probe\.yaml <<EOF\n([\s\S]*?)\nEOF/.exec(script)?.[1];
    expect(heredoc).toBeDefined();
    const pod = parse(
      heredoc!.replace(/\$ACR/g, "acrshield").replace(/\$MAA_HOST/g, "maa.eus.attest.azure.net"),
    ) as {
      spec: { runtimeClassName: string; containers: { name: string; command: string[] }[] };
    };
    expect(() => new Pod(pod as never).validate()).not.toThrow();
    expect(pod.spec.runtimeClassName).toBe("kata-cc-isolation");
    const fetch = pod.spec.containers.find((c) => c.name === "fetch")!;
    expect(fetch.command.slice(0, 2)).toEqual(["/nodejs/bin/node", "-e"]);
    expect(() => new Script(fetch.command[2]!)).not.toThrow();
  });

  it("a wrong option, output, chart value or parameter in the guide fails", () => {
    const cases: [string, string, string][] = [
      [
        "--measurements measurements.json >",
        "--measurement measurements.json >",
        "shield policy render: no option --measurement",
      ],
      [
        '"$SHIELD_FUNCTIONS_URL" --function-key-file',
        '"$SHIELD_FUNCTION_URL" --function-key-file',
        "variable SHIELD_FUNCTION_URL is neither a Bicep output nor set in the guide",
      ],
      [
        "--set agent.releaseSignerHost=",
        "--set agent.releaseSigner=",
        "helm value agent.releaseSigner is not in values.yaml",
      ],
      [
        '"releaseSignerHost": {"value"',
        '"releaseSigner": {"value"',
        "ACI parameter releaseSigner does not exist",
      ],
      [
        "azd env set SHIELD_AKS_OIDC_ISSUER",
        "azd env set SHIELD_AKS_ISSUER",
        "azd env set SHIELD_AKS_ISSUER: no template parameter reads it",
      ],
    ];
    for (const [from, to, problem] of cases) {
      expect(guide, from).toContain(from);
      expect(guideProblems(guide.replace(from, to), ctx)).toContain(problem);
    }
  });
});
