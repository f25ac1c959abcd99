import { describe, expect, it } from "vitest";
import { createMaaClient, type MaaClientOptions } from "../../../adapters/maa/client.js";
import { ShieldError, type ShieldErrorCode } from "../../../core/errors.js";
import type { LogFields } from "../../../core/ports/logger.js";

const INSTANCE = "https://sharedeus.eus.attest.azure.net";
const TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJl";
const REPORT = "eyJTbnBSZXBvcnQiOiJBQUFBIn0"; // stands in for an envelope; the client does not read it
const runtimeData = Buffer.from('{"keys":[{"kid":"k"}]}');

interface Call {
  readonly url: string;
  readonly init: RequestInit;
}

/** A fetch that records calls and answers each with the next response (or throws). */
function fakeFetch(...answers: (Response | Error | ((init: RequestInit) => Promise<Response>))[]) {
  const calls: Call[] = [];
  const fetchImpl = (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    calls.push({
      url: typeof input === "string" ? input : input instanceof URL ? input.href : input.url,
      init: init ?? {},
    });
    const next = answers.shift() ?? new Error("no answer left");
    if (next instanceof Error) return Promise.reject(next);
    if (typeof next === "function") return next(init ?? {});
    return Promise.resolve(next);
  };
  const typed: typeof fetch = fetchImpl;
  return { calls, fetch: typed };
}

const jsonResponse = (status: number, body: unknown, headers: Record<string, string> = {}) =>
  new Response(typeof body === "string" ? body : JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json", ...headers },
  });

function client(answers: Parameters<typeof fakeFetch>, options: Partial<MaaClientOptions> = {}) {
  const fake = fakeFetch(...answers);
  return {
    calls: fake.calls,
    client: createMaaClient({ instanceUrl: INSTANCE, fetch: fake.fetch, ...options }),
  };
}

async function failure(
  promise: Promise<unknown>,
  code: ShieldErrorCode,
  transient: boolean,
): Promise<ShieldError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ShieldError);
  expect({ code: (error as ShieldError).code, transient: (error as ShieldError).transient }).toEqual({
    code,
    transient,
  });
  return error as ShieldError;
}

describe("MAA client: requests", () => {
  it("posts MAA's AttestSevSnpVmRequest: report, base64url runtime data with dataType, nonce as a string", async () => {
    const { calls, client: maa } = client([jsonResponse(200, { token: TOKEN })]);
    expect(await maa.attestSevSnp({ report: REPORT, runtimeData, nonce: "12345" })).toBe(TOKEN);
    expect(calls).toHaveLength(1);
    const { url, init } = calls[0]!;
    expect(url).toBe(`${INSTANCE}/attest/SevSnpVm?api-version=2022-08-01`);
    expect(init.method).toBe("POST");
    expect(init.redirect).toBe("manual");
    expect(init.headers).toMatchObject({ "Content-Type": "application/json", Accept: "application/json" });
    expect(Object.keys(init.headers as object)).not.toContain("Authorization");
    expect(JSON.parse(init.body as string)).toEqual({
      report: REPORT,
      runtimeData: { data: runtimeData.toString("base64url"), dataType: "JSON" },
      nonce: "12345",
    });
  });

  it("posts MAA's AttestSgxEnclaveRequest with the quote in base64url and the caller's dataType", async () => {
    const quote = Buffer.from([0xfb, 0xff, 0xfe, 0x01]);
    const { calls, client: maa } = client([jsonResponse(200, { token: TOKEN })], {
      apiVersion: "2020-10-01",
    });
    await maa.attestSgx({ quote, runtimeData, runtimeDataType: "Binary" });
    expect(calls[0]!.url).toBe(`${INSTANCE}/attest/SgxEnclave?api-version=2020-10-01`);
    expect(JSON.parse(calls[0]!.init.body as string)).toEqual({
      quote: "-__-AQ",
      runtimeData: { data: runtimeData.toString("base64url"), dataType: "Binary" },
    });
  });

  it("fetches /certs and the OpenID metadata with GET and no api-version", async () => {
    const certs = { keys: [{ kid: "k", kty: "RSA", x5c: ["AAAA"] }] };
    const { calls, client: maa } = client([
      jsonResponse(200, certs),
      jsonResponse(200, { issuer: INSTANCE }),
    ]);
    expect(await maa.getSigningCertificates()).toEqual(certs);
    expect(await maa.getOpenIdConfiguration()).toEqual({ issuer: INSTANCE });
    expect(calls.map((c) => [c.init.method, c.url])).toEqual([
      ["GET", `${INSTANCE}/certs`],
      ["GET", `${INSTANCE}/.well-known/openid-configuration`],
    ]);
  });

  it("sends a bearer token for the attestation scope when given a credential", async () => {
    const scopes: string[] = [];
    const credential = {
      getToken: (scope: string) => {
        scopes.push(scope);
        return Promise.resolve({ token: "aad-token" });
      },
    };
    const { calls, client: maa } = client([jsonResponse(200, { token: TOKEN })], { credential });
    await maa.attestSevSnp({ report: REPORT, runtimeData });
    expect(scopes).toEqual(["https://attest.azure.net/.default"]);
    expect(calls[0]!.init.headers).toMatchObject({ Authorization: "Bearer aad-token" });
  });

  it("reports a credential that cannot give a token as ERR_CONFIG", async () => {
    for (const getToken of [() => Promise.reject(new Error("no identity")), () => Promise.resolve(null)]) {
      const { calls, client: maa } = client([], { credential: { getToken } });
      await failure(maa.attestSevSnp({ report: REPORT, runtimeData }), "ERR_CONFIG", false);
      expect(calls).toHaveLength(0);
    }
  });

  it("names its issuer by the instance origin and refuses instance URLs it should not call", () => {
    expect(createMaaClient({ instanceUrl: `${INSTANCE}/` }).issuer).toBe(INSTANCE);
    expect(createMaaClient({ instanceUrl: "http://127.0.0.1:8080" }).issuer).toBe("http://127.0.0.1:8080");
    for (const instanceUrl of [
      "http://sharedeus.eus.attest.azure.net",
      `${INSTANCE}/attest`,
      `${INSTANCE}?x=1`,
      "https://user:pw@example.net",
      "not a url",
    ]) {
      expect(() => createMaaClient({ instanceUrl })).toThrow(
        expect.objectContaining({ code: "ERR_CONFIG" }) as Error,
      );
    }
    expect(() => createMaaClient({ instanceUrl: INSTANCE, timeoutMs: 0 })).toThrow(TypeError);
    expect(() => createMaaClient({ instanceUrl: INSTANCE, apiVersion: "v1" })).toThrow(TypeError);
  });

  it("refuses caller misuse with TypeError", async () => {
    const { client: maa } = client([]);
    await expect(maa.attestSevSnp({ report: "", runtimeData })).rejects.toThrow(TypeError);
    await expect(maa.attestSgx({ quote: "q" as unknown as Uint8Array, runtimeData })).rejects.toThrow(
      TypeError,
    );
    await expect(
      maa.attestSevSnp({ report: REPORT, runtimeData: [1] as unknown as Uint8Array }),
    ).rejects.toThrow(TypeError);
  });
});

describe("MAA client: failures", () => {
  const attest = (answer: Response | Error | ((init: RequestInit) => Promise<Response>), options = {}) => {
    const { calls, client: maa } = client([answer], options);
    return { calls, result: maa.attestSevSnp({ report: REPORT, runtimeData }) };
  };

  it.each([
    [429, "ERR_THROTTLED", true],
    [408, "ERR_TIMEOUT", true],
    [500, "ERR_UPSTREAM_UNAVAILABLE", true],
    [502, "ERR_UPSTREAM_UNAVAILABLE", true],
    [503, "ERR_UPSTREAM_UNAVAILABLE", true],
    [401, "ERR_CONFIG", false],
    [403, "ERR_CONFIG", false],
    [404, "ERR_CONFIG", false],
    [302, "ERR_CONFIG", false],
    [413, "ERR_INPUT_TOO_LARGE", false],
    [400, "ERR_EVIDENCE_MALFORMED", false],
    [422, "ERR_EVIDENCE_MALFORMED", false],
  ] as const)("maps HTTP %i to %s (transient: %s), without retrying", async (status, code, transient) => {
    const { calls, result } = attest(jsonResponse(status, { error: { code: "SomeCode", message: "m" } }));
    await failure(result, code, transient);
    expect(calls).toHaveLength(1);
  });

  it("carries MAA's error code in a refusal, never MAA's message", async () => {
    const { result } = attest(
      jsonResponse(400, {
        error: { code: "InvalidParameter", message: "Report data mismatch for AAAAEVIDENCE" },
      }),
    );
    const error = await failure(result, "ERR_EVIDENCE_MALFORMED", false);
    expect(error.message).toContain("InvalidParameter");
    expect(error.message).not.toContain("AAAAEVIDENCE");
  });

  it("adopts the failing check's code from the local server's refusals, but never a transient one", async () => {
    const refusedWith = async (message: string) => {
      const { result } = attest(jsonResponse(400, { error: { code: "InvalidParameter", message } }));
      return result.then(
        () => undefined,
        (e: unknown) => (e as ShieldError).code,
      );
    };
    expect(await refusedWith("ERR_EVIDENCE_UNTRUSTED_ROOT: root is not trusted")).toBe(
      "ERR_EVIDENCE_UNTRUSTED_ROOT",
    );
    expect(await refusedWith("ERR_POLICY_DENIED: debug")).toBe("ERR_POLICY_DENIED");
    expect(await refusedWith("ERR_THROTTLED: later")).toBe("ERR_EVIDENCE_MALFORMED");
    expect(await refusedWith("ERR_TOKEN_SIGNATURE: x")).toBe("ERR_EVIDENCE_MALFORMED");
    expect(await refusedWith("ERR_NOT_A_CODE: x")).toBe("ERR_EVIDENCE_MALFORMED");
  });

  it("ignores an error code that is not a plain identifier", async () => {
    const { result } = attest(jsonResponse(400, { error: { code: "<script>", message: "m" } }));
    expect((await failure(result, "ERR_EVIDENCE_MALFORMED", false)).message).not.toContain("<script>");
  });

  it("maps a refused connection to ERR_NETWORK and a missed deadline to ERR_TIMEOUT", async () => {
    await failure(attest(new TypeError("fetch failed")).result, "ERR_NETWORK", true);
    const hang = (init: RequestInit) =>
      new Promise<Response>((_resolve, reject) => {
        init.signal?.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")));
      });
    await failure(attest(hang, { timeoutMs: 20 }).result, "ERR_TIMEOUT", true);
  });

  it("times out a body that stops arriving", async () => {
    const stalled = (init: RequestInit) => {
      const body = new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(new TextEncoder().encode('{"token":'));
          init.signal?.addEventListener("abort", () =>
            controller.error(new DOMException("aborted", "AbortError")),
          );
        },
      });
      return Promise.resolve(new Response(body, { status: 200 }));
    };
    await failure(attest(stalled, { timeoutMs: 20 }).result, "ERR_TIMEOUT", true);
  });

  it("refuses answers that are too large, declared or streamed", async () => {
    const big = JSON.stringify({ token: TOKEN, padding: "x".repeat(2048) });
    const declared = jsonResponse(200, big, { "Content-Length": String(big.length) });
    await failure(attest(declared, { maxResponseBytes: 1024 }).result, "ERR_TOKEN_MALFORMED", false);
    const streamed = new Response(
      new ReadableStream<Uint8Array>({
        start(controller) {
          for (let i = 0; i < 4; i++) controller.enqueue(new Uint8Array(512).fill(0x20));
          controller.close();
        },
      }),
      { status: 200 },
    );
    await failure(attest(streamed, { maxResponseBytes: 1024 }).result, "ERR_TOKEN_MALFORMED", false);
    const { client: maa } = client([jsonResponse(200, big)], { maxResponseBytes: 1024 });
    await failure(maa.getSigningCertificates(), "ERR_JWKS_MALFORMED", false);
  });

  it("refuses a success that does not hold a compact JWT", async () => {
    for (const body of ["not json", { token: 5 }, { jwt: TOKEN }, { token: "a.b" }, { token: "a.b.c d" }]) {
      await failure(attest(jsonResponse(200, body)).result, "ERR_TOKEN_MALFORMED", false);
    }
  });

  it("maps failures of /certs like the rest, with a 400 as misconfiguration", async () => {
    const { client: maa } = client([
      jsonResponse(503, {}),
      jsonResponse(400, {}),
      jsonResponse(200, "<html>"),
    ]);
    await failure(maa.getSigningCertificates(), "ERR_UPSTREAM_UNAVAILABLE", true);
    await failure(maa.getSigningCertificates(), "ERR_CONFIG", false);
    await failure(maa.getSigningCertificates(), "ERR_JWKS_MALFORMED", false);
  });

  it("logs operation, status and hashes; never the evidence or the token", async () => {
    const lines: { message: string; fields?: LogFields }[] = [];
    const logger = (_level: string, message: string, fields?: LogFields) =>
      lines.push({ message, ...(fields ? { fields } : {}) });
    const { client: maa } = client(
      [
        jsonResponse(200, { token: TOKEN }),
        jsonResponse(503, { error: { code: "ServiceUnavailable", message: "m" } }),
      ],
      { logger },
    );
    await maa.attestSevSnp({ report: REPORT, runtimeData });
    await maa.attestSevSnp({ report: REPORT, runtimeData }).catch(() => undefined);
    const text = JSON.stringify(lines);
    expect(text).not.toContain(REPORT);
    expect(text).not.toContain(TOKEN);
    expect(text).not.toContain(runtimeData.toString("base64url"));
    expect(
      lines.map((l) => [l.fields?.operation, l.fields?.status, l.fields?.code, l.fields?.maaCode]),
    ).toEqual([
      ["attestSevSnpVm", 200, undefined, undefined],
      ["attestSevSnpVm", 503, "ERR_UPSTREAM_UNAVAILABLE", "ServiceUnavailable"],
    ]);
    expect(lines[0]!.fields?.tokenSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(lines[1]!.fields?.evidenceSha256).toBe(lines[0]!.fields?.evidenceSha256);
  });
});
