/**
 * The function app's registrations as the Azure Functions host receives them. In Azure the Node
 * worker gives `@azure/functions` a core API (the module `@azure/functions-core`, which exists
 * only inside the worker); every `app.http`, `app.serviceBusQueue`, `app.timer`, … call ends as
 * `registerFunction(metadata, handler)` on it, with the metadata the host reads (bindings by name,
 * each with its `type` and `direction`). This module installs a core API of its own under that
 * name before the function files are imported, so the local host drives exactly what those files
 * register — the same calls, the same metadata — and nothing is wired a second time by hand.
 *
 * The package asks for the core API once per process, at its first registration; function files
 * imported before `installRegistrationCapture()` ran (a unit test importing a handler, say) have
 * registered into the package's test mode and are lost. `loadFunctionApp` says so with a clear
 * error rather than starting a host with functions missing.
 */
import { createRequire } from "node:module";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

/** One binding of a function as the host sees it (`function.json` in older models). */
export interface Binding {
  readonly name: string;
  readonly type: string;
  readonly direction: "in" | "out";
  readonly [option: string]: unknown;
}

export type FunctionCallback = (...args: unknown[]) => unknown;

export interface Registration {
  readonly name: string;
  /** The trigger binding (the one `in` binding whose type ends in `Trigger`). */
  readonly trigger: Binding;
  /** Output bindings other than the return value (`extraOutputs`). */
  readonly extraOutputs: readonly Binding[];
  readonly returnBinding?: Binding;
  readonly handler: FunctionCallback;
}

export type HookName = "appStart" | "appTerminate" | "preInvocation" | "postInvocation" | "log";
export type HookCallback = (context: Record<string, unknown>) => unknown;

interface CoreFunctionMetadata {
  readonly name: string;
  readonly bindings: Record<string, Omit<Binding, "name">>;
}

const registrations = new Map<string, Registration>();
const hooks = new Map<HookName, HookCallback[]>();
let installed = false;

function disposable(dispose: () => void): { dispose(): void } {
  return { dispose };
}

/** The core API the worker would give; only what `@azure/functions` 4.x calls. */
const coreApi = {
  version: "local",
  hostVersion: "4.local",
  setProgrammingModel(): void {},
  getProgrammingModel(): undefined {
    return undefined;
  },
  registerFunction(metadata: CoreFunctionMetadata, callback: FunctionCallback): { dispose(): void } {
    if (registrations.has(metadata.name)) {
      throw new Error(`A function with the name "${metadata.name}" has already been registered.`);
    }
    const bindings = Object.entries(metadata.bindings).map(
      ([name, binding]) => ({ ...binding, name }) as Binding,
    );
    const trigger = bindings.find((b) => b.direction === "in" && /trigger$/i.test(b.type));
    if (trigger === undefined) throw new Error(`function "${metadata.name}" has no trigger binding`);
    const returnBinding = bindings.find((b) => b.name === "$return");
    registrations.set(metadata.name, {
      name: metadata.name,
      trigger,
      extraOutputs: bindings.filter((b) => b.direction === "out" && b.name !== "$return"),
      ...(returnBinding === undefined ? {} : { returnBinding }),
      handler: callback,
    });
    return disposable(() => registrations.delete(metadata.name));
  },
  registerHook(name: HookName, callback: HookCallback): { dispose(): void } {
    const list = hooks.get(name) ?? [];
    list.push(callback);
    hooks.set(name, list);
    return disposable(() => {
      const at = list.indexOf(callback);
      if (at !== -1) list.splice(at, 1);
    });
  },
  log(): void {},
};

/**
 * Makes `require("@azure/functions-core")` answer with this module's core API, as the worker
 * does. Idempotent; call before the first function file is imported.
 */
export function installRegistrationCapture(): void {
  if (installed) return;
  installed = true;
  const require = createRequire(import.meta.url);
  const Module = require("node:module") as {
    _load: (request: string, parent: unknown, isMain: boolean) => unknown;
  };
  const load = Module._load;
  Module._load = function (request: string, parent: unknown, isMain: boolean): unknown {
    if (request === "@azure/functions-core") return coreApi;
    return load.call(this, request, parent, isMain);
  };
}

/** Everything registered so far, by function name. */
export function registeredFunctions(): ReadonlyMap<string, Registration> {
  return registrations;
}

export function registeredHooks(name: HookName): readonly HookCallback[] {
  return hooks.get(name) ?? [];
}

/**
 * Imports every top-level `.ts`/`.js` file of the function app's folder (what `package.json`
 * `main` globs in Azure: sub-folders hold helpers and are never registered) and returns the
 * registrations they made. A file added to the folder is picked up without any change here.
 */
export async function loadFunctionApp(folder: string): Promise<Registration[]> {
  installRegistrationCapture();
  const files = (await readdir(folder, { withFileTypes: true }))
    .filter((e) => e.isFile() && /\.(ts|js)$/.test(e.name) && !/\.d\.ts$|\.test\.(ts|js)$/.test(e.name))
    .map((e) => e.name)
    .sort();
  for (const file of files) await import(pathToFileURL(join(folder, file)).href);
  if (files.length > 0 && registrations.size === 0) {
    throw new Error(
      "no function registered: the function files were imported before the registration capture " +
        "was installed (@azure/functions is in test mode in this process)",
    );
  }
  return [...registrations.values()];
}
