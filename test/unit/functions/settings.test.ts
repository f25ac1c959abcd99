/**
 * The Functions app's settings for the control plane: the signing key is required, named with
 * its version, and bad values are ERR_CONFIG naming the setting, never its value.
 */
import { describe, expect, it } from "vitest";
import { ShieldError } from "../../../core/errors.js";
import { readSettings } from "../../../functions/composition/settings.js";
import { parseControlKeyId } from "../../../adapters/keyvault/control-signer.js";

const BASE = {
  SHIELD_MAA_ENDPOINT: "https://sharedeus.eus.attest.azure.net",
  SHIELD_KEYVAULT_URL: "https://contoso.vault.azure.net",
  SHIELD_STATE_TABLE_ENDPOINT: "https://contoso.table.core.windows.net",
  ServiceBusConnection__fullyQualifiedNamespace: "contoso.servicebus.windows.net",
  SHIELD_APPRAISAL_POLICY: JSON.stringify({ sevsnpvm: { hostData: ["ab".repeat(32)] } }),
  SHIELD_CONTROL_KEY_ID:
    "https://contoso.vault.azure.net/keys/shield-control/0123456789abcdef0123456789abcdef",
};

/** The fields an ERR_CONFIG names (fails the test when nothing, or something else, is thrown). */
function problemFields(run: () => unknown): string[] {
  try {
    run();
  } catch (error) {
    if (error instanceof ShieldError && error.code === "ERR_CONFIG")
      return error.violations.map((v) => v.field);
    throw error;
  }
  throw new Error("no ERR_CONFIG was thrown");
}

describe("control-plane settings", () => {
  it("reads the control key with ES256 by default, and the challenge and message lifetimes", () => {
    const settings = readSettings(BASE);
    expect(settings.controlKey).toEqual({ keyId: BASE.SHIELD_CONTROL_KEY_ID, algorithm: "ES256" });
    expect(settings.challengeSeconds).toBe(300);
    expect(settings.controlMessageTtlSeconds).toBe(900);
    expect(parseControlKeyId(settings.controlKey.keyId)).toMatchObject({ name: "shield-control" });
  });

  it("refuses to start without a control key, naming the setting", () => {
    const { SHIELD_CONTROL_KEY_ID: _omitted, ...without } = BASE;
    expect(problemFields(() => readSettings(without))).toContain("SHIELD_CONTROL_KEY_ID");
  });

  it("refuses an unknown algorithm and out-of-range lifetimes", () => {
    for (const [name, value] of [
      ["SHIELD_CONTROL_KEY_ALGORITHM", "HS256"],
      ["SHIELD_CHALLENGE_SECONDS", "5"],
      ["SHIELD_CONTROL_MESSAGE_TTL_SECONDS", "100000"],
    ] as const) {
      expect(problemFields(() => readSettings({ ...BASE, [name]: value }))).toContain(name);
    }
  });
});

describe("Service Bus connection settings", () => {
  const { ServiceBusConnection__fullyQualifiedNamespace: _namespace, ...withoutNamespace } = BASE;
  const key = "c2VydmljZS1idXMta2V5LW1hdGVyaWFs";

  it("takes the namespace (managed identity) or a connection string in ServiceBusConnection", () => {
    expect(readSettings(BASE).bus).toEqual({
      kind: "servicebus",
      fullyQualifiedNamespace: "contoso.servicebus.windows.net",
    });
    const connectionString = `Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=functions;SharedAccessKey=${key};UseDevelopmentEmulator=true`;
    expect(readSettings({ ...withoutNamespace, ServiceBusConnection: connectionString }).bus).toEqual({
      kind: "servicebus",
      connectionString,
    });
  });

  it("names the setting, never its value, when the connection string is malformed or missing", () => {
    expect(problemFields(() => readSettings(withoutNamespace))).toEqual([
      "ServiceBusConnection__fullyQualifiedNamespace",
    ]);
    let caught: unknown;
    try {
      readSettings({
        ...withoutNamespace,
        ServiceBusConnection: `Endpoint=https://x;SharedAccessKey=${key}`,
      });
    } catch (error) {
      caught = error;
    }
    expect((caught as ShieldError).violations.map((v) => v.field)).toEqual(["ServiceBusConnection"]);
    expect(JSON.stringify((caught as ShieldError).toJSON())).not.toContain(key);
  });
});
