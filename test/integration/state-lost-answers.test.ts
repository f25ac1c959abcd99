/**
 * A write whose answer is lost on the way back (the connection drops after Table Storage has
 * applied it) is sent again by the SDK's retry policy, and the second try meets the row the first
 * one made. The table state store must know that row as its own: a claim that took itself for
 * "another invocation's" would hold the request for a whole lease while every redelivery burns
 * a delivery, and a nonce that took itself for a replay would deny a genuine workload.
 */
import { RestError, type PipelinePolicy } from "@azure/core-rest-pipeline";
import { TableClient } from "@azure/data-tables";
import { beforeAll, describe, expect, it } from "vitest";
import { TableStateStore } from "../../adapters/state/table.js";
import { tablePolicyStateStore } from "../../adapters/state/policy-table.js";
import type { PolicyStateStore } from "../../core/ports/policy-state.js";
import { azuriteConnectionString, uniqueTableName } from "../support/storage.js";

/** Lets the next matching request reach Azurite, then reports its answer as a reset connection. */
function loseNextAnswer() {
  let armed: ((method: string) => boolean) | undefined;
  let lost = 0;
  const policy: PipelinePolicy = {
    name: "lose-next-answer",
    async sendRequest(request, next) {
      const response = await next(request);
      if (armed?.(request.method) === true) {
        armed = undefined;
        lost += 1;
        throw new RestError("socket hang up", { code: "ECONNRESET", request });
      }
      return response;
    },
  };
  return {
    policy,
    arm: (match: (method: string) => boolean) => {
      armed = match;
    },
    lost: () => lost,
  };
}

const fault = loseNextAnswer();
let store: TableStateStore;
let policies: PolicyStateStore;

beforeAll(async () => {
  const client = TableClient.fromConnectionString(azuriteConnectionString(), uniqueTableName("lostanswers"), {
    allowInsecureConnection: true,
    additionalPolicies: [{ policy: fault.policy, position: "perRetry" }],
    retryOptions: { retryDelayInMs: 10, maxRetries: 3 },
  });
  await client.createTable();
  store = new TableStateStore(client);
  policies = tablePolicyStateStore(client);
});

const at = new Date("2026-12-07T12:00:00Z");
const later = (ms: number) => new Date(at.getTime() + ms);

describe("table state store, when the answer to a write is lost and the write is sent again", () => {
  it("a first claim is still this caller's claim, and someone else's claim stays busy", async () => {
    const key = { scope: "agent-lost-1", requestId: "req-1" };
    fault.arm((method) => method === "POST");
    const before = fault.lost();
    const claim = await store.claimRequest(key, { at, leaseUntil: later(300_000) });
    expect(fault.lost()).toBe(before + 1);
    expect(claim.state).toBe("new");
    if (claim.state !== "new") return;
    // Another invocation finds it held; the lease is usable (its ETag is the row's): released,
    // the request can be taken over at once.
    expect((await store.claimRequest(key, { at: later(1_000), leaseUntil: later(301_000) })).state).toBe(
      "in-progress",
    );
    await store.releaseRequest(claim.lease);
    expect((await store.claimRequest(key, { at: later(2_000), leaseUntil: later(302_000) })).state).toBe(
      "new",
    );
  });

  it("a takeover of an expired lease is still this caller's", async () => {
    const key = { scope: "agent-lost-2", requestId: "req-2" };
    const first = await store.claimRequest(key, { at, leaseUntil: later(1_000) });
    expect(first.state).toBe("new");
    fault.arm((method) => method === "PUT");
    const taken = await store.claimRequest(key, { at: later(5_000), leaseUntil: later(305_000) });
    expect(taken.state).toBe("new");
    if (taken.state === "new") expect(taken.lease.attempt).toBe(2);
    // A different invocation now finds the lease held.
    const other = await store.claimRequest(key, { at: later(6_000), leaseUntil: later(306_000) });
    expect(other.state).toBe("in-progress");
  });

  it("a nonce consumed once is consumed, not replayed; a second use is a replay", async () => {
    fault.arm((method) => method === "POST");
    const options = { at, expiresAt: later(600_000) };
    expect(await store.consumeNonce("agent-lost-3", "nonce-aaaaaaaaaaaaaaaa", options)).toBe("consumed");
    expect(await store.consumeNonce("agent-lost-3", "nonce-aaaaaaaaaaaaaaaa", options)).toBe("replayed");
  });

  it("a webhook delivery id remembered once is new, not a replay; a second delivery is a replay", async () => {
    fault.arm((method) => method === "POST");
    const options = { at, expiresAt: later(600_000) };
    expect(await policies.rememberDelivery("delivery-lost-1", options)).toBe("new");
    expect(await policies.rememberDelivery("delivery-lost-1", options)).toBe("replayed");
  });

  it("a key lease taken over from an expired holder is taken, though the answer was lost", async () => {
    expect(await policies.acquireKeyLease("lost-key", "holder-a", { at, leaseUntil: later(1_000) })).toBe(
      true,
    );
    fault.arm((method) => method === "PUT");
    expect(
      await policies.acquireKeyLease("lost-key", "holder-b", { at: later(5_000), leaseUntil: later(65_000) }),
    ).toBe(true);
    expect(
      await policies.acquireKeyLease("lost-key", "holder-c", { at: later(6_000), leaseUntil: later(66_000) }),
    ).toBe(false);
  });
});
