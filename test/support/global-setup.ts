/**
 * Starts Azurite once per test run and hands its connection string to test files through
 * `provide`/`inject`; stops it when the run ends. Azurite's modules are loaded here, not when
 * the configuration is read, and not at all for a run whose file filters all point into
 * `test/unit/` (pure unit tests never touch storage, and loading Azurite costs seconds on a
 * busy machine). Set SHIELD_TEST_AZURITE to a connection string to use an Azurite (or a
 * storage account) that is already running instead.
 */
import { isAbsolute, relative } from "node:path";
import type { TestProject } from "vitest/node";
import { startAzurite } from "./azurite.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** Empty when Azurite was not started; tests that need it fail with a clear message. */
    azuriteConnectionString: string;
  }
}

export default async function setup(project: TestProject): Promise<(() => Promise<void>) | undefined> {
  const external = process.env["SHIELD_TEST_AZURITE"];
  if (external !== undefined && external !== "") {
    project.provide("azuriteConnectionString", external);
    return undefined;
  }
  if (onlyUnitTestsSelected(project)) {
    project.provide("azuriteConnectionString", "");
    return undefined;
  }
  const azurite = await startAzurite();
  project.provide("azuriteConnectionString", azurite.connectionString);
  return () => azurite.stop();
}

/**
 * True when the command line named files and every name lies under `test/unit/`. Vitest keeps
 * those filters in a field it does not document; when the field is missing or empty (a full
 * run, or a future Vitest), Azurite is started, which is always safe.
 */
function onlyUnitTestsSelected(project: TestProject): boolean {
  const filters = (project.vitest as unknown as { filenamePattern?: unknown }).filenamePattern;
  if (!Array.isArray(filters) || filters.length === 0) return false;
  const root = project.config.root;
  return filters.every((filter) => {
    if (typeof filter !== "string") return false;
    const path = (isAbsolute(filter) ? relative(root, filter) : filter)
      .replaceAll("\\", "/")
      .replace(/^\.\//, "");
    return path === "test/unit" || path.startsWith("test/unit/");
  });
}
