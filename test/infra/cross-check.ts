/**
 * The checks of cross-check.test.ts as pure functions over file contents, so that the tests can
 * run them on the real files and on deliberately broken copies: the Bicep against what the code
 * reads and registers, and docs/deploy.md against the CLI, the templates and the chart.
 */
import { parse } from "yaml";
import { objectKeys, property, scanBicep, stringValue, type BicepFile } from "./bicep-scan.js";
import { BUILTIN_ROLES } from "./builtin-roles.js";
import { codeBlocks, shellBlocks } from "./support.js";

export interface Registration {
  readonly kind: "http" | "serviceBusQueue" | "timer" | "eventGrid";
  readonly name: string;
  readonly options: Readonly<Record<string, unknown>>;
}

export interface CodeFacts {
  readonly registrations: readonly Registration[];
  /** Service Bus output bindings: connection and queue. */
  readonly outputs: readonly { connection: string; queueName: string }[];
  /** Queues the functions send to through their own clients (core/ports/bus.ts). */
  readonly sentByClients: readonly string[];
  /** The agent's request and result queues (agent/config.ts defaults). */
  readonly agentQueues: { readonly send: string; readonly receive: string };
  /** Queues that must be session-enabled. */
  readonly sessionQueues: readonly string[];
  readonly settingNames: readonly string[];
}

/**
 * Settings the Functions host and the SDKs read, which Shield's own schema does not: each is
 * here for a reason. Binding connections (`<connection>__fullyQualifiedNamespace`, `__credential`,
 * `__clientId`) are allowed for each connection a binding names.
 */
export const HOST_SETTINGS: Readonly<Record<string, string>> = {
  AzureWebJobsStorage__accountName: "the host's storage account, identity-based",
  AzureWebJobsStorage__credential: "managedidentity",
  AzureWebJobsStorage__clientId: "which user-assigned identity the host uses",
  APPLICATIONINSIGHTS_CONNECTION_STRING: "telemetry endpoint (local auth is disabled, so it grants nothing)",
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: "Entra ID authentication for telemetry",
  AZURE_CLIENT_ID: "DefaultAzureCredential in the app's clients picks the user-assigned identity",
};

/** Settings Flex Consumption refuses, or that would carry a secret. */
export const FORBIDDEN_SETTINGS = [
  "FUNCTIONS_WORKER_RUNTIME",
  "FUNCTIONS_EXTENSION_VERSION",
  "WEBSITE_RUN_FROM_PACKAGE",
  "WEBSITE_NODE_DEFAULT_VERSION",
  "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
  "WEBSITE_CONTENTSHARE",
  "AzureWebJobsStorage",
  "ServiceBusConnection",
  "SHIELD_STATE_CONNECTION",
  "SHIELD_BUS_CONNECTION",
  "SHIELD_KEYVAULT_LOCAL_TOKEN",
];

export interface Queue {
  readonly symbol: string;
  readonly name: string;
  readonly sessions: boolean;
  readonly maxDeliveryCount?: string;
}

export function queuesOf(file: BicepFile): Queue[] {
  return file.resources
    .filter((r) => r.type === "Microsoft.ServiceBus/namespaces/queues")
    .map((r) => {
      const props = property(r.body, "properties") ?? "{}";
      const name = stringValue(file, property(r.body, "name") ?? "");
      if (name === undefined) throw new Error(`queue ${r.symbol}: name is not a literal`);
      const maxDeliveryCount = property(props, "maxDeliveryCount");
      return {
        symbol: r.symbol,
        name,
        sessions: property(props, "requiresSession") === "true",
        ...(maxDeliveryCount === undefined ? {} : { maxDeliveryCount }),
      };
    });
}

/** The Functions app's settings: name → value expression. */
export function appSettingsOf(file: BicepFile): Map<string, string> {
  const resource = file.resources.find(
    (r) =>
      r.type === "Microsoft.Web/sites/config" &&
      stringValue(file, property(r.body, "name") ?? "") === "appsettings",
  );
  if (resource === undefined) throw new Error("no appsettings resource");
  const settings = new Map<string, string>();
  const props = property(resource.body, "properties") ?? "";
  for (const m of props.matchAll(/^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.+?)\s*$/gm)) {
    if (settings.has(m[1]!)) throw new Error(`setting ${m[1]} twice`);
    settings.set(m[1]!, m[2]!);
  }
  return settings;
}

export function connectionsOf(code: CodeFacts): Set<string> {
  const names = new Set<string>();
  for (const r of code.registrations) {
    const c = r.options["connection"];
    if (typeof c === "string") names.add(c);
  }
  for (const o of code.outputs) names.add(o.connection);
  return names;
}

export function queueProblems(file: BicepFile, code: CodeFacts): string[] {
  const problems: string[] = [];
  const queues = queuesOf(file);
  const declared = new Set(queues.map((q) => q.name));
  const used = new Set<string>([
    ...code.registrations.flatMap((r) =>
      typeof r.options["queueName"] === "string" ? [r.options["queueName"]] : [],
    ),
    ...code.outputs.map((o) => o.queueName),
    ...code.sentByClients,
    code.agentQueues.send,
    code.agentQueues.receive,
  ]);
  for (const q of used)
    if (!declared.has(q)) problems.push(`queue ${q} is used by the code but not declared in Bicep`);
  for (const q of declared)
    if (!used.has(q)) problems.push(`queue ${q} is declared in Bicep but no code uses it`);
  for (const q of queues) {
    const wanted = code.sessionQueues.includes(q.name);
    if (q.sessions !== wanted) problems.push(`queue ${q.name}: requiresSession must be ${wanted}`);
    if (q.maxDeliveryCount !== "maxDeliveryCount")
      problems.push(`queue ${q.name}: maxDeliveryCount must be the maxDeliveryCount parameter`);
  }
  for (const r of code.registrations.filter((x) => x.kind === "serviceBusQueue")) {
    const q = queues.find((x) => x.name === r.options["queueName"]);
    if (q !== undefined && q.sessions !== (r.options["isSessionsEnabled"] === true))
      problems.push(`trigger ${r.name}: isSessionsEnabled does not match queue ${q.name}`);
  }
  return problems;
}

export function appSettingProblems(file: BicepFile, code: CodeFacts): string[] {
  const problems: string[] = [];
  const settings = appSettingsOf(file);
  const allowed = new Set([...code.settingNames, ...Object.keys(HOST_SETTINGS)]);
  for (const c of connectionsOf(code)) {
    for (const suffix of ["fullyQualifiedNamespace", "credential", "clientId"]) {
      allowed.add(`${c}__${suffix}`);
      if (!settings.has(`${c}__${suffix}`)) problems.push(`binding connection ${c} needs ${c}__${suffix}`);
    }
    if (settings.get(`${c}__credential`) !== "'managedidentity'")
      problems.push(`${c}__credential must be managedidentity`);
  }
  for (const name of settings.keys()) {
    if (!allowed.has(name)) problems.push(`app setting ${name} is read by nothing in the code or the host`);
  }
  for (const name of FORBIDDEN_SETTINGS)
    if (settings.has(name)) problems.push(`app setting ${name} must not be set`);
  for (const [name, value] of settings) {
    if (/AccountKey|SharedAccessKey|listKeys\(|primaryKey|password/i.test(value))
      problems.push(`app setting ${name} carries a secret`);
  }
  const rotate = code.registrations.find((r) => r.name === "rotate");
  if (settings.get("SHIELD_ROTATE_KEY_QUEUE") !== undefined) {
    const q = queuesOf(file).find((x) => x.symbol === "rotateKeyQueue")?.name;
    if (rotate?.options["queueName"] !== q)
      problems.push("SHIELD_ROTATE_KEY_QUEUE does not match the rotate trigger");
  }
  if (settings.get("SHIELD_MAX_DELIVERY_COUNT") !== "string(maxDeliveryCount)")
    problems.push("SHIELD_MAX_DELIVERY_COUNT must be the queues' maxDeliveryCount");
  return problems;
}

/** A placeholder environment built from the Bicep settings (expressions become sample values). */
export function sampleEnvironment(file: BicepFile): Record<string, string> {
  const samples: Record<string, string> = {
    SHIELD_MAA_ENDPOINT: "https://maashield.eus.attest.azure.net",
    SHIELD_KEYVAULT_URL: "https://kv-shield.vault.azure.net/",
    SHIELD_KEYVAULT_NAME: "kv-shield",
    SHIELD_STATE_TABLE_ENDPOINT: "https://stshield.table.core.windows.net/",
    SHIELD_APPRAISAL_POLICY: JSON.stringify({ sevsnpvm: { hostData: ["ab".repeat(32)] } }),
    SHIELD_CONTROL_KEY_ID:
      "https://kv-shield.vault.azure.net/keys/shield-control/0123456789abcdef0123456789abcdef",
    SHIELD_KEY_LIFECYCLE: "{}",
    SHIELD_MAX_DELIVERY_COUNT: "10",
  };
  const env: Record<string, string> = {};
  for (const [name, expression] of appSettingsOf(file)) {
    const param = file.params.get(expression);
    const fromParam = param?.defaultText === undefined ? undefined : stringValue(file, param.defaultText);
    env[name] = stringValue(file, expression) ?? fromParam ?? samples[name] ?? "sample";
  }
  return env;
}

export interface RoleAssignment {
  readonly symbol: string;
  readonly scope: string;
  readonly role: string;
  readonly principal: string;
}

export function rolesOf(file: BicepFile): Map<string, string> {
  const roles = new Map<string, string>();
  const object = file.vars.get("roles");
  if (object === undefined) return roles;
  for (const key of objectKeys(object)) {
    const m = new RegExp(`${key}:\\s*'([0-9a-f-]{36})'`).exec(object);
    if (m !== null) roles.set(key, m[1]!);
  }
  return roles;
}

export function roleAssignmentsOf(file: BicepFile): RoleAssignment[] {
  return file.resources
    .filter((r) => r.type === "Microsoft.Authorization/roleAssignments")
    .map((r) => {
      const props = property(r.body, "properties") ?? "";
      const definition = property(props, "roleDefinitionId") ?? "";
      const principal = property(props, "principalId") ?? "";
      const role =
        /roles\.([A-Za-z]+)\)/.exec(definition)?.[1] ??
        /^([A-Za-z]+)\.id$/.exec(definition)?.[1] ??
        definition;
      return {
        symbol: r.symbol,
        scope: property(r.body, "scope") ?? "resourceGroup",
        role,
        principal: /^([A-Za-z]+)\.properties\.principalId$/.exec(principal)?.[1] ?? principal,
      };
    });
}

/** Every GUID in the raw source has a comment naming its built-in role, and the table agrees. */
export function roleNameProblems(source: string): string[] {
  const problems: string[] = [];
  const byGuid = new Map(Object.entries(BUILTIN_ROLES).map(([name, guid]) => [guid, name]));
  for (const [i, line] of source.split("\n").entries()) {
    for (const m of line.matchAll(/'([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})'/g)) {
      const comment = /\/\/\s*(.+?)\s*$/.exec(line)?.[1];
      const known = byGuid.get(m[1]!);
      if (known === undefined) problems.push(`line ${i + 1}: ${m[1]} is not a known built-in role`);
      else if (comment !== known)
        problems.push(`line ${i + 1}: ${m[1]} must be commented "${known}", not "${comment ?? ""}"`);
    }
  }
  for (const [i, line] of source.split("\n").entries()) {
    if (/roleDefinitionId:/.test(line) && !/\/\/\s*\S/.test(line))
      problems.push(`line ${i + 1}: roleDefinitionId without the role's name`);
  }
  return problems;
}

export function roleProblems(file: BicepFile, source: string, code: CodeFacts): string[] {
  const problems = roleNameProblems(source);
  const roles = rolesOf(file);
  const assignments = roleAssignmentsOf(file);
  const queueBySymbol = new Map(queuesOf(file).map((q) => [q.symbol, q.name]));
  const guidOf = (key: string) => roles.get(key);
  const named = (guid: string | undefined) =>
    Object.entries(BUILTIN_ROLES).find(([, g]) => g === guid)?.[0] ?? "?";
  const functionsRoles = assignments.filter((a) => a.principal === "functionsIdentity");
  const agentRoles = assignments.filter((a) => a.principal === "agentIdentity");
  for (const a of functionsRoles) {
    const name = named(guidOf(a.role));
    if (/Officer/.test(name) || name === "Azure Service Bus Data Owner")
      problems.push(`${a.symbol}: the functions must not hold ${name}`);
  }
  const sbScopes = (list: RoleAssignment[], role: string) =>
    new Set(
      list
        .filter((a) => named(guidOf(a.role)) === role)
        .map((a) => queueBySymbol.get(a.scope) ?? `not a queue: ${a.scope}`),
    );
  const same = (what: string, actual: Set<string>, wanted: Set<string>) => {
    const a = [...actual].sort().join(", ");
    const w = [...wanted].sort().join(", ");
    if (a !== w) problems.push(`${what}: assigned on [${a}], the code needs [${w}]`);
  };
  const triggers = new Set(
    code.registrations.filter((r) => r.kind === "serviceBusQueue").map((r) => String(r.options["queueName"])),
  );
  const sends = new Set([...code.outputs.map((o) => o.queueName), ...code.sentByClients]);
  same(
    "functions Azure Service Bus Data Receiver",
    sbScopes(functionsRoles, "Azure Service Bus Data Receiver"),
    triggers,
  );
  same(
    "functions Azure Service Bus Data Sender",
    sbScopes(functionsRoles, "Azure Service Bus Data Sender"),
    sends,
  );
  same(
    "agents Azure Service Bus Data Sender",
    sbScopes(agentRoles, "Azure Service Bus Data Sender"),
    new Set([code.agentQueues.send]),
  );
  same(
    "agents Azure Service Bus Data Receiver",
    sbScopes(agentRoles, "Azure Service Bus Data Receiver"),
    new Set([code.agentQueues.receive]),
  );
  for (const a of agentRoles) {
    const name = named(guidOf(a.role));
    if (!name.startsWith("Azure Service Bus Data "))
      problems.push(`${a.symbol}: the agents must not hold ${name}`);
  }
  const need = (role: string, scope: string) => {
    if (!functionsRoles.some((a) => named(guidOf(a.role)) === role && a.scope === scope))
      problems.push(`the functions need ${role} on ${scope}`);
  };
  need("Key Vault Crypto Service Release User", "vault");
  need("Key Vault Crypto User", "controlKey");
  need("Storage Table Data Contributor", "stateTable");
  need("Storage Blob Data Owner", "storage");
  need("Monitoring Metrics Publisher", "appInsights");
  return problems;
}

// ---------------------------------------------------------------------------------------------
// docs/deploy.md

export interface GuideContext {
  readonly main: BicepFile;
  readonly aci: BicepFile;
  /** `${NAME}` references of infra/main.parameters.json: what `azd env set` may set. */
  readonly parameterEnv: ReadonlySet<string>;
  /** Command words → option names (cli/commands, with the global --json and --help). */
  readonly commands: ReadonlyMap<string, ReadonlySet<string>>;
  readonly chartValues: unknown;
  readonly httpRoutes: readonly string[];
  readonly errorCodes: { has(code: string): boolean };
  readonly fileExists: (path: string) => boolean;
}

/** Set by azd itself in every environment. */
export const AZD_VARIABLES = new Set([
  "AZURE_ENV_NAME",
  "AZURE_LOCATION",
  "AZURE_SUBSCRIPTION_ID",
  "AZURE_RESOURCE_GROUP",
  "AZURE_PRINCIPAL_ID",
  "AZURE_TENANT_ID",
]);

function hasValuePath(values: unknown, path: string): boolean {
  let node = values;
  for (const part of path.split(".")) {
    if (node === null || typeof node !== "object" || Array.isArray(node) || !(part in node)) return false;
    node = (node as Record<string, unknown>)[part];
  }
  return true;
}

/** One logical command per line (continuations joined), comments dropped. */
function commandLines(script: string): string[] {
  return script
    .replace(/\\\n\s*/g, " ")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
}

export function guideProblems(markdown: string, ctx: GuideContext): string[] {
  const problems: string[] = [];
  const script = shellBlocks(markdown).join("\n");
  const lines = commandLines(script);
  const outputs = new Set(ctx.main.outputs.keys());
  const assigned = new Set([...script.matchAll(/(?:^|\s|;)([A-Z_][A-Z0-9_]*)=/gm)].map((m) => m[1]!));

  // shell variables: Bicep outputs (via azd env get-values), azd's own, or set in the guide
  for (const m of script.matchAll(/\$\{?([A-Z_][A-Z0-9_]*)/g)) {
    const name = m[1]!;
    if (!outputs.has(name) && !AZD_VARIABLES.has(name) && !assigned.has(name))
      problems.push(`variable ${name} is neither a Bicep output nor set in the guide`);
  }
  for (const m of script.matchAll(/azd env get-value ([A-Z_][A-Z0-9_]*)/g))
    if (!outputs.has(m[1]!)) problems.push(`azd env get-value ${m[1]}: no such output`);
  for (const m of markdown.matchAll(/azd env get-value ([A-Z_][A-Z0-9_]*)/g))
    if (!outputs.has(m[1]!)) problems.push(`azd env get-value ${m[1]}: no such output`);
  for (const m of script.matchAll(/azd env set ([A-Z_][A-Z0-9_]*)/g))
    if (!ctx.parameterEnv.has(m[1]!) && !AZD_VARIABLES.has(m[1]!))
      problems.push(`azd env set ${m[1]}: no template parameter reads it`);

  // shield commands and their options
  for (const line of lines) {
    const m = /npm run -s shield -- (.*)$/.exec(line);
    if (m === null) continue;
    const words = m[1]!.split(/\s+/);
    const key2 = words.slice(0, 2).join(" ");
    const key = ctx.commands.has(key2) ? key2 : words[0]!;
    const options = ctx.commands.get(key);
    if (options === undefined) {
      problems.push(`shield ${key2}: no such command`);
      continue;
    }
    for (const o of m[1]!.matchAll(/(?:^|\s)--([a-z][a-z-]*)/g))
      if (!options.has(o[1]!)) problems.push(`shield ${key}: no option --${o[1]}`);
  }

  // helm --set / --set-file paths exist in values.yaml
  for (const m of script.matchAll(/--set(?:-file)? ([A-Za-z][A-Za-z0-9.]*)=/g))
    if (!hasValuePath(ctx.chartValues, m[1]!)) problems.push(`helm value ${m[1]} is not in values.yaml`);
  for (const m of script.matchAll(/helm template \S+ (\S+)/g))
    if (!ctx.fileExists(m[1]!)) problems.push(`helm template: no chart at ${m[1]}`);

  // the ACI deployment names only parameters the template has, and gives every required one
  const aciParams = ctx.aci.params;
  const given = new Set<string>();
  for (const m of script.matchAll(/"([A-Za-z]+)": \{"value":/g)) given.add(m[1]!);
  for (const line of lines.filter((l) => l.includes("--template-file infra/aci/shield-aci.bicep"))) {
    for (const m of line.matchAll(/\s([A-Za-z]+)=/g)) given.add(m[1]!);
  }
  for (const name of given) if (!aciParams.has(name)) problems.push(`ACI parameter ${name} does not exist`);
  for (const p of aciParams.values())
    if (p.defaultText === undefined && !given.has(p.name))
      problems.push(`ACI parameter ${p.name} is required but not given`);

  // files, routes, error codes
  for (const m of script.matchAll(/(?:^|\s|=)((?:infra|examples|agent|docs)\/[A-Za-z0-9_./-]+)/gm))
    if (!ctx.fileExists(m[1]!)) problems.push(`file ${m[1]} does not exist`);
  for (const m of markdown.matchAll(/\]\(\.\.\/([^)#]+)\)/g))
    if (!ctx.fileExists(m[1]!)) problems.push(`link ../${m[1]} does not exist`);
  const routes = ctx.httpRoutes.map((r) => new RegExp(`^${r.replace(/\{[^}]+\}/g, "[^/]+")}$`));
  for (const m of markdown.matchAll(/\/api\/([A-Za-z0-9{}/_-]+)/g)) {
    const path = m[1]!.replace(/\/$/, "");
    if (!routes.some((r) => r.test(path.replace(/\{[^}]+\}/g, "x"))))
      problems.push(`route /api/${path} is not registered`);
  }
  for (const m of markdown.matchAll(/\bERR_[A-Z_]+/g))
    if (!ctx.errorCodes.has(m[0])) problems.push(`error code ${m[0]} does not exist`);
  for (const block of codeBlocks(markdown, "yaml")) {
    try {
      parse(block);
    } catch (error) {
      problems.push(`a yaml block does not parse: ${String(error)}`);
    }
  }
  return problems;
}

export function loadBicep(source: string): BicepFile {
  return scanBicep(source);
}
