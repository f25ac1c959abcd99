/**
 * `rotation-schedule`: a timer (SHIELD_ROTATION_SCHEDULE, default hourly). Queues a rotation for
 * every managed key whose current version is older than its rotation period — the only way keys
 * in Managed HSM rotate, since Managed HSM sends no Event Grid events — and retires superseded
 * versions past their retirement once every trusted holder has a newer one.
 */
import { app, type InvocationContext, type Timer } from "@azure/functions";
import { composition } from "./composition/lazy.js";
import { contextLogger } from "./composition/invocation.js";
import { DEFAULT_ROTATION_SCHEDULE, scheduleSetting } from "./composition/schedules.js";

export const rotationSchedule = scheduleSetting("SHIELD_ROTATION_SCHEDULE", DEFAULT_ROTATION_SCHEDULE);

export async function rotationScheduleTick(_timer: Timer, context: InvocationContext): Promise<void> {
  const { rotationTick } = await composition();
  await rotationTick(contextLogger(context));
}

app.timer("rotation-schedule", { schedule: rotationSchedule, handler: rotationScheduleTick });
