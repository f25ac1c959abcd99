/** The registry of `shield` commands, in the order `--help` lists them. */
import type { Command } from "../command.js";
import { evidenceVerify } from "./evidence.js";
import { policyDiff, policyRender, policyTest } from "./policy.js";
import { tokenVerify } from "./token.js";
import { auditVerify, auditWhoHas } from "./audit.js";
import { deploy } from "./deploy.js";
import { status } from "./status.js";
import { agentReinstate, agentRevoke, keyRotate } from "./operator.js";

export const commands: readonly Command[] = [
  evidenceVerify,
  tokenVerify,
  policyTest,
  policyRender,
  policyDiff,
  status,
  deploy,
  auditVerify,
  auditWhoHas,
  agentRevoke,
  agentReinstate,
  keyRotate,
];
