/**
 * Key files for applications that read keys from disk instead of calling the key API
 * (`SHIELD_KEY_DIR`, meant to be a tmpfs such as an `emptyDir` with `medium: Memory`). Each
 * configured key's current version is the file `<dir>/<name>`, in the key API's default format
 * (raw bytes for `oct`, PKCS #8 PEM for RSA and EC), mode 0600. Writes are atomic: a temporary
 * file in the same directory, created exclusively with mode 0600, then renamed over the old
 * one, so a reader sees the old key or the new one, never half of either; the replaced file is
 * kept open across the rename and overwritten with zeros afterwards. Removal overwrites the
 * file with zeros before unlinking it. Files are opened with O_NOFOLLOW and must be regular
 * files: a symbolic link planted in the directory is removed, never followed. Files left by an
 * earlier run are removed at open (and by `removeStaleKeyFiles`, which the entry point calls
 * first thing); `removeAllSync` is for process exit handlers, where nothing asynchronous runs.
 */
import { randomBytes } from "node:crypto";
import {
  closeSync,
  constants,
  fstatSync,
  fsyncSync,
  lstatSync,
  openSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { open, readdir, rename, stat, unlink, type FileHandle } from "node:fs/promises";
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
  /** The same, synchronously: for `exit` and `uncaughtExceptionMonitor` handlers. Never throws. */
  removeAllSync(): void;
}

export interface KeyFilesOptions {
  readonly dir: string;
  /** The configured key names: the only files this module writes or removes. */
  readonly names: readonly string[];
  readonly logger?: Logger;
}

const FILE_MODE = 0o600;
/** Read-write, never through a symbolic link. */
const OPEN_FLAGS = constants.O_RDWR | constants.O_NOFOLLOW;

/** Checks the directory and removes files an earlier run left behind. */
export async function openKeyFiles(options: KeyFilesOptions): Promise<KeyFiles> {
  const { dir, names } = options;
  await removeStaleKeyFiles(options);
  const known = new Set(names);

  const remove = async (name: string): Promise<void> => {
    if (!known.has(name)) throw new TypeError(`${name} is not a configured key`);
    await overwriteAndUnlink(join(dir, name));
  };

  return {
    dir,
    async write(key: HeldKeyVersion): Promise<void> {
      if (!known.has(key.name)) throw new TypeError(`${key.name} is not a configured key`);
      const temporary = join(dir, `.${key.name}.${randomBytes(8).toString("hex")}.tmp`);
      const target = join(dir, key.name);
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
        // A copy made for this write (see key-format.ts).
        bytes.fill(0);
      }
      await handle.close();
      // The previous version stays open across the rename, then is overwritten: readers see
      // the old file or the new one, and the old key's bytes do not outlive the rename.
      const previous = await openRegularFile(target);
      try {
        await rename(temporary, target);
        if (previous !== undefined) await zeroFile(previous);
      } finally {
        await previous?.close();
      }
    },
    remove,
    async removeAll(): Promise<void> {
      for (const name of names) await remove(name);
    },
    removeAllSync(): void {
      for (const name of names) {
        try {
          overwriteAndUnlinkSync(join(dir, name));
        } catch {
          // Exit handlers must not throw; the next start removes what is left.
        }
      }
    },
  };
}

/**
 * Removes the files of configured keys (and half-written temporary files) an earlier run left
 * in `dir`: the first thing the entry point does when SHIELD_KEY_DIR is set.
 */
export async function removeStaleKeyFiles(options: KeyFilesOptions): Promise<void> {
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
  // Leftovers: a previous run's files and any temporary file a crash left half-written.
  for (const entry of await readdir(dir)) {
    const temporary = /^\.(.+)\.[0-9a-f]{16}\.tmp$/.exec(entry);
    if (known.has(entry) || (temporary !== null && known.has(temporary[1]!))) {
      await overwriteAndUnlink(join(dir, entry));
      log("info", "stale key file removed", { file: entry });
    }
  }
}

/**
 * Opens `path` read-write without following a symbolic link. Undefined when there is nothing to
 * open; a symbolic link or anything but a regular file is unlinked (never followed) and also
 * gives undefined.
 */
async function openRegularFile(path: string): Promise<FileHandle | undefined> {
  let handle: FileHandle;
  try {
    handle = await open(path, OPEN_FLAGS);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return undefined;
    // ELOOP: a symbolic link; EISDIR and the like: not a file this module wrote.
    if (code === "ELOOP") {
      await unlink(path).catch(() => undefined);
      return undefined;
    }
    throw error;
  }
  if (!(await handle.stat()).isFile()) {
    await handle.close();
    throw new ShieldError("ERR_IO", `${path} is not a regular file`);
  }
  return handle;
}

async function zeroFile(handle: FileHandle): Promise<void> {
  const { size } = await handle.stat();
  if (size > 0) await handle.write(Buffer.alloc(size), 0, size, 0);
  await handle.sync();
}

async function overwriteAndUnlink(path: string): Promise<void> {
  const handle = await openRegularFile(path);
  if (handle === undefined) return;
  try {
    await zeroFile(handle);
  } finally {
    await handle.close();
  }
  try {
    await unlink(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
}

function overwriteAndUnlinkSync(path: string): void {
  let fd: number;
  try {
    fd = openSync(path, OPEN_FLAGS);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ELOOP" && lstatSync(path).isSymbolicLink()) unlinkSync(path);
    if (code === "ENOENT" || code === "ELOOP") return;
    throw error;
  }
  try {
    const info = fstatSync(fd);
    if (!info.isFile()) return;
    if (info.size > 0) writeSync(fd, Buffer.alloc(info.size), 0, info.size, 0);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  unlinkSync(path);
}
