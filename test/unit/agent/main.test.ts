import { readdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../../core/evidence/simulated/sevsnp.js";
import { AGENT_VARIABLES } from "../../../agent/config.js";
import { EXIT_CODES, main, type MainIo, type StartContext } from "../../../agent/main.js";
import { tempDir } from "./fakes.js";

function capture(): MainIo & { out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  return { out, err, stdout: (text) => out.push(text), stderr: (text) => err.push(text) };
}

let platform: SimulatedSnpPlatform;
beforeAll(() => {
  platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
});

describe("agent entry point", () => {
  it("--help lists every variable and the exit codes", async () => {
    const io = capture();
    expect(await main(["--help"], {}, { io })).toBe(EXIT_CODES.ok);
    const text = io.out.join("\n");
    for (const name of Object.keys(AGENT_VARIABLES)) expect(text).toContain(name);
    expect(text).toContain(
      "Exit codes: 0 normal end, 1 no usable TEE interface, 2 configuration or usage error.",
    );
    expect(io.err).toEqual([]);
  });

  it("with no TEE and no simulation selected exits 1 at once, naming each provider and why", async () => {
    const io = capture();
    const started = Date.now();
    expect(await main([], {}, { io })).toBe(EXIT_CODES.noTee);
    expect(Date.now() - started).toBeLessThan(5_000);
    const text = io.err.join("\n");
    expect(text).toContain("no usable TEE interface");
    expect(text).toMatch(/sevsnp-configfs: .*does not exist/);
    expect(text).toMatch(/sevsnp-sidecar: .*127\.0\.0\.1:8080/);
    expect(text).toMatch(/sgx-gramine: .*does not exist/);
    expect(text).not.toMatch(/simulated:/);
  });

  it("removes key files an earlier run left before anything else, even when no TEE is usable", async () => {
    const dir = await tempDir("stale-keys");
    try {
      await writeFile(join(dir, "orders"), "old key");
      await writeFile(join(dir, "unrelated"), "keep");
      const io = capture();
      expect(await main([], { SHIELD_KEY_DIR: dir, SHIELD_KEYS: "orders" }, { io })).toBe(EXIT_CODES.noTee);
      expect(await readdir(dir)).toEqual(["unrelated"]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("exits 2 on a configuration error, before probing anything, without echoing secrets", async () => {
    const io = capture();
    const code = await main(
      [],
      { SHIELD_TEE: "nope", SHIELD_STORAGE_CONNECTION_STRING: "Password=hunter2" },
      { io },
    );
    expect(code).toBe(EXIT_CODES.config);
    const text = io.err.join("\n");
    expect(text).toContain("SHIELD_TEE");
    expect(text).toContain("SHIELD_STORAGE_CONNECTION_STRING");
    expect(text).not.toContain("hunter2");
    expect(text).not.toContain("no usable TEE");
  });

  it("exits 2 on an unknown argument", async () => {
    const io = capture();
    expect(await main(["--verbose"], {}, { io })).toBe(EXIT_CODES.config);
    expect(io.err.join("\n")).toContain("--verbose");
  });

  it("checks what the bus needs once a TEE interface is found", async () => {
    const io = capture();
    const code = await main(
      [],
      { SHIELD_TEE: "simulated", SHIELD_LOG_LEVEL: "error" },
      { io, select: { simulated: { platform } } },
    );
    expect(code).toBe(EXIT_CODES.config);
    const text = io.err.join("\n");
    expect(text).toContain("SHIELD_KEYS");
    expect(text).toContain("SHIELD_SERVICEBUS_NAMESPACE");
    expect(text).toContain("SHIELD_CONTROL_KEYS_FILE");
    expect(text).toContain("SHIELD_KEYVAULT_URL");
  });

  it("hands the configuration and the selected provider to start", async () => {
    const io = capture();
    let context: StartContext | undefined;
    const code = await main(
      [],
      {
        SHIELD_TEE: "simulated",
        SHIELD_KEYS: "orders",
        SHIELD_SERVICEBUS_NAMESPACE: "contoso.servicebus.windows.net",
        SHIELD_RELEASE_SIGNER_HOST: "contoso.vault.azure.net",
        SHIELD_CONTROL_KEYS_FILE: "/etc/shield/control-keys.json",
        SHIELD_KEYVAULT_URL: "https://contoso.vault.azure.net",
        SHIELD_LOG_LEVEL: "error",
      },
      {
        io,
        select: { simulated: { platform } },
        start: (given) => {
          context = given;
          return Promise.resolve(0);
        },
      },
    );
    expect(code).toBe(0);
    expect(context?.provider.name).toBe("simulated");
    expect(context?.config.keys).toEqual(["orders"]);
    expect(context?.config.controlKeysFile).toBe("/etc/shield/control-keys.json");
    expect(context?.config.keyVaultUrl).toBe("https://contoso.vault.azure.net");
  });
});
