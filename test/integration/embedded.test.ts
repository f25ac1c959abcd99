/**
 * `npm start`'s embedded default, run once in-process: the whole round trip must complete with
 * nothing but this machine, and print what it did without printing key material.
 */
import { describe, expect, it } from "vitest";
import { runEmbedded } from "../../local/embedded.js";

describe("embedded default (npm start)", () => {
  it("completes the attest-and-release round trip on local servers only", async () => {
    const lines: string[] = [];
    const run = await runEmbedded({ once: true, listen: "127.0.0.1:0", print: (line) => lines.push(line) });
    try {
      expect(run.released).toHaveLength(1);
      expect(run.released[0]).toMatchObject({ name: "demo-orders-key", bytes: 32 });
      const output = lines.join("\n");
      expect(output).toContain("Round trip complete");
      expect(output).toMatch(/attestation \(MAA-compatible\): http:\/\/127\.0\.0\.1:\d+/);
      expect(output).not.toMatch(/eyJ[A-Za-z0-9_-]{20,}\./); // no token or release response printed
    } finally {
      await run.stop();
    }
  }, 60_000);

  it("with --with-example db, runs the orders service against the agent on a PostgreSQL of its own", async () => {
    const lines: string[] = [];
    const run = await runEmbedded({
      once: true,
      listen: "127.0.0.1:0",
      withExample: "db",
      examplePort: 0,
      print: (line) => lines.push(line),
    });
    try {
      expect(run.exampleUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      const order = {
        customerEmail: "alice@example.com",
        customerName: "Alice",
        cardNumber: "4111 1111 1111 1111",
        amountCents: 1299,
      };
      const placed = await fetch(`${run.exampleUrl}/orders`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(order),
      });
      expect(placed.status).toBe(201);
      const found = (await (await fetch(`${run.exampleUrl}/orders?email=Alice%40example.com`)).json()) as {
        orders: { customerName: string; card: string; amountCents: number }[];
      };
      expect(found.orders).toEqual([
        expect.objectContaining({ customerName: "Alice", card: "•••• 1111", amountCents: 1299 }),
      ]);
      expect(lines.join("\n")).toContain("orders: listening on");
    } finally {
      await run.stop();
    }
  }, 90_000);
});
