/**
 * The file operations the file-based evidence providers (configfs-tsm, Gramine) make, as a port.
 *
 * Real TEE interfaces are pseudo-files with side effects: in configfs-tsm, `mkdir` makes the
 * kernel populate a report entry, writing `inblob` bumps `generation`, and reading `outblob`
 * asks the AMD Secure Processor for a report; in Gramine, writing `user_report_data` and then
 * reading `quote` runs the Quoting Enclave. A plain directory cannot reproduce that, so tests
 * pass an implementation of this port that wraps a real temporary directory and emulates the
 * kernel's (or Gramine's) side effects on the same calls. Providers use nothing but this port,
 * so production and tests run exactly the same provider code with real paths.
 */
import { mkdir, readFile, rmdir, stat, writeFile } from "node:fs/promises";
import { ShieldError } from "../../core/errors.js";

export interface DeviceFiles {
  /** Creates one directory (not recursive); fails with EEXIST when it exists. */
  mkdir(path: string): Promise<void>;
  /** Removes a directory; configfs removes an item's attribute files with it. */
  rmdir(path: string): Promise<void>;
  readFile(path: string): Promise<Buffer>;
  writeFile(path: string, data: Uint8Array): Promise<void>;
  /** Whether `path` is a directory; false when it does not exist. */
  isDirectory(path: string): Promise<boolean>;
}

/** The real file system. Writes open with `w`, as go-configfs-tsm and Gramine's examples do. */
export const nodeDeviceFiles: DeviceFiles = {
  mkdir: async (path) => {
    await mkdir(path);
  },
  rmdir: (path) => rmdir(path),
  readFile: (path) => readFile(path),
  writeFile: (path, data) => writeFile(path, data, { flag: "w" }),
  isDirectory: async (path) => {
    try {
      return (await stat(path)).isDirectory();
    } catch (error) {
      if (errnoOf(error) === "ENOENT" || errnoOf(error) === "ENOTDIR") return false;
      throw error;
    }
  },
};

/** The `code` of a Node system error (`ENOENT`, `EACCES`, ...), if it has one. */
export function errnoOf(error: unknown): string | undefined {
  if (typeof error === "object" && error !== null && "code" in error) {
    return typeof error.code === "string" ? error.code : undefined;
  }
  return undefined;
}

/** Errors a retry may cure: the device was busy or the host throttled the guest request. */
const TRANSIENT_ERRNOS = new Set(["EAGAIN", "EBUSY", "ETIMEDOUT", "EINTR"]);

/**
 * Maps a file-system failure on a TEE interface to a typed error: the interface is gone
 * (ERR_EVIDENCE_UNSUPPORTED), busy (ERR_UPSTREAM_UNAVAILABLE, transient), or anything else
 * (ERR_IO). Messages name the operation, the path and the errno; never file contents.
 */
export function deviceError(error: unknown, operation: string, path: string): ShieldError {
  if (error instanceof ShieldError) return error;
  const errno = errnoOf(error) ?? "unknown error";
  if (errno === "ENOENT" || errno === "ENODEV") {
    return new ShieldError("ERR_EVIDENCE_UNSUPPORTED", `${operation} ${path}: ${errno}`, { cause: error });
  }
  if (TRANSIENT_ERRNOS.has(errno)) {
    return new ShieldError("ERR_UPSTREAM_UNAVAILABLE", `${operation} ${path}: ${errno}`, { cause: error });
  }
  return new ShieldError("ERR_IO", `${operation} ${path}: ${errno}`, { cause: error });
}

/** Runs one file operation, turning its failure into a typed error. */
export async function onDevice<T>(operation: string, path: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (error) {
    throw deviceError(error, operation, path);
  }
}

/** A short text attribute (`provider`, `generation`, `attestation_type`), trimmed. */
export function attributeText(bytes: Buffer, maxBytes = 256): string {
  return bytes.subarray(0, maxBytes).toString("utf8").replace(/\0+$/, "").trim();
}
