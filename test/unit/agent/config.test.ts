import { inspect } from "node:util";
import { describe, expect, it } from "vitest";
import {
  AGENT_VARIABLES,
  isLoopback,
  loadAgentConfig,
  startRequirements,
  variablesHelp,
  type AgentConfig,
  type Environment,
} from "../../../agent/config.js";

function ok(env: Environment): AgentConfig {
  const loaded = loadAgentConfig(env);
  if (!loaded.ok) throw new Error(loaded.problems.join("; "));
  return loaded.config;
}

function problems(env: Environment): readonly string[] {
  const loaded = loadAgentConfig(env);
  if (loaded.ok) throw new Error("expected configuration problems");
  return loaded.problems;
}

const SECRET = "AccountName=dev;AccountKey=c2VjcmV0LWtleS1tYXRlcmlhbA==";

describe("agent configuration", () => {
  it("has a default for everything, so an empty environment loads", () => {
    const config = ok({});
    expect(config).toMatchObject({
      agentId: "shield-agent",
      workload: "default",
      keys: [],
      tee: "auto",
      tsm: { root: "/sys/kernel/config/tsm/report" },
      sidecar: { url: "http://127.0.0.1:8080" },
      thimUrl: "http://169.254.169.254/metadata/THIM/amd/certification",
      gramine: { root: "/dev/attestation" },
      runtimeKeyBits: 2048,
      listen: { kind: "tcp", host: "127.0.0.1", port: 8280 },
      allowNonLoopback: false,
      bus: {
        transport: "servicebus",
        requestQueue: "attestation-requests",
        resultQueue: "attestation-results",
      },
      reattestSeconds: 3600,
      timeouts: { evidenceMs: 10_000, probeMs: 1_000, resultSeconds: 120 },
      logLevel: "info",
    });
    expect(Object.isFrozen(config.bus)).toBe(true);
  });

  it("takes the agent id from SHIELD_AGENT_ID, else a usable HOSTNAME", () => {
    expect(ok({ HOSTNAME: "orders-7d9f-abc" }).agentId).toBe("orders-7d9f-abc");
    expect(ok({ HOSTNAME: "bad host name" }).agentId).toBe("shield-agent");
    expect(ok({ HOSTNAME: "pod", SHIELD_AGENT_ID: "agent-1" }).agentId).toBe("agent-1");
  });

  it("reads every variable", () => {
    const config = ok({
      SHIELD_WORKLOAD: "orders",
      SHIELD_KEYS: " orders-key, audit-key ,",
      SHIELD_TEE: "sevsnp-sidecar",
      SHIELD_TSM_ROOT: "/tmp/tsm",
      SHIELD_TSM_PRIVLEVEL: "1",
      SHIELD_SIDECAR_URL: "http://localhost:9000",
      SHIELD_THIM_URL: "",
      SHIELD_SNP_CHAIN_FILE: "/etc/shield/chain.pem",
      UVM_SECURITY_CONTEXT_DIR: "/security-context-1",
      SHIELD_GRAMINE_ROOT: "/tmp/attestation",
      SHIELD_RUNTIME_KEY_BITS: "3072",
      SHIELD_LISTEN: "unix:/run/shield/keys.sock",
      SHIELD_KEY_DIR: "/run/keys",
      SHIELD_BUS: "storage-queue",
      SHIELD_STORAGE_CONNECTION_STRING: SECRET,
      SHIELD_CONTROL_KEYS_FILE: "/etc/shield/control-keys.json",
      SHIELD_KEYVAULT_URL: "https://contoso.vault.azure.net/",
      SHIELD_REATTEST_SECONDS: "0",
      SHIELD_EVIDENCE_TIMEOUT_MS: "2500",
      SHIELD_PROBE_TIMEOUT_MS: "300",
      SHIELD_RESULT_TIMEOUT_SECONDS: "30",
      SHIELD_LOG_LEVEL: "debug",
    });
    expect(config.keys).toEqual(["orders-key", "audit-key"]);
    expect(config.tsm).toEqual({ root: "/tmp/tsm", privlevel: 1 });
    expect(config.thimUrl).toBeUndefined();
    expect(config.runtimeKeyBits).toBe(3072);
    expect(config.listen).toEqual({ kind: "unix", path: "/run/shield/keys.sock" });
    expect(config.bus.storageConnectionString?.reveal()).toBe(SECRET);
    expect(config.controlKeysFile).toBe("/etc/shield/control-keys.json");
    expect(config.keyVaultUrl).toBe("https://contoso.vault.azure.net");
    expect(config.reattestSeconds).toBe(0);
    expect(config.timeouts).toEqual({ evidenceMs: 2500, probeMs: 300, resultSeconds: 30 });
  });

  it("lists every problem at once, naming each variable and the value it got", () => {
    const found = problems({
      SHIELD_TEE: "tdx",
      SHIELD_RUNTIME_KEY_BITS: "4096",
      SHIELD_KEYS: "ok,not_ok",
      SHIELD_SIDECAR_URL: "ftp://x",
      SHIELD_TSM_ROOT: "relative/path",
      SHIELD_ALLOW_NON_LOOPBACK: "yes",
      SHIELD_REATTEST_SECONDS: "-5",
    });
    expect(found.map((problem) => problem.split(":")[0])).toEqual([
      "SHIELD_KEYS",
      "SHIELD_TEE",
      "SHIELD_TSM_ROOT",
      "SHIELD_SIDECAR_URL",
      "SHIELD_RUNTIME_KEY_BITS",
      "SHIELD_ALLOW_NON_LOOPBACK",
      "SHIELD_REATTEST_SECONDS",
    ]);
    expect(found[1]).toContain('(got "tdx")');
  });

  it("refuses duplicate, malformed and too many key names", () => {
    expect(problems({ SHIELD_KEYS: "a,a" })[0]).toContain("each key name once");
    expect(problems({ SHIELD_KEYS: "a b" })[0]).toContain("Key Vault key names");
    expect(problems({ SHIELD_KEYS: Array.from({ length: 33 }, (_, i) => `k${i}`).join(",") })[0]).toContain(
      "at most 32",
    );
  });

  it("binds only loopback or a Unix socket unless SHIELD_ALLOW_NON_LOOPBACK=true", () => {
    expect(problems({ SHIELD_LISTEN: "0.0.0.0:8280" })[0]).toContain("SHIELD_ALLOW_NON_LOOPBACK=true");
    expect(problems({ SHIELD_LISTEN: "10.0.0.4:8280", SHIELD_TEE: "x" })).toHaveLength(2);
    expect(ok({ SHIELD_LISTEN: "0.0.0.0:8280", SHIELD_ALLOW_NON_LOOPBACK: "true" }).listen).toEqual({
      kind: "tcp",
      host: "0.0.0.0",
      port: 8280,
    });
    expect(ok({ SHIELD_LISTEN: "[::1]:9000" }).listen).toEqual({ kind: "tcp", host: "::1", port: 9000 });
    expect(ok({ SHIELD_LISTEN: "localhost:0" }).listen).toEqual({ kind: "tcp", host: "localhost", port: 0 });
    for (const bad of ["8280", "host:99999", "[nope]:1", "unix:relative", "a b:1"]) {
      expect(problems({ SHIELD_LISTEN: bad })[0]).toContain("SHIELD_LISTEN");
    }
    expect(isLoopback("127.0.0.2")).toBe(true);
    expect(isLoopback("::1")).toBe(true);
    expect(isLoopback("192.168.1.1")).toBe(false);
    expect(isLoopback("example.com")).toBe(false);
  });

  it("names the key API token file by an absolute path, and asks for no token without one", () => {
    expect(ok({}).keyApiTokenFile).toBeUndefined();
    expect(ok({ SHIELD_KEY_API_TOKEN_FILE: "/run/secrets/key-api-token" }).keyApiTokenFile).toBe(
      "/run/secrets/key-api-token",
    );
    expect(problems({ SHIELD_KEY_API_TOKEN_FILE: "token.txt" })).toEqual([
      'SHIELD_KEY_API_TOKEN_FILE: expected an absolute path (got "token.txt")',
    ]);
  });

  it("never echoes a secret, in problems or in the loaded configuration", () => {
    const bad = "AccountNme=dev;Key=super-secret-value";
    const found = problems({ SHIELD_STORAGE_CONNECTION_STRING: bad });
    expect(found[0]).toContain("SHIELD_STORAGE_CONNECTION_STRING");
    expect(found.join("\n")).not.toContain("super-secret-value");
    const config = ok({ SHIELD_BUS: "storage-queue", SHIELD_STORAGE_CONNECTION_STRING: SECRET });
    expect(JSON.stringify(config)).not.toContain("c2VjcmV0");
    expect(inspect(config, { depth: 10 })).not.toContain("c2VjcmV0");
    expect(`${String(config.bus.storageConnectionString)}`).toBe("[redacted]");
  });

  it("takes a Service Bus connection string instead of the namespace, and never echoes it", () => {
    const key = "c2VydmljZS1idXMta2V5LW1hdGVyaWFs";
    const text = `Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=agent;SharedAccessKey=${key};UseDevelopmentEmulator=true`;
    const config = ok({ SHIELD_SERVICEBUS_CONNECTION_STRING: text });
    expect(config.bus.serviceBusConnectionString?.reveal()).toBe(text);
    expect(JSON.stringify(config)).not.toContain(key);
    expect(inspect(config, { depth: 10 })).not.toContain(key);
    const required = startRequirements(config).filter((problem) => problem.includes("SERVICEBUS"));
    expect(required).toEqual([]);
    for (const bad of [
      `Endpoint=https://127.0.0.1;SharedAccessKeyName=agent;SharedAccessKey=${key}`,
      `Endpoint=sb://127.0.0.1;SharedAccessKeyName=agent`,
      `SharedAccessKeyName=agent;SharedAccessKey=${key}`,
    ]) {
      const found = problems({ SHIELD_SERVICEBUS_CONNECTION_STRING: bad });
      expect(found[0]).toContain("SHIELD_SERVICEBUS_CONNECTION_STRING");
      expect(found.join("\n")).not.toContain(key);
    }
  });

  it("says what the bus round trip still needs", () => {
    const signer =
      "SHIELD_RELEASE_SIGNER_CA_FILE or SHIELD_RELEASE_SIGNER_HOST: required to verify who signed the keys Key Vault releases";
    const controlKeys =
      "SHIELD_CONTROL_KEYS_FILE: required to verify that messages come from the control plane";
    const vault = "SHIELD_KEYVAULT_URL: required to check which vault released keys come from";
    const pinned = {
      SHIELD_CONTROL_KEYS_FILE: "/etc/shield/control-keys.json",
      SHIELD_KEYVAULT_URL: "https://contoso.vault.azure.net",
    };
    expect(startRequirements(ok({}))).toEqual([
      "SHIELD_KEYS: at least one Key Vault key name is needed",
      "SHIELD_SERVICEBUS_NAMESPACE (or SHIELD_SERVICEBUS_CONNECTION_STRING): required when SHIELD_BUS=servicebus",
      signer,
      controlKeys,
      vault,
    ]);
    expect(
      startRequirements(
        ok({
          SHIELD_KEYS: "k",
          SHIELD_BUS: "storage-queue",
          SHIELD_RELEASE_SIGNER_CA_FILE: "/ca.pem",
          ...pinned,
        }),
      ),
    ).toEqual(["SHIELD_STORAGE_CONNECTION_STRING: required when SHIELD_BUS=storage-queue"]);
    const complete = {
      SHIELD_KEYS: "k",
      SHIELD_SERVICEBUS_NAMESPACE: "contoso.servicebus.windows.net",
      SHIELD_RELEASE_SIGNER_HOST: "contoso.vault.azure.net",
    };
    expect(startRequirements(ok({ ...complete, ...pinned }))).toEqual([]);
    // Neither the control-plane keys nor the vault have a default: without them nothing starts.
    expect(startRequirements(ok({ ...complete, SHIELD_KEYVAULT_URL: pinned.SHIELD_KEYVAULT_URL }))).toEqual([
      controlKeys,
    ]);
    expect(
      startRequirements(ok({ ...complete, SHIELD_CONTROL_KEYS_FILE: pinned.SHIELD_CONTROL_KEYS_FILE })),
    ).toEqual([vault]);
    expect(problems({ SHIELD_RELEASE_SIGNER_HOST: "https://contoso.vault.azure.net/" })[0]).toContain(
      "SHIELD_RELEASE_SIGNER_HOST",
    );
    expect(problems({ SHIELD_SERVICEBUS_NAMESPACE: "contoso" })[0]).toContain("fully qualified namespace");
  });

  it("takes SHIELD_KEYVAULT_URL as an https origin (http only on loopback) and SHIELD_CONTROL_KEYS_FILE as an absolute path", () => {
    expect(ok({ SHIELD_KEYVAULT_URL: "https://contoso.vault.azure.net" }).keyVaultUrl).toBe(
      "https://contoso.vault.azure.net",
    );
    expect(ok({ SHIELD_KEYVAULT_URL: "https://contoso.managedhsm.azure.net/" }).keyVaultUrl).toBe(
      "https://contoso.managedhsm.azure.net",
    );
    expect(ok({ SHIELD_KEYVAULT_URL: "http://127.0.0.1:8443" }).keyVaultUrl).toBe("http://127.0.0.1:8443");
    for (const bad of [
      "contoso.vault.azure.net",
      "http://contoso.vault.azure.net",
      "https://contoso.vault.azure.net/keys/orders",
      "https://user:pw@contoso.vault.azure.net",
      "https://contoso.vault.azure.net/?x=1",
      "ftp://contoso.vault.azure.net",
    ]) {
      expect(problems({ SHIELD_KEYVAULT_URL: bad })[0]).toContain("SHIELD_KEYVAULT_URL");
    }
    expect(ok({}).keyVaultUrl).toBeUndefined();
    expect(ok({}).controlKeysFile).toBeUndefined();
    expect(problems({ SHIELD_CONTROL_KEYS_FILE: "relative/keys.json" })[0]).toContain(
      "SHIELD_CONTROL_KEYS_FILE",
    );
  });

  it("documents every variable with a default and a meaning", () => {
    const help = variablesHelp().join("\n");
    for (const [name, spec] of Object.entries(AGENT_VARIABLES)) {
      expect(help).toContain(`${name}  (default: ${spec.default})`);
      expect(spec.meaning.length).toBeGreaterThan(10);
    }
  });
});

describe("agent configuration: minimum decryption versions", () => {
  it("reads name=version pairs, and none by default", () => {
    expect(ok({}).minDecryptionVersions.size).toBe(0);
    const config = ok({ SHIELD_MIN_DECRYPTION_VERSIONS: " orders-key=0123abcd , ledger=r2" });
    expect([...config.minDecryptionVersions]).toEqual([
      ["orders-key", "0123abcd"],
      ["ledger", "r2"],
    ]);
  });

  it("refuses anything else, naming the variable", () => {
    for (const value of [
      "orders",
      "orders=",
      "=v1",
      "orders=v1=v2",
      "orders=v1,orders=v2",
      "or ders=v1",
      "orders=../v1",
    ]) {
      expect(problems({ SHIELD_MIN_DECRYPTION_VERSIONS: value }).join("\n")).toMatch(
        /^SHIELD_MIN_DECRYPTION_VERSIONS: expected comma-separated name=version pairs/,
      );
    }
  });
});

describe("agent configuration: serving key material", () => {
  it("serves keys by default; SHIELD_SERVE_KEYS=false turns it off, and refuses key files with it", () => {
    expect(ok({}).serveKeys).toBe(true);
    expect(ok({ SHIELD_SERVE_KEYS: "false" }).serveKeys).toBe(false);
    expect(problems({ SHIELD_SERVE_KEYS: "no" }).join("\n")).toMatch(
      /^SHIELD_SERVE_KEYS: expected true or false/,
    );
    expect(problems({ SHIELD_SERVE_KEYS: "false", SHIELD_KEY_DIR: "/run/keys" })).toEqual([
      "SHIELD_KEY_DIR: key files cannot be written while SHIELD_SERVE_KEYS=false",
    ]);
    expect(ok({ SHIELD_SERVE_KEYS: "true", SHIELD_KEY_DIR: "/run/keys" }).keyDir).toBe("/run/keys");
  });
});
