import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLocalAttestationEngine } from "../../adapters/local/maa/engine.js";
import { startLocalMaaServer, type LocalMaaServer } from "../../adapters/local/maa/server.js";
import { createMaaClient } from "../../adapters/maa/client.js";
import { ShieldError } from "../../core/errors.js";
import { retrying } from "../../core/retry.js";
import { createMaaTokenIssuer, staticSigningKeys, validateMaaToken } from "../../core/token/index.js";
import {
  attestationFixtures,
  defineAttestationServiceContract,
  expectRefusal,
  sha256,
  type AttestationServiceSetup,
} from "./attestation-service.contract.js";

function startServer(setup: AttestationServiceSetup, maxBodyBytes?: number): Promise<LocalMaaServer> {
  return startLocalMaaServer({
    engine: async (url) =>
      createLocalAttestationEngine({ issuer: await createMaaTokenIssuer({ issuer: url }), ...setup }),
    ...(maxBodyBytes === undefined ? {} : { maxBodyBytes }),
  });
}

defineAttestationServiceContract(
  "Azure MAA client over HTTP, against the local MAA server",
  async (setup) => {
    const server = await startServer(setup);
    return { port: createMaaClient({ instanceUrl: server.url }), close: () => server.close() };
  },
);

describe("MAA over HTTP: transport failures and the REST surface", () => {
  const f = attestationFixtures();
  let server: LocalMaaServer;
  let small: LocalMaaServer;

  beforeAll(async () => {
    server = await startServer(f.setup);
    small = await startServer(f.setup, 64 * 1024);
  });

  afterAll(async () => {
    await server?.close();
    await small?.close();
  });

  const request = () => ({
    report: f.snpReport(),
    runtimeData: f.runtimeData,
    runtimeDataType: "JSON" as const,
  });

  async function transientFailure(promise: Promise<unknown>): Promise<ShieldError> {
    const error = await promise.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ShieldError);
    expect((error as ShieldError).transient).toBe(true);
    return error as ShieldError;
  }

  it("reports a 503 as a transient ERR_UPSTREAM_UNAVAILABLE, and retrying() then gets the token", async () => {
    const client = createMaaClient({ instanceUrl: server.url });
    server.failNext(503, 1);
    expect((await transientFailure(client.attestSevSnp(request()))).code).toBe("ERR_UPSTREAM_UNAVAILABLE");

    server.failNext(503, 2);
    const retries: string[] = [];
    const patient = retrying(client, {
      attempts: 4,
      sleep: () => Promise.resolve(),
      onRetry: (_attempt, error) => retries.push((error as ShieldError).code),
    });
    const token = await patient.attestSevSnp(request());
    expect(retries).toEqual(["ERR_UPSTREAM_UNAVAILABLE", "ERR_UPSTREAM_UNAVAILABLE"]);
    const validated = await validateMaaToken(token, {
      keys: staticSigningKeys(await client.getSigningCertificates()),
      issuer: client.issuer,
      at: f.setup.clock.now(),
      runtimeData: f.runtimeData,
    });
    expect(validated.attestationType).toBe("sevsnpvm");
  });

  it("reports a 429 as a transient ERR_THROTTLED", async () => {
    const client = createMaaClient({ instanceUrl: server.url });
    server.failNext(429, 1);
    expect(
      (await transientFailure(client.attestSgx({ quote: f.sgxQuote(), runtimeData: f.runtimeData }))).code,
    ).toBe("ERR_THROTTLED");
  });

  it("reports a server slower than timeoutMs as a transient ERR_TIMEOUT", async () => {
    const client = createMaaClient({ instanceUrl: server.url, timeoutMs: 100 });
    server.delayNext(2_000);
    expect((await transientFailure(client.attestSevSnp(request()))).code).toBe("ERR_TIMEOUT");
  });

  it("reports an unreachable instance as a transient ERR_NETWORK", async () => {
    const gone = await startServer(f.setup);
    await gone.close();
    const client = createMaaClient({ instanceUrl: gone.url });
    expect((await transientFailure(client.getSigningCertificates())).code).toBe("ERR_NETWORK");
  });

  it("answers an oversized body with 413, which the client reports as ERR_INPUT_TOO_LARGE", async () => {
    const client = createMaaClient({ instanceUrl: small.url });
    const runtimeData = Buffer.from(JSON.stringify({ padding: "x".repeat(100 * 1024) }));
    await expectRefusal(client.attestSevSnp({ ...request(), runtimeData }), "ERR_INPUT_TOO_LARGE");
    // A body that declares itself far beyond the limit is answered without being read.
    const response = await fetch(`${small.url}/attest/SevSnpVm?api-version=2022-08-01`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: "x".repeat(1024 * 1024),
    });
    expect(response.status).toBe(413);
    expect(await response.json()).toMatchObject({ error: { code: "RequestEntityTooLarge" } });
  });

  it("requires api-version on attest calls, as MAA does", async () => {
    const response = await fetch(`${server.url}/attest/SevSnpVm`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ report: f.snpReport(), runtimeData: { data: "", dataType: "Binary" } }),
    });
    expect(response.status).toBe(400);
    expect(await response.json()).toEqual({
      error: { code: "InvalidParameter", message: "the api-version query parameter is required" },
    });
  });

  it("answers a body that is not JSON with 400 InvalidParameter", async () => {
    const response = await fetch(`${server.url}/attest/SgxEnclave?api-version=2022-08-01`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: "{not json",
    });
    expect(response.status).toBe(400);
    expect(await response.json()).toMatchObject({ error: { code: "InvalidParameter" } });
  });

  it("answers unknown paths with 404 and wrong methods with 405", async () => {
    const missing = await fetch(`${server.url}/attest/TdxVm?api-version=2022-08-01`, {
      method: "POST",
      body: "{}",
    });
    expect(missing.status).toBe(404);
    expect(await missing.json()).toMatchObject({ error: { code: "NotFound" } });
    const wrong = await fetch(`${server.url}/attest/SevSnpVm?api-version=2022-08-01`);
    expect(wrong.status).toBe(405);
    expect(wrong.headers.get("allow")).toBe("POST");
    await wrong.arrayBuffer();
  });

  it("puts the failing check's code in a 400 refusal, and no evidence", async () => {
    const report = f.snpReport();
    const response = await fetch(`${server.url}/attest/SevSnpVm?api-version=2022-08-01`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ report, runtimeData: { data: "e30", dataType: "JSON" } }),
    });
    expect(response.status).toBe(400);
    const text = await response.text();
    const body = JSON.parse(text) as { error: { code: string; message: string } };
    expect(body.error.code).toBe("InvalidParameter");
    expect(body.error.message).toMatch(/^ERR_EVIDENCE_REPORT_DATA: /);
    expect(text).not.toContain(report.slice(0, 64));

    const client = createMaaClient({ instanceUrl: server.url });
    const error = await expectRefusal(
      client.attestSevSnp({ report, runtimeData: Buffer.from("{}") }),
      "ERR_EVIDENCE_REPORT_DATA",
    );
    expect(error.message).toContain("InvalidParameter");
  });

  it("serves /certs as application/json and OpenID metadata in snake_case", async () => {
    const certs = await fetch(`${server.url}/certs`);
    expect(certs.headers.get("content-type")).toMatch(/^application\/json/);
    expect(await certs.json()).toEqual(await server.engine.getSigningCertificates());
    const client = createMaaClient({ instanceUrl: `${server.url}/` });
    expect(client.issuer).toBe(server.url);
    expect(await client.getOpenIdConfiguration()).toMatchObject({
      issuer: server.url,
      jwks_uri: `${server.url}/certs`,
      id_token_signing_alg_values_supported: ["RS256"],
    });
  });

  it("binds the token issuer to the URL clients use", async () => {
    const client = createMaaClient({ instanceUrl: server.url });
    const token = await client.attestSgx({
      quote: f.sgxQuote({ reportData: sha256(f.runtimeData) }),
      runtimeData: f.runtimeData,
    });
    const payload = JSON.parse(Buffer.from(token.split(".")[1]!, "base64url").toString()) as { iss: string };
    expect(payload.iss).toBe(server.url);
  });
});
