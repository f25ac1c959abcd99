/** The registry of `shield` commands, in the order `--help` lists them. */
import type { Command } from "../command.js";
import { evidenceVerify } from "./evidence.js";
import { policyDiff, policyRender, policyTest } from "./policy.js";
import { tokenVerify } from "./token.js";

export const commands: readonly Command[] = [
  evidenceVerify,
  tokenVerify,
  policyTest,
  policyRender,
  policyDiff,
];
