/** Entry point of the `shield` command-line tool; everything else lives in main.ts. */
import { runCli } from "./main.js";

runCli(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(`error ERR_INTERNAL: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 3;
  },
);
