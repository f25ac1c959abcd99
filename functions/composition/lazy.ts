/**
 * The composition root as the function files reach it: loaded on the first invocation, not at
 * import. Registering a function then costs only its own file, and the first invocation pays for
 * the use cases, schemas and adapters it needs (root.ts loads the Azure SDKs lazily too). The
 * same module instance as a static import, so `resetComposition` and tests see one composition.
 */
import type { Composition } from "./root.js";

export async function composition(): Promise<Composition> {
  const root = await import("./root.js");
  return root.composition();
}
