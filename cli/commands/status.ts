/**
 * `shield status`: Shield's `GET /api/status` as a table (or `--json`): agents with their
 * standing and the key versions they hold, keys with the measurements each version allows,
 * rollouts in progress and the latest denials. The function key comes from `--function-key-file`
 * or `SHIELD_FUNCTION_KEY`, never from a flag, and is sent as `x-functions-key`.
 */
import { ShieldError } from "../../core/errors.js";
import type { StatusSnapshot } from "../../core/status/status.js";
import type { Command } from "../command.js";
import { FUNCTIONS_OPTIONS, callFunctions } from "./functions-api.js";

const short = (hex: string) => hex.replace(/([0-9a-f]{8})[0-9a-f]{40,}([0-9a-f]{4})/g, "$1…$2");

export const status: Command = {
  words: ["status"],
  summary: "agents, keys, rollouts and denials from the functions' /api/status",
  usage: [
    "Usage: shield status --url URL [--function-key-file F] [--json]",
    "",
    "  --url URL              the Functions app; reads URL/api/status",
    "  --function-key-file F  the function key (or SHIELD_FUNCTION_KEY)",
  ].join("\n"),
  options: FUNCTIONS_OPTIONS,
  async run(values) {
    const answer = await callFunctions(values, "GET", "status");
    if (answer.status !== 200) {
      throw new ShieldError("ERR_NETWORK", `GET /api/status: HTTP ${answer.status}`);
    }
    const snapshot = answer.body as unknown as StatusSnapshot;
    const lines = [
      `status at ${snapshot.generatedAt}`,
      "",
      "AGENT                 STATUS     MEASUREMENT              ATTESTED UNTIL            KEYS",
      ...snapshot.agents.map(
        (a) =>
          `${a.agentId.padEnd(21)} ${a.status.padEnd(10)} ${short(a.measurement ?? "-").padEnd(24)} ${(a.attestedUntil ?? "-").padEnd(25)} ${a.keyVersions.map((k) => `${k.keyName}/${k.keyVersion.slice(0, 8)}`).join(" ")}`,
      ),
      "",
      "KEY                   VERSION       RELEASABLE  MEASUREMENTS",
      ...snapshot.keys.flatMap((k) =>
        k.versions.map(
          (v) =>
            `${k.keyName.padEnd(21)} ${v.version.slice(0, 12).padEnd(13)} ${(v.releasable ? "yes" : "no").padEnd(11)} ${v.measurements.map(short).join(" ")}`,
        ),
      ),
      "",
      "KEY                   NEXT ROTATION",
      ...snapshot.keys
        .filter((k) => k.rotation !== undefined)
        .map((k) => `${k.keyName.padEnd(21)} ${k.rotation?.nextRotationAt ?? "on events only"}`),
      "",
      `ROLLOUTS (${snapshot.rollouts.length})`,
      ...snapshot.rollouts.map(
        (r) => `${r.deploymentId}  ${r.status}  ${r.keys.join(",")}  grace ends ${r.graceEndsAt}`,
      ),
      "",
      `DENIALS (${snapshot.denials.length})`,
      ...snapshot.denials.map((d) => `${d.at}  ${d.agentId}  ${d.code}  ${d.fields.join(",")}`),
    ];
    return { ok: true, data: { ...snapshot }, lines };
  },
};
