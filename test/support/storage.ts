/**
 * What test files use to reach the Azurite that the global setup started: the connection
 * string, and table names that no other test file uses, so files can run in parallel.
 */
import { randomBytes } from "node:crypto";
import { inject } from "vitest";

export function azuriteConnectionString(): string {
  const connectionString = inject("azuriteConnectionString");
  if (typeof connectionString !== "string" || connectionString === "") {
    throw new Error("Azurite is not running: test/support/global-setup.ts must be the vitest globalSetup");
  }
  return connectionString;
}

/** A table name unique to the caller: a letter-led prefix plus random hex, within Azure's 3..63 characters. */
export function uniqueTableName(prefix: string): string {
  const name = `${prefix.replace(/[^A-Za-z0-9]/g, "")}${randomBytes(6).toString("hex")}`;
  if (!/^[A-Za-z][A-Za-z0-9]{2,62}$/.test(name)) throw new TypeError(`bad table name prefix: ${prefix}`);
  return name;
}
