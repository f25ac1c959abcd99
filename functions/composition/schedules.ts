/**
 * Timer schedules. Azure Functions takes NCRONTAB with six fields — `{second} {minute} {hour}
 * {day} {month} {day-of-week}` — and the Node v4 model reads the schedule when a function is
 * registered, so each timer's schedule comes from its setting at that moment, with a default.
 * Schedules are checked with `croner` (which reads the same six-field form) so that a typo is a
 * clear ERR_CONFIG at start-up rather than a timer that never fires.
 */
import { Cron } from "croner";

export const DEFAULT_REATTEST_SCHEDULE = "0 */1 * * * *"; // every minute
export const DEFAULT_ROTATION_SCHEDULE = "0 0 * * * *"; // every hour

/** Undefined when the schedule is a valid six-field NCRONTAB expression, else what is wrong. */
export function checkSchedule(schedule: string): string | undefined {
  const fields = schedule.trim().split(/\s+/);
  if (fields.length !== 6) return `six fields expected, got ${fields.length}`;
  try {
    new Cron(schedule, { paused: true }).stop();
    return undefined;
  } catch {
    return "not a valid schedule";
  }
}

/** The schedule a timer registers with: its setting when valid, else the default. */
export function scheduleSetting(
  name: string,
  fallback: string,
  env: Readonly<Record<string, string | undefined>> = process.env,
): string {
  const value = env[name];
  return value !== undefined && value.trim() !== "" && checkSchedule(value) === undefined
    ? value.trim()
    : fallback;
}
