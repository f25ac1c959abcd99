/**
 * Key files for applications that read keys from disk instead of calling the key API
 * (`SHIELD_KEY_DIR`, meant to be a tmpfs such as an `emptyDir` with `medium: Memory`). Each
 * configured key's current version is the file `<dir>/<name>`, in the key API's default format
 * (raw bytes for `oct`, PKCS #8 PEM for RSA and EC), mode 0600. Writes are atomic: a temporary
 * file in the same directory, created exclusively with mode 0600, then renamed over the old
 * one, so a reader sees the old key or the new one, never half of either. Removal overwrites
 * the file with zeros before unlinking it. Files left by an earlier run are removed at open.
 */
import { randomBytes } from "node:crypto";
import { open, readdir, rename, stat, unlink } from "node:fs/promises";
import { join } from "node:path";
import { ShieldError } from "../core/errors.js";
import { silentLogger, type Logger } from "../core/ports/logger.js";
import type { HeldKeyVersion } from "./held-keys.js";
import { keyFileBytes } from "./key-format.js";

export interface KeyFiles {
  readonly dir: string;
  /** Writes `key` as `<dir>/<name>`, replacing the previous version atomically. */
  write(key: HeldKeyVersion): Promise<void>;
  /** Overwrites and removes `<dir>/<name>`; nothing when absent. */
  remove(name: string): Promise<void>;
  /** Removes the file of every configured key. */
  removeAll(): Promise<void>;
}

export interface KeyFilesOptions {
  readonly dir: string;
  /** The configured key names: the only files this module writes or removes. */
  readonly names: readonly string[];
  readonly logger?: Logger;
}

const FILE_MODE = 0o600;

/** Checks the directory and removes files an earlier run left behind. */
export async function openKeyFiles(options: KeyFilesOptions): Promise<KeyFiles> {
  const { dir, names } = options;
  const log = options.logger ?? silentLogger;
  let info;
  try {
    info = await stat(dir);
  } catch (cause) {
    throw new ShieldError("ERR_CONFIG", `SHIELD_KEY_DIR ${dir} does not exist`, { cause });
  }
  if (!info.isDirectory()) throw new ShieldError("ERR_CONFIG", `SHIELD_KEY_DIR ${dir} is not a directory`);
  const known = new Set(names);

  const remove = async (name: string): Promise<void> => {
    if (!known.has(name)) throw new TypeError(`${name} is not a configured key`);
    await overwriteAndUnlink(join(dir, name));
  };

  // Leftovers: a previous run's files and any temporary file a crash left half-written.
  for (const entry of await readdir(dir)) {
    const temporary = /^\.(.+)\.[0-9a-f]{16}\.tmp$/.exec(entry);
    if (known.has(entry) || (temporary !== null && known.has(temporary[1]!))) {
      await overwriteAndUnlink(join(dir, entry));
      log("info", "stale key file removed", { file: entry });
    }
  }

  return {
    dir,
    async write(key: HeldKeyVersion): Promise<void> {
      if (!known.has(key.name)) throw new TypeError(`${key.name} is not a configured key`);
      const temporary = join(dir, `.${key.name}.${randomBytes(8).toString("hex")}.tmp`);
      const bytes = keyFileBytes(key);
      const handle = await open(temporary, "wx", FILE_MODE);
      try {
        await handle.writeFile(bytes);
        await handle.sync();
      } catch (error) {
        await handle.close();
        await overwriteAndUnlink(temporary);
        throw error;
      } finally {
        // The PEM form is a copy made for this write; raw bytes are the store's own.
        if (bytes !== key.material) bytes.fill(0);
      }
      await handle.close();
      await rename(temporary, join(dir, key.name));
    },
    remove,
    async removeAll(): Promise<void> {
      for (const name of names) await remove(name);
    },
  };
}

async function overwriteAndUnlink(path: string): Promise<void> {
  let handle;
  try {
    handle = await open(path, "r+");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
    throw error;
  }
  try {
    const { size } = await handle.stat();
    if (size > 0) await handle.write(Buffer.alloc(size), 0, size, 0);
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await unlink(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
}
