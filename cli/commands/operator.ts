/**
 * The operator acts over the Functions app's endpoints, each audited there with the caller's
 * name (behind Entra ID) or `function-key`:
 *
 * - `shield agent revoke <agentId>` — `POST /api/agents/{agentId}/revoke`;
 * - `shield agent reinstate <agentId>` — `POST /api/agents/{agentId}/reinstate`;
 * - `shield key rotate <keyName>` — `POST /api/keys/{keyName}/rotate` (queued; the `rotate`
 *   function makes the version).
 *
 * Exit 0 when the endpoint did it, 1 when it refused (unknown agent or key, malformed id: its
 * typed code is shown), 3 when it could not be reached or is unavailable.
 */
import { ShieldError } from "../../core/errors.js";
import { IDENTIFIER_PATTERN, KEY_NAME_PATTERN } from "../../core/messages/fields.js";
import { UsageError, type Command, type CommandResult, type OptionValues } from "../command.js";
import { FUNCTIONS_OPTIONS, FUNCTIONS_USAGE, callFunctions, refusalOf } from "./functions-api.js";

const text = (value: unknown): string => (typeof value === "string" ? value : "-");

function one(positionals: readonly string[], what: string, pattern: RegExp): string {
  const [value, ...extra] = positionals;
  if (value === undefined || extra.length > 0) throw new UsageError(`exactly one ${what} is expected`);
  if (!pattern.test(value)) throw new UsageError(`${JSON.stringify(value)} is not a valid ${what}`);
  return value;
}

async function act(values: OptionValues, path: string, done: (body: Record<string, unknown>) => string[]) {
  const answer = await callFunctions(values, "POST", path);
  if (answer.status >= 500) {
    const refusal = refusalOf(answer);
    throw new ShieldError("ERR_UPSTREAM_UNAVAILABLE", `${refusal.code}: the endpoint could not do it now`);
  }
  if (answer.status >= 400) {
    const error = refusalOf(answer);
    return {
      ok: false,
      data: { error },
      lines: [`refused: ${error.code}: ${error.message}`],
    } as CommandResult;
  }
  return { ok: true, data: { ...answer.body }, lines: done(answer.body) } as CommandResult;
}

function agentAct(action: "revoke" | "reinstate"): Command {
  return {
    words: ["agent", action],
    summary:
      action === "revoke"
        ? "revoke an agent now (its keys are revoked to it; attest refuses it)"
        : "let a revoked agent attest again",
    usage: [
      `Usage: shield agent ${action} <agentId> --url URL [--function-key-file F] [--json]`,
      "",
      ...FUNCTIONS_USAGE,
    ].join("\n"),
    options: FUNCTIONS_OPTIONS,
    positionals: true,
    run(values, positionals) {
      const agentId = one(positionals, "agent id", IDENTIFIER_PATTERN);
      return act(values, `agents/${encodeURIComponent(agentId)}/${action}`, (body) => [
        `${action === "revoke" ? "revoked" : "reinstated"} ${agentId}${body["changed"] === false ? " (no change)" : ""}`,
      ]);
    },
  };
}

export const agentRevoke = agentAct("revoke");
export const agentReinstate = agentAct("reinstate");

export const keyRotate: Command = {
  words: ["key", "rotate"],
  summary: "rotate a key now (queued for the rotate function, serialised per key)",
  usage: [
    "Usage: shield key rotate <keyName> --url URL [--function-key-file F] [--json]",
    "",
    ...FUNCTIONS_USAGE,
  ].join("\n"),
  options: FUNCTIONS_OPTIONS,
  positionals: true,
  run(values, positionals) {
    const keyName = one(positionals, "key name", KEY_NAME_PATTERN);
    return act(values, `keys/${encodeURIComponent(keyName)}/rotate`, (body) => [
      `rotation of ${keyName} queued (current version ${text(body["currentVersion"])}, event ${text(body["sourceEventId"])})`,
    ]);
  },
};
