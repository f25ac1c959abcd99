import { describe, expect, it } from "vitest";
import { ShieldError } from "../../core/errors.js";
import { retrying, withRetry } from "../../core/retry.js";

const noSleep = { sleep: () => Promise.resolve(), random: () => 0.5 };

describe("withRetry", () => {
  it("retries transient failures until success, with growing jittered delays", async () => {
    const delays: number[] = [];
    let calls = 0;
    const result = await withRetry(
      () => {
        calls++;
        if (calls < 3) return Promise.reject(new ShieldError("ERR_UPSTREAM_UNAVAILABLE", "503"));
        return Promise.resolve("ok");
      },
      { ...noSleep, baseDelayMs: 100, onRetry: (_a, _e, d) => delays.push(d) },
    );
    expect(result).toBe("ok");
    expect(calls).toBe(3);
    expect(delays).toEqual([50, 100]);
  });

  it("fails at once on a terminal error", async () => {
    let calls = 0;
    await expect(
      withRetry(() => {
        calls++;
        return Promise.reject(new ShieldError("ERR_TOKEN_SIGNATURE", "bad"));
      }, noSleep),
    ).rejects.toMatchObject({ code: "ERR_TOKEN_SIGNATURE" });
    expect(calls).toBe(1);
  });

  it("gives up after the last attempt with the last error", async () => {
    let calls = 0;
    await expect(
      withRetry(
        () => {
          calls++;
          return Promise.reject(new ShieldError("ERR_THROTTLED", `429 #${calls}`));
        },
        { ...noSleep, attempts: 3 },
      ),
    ).rejects.toMatchObject({ code: "ERR_THROTTLED", message: "429 #3" });
    expect(calls).toBe(3);
  });

  it("wraps every method of a port", async () => {
    let calls = 0;
    const port = {
      name: "maa",
      attest(x: number): Promise<number> {
        calls++;
        return calls === 1 ? Promise.reject(new ShieldError("ERR_TIMEOUT", "t")) : Promise.resolve(x * 2);
      },
    };
    const wrapped = retrying(port, noSleep);
    expect(wrapped.name).toBe("maa");
    expect(await wrapped.attest(21)).toBe(42);
    expect(calls).toBe(2);
  });
});
