/** `npm run bench:agent`: only the agent footprint part of the benchmarks. */
import { benchAgent, formatAgentBench } from "./agent.js";

benchAgent().then(
  (result) => console.log(formatAgentBench(result)),
  (error: unknown) => {
    console.error(error);
    process.exitCode = 1;
  },
);
