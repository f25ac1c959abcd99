/**
 * Read-modify-write of one record under optimistic concurrency: a lost race (ERR_CONFLICT) is
 * tried again from a fresh read a few times before it is handed back.
 */
import { isShieldError } from "../errors.js";

export async function changeWithRetry(change: () => Promise<void>, attempts = 5): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await change();
    } catch (error) {
      if (!(isShieldError(error) && error.code === "ERR_CONFLICT") || attempt >= attempts) throw error;
    }
  }
}
