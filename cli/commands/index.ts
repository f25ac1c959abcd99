/** The registry of `shield` commands, in the order `--help` lists them. */
import type { Command } from "../command.js";

export const commands: readonly Command[] = [];
