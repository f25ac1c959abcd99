/** `npm run bench:agent`: only the agent footprint part of the benchmarks. */
import { benchAgent, formatAgentBench } from "./agent.js";

async function run(): Promise<void> {
  console.log(formatAgentBench(await benchAgent()) + "\n");
  console.log(
    formatAgentBench(await benchAgent({ transport: "servicebus" }), "Service Bus (local AMQP endpoint)"),
  );
}

run().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
