/**
 * Hostile requests to the deployments webhook (`POST /api/deployments`), through the webhook
 * use case over the real Key Vault SDKs against the local Key Vault-compatible server and a test
 * OIDC issuer on loopback (test/support/deploy.ts). Every case must end in its 4xx and typed
 * code and change nothing: each key version's release policy reads back the same, no rollout is
 * recorded or queued, and the local Key Vault saw no release call.
 */
import { createHmac, randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ShieldErrorCode } from "../../core/errors.js";
import { DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER } from "../../core/deploy/authenticate.js";
import type { PipelineRule } from "../../core/deploy/authenticate.js";
import { canonicalPolicyForm } from "../../core/rollout/policy-edit.js";
import {
  AUDIENCE,
  NEW_HOST_DATA,
  REPOSITORY,
  startDeployHarness,
  type DeployHarness,
} from "../support/deploy.js";

let h: DeployHarness;
let keyName: string;
/** Filled once the key exists: its pipeline is REPOSITORY on main. */
const allow: Record<string, PipelineRule[]> = {};

const body = (overrides: Record<string, unknown> = {}) =>
  JSON.stringify({
    keys: [keyName],
    add: [{ tee: "sevsnp", hostData: NEW_HOST_DATA }],
    graceSeconds: 3600,
    ...overrides,
  });

/** A request signed correctly over `raw`. */
const signed = (raw: string | Buffer, options: Parameters<DeployHarness["signed"]>[1] = {}) =>
  Promise.resolve({ raw, headers: h.signed(raw, options) });

const bearer = async (token: string | Promise<string>) => ({
  raw: body({ dryRun: true }),
  headers: { authorization: `Bearer ${await token}`, "content-type": "application/json" },
});

const b64 = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");

/** The claims a GitHub token for REPOSITORY carries, unsigned. */
function pipelineClaims(): Record<string, unknown> {
  const now = Math.floor(h.clock.now().getTime() / 1000);
  return {
    iss: h.oidcIssuer,
    aud: AUDIENCE,
    sub: `repo:${REPOSITORY}:ref:refs/heads/main`,
    repository: REPOSITORY,
    ref: "refs/heads/main",
    iat: now - 10,
    exp: now + 300,
  };
}

type Request = { raw: string | Buffer; headers: Record<string, string> };

interface WebhookCase {
  readonly name: string;
  readonly status: number;
  readonly code: ShieldErrorCode;
  readonly input: () => Request | Promise<Request>;
}

const cases: WebhookCase[] = [
  {
    name: "bad signature (another secret)",
    status: 401,
    code: "ERR_WEBHOOK_SIGNATURE",
    input: () => signed(body(), { secret: "not-the-secret" }),
  },
  {
    name: "signature over another body",
    status: 401,
    code: "ERR_WEBHOOK_SIGNATURE",
    input: () => ({ raw: body({ graceSeconds: 60 }), headers: h.signed(body()) }),
  },
  {
    name: "signature over the body with another timestamp",
    status: 401,
    code: "ERR_WEBHOOK_SIGNATURE",
    input: () => {
      const headers = h.signed(body(), { at: new Date(h.clock.now().getTime() - 10_000) });
      return {
        raw: body(),
        headers: { ...headers, [TIMESTAMP_HEADER]: String(Math.floor(h.clock.now().getTime() / 1000)) },
      };
    },
  },
  {
    name: "signature of the wrong length",
    status: 401,
    code: "ERR_WEBHOOK_UNAUTHENTICATED",
    input: () => ({ raw: body(), headers: { ...h.signed(body()), [SIGNATURE_HEADER]: "sha256=abcd" } }),
  },
  {
    name: "signature in upper-case hex with another scheme name",
    status: 401,
    code: "ERR_WEBHOOK_UNAUTHENTICATED",
    input: () => {
      const headers = h.signed(body());
      return {
        raw: body(),
        headers: { ...headers, [SIGNATURE_HEADER]: headers[SIGNATURE_HEADER]!.replace("sha256=", "sha1=") },
      };
    },
  },
  {
    name: "stale timestamp (six minutes old)",
    status: 401,
    code: "ERR_WEBHOOK_TIMESTAMP",
    input: () => signed(body(), { at: new Date(h.clock.now().getTime() - 360_000) }),
  },
  {
    name: "timestamp from the future (six minutes ahead)",
    status: 401,
    code: "ERR_WEBHOOK_TIMESTAMP",
    input: () => signed(body(), { at: new Date(h.clock.now().getTime() + 360_000) }),
  },
  {
    name: "timestamp that is not a number",
    status: 401,
    code: "ERR_WEBHOOK_UNAUTHENTICATED",
    input: () => ({ raw: body(), headers: { ...h.signed(body()), [TIMESTAMP_HEADER]: "1e10" } }),
  },
  {
    name: "no delivery id",
    status: 401,
    code: "ERR_WEBHOOK_UNAUTHENTICATED",
    input: () => {
      const { [DELIVERY_HEADER]: _delivery, ...headers } = h.signed(body());
      return { raw: body(), headers };
    },
  },
  {
    name: "replay of a delivery that was accepted (a dry run) moments ago",
    status: 409,
    code: "ERR_WEBHOOK_REPLAYED",
    input: async () => {
      const raw = body({ dryRun: true });
      const headers = h.signed(raw, { deliveryId: randomUUID() });
      const first = await h.handler.post(headers, Buffer.from(raw));
      expect(first.status).toBe(200);
      return { raw, headers };
    },
  },
  {
    name: "no credentials at all",
    status: 401,
    code: "ERR_WEBHOOK_UNAUTHENTICATED",
    input: () => Promise.resolve({ raw: body(), headers: { "content-type": "application/json" } }),
  },
  {
    name: "oversized body (20 KB), correctly signed",
    status: 413,
    code: "ERR_INPUT_TOO_LARGE",
    input: () => signed(body({ padding: "x".repeat(20_000) })),
  },
  {
    name: "oversized body, unsigned (refused before anything reads it)",
    status: 413,
    code: "ERR_INPUT_TOO_LARGE",
    input: () => Promise.resolve({ raw: "x".repeat(1024 * 1024), headers: {} }),
  },
  {
    name: "host data of the wrong length (31 bytes)",
    status: 422,
    code: "ERR_MESSAGE_SCHEMA",
    input: () => signed(body({ add: [{ tee: "sevsnp", hostData: "ab".repeat(31) }] })),
  },
  {
    name: "host data one hex digit too long",
    status: 422,
    code: "ERR_MESSAGE_SCHEMA",
    input: () => signed(body({ add: [{ tee: "sevsnp", hostData: `${NEW_HOST_DATA}0` }] })),
  },
  {
    name: "MRENCLAVE of the wrong length",
    status: 422,
    code: "ERR_MESSAGE_SCHEMA",
    input: () => signed(body({ add: [{ tee: "sgx", mrenclave: "cd".repeat(48) }] })),
  },
  {
    name: "__proto__ in the body",
    status: 422,
    code: "ERR_MESSAGE_SCHEMA",
    input: () => signed(body().replace(/^\{/, '{"__proto__":{"dryRun":false,"admin":true},')),
  },
  {
    name: "unknown version 2",
    status: 422,
    code: "ERR_MESSAGE_SCHEMA",
    input: () => signed(body({ version: 2 })),
  },
  {
    name: "body not JSON, correctly signed",
    status: 400,
    code: "ERR_INPUT_MALFORMED",
    input: () => signed("{keys: nope"),
  },
  {
    name: "body not UTF-8, correctly signed",
    status: 400,
    code: "ERR_INPUT_MALFORMED",
    input: () => signed(Buffer.from([0x7b, 0xc3, 0x28, 0x7d])),
  },
  {
    name: "grace period below the minimum",
    status: 422,
    code: "ERR_MESSAGE_SCHEMA",
    input: () => signed(body({ graceSeconds: 1 })),
  },
  {
    name: "a key Shield does not manage",
    status: 422,
    code: "ERR_DEPLOY_UNKNOWN_KEY",
    input: () => signed(body({ keys: ["no-such-key"] })),
  },
  {
    name: "OIDC token of a foreign repository",
    status: 403,
    code: "ERR_WEBHOOK_NOT_ALLOWED",
    input: () => bearer(h.token({ repository: "mallory/orders" })),
  },
  {
    name: "OIDC token of the right repository on another branch",
    status: 403,
    code: "ERR_WEBHOOK_NOT_ALLOWED",
    input: () => bearer(h.token({ ref: "refs/heads/feature" })),
  },
  {
    name: "OIDC token signed by a key the issuer does not publish",
    status: 401,
    code: "ERR_WEBHOOK_TOKEN",
    input: () => bearer(h.token({}, { foreignKey: true })),
  },
  {
    name: "OIDC token with alg none",
    status: 401,
    code: "ERR_WEBHOOK_TOKEN",
    input: () => bearer(`${b64({ alg: "none", typ: "JWT" })}.${b64(pipelineClaims())}.`),
  },
  {
    name: "OIDC token HS256-signed",
    status: 401,
    code: "ERR_WEBHOOK_TOKEN",
    input: () => {
      const input = `${b64({ alg: "HS256", typ: "JWT", kid: "test-key-1" })}.${b64(pipelineClaims())}`;
      return bearer(`${input}.${createHmac("sha256", "guess").update(input).digest("base64url")}`);
    },
  },
  {
    name: "OIDC token expired",
    status: 401,
    code: "ERR_WEBHOOK_TOKEN_EXPIRED",
    input: () => bearer(h.token({}, { expiresInSeconds: -120 })),
  },
  {
    name: "OIDC token for another audience",
    status: 401,
    code: "ERR_WEBHOOK_TOKEN_AUDIENCE",
    input: () => bearer(h.token({}, { audience: "api://AzureADTokenExchange" })),
  },
  {
    name: "Authorization header that is not a Bearer token",
    status: 401,
    code: "ERR_WEBHOOK_UNAUTHENTICATED",
    input: () => Promise.resolve({ raw: body(), headers: { authorization: "Basic YWRtaW46YWRtaW4=" } }),
  },
];

let before: string[];
const releases = () => h.engine.stats().calls;

async function snapshot(name: string): Promise<string[]> {
  return (await h.keys.listVersions(name)).map(
    (v) => `${v.version}:${v.releasePolicy === undefined ? "-" : canonicalPolicyForm(v.releasePolicy)}`,
  );
}

beforeAll(async () => {
  h = await startDeployHarness({ allow });
  keyName = await h.createKey(2);
  allow[keyName] = [{ repository: REPOSITORY, ref: "refs/heads/main" }];
  before = await snapshot(keyName);
}, 60_000);

afterAll(async () => {
  await h?.close();
});

describe("the harness itself", () => {
  it("accepts a correctly signed dry run and a dry run with the allowed pipeline's token", async () => {
    const raw = body({ dryRun: true });
    expect((await h.handler.post(h.signed(raw), Buffer.from(raw))).status).toBe(200);
    const oidc = await bearer(h.token());
    expect((await h.handler.post(oidc.headers, Buffer.from(oidc.raw))).status).toBe(200);
    expect(await snapshot(keyName)).toEqual(before);
  });
});

describe("deployments webhook: hostile requests get their 4xx and change nothing", () => {
  for (const hostile of cases) {
    it(`${hostile.name} → ${hostile.status} ${hostile.code}`, async () => {
      const { raw, headers } = await hostile.input();
      const calls = releases();
      const answer = await h.handler.post(headers, Buffer.isBuffer(raw) ? raw : Buffer.from(raw));
      expect(answer.status).toBe(hostile.status);
      expect((answer.body["error"] as { code: string }).code).toBe(hostile.code);
      expect(await snapshot(keyName)).toEqual(before);
      expect(await h.policyState.getKeyPolicy(keyName)).toBeUndefined();
      expect(await h.policyState.listDeployments()).toEqual([]);
      expect(h.queued).toEqual([]);
      expect(releases()).toBe(calls);
    });
  }
});
