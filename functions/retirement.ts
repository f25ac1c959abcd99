/**
 * `retirement`: timer, every five minutes — removes the measurements whose grace period ended
 * from the release policies of every releasable version and from Shield's appraisal policy
 * (core/rollout). Agents still running a retired measurement are denied at their next
 * attestation with ERR_MEASUREMENT_RETIRED.
 */
import { app, type InvocationContext, type Timer } from "@azure/functions";
import { composition } from "./composition/lazy.js";
import { contextLogger } from "./composition/invocation.js";

export async function retirement(_timer: Timer, context: InvocationContext): Promise<void> {
  const { rollout } = await composition();
  const report = await rollout.retireDue();
  const log = contextLogger(context);
  for (const key of report.keys) {
    log(key.error === undefined ? "info" : "error", "retirement", {
      keyName: key.keyName,
      retired: key.retired.length,
      versions: key.versions.filter((v) => v.outcome === "updated").length,
      ...(key.error === undefined ? {} : { code: key.error.code }),
    });
  }
}

app.timer("retirement", { schedule: "0 */5 * * * *", handler: retirement });
