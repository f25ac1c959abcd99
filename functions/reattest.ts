/**
 * `reattest`: a timer (NCRONTAB from SHIELD_REATTEST_SCHEDULE, default every minute). Each tick
 * revokes agents past an unanswered re-attestation deadline and challenges the agents that are
 * due, within the per-tick budget (core/lifecycle/reattest.ts). A tick that finds more than its
 * budget leaves the rest to the next tick, so after downtime (`isPastDue`) the work spreads out.
 */
import { app, type InvocationContext, type Timer } from "@azure/functions";
import { composition } from "./composition/lazy.js";
import { contextLogger } from "./composition/invocation.js";
import { DEFAULT_REATTEST_SCHEDULE, scheduleSetting } from "./composition/schedules.js";

export const reattestSchedule = scheduleSetting("SHIELD_REATTEST_SCHEDULE", DEFAULT_REATTEST_SCHEDULE);

export async function reattest(timer: Timer, context: InvocationContext): Promise<void> {
  const { reattest: tick } = await composition();
  await tick({ isPastDue: timer.isPastDue }, contextLogger(context));
}

app.timer("reattest", { schedule: reattestSchedule, handler: reattest });
