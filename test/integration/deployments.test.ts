/**
 * The deployment webhook, the policy-update step and the retirement step over the real Key Vault
 * SDKs (keys and secrets) against the local Key Vault-compatible server, with a test OIDC issuer
 * on loopback standing in for GitHub Actions'. Every refusal is checked to have changed nothing:
 * each version's release policy is read back through the SDK and compared, and the rollout state
 * is empty.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { canonicalPolicyForm } from "../../core/rollout/policy-edit.js";
import { policyMeasurements } from "../../core/policy/index.js";
import {
  AUDIENCE,
  NEW_HOST_DATA,
  OLD_HOST_DATA,
  REPOSITORY,
  startDeployHarness,
  type DeployHarness,
} from "../support/deploy.js";

let h: DeployHarness;
let keyName: string;
let immutableVersion: string;

const body = (overrides: Record<string, unknown> = {}) =>
  JSON.stringify({
    keys: [keyName],
    add: [{ tee: "sevsnp", hostData: NEW_HOST_DATA }],
    graceSeconds: 3600,
    ...overrides,
  });

async function snapshot(name: string): Promise<string[]> {
  return (await h.keys.listVersions(name)).map(
    (v) => `${v.version}:${v.releasePolicy === undefined ? "-" : canonicalPolicyForm(v.releasePolicy)}`,
  );
}

async function hostDataOf(name: string, version: string): Promise<string[]> {
  const info = await h.keys.getKey(name, version);
  return policyMeasurements(info.releasePolicy!).map((m) => m.value);
}

beforeAll(async () => {
  h = await startDeployHarness({ allow: {} });
  keyName = await h.createKey(2);
  immutableVersion = await h.addImmutableVersion(keyName);
});

afterAll(async () => {
  await h?.close();
});

describe("POST /api/deployments refuses, with a typed 4xx, and changes nothing", () => {
  let before: string[];
  beforeAll(async () => {
    before = await snapshot(keyName);
  });

  const expectUnchanged = async () => {
    expect(await snapshot(keyName)).toEqual(before);
    expect(await h.policyState.getKeyPolicy(keyName)).toBeUndefined();
    expect(await h.policyState.listDeployments()).toEqual([]);
    expect(h.queued).toEqual([]);
  };

  const cases: [
    string,
    () => Promise<{ headers: Record<string, string>; raw: string | Buffer }>,
    number,
    string,
  ][] = [
    [
      "a bad signature",
      () => Promise.resolve({ raw: body(), headers: h.signed(body(), { secret: "not-the-secret" }) }),
      401,
      "ERR_WEBHOOK_SIGNATURE",
    ],
    [
      "a signature over another body",
      () => Promise.resolve({ raw: body({ graceSeconds: 60 }), headers: h.signed(body()) }),
      401,
      "ERR_WEBHOOK_SIGNATURE",
    ],
    [
      "a stale timestamp (six minutes old)",
      () =>
        Promise.resolve({
          raw: body(),
          headers: h.signed(body(), { at: new Date(h.clock.now().getTime() - 360_000) }),
        }),
      401,
      "ERR_WEBHOOK_TIMESTAMP",
    ],
    [
      "no credentials at all",
      () => Promise.resolve({ raw: body(), headers: {} }),
      401,
      "ERR_WEBHOOK_UNAUTHENTICATED",
    ],
    [
      "an OIDC token from another repository",
      async () => ({
        raw: body(),
        headers: { authorization: `Bearer ${await h.token({ repository: "mallory/orders" })}` },
      }),
      403,
      "ERR_WEBHOOK_NOT_ALLOWED",
    ],
    [
      "an OIDC token for another audience",
      async () => ({
        raw: body(),
        headers: {
          authorization: `Bearer ${await h.token({}, { audience: "api://AzureADTokenExchange" })}`,
        },
      }),
      401,
      "ERR_WEBHOOK_TOKEN_AUDIENCE",
    ],
    [
      "an expired OIDC token",
      async () => ({
        raw: body(),
        headers: { authorization: `Bearer ${await h.token({}, { expiresInSeconds: -120 })}` },
      }),
      401,
      "ERR_WEBHOOK_TOKEN_EXPIRED",
    ],
    [
      "an OIDC token signed by a key the issuer does not publish",
      async () => ({
        raw: body(),
        headers: { authorization: `Bearer ${await h.token({}, { foreignKey: true })}` },
      }),
      401,
      "ERR_WEBHOOK_TOKEN",
    ],
    [
      "a malformed body (not JSON), correctly signed",
      () => Promise.resolve({ raw: "{keys: nope", headers: h.signed("{keys: nope") }),
      400,
      "ERR_INPUT_MALFORMED",
    ],
    [
      "an oversized body",
      () => {
        const raw = body({ padding: "x".repeat(20_000) });
        return Promise.resolve({ raw, headers: h.signed(raw) });
      },
      413,
      "ERR_INPUT_TOO_LARGE",
    ],
    [
      "a measurement of the wrong length",
      () => {
        const raw = body({ add: [{ tee: "sevsnp", hostData: "ab".repeat(31) }] });
        return Promise.resolve({ raw, headers: h.signed(raw) });
      },
      422,
      "ERR_MESSAGE_SCHEMA",
    ],
    [
      "a measurement in uppercase hex",
      () => {
        const raw = body({ add: [{ tee: "sevsnp", hostData: NEW_HOST_DATA.toUpperCase() }] });
        return Promise.resolve({ raw, headers: h.signed(raw) });
      },
      422,
      "ERR_MESSAGE_SCHEMA",
    ],
    [
      "a grace period out of bounds",
      () => {
        const raw = body({ graceSeconds: 400 * 24 * 3600 });
        return Promise.resolve({ raw, headers: h.signed(raw) });
      },
      422,
      "ERR_MESSAGE_SCHEMA",
    ],
    [
      "a key Shield does not manage",
      () => {
        const raw = body({ keys: ["no-such-key"] });
        return Promise.resolve({ raw, headers: h.signed(raw) });
      },
      422,
      "ERR_DEPLOY_UNKNOWN_KEY",
    ],
  ];

  it.each(cases)("%s", async (_name, make, status, code) => {
    const { raw, headers } = await make();
    const answer = await h.handler.post(headers, Buffer.from(raw));
    expect(answer.status).toBe(status);
    expect((answer.body["error"] as { code: string }).code).toBe(code);
    await expectUnchanged();
  });

  it("names the failing field of a measurement of the wrong length", async () => {
    const raw = body({ add: [{ tee: "sevsnp", hostData: "ab".repeat(31) }] });
    const answer = await h.handler.post(h.signed(raw), Buffer.from(raw));
    const error = answer.body["error"] as { violations: { field: string }[] };
    expect(error.violations.map((v) => v.field)).toContain("add[0].hostData");
  });

  it("never echoes the secret, the signature or the token", async () => {
    const token = await h.token({ repository: "mallory/orders" });
    const answers = [
      await h.handler.post({ authorization: `Bearer ${token}` }, Buffer.from(body())),
      await h.handler.post(h.signed(body(), { secret: "wrong" }), Buffer.from(body())),
    ];
    const text = JSON.stringify(answers);
    expect(text).not.toContain(token.split(".")[2]!);
    expect(text).not.toContain(h.hmacSecret);
  });

  it("a dry run answers 200 with the diff per key and version, and writes nothing", async () => {
    const raw = body({ dryRun: true });
    const answer = await h.handler.post(h.signed(raw), Buffer.from(raw));
    expect(answer.status).toBe(200);
    const [plan] = answer.body["keys"] as {
      keyName: string;
      versions: { version: string; outcome: string; measurementsAdded?: string[] }[];
    }[];
    expect(plan!.keyName).toBe(keyName);
    const updates = plan!.versions.filter((v) => v.outcome === "update");
    expect(updates).toHaveLength(2);
    expect(updates[0]!.measurementsAdded).toEqual([`x-ms-sevsnpvm-hostdata=${NEW_HOST_DATA}`]);
    expect(plan!.versions.find((v) => v.version === immutableVersion)?.outcome).toBe("immutable");
    expect(answer.body["retire"]).toEqual([{ tee: "sevsnp", hostData: OLD_HOST_DATA }]);
    await expectUnchanged();
  });
});

describe("a deployment, then the retirement timer", () => {
  it("adds the new measurement everywhere releasable, keeps the old one through the grace period, then leaves exactly the new one", async () => {
    const key = await h.createKey(2);
    const immutable = await h.addImmutableVersion(key);
    const versions = (await h.keys.listVersions(key)).map((v) => v.version);
    const raw = JSON.stringify({
      keys: [key],
      add: [{ tee: "sevsnp", hostData: NEW_HOST_DATA }],
      graceSeconds: 3600,
    });
    const deliveryId = "delivery-1";
    const answer = await h.handler.post(h.signed(raw, { deliveryId }), Buffer.from(raw));
    expect(answer.status).toBe(202);
    const deploymentId = answer.body["deploymentId"] as string;
    expect((await h.handler.get(deploymentId)).body["deployment"]).toMatchObject({ status: "queued" });

    // The same delivery again: refused, and nothing more is queued.
    const replay = await h.handler.post(h.signed(raw, { deliveryId }), Buffer.from(raw));
    expect(replay.status).toBe(409);
    expect((replay.body["error"] as { code: string }).code).toBe("ERR_WEBHOOK_REPLAYED");
    expect(h.queued.filter((m) => m.deploymentId === deploymentId)).toHaveLength(1);
    expect(h.queued).toHaveLength(1);

    await h.rollout.applyPolicyUpdate(h.queued.shift()!);
    const progress = (await h.handler.get(deploymentId)).body["deployment"] as {
      status: string;
      progress: { versions: { version: string; outcome: string }[] }[];
    };
    expect(progress.status).toBe("applied");
    expect(progress.progress[0]!.versions.find((v) => v.version === immutable)?.outcome).toBe("immutable");
    for (const version of versions.filter((v) => v !== immutable)) {
      expect((await hostDataOf(key, version)).sort()).toEqual([OLD_HOST_DATA, NEW_HOST_DATA].sort());
    }
    expect(await hostDataOf(key, immutable)).toEqual([OLD_HOST_DATA]);

    // Within the grace period the timer retires nothing.
    h.clock.advance(3599_000);
    expect((await h.rollout.retireDue()).keys).toEqual([]);
    h.clock.advance(2_000);
    const report = await h.rollout.retireDue();
    expect(report.keys.map((k) => k.keyName)).toEqual([key]);
    for (const version of versions.filter((v) => v !== immutable)) {
      expect(await hostDataOf(key, version)).toEqual([NEW_HOST_DATA]);
      // The debug and attestation-type conditions are still there.
      const policy = (await h.keys.getKey(key, version)).releasePolicy!;
      expect(canonicalPolicyForm(policy)).toContain('"x-ms-sevsnpvm-is-debuggable","equals","false"');
      expect(canonicalPolicyForm(policy)).toContain('"x-ms-attestation-type","equals","sevsnpvm"');
    }
    expect(await hostDataOf(key, immutable)).toEqual([OLD_HOST_DATA]);
    const state = (await h.policyState.getKeyPolicy(key))!;
    expect(state.allowed.map((a) => a.measurement)).toEqual([{ tee: "sevsnp", hostData: NEW_HOST_DATA }]);
    expect(state.retired.map((r) => r.measurement)).toEqual([{ tee: "sevsnp", hostData: OLD_HOST_DATA }]);
  });

  it("ten concurrent policy updates for one key all land", async () => {
    const key = await h.createKey(2);
    const measurements = Array.from({ length: 10 }, (_, i) => (i + 16).toString(16).repeat(32));
    const answers = await Promise.all(
      measurements.map((hostData) => {
        const raw = JSON.stringify({
          keys: [key],
          add: [{ tee: "sevsnp", hostData }],
          retire: [],
          graceSeconds: 600,
        });
        return h.handler.post(h.signed(raw), Buffer.from(raw));
      }),
    );
    expect(answers.map((a) => a.status)).toEqual(Array(10).fill(202));
    const messages = h.queued.splice(0);
    const results = await Promise.all(messages.map((m) => h.rollout.applyPolicyUpdate(m)));
    expect(results.map((r) => r?.status)).toEqual(Array(10).fill("applied"));
    for (const version of (await h.keys.listVersions(key)).map((v) => v.version)) {
      expect((await hostDataOf(key, version)).sort()).toEqual([OLD_HOST_DATA, ...measurements].sort());
    }
    const allowed = (await h.policyState.getKeyPolicy(key))!.allowed.map((a) => a.measurement);
    expect(allowed).toHaveLength(11);
  });
});

describe("OIDC: an allowlisted pipeline", () => {
  it("may change its keys, and no others, only from the allowed ref and environment", async () => {
    const allow: Record<string, { repository: string; ref?: string; environment?: string }[]> = {};
    const local = await startDeployHarness({ allow });
    try {
      const mine = await local.createKey(1);
      const theirs = await local.createKey(1);
      allow[mine] = [{ repository: REPOSITORY, ref: "refs/heads/main", environment: "production" }];
      const post = async (keys: string[], claims: Record<string, unknown>) => {
        const raw = JSON.stringify({
          keys,
          add: [{ tee: "sevsnp", hostData: NEW_HOST_DATA }],
          graceSeconds: 600,
        });
        const token = await local.token(claims);
        return local.handler.post({ authorization: `Bearer ${token}` }, Buffer.from(raw));
      };
      const code = (answer: { body: Record<string, unknown> }) =>
        (answer.body["error"] as { code: string }).code;
      expect(code(await post([mine, theirs], { environment: "production" }))).toBe("ERR_WEBHOOK_NOT_ALLOWED");
      expect(code(await post([mine], { environment: "staging" }))).toBe("ERR_WEBHOOK_NOT_ALLOWED");
      expect(code(await post([mine], { environment: "production", ref: "refs/heads/feature" }))).toBe(
        "ERR_WEBHOOK_NOT_ALLOWED",
      );
      expect(local.queued).toEqual([]);
      const accepted = await post([mine], { environment: "production" });
      expect(accepted.status).toBe(202);
      const deployment = (await local.handler.get(accepted.body["deploymentId"] as string)).body[
        "deployment"
      ];
      expect(deployment).toMatchObject({ requestedBy: `oidc:${REPOSITORY}`, keys: [mine] });
      expect(AUDIENCE).toBe("shield-deployments");
    } finally {
      await local.close();
    }
  });
});
