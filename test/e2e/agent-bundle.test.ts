/**
 * The agent as its image runs it: the esbuild bundle in a separate `node` process with the image's
 * flags (among them `--jitless`, under which there is no WebAssembly and so no `fetch`), against
 * the local stack, over Storage Queues and over Service Bus (the local AMQP endpoint). It must
 * reach `ready` and round trip a value through its encryption API; how fast and how small is the
 * benchmark's business.
 */
import { readFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import { AGENT_NODE_FLAGS, benchAgent } from "../../bench/agent.js";

describe("bundled agent under the image's node flags", () => {
  it("uses the same flags as agent/Dockerfile", async () => {
    const dockerfile = await readFile(new URL("../../agent/Dockerfile", import.meta.url), "utf8");
    const entrypoint = /^ENTRYPOINT (\[.*\])$/m.exec(dockerfile)?.[1];
    expect(entrypoint).toBeDefined();
    const args = JSON.parse(entrypoint!) as string[];
    expect(args.slice(1, -1)).toEqual([...AGENT_NODE_FLAGS]);
  });

  it("attests and serves its key from a separate process", async () => {
    const result = await benchAgent({ settleMs: 100 });
    expect(result.agentReadyMs).toBeGreaterThan(0);
    expect(result.bundleBytes).toBeGreaterThan(0);
  }, 120_000);

  it("attests and receives its key over Service Bus (the production transport) under the same flags", async () => {
    // The agent's real Service Bus transport and @azure/service-bus inside the bundle, against
    // the local AMQP endpoint; the functions' side sends the result to the agent's session.
    const result = await benchAgent({ settleMs: 100, transport: "servicebus" });
    expect(result.agentReadyMs).toBeGreaterThan(0);
    expect(result.agentRssBytes).toBeGreaterThan(0);
  }, 120_000);
});
