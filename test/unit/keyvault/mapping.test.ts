import { RestError } from "@azure/core-rest-pipeline";
import type { KeyVaultKey } from "@azure/keyvault-keys";
import { describe, expect, it } from "vitest";
import {
  KEY_VAULT_API_VERSION,
  KEY_VAULT_RETRY_OPTIONS,
  checkVaultUrl,
  createKeyRequest,
  keyClientOptions,
  keyVaultError,
  keyVersionInfoFromKeyVaultKey,
  releaseKeyOptions,
  releasePolicyForSdk,
  sanitizeServiceMessage,
} from "../../../adapters/keyvault/mapping.js";
import { ShieldError } from "../../../core/errors.js";
import { parseReleasePolicy, renderReleasePolicy } from "../../../core/policy/index.js";

const policy = renderReleasePolicy({
  authority: "https://sharedeus.eus.attest.azure.net",
  measurements: { sevsnpvm: { hostData: ["aa".repeat(32)] } },
});

function restError(
  status: number | undefined,
  body?: { code: string; message: string },
  code?: string,
): RestError {
  const error = new RestError(body?.message ?? "request failed", {
    ...(status === undefined ? {} : { statusCode: status }),
    ...(code === undefined ? {} : { code }),
  });
  if (body !== undefined) error.details = { error: body };
  return error;
}

describe("keyVaultError", () => {
  it.each([
    [429, "get", "ERR_THROTTLED", true],
    [408, "get", "ERR_TIMEOUT", true],
    [500, "release", "ERR_UPSTREAM_UNAVAILABLE", true],
    [503, "create", "ERR_UPSTREAM_UNAVAILABLE", true],
    [403, "release", "ERR_POLICY_DENIED", false],
    [403, "get", "ERR_CONFIG", false],
    [401, "release", "ERR_CONFIG", false],
    [404, "release", "ERR_CONFIG", false],
    [400, "create", "ERR_CONFIG", false],
    [409, "create", "ERR_CONFIG", false],
  ] as const)("maps HTTP %i on %s to %s", (status, operation, code, transient) => {
    const mapped = keyVaultError(restError(status, { code: "Some", message: "m" }), operation, "k1");
    expect(mapped).toMatchObject({ code, transient });
    expect(mapped.cause).toBeInstanceOf(RestError);
  });

  it("maps transport failures without a response", () => {
    expect(keyVaultError(restError(undefined, undefined, "ECONNREFUSED"), "get", "k").code).toBe(
      "ERR_NETWORK",
    );
    expect(keyVaultError(restError(undefined, undefined, "REQUEST_SEND_ERROR"), "get", "k").code).toBe(
      "ERR_NETWORK",
    );
    expect(keyVaultError(restError(undefined, undefined, "ETIMEDOUT"), "get", "k").code).toBe("ERR_TIMEOUT");
    const abort = new Error("The operation was aborted.");
    abort.name = "AbortError";
    expect(keyVaultError(abort, "release", "k")).toMatchObject({ code: "ERR_TIMEOUT", transient: true });
  });

  it("maps credential failures", () => {
    const unavailable = Object.assign(new Error("no identity"), { name: "CredentialUnavailableError" });
    expect(keyVaultError(unavailable, "get", "k").code).toBe("ERR_CONFIG");
    const failing = Object.assign(new Error("imds down"), { name: "AuthenticationError", statusCode: 503 });
    expect(keyVaultError(failing, "get", "k").code).toBe("ERR_UPSTREAM_UNAVAILABLE");
    const refused = Object.assign(new Error("bad secret"), { name: "AuthenticationError", statusCode: 401 });
    expect(keyVaultError(refused, "get", "k").code).toBe("ERR_CONFIG");
    expect(keyVaultError(new Error("odd"), "get", "k").code).toBe("ERR_IO");
    expect(keyVaultError("odd", "get", "k").code).toBe("ERR_IO");
    const shield = new ShieldError("ERR_POLICY_MALFORMED", "x");
    expect(keyVaultError(shield, "get", "k")).toBe(shield);
  });

  it("tells a permission refusal (RBAC, access policy) from a release-policy refusal", () => {
    const rbac = restError(403, { code: "Forbidden", message: "Caller is not authorized" });
    rbac.details = {
      error: {
        code: "Forbidden",
        message: "Caller is not authorized",
        innererror: { code: "ForbiddenByRbac" },
      },
    };
    expect(keyVaultError(rbac, "release", "k1").code).toBe("ERR_CONFIG");
    expect(keyVaultError(restError(403, { code: "AccessDenied", message: "no" }), "release", "k1").code).toBe(
      "ERR_CONFIG",
    );
    expect(
      keyVaultError(restError(403, { code: "Forbidden", message: "policy" }), "release", "k1").code,
    ).toBe("ERR_POLICY_DENIED");
  });

  it("keeps Key Vault's reason for a refused release but nothing token-like", () => {
    const token = `eyJhbGciOiJSUzI1NiJ9.${"eyJpc3MiOiJodHRwczovL2EifQ"}.${"c2lnbmF0dXJl".repeat(8)}`;
    const mapped = keyVaultError(
      restError(403, {
        code: "Forbidden",
        message: `Target ${token} does not meet the policy: x-ms-sevsnpvm-hostdata`,
      }),
      "release",
      "k1",
    );
    expect(mapped.code).toBe("ERR_POLICY_DENIED");
    expect(mapped.message).toContain("x-ms-sevsnpvm-hostdata");
    expect(mapped.message).not.toContain("eyJ");
    expect(sanitizeServiceMessage("word ".repeat(80))).toHaveLength(301);
    expect(sanitizeServiceMessage(`data ${"A".repeat(80)} end`)).toBe("data [data] end");
  });

  it("names Key Vault's error code but never an odd one verbatim", () => {
    expect(
      keyVaultError(restError(404, { code: "KeyNotFound", message: "m" }), "get", "k").message,
    ).toContain("KeyNotFound");
    expect(
      keyVaultError(restError(404, { code: "<script>", message: "m" }), "get", "k").message,
    ).not.toContain("<script>");
  });
});

describe("client options and requests", () => {
  it("checks the vault URL", () => {
    expect(checkVaultUrl("https://v.vault.azure.net/")).toEqual({
      origin: "https://v.vault.azure.net",
      local: false,
    });
    expect(checkVaultUrl("http://127.0.0.1:1234")).toEqual({ origin: "http://127.0.0.1:1234", local: true });
    expect(checkVaultUrl("http://localhost:1234").local).toBe(true);
    expect(() => checkVaultUrl("http://192.168.1.1")).toThrow(
      expect.objectContaining({ code: "ERR_CONFIG" }) as Error,
    );
    expect(() => checkVaultUrl("https://v.vault.azure.net/?x=1")).toThrow(ShieldError);
  });

  it("pins the API version, keeps retries small and relaxes transport checks only for loopback", () => {
    expect(keyClientOptions(false)).toMatchObject({
      serviceVersion: KEY_VAULT_API_VERSION,
      retryOptions: KEY_VAULT_RETRY_OPTIONS,
      allowInsecureConnection: false,
      disableChallengeResourceVerification: false,
    });
    expect(keyClientOptions(true)).toMatchObject({
      allowInsecureConnection: true,
      disableChallengeResourceVerification: true,
    });
    expect(keyClientOptions(false, { retryOptions: { maxRetries: 0 }, serviceVersion: "7.5" })).toMatchObject(
      {
        serviceVersion: "7.5",
        retryOptions: { maxRetries: 0, retryDelayInMs: 250 },
      },
    );
  });

  it("creates exportable HSM keys of each type with the release policy", () => {
    const rsa = createKeyRequest({ keyType: "RSA-HSM", releasePolicy: policy, keySize: 3072 }, 1000);
    expect(rsa).toMatchObject({
      method: "createRsaKey",
      options: { hsm: true, exportable: true, keySize: 3072 },
    });
    expect(
      createKeyRequest({ keyType: "EC-HSM", releasePolicy: policy, curve: "P-384" }, 1000),
    ).toMatchObject({
      method: "createEcKey",
      options: { curve: "P-384" },
    });
    const oct = createKeyRequest({ keyType: "oct-HSM", releasePolicy: policy }, 1000);
    expect(oct).toMatchObject({
      method: "createOctKey",
      options: { keySize: 256, requestOptions: { timeout: 1000 } },
    });
    const sdkPolicy = oct.options.releasePolicy!;
    expect(sdkPolicy).toMatchObject({ contentType: "application/json; charset=utf-8", immutable: false });
    expect(parseReleasePolicy(sdkPolicy.encodedPolicy!)).toEqual(policy);
    expect(() => createKeyRequest({ keyType: "RSA" as "RSA-HSM", releasePolicy: policy }, 1000)).toThrow(
      TypeError,
    );
  });

  it("passes the release algorithm, nonce and version", () => {
    expect(releaseKeyOptions({ encryption: "RSA_AES_KEY_WRAP_384", nonce: "n", version: "v1" }, 5)).toEqual({
      algorithm: "RSA_AES_KEY_WRAP_384",
      nonce: "n",
      version: "v1",
      requestOptions: { timeout: 5 },
    });
  });
});

describe("keyVersionInfoFromKeyVaultKey", () => {
  const key = (
    overrides: Partial<KeyVaultKey> = {},
    properties: Partial<KeyVaultKey["properties"]> = {},
  ): KeyVaultKey => ({
    name: "k1",
    id: "https://v.vault.azure.net/keys/k1/abc",
    keyType: "RSA-HSM",
    properties: {
      name: "k1",
      vaultUrl: "https://v.vault.azure.net",
      version: "abc",
      exportable: true,
      enabled: true,
      createdOn: new Date(1000),
      releasePolicy: releasePolicyForSdk(policy),
      ...properties,
    },
    ...overrides,
  });

  it("maps a key version and parses its policy back", () => {
    expect(keyVersionInfoFromKeyVaultKey(key())).toEqual({
      name: "k1",
      version: "abc",
      id: "https://v.vault.azure.net/keys/k1/abc",
      keyType: "RSA-HSM",
      exportable: true,
      enabled: true,
      releasePolicy: policy,
      createdOn: new Date(1000),
    });
    const bare = keyVersionInfoFromKeyVaultKey(key({}, { releasePolicy: undefined, exportable: undefined }));
    expect(bare.exportable).toBe(false);
    expect(bare.releasePolicy).toBeUndefined();
  });

  it("refuses a software key, a key without a version and a policy it cannot read", () => {
    expect(() => keyVersionInfoFromKeyVaultKey(key({ keyType: "RSA" }))).toThrow(
      expect.objectContaining({ code: "ERR_CONFIG" }) as Error,
    );
    expect(() => keyVersionInfoFromKeyVaultKey(key({}, { version: undefined }))).toThrow(
      expect.objectContaining({ code: "ERR_CONFIG" }) as Error,
    );
    expect(() =>
      keyVersionInfoFromKeyVaultKey(
        key({}, { releasePolicy: { encodedPolicy: Buffer.from('{"version":"1.0.0"}') } }),
      ),
    ).toThrow(expect.objectContaining({ code: "ERR_POLICY_MALFORMED" }) as Error);
  });
});
