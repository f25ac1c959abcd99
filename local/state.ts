/**
 * `npm start -- --state DIR`: the directory where the local system keeps what must be the same
 * after a restart. Without it everything stays in memory and nothing is written.
 *
 * Layout of DIR:
 *
 * | path            | what                                                                  |
 * | --------------- | --------------------------------------------------------------------- |
 * | `sealing-key`   | 32 random bytes (base64), mode 0600: seals everything below            |
 * | `system.sealed` | sealed: ports, the simulated platforms, the local MAA's signing key,  |
 * |                 | the vault's release-response signer, the Functions host's keys        |
 * | `secrets.sealed`| sealed: the local Key Vault's secrets (the deployment webhook's key)  |
 * | `keyvault/`     | the local Key Vault's key records (its own sealing, adapters/local/keyvault) |
 * | `azurite/`      | Azurite's Table and Queue data (state, audit log, queued messages)    |
 * | `lock`          | the pid of the process using DIR, while it runs                       |
 *
 * "Sealed" is AES-256-GCM under a key derived from `sealing-key` (HKDF-SHA256, one key per use),
 * a fresh nonce per write, the document's name as associated data; each write goes to a
 * temporary file that is then renamed over the old one. This is a local stand-in's protection at
 * rest: the key lies next to what it seals, so it keeps the material out of backups and casual
 * reads that skip `sealing-key`, not out of reach of anyone who can read the directory. Azurite's
 * files are not sealed (like a storage account's data they hold no key material); the audit log
 * in them is hash-chained, which `shield audit verify` checks.
 *
 * Anything that does not open — a damaged or edited sealed file, another directory's
 * `sealing-key`, a directory with files but no `sealing-key` — is a ShieldError (ERR_CONFIG;
 * ERR_IO when the file system fails) at start; it is never taken for an empty state.
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes, type CipherGCMTypes } from "node:crypto";
import { closeSync, openSync, readFileSync, renameSync, writeSync, fsyncSync } from "node:fs";
import { mkdir, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { ShieldError } from "../core/errors.js";

const SEALING_KEY_FILE = "sealing-key";
const LOCK_FILE = "lock";
const FORMAT = 1;
const CIPHER: CipherGCMTypes = "aes-256-gcm";
const NONCE_BYTES = 12;

/** The sealed documents of DIR (besides the Key Vault's own records). */
export type StateDocument = "system" | "secrets";

export interface LocalStateDirectory {
  /** The absolute path of DIR. */
  readonly directory: string;
  /** True when DIR held a state from an earlier run. */
  readonly resumed: boolean;
  /** Azurite's data directory. */
  readonly azuriteLocation: string;
  /** The local Key Vault engine's storage directory. */
  readonly keyVaultLocation: string;
  /** The local Key Vault engine's master key (derived from the sealing key). */
  keyVaultMasterKey(): Buffer;
  /** A sealed document, opened; undefined when it was never written. */
  read<T>(name: StateDocument): T | undefined;
  /** Seals and writes a document (temporary file, then rename). Synchronous, so it is on disk when it returns. */
  write(name: StateDocument, value: unknown): void;
  /** Releases DIR for another process. */
  close(): Promise<void>;
}

function ioError(what: string, cause: unknown): ShieldError {
  const code = (cause as NodeJS.ErrnoException | undefined)?.code ?? "error";
  return new ShieldError("ERR_IO", `${what} (${code})`, { cause });
}

function isMissing(error: unknown): boolean {
  return (error as NodeJS.ErrnoException | undefined)?.code === "ENOENT";
}

function processRuns(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Opens DIR (creating it, mode 0700, when absent or empty) and takes its lock. ERR_CONFIG when
 * DIR is in use by another running process, holds files but no sealing key, or its sealing key
 * is not 32 bytes or is readable by others.
 */
export async function openLocalState(directory: string): Promise<LocalStateDirectory> {
  if (typeof directory !== "string" || directory === "") throw new TypeError("directory is required");
  const dir = resolve(directory);
  const keyFile = join(dir, SEALING_KEY_FILE);
  let names: string[];
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    names = await readdir(dir);
  } catch (cause) {
    throw ioError(`the state directory ${dir} cannot be opened`, cause);
  }

  // The lock first: a second process must not read a state that another one is writing.
  const lockFile = join(dir, LOCK_FILE);
  const takeLock = async (): Promise<void> => {
    try {
      await writeFile(lockFile, `${process.pid}\n`, { flag: "wx", mode: 0o600 });
    } catch (cause) {
      if ((cause as NodeJS.ErrnoException).code !== "EEXIST") throw ioError(`cannot lock ${dir}`, cause);
      const holder = Number((await readFile(lockFile, "utf8").catch(() => "")).trim());
      if (Number.isSafeInteger(holder) && holder > 0 && holder !== process.pid && processRuns(holder)) {
        throw new ShieldError("ERR_CONFIG", `the state directory ${dir} is in use by process ${holder}`);
      }
      // Left by a process that is gone: take it over.
      await writeFile(lockFile, `${process.pid}\n`, { mode: 0o600 });
    }
  };
  await takeLock();
  const releaseLock = async () => {
    const holder = (await readFile(lockFile, "utf8").catch(() => "")).trim();
    if (holder === String(process.pid)) await rm(lockFile, { force: true });
  };

  try {
    let sealingKey: Buffer;
    let resumed: boolean;
    const others = names.filter((name) => name !== LOCK_FILE);
    if (!others.includes(SEALING_KEY_FILE)) {
      if (others.length > 0) {
        throw new ShieldError(
          "ERR_CONFIG",
          `${dir} holds files but no ${SEALING_KEY_FILE}: not a Shield state directory, or its sealing key is gone (nothing was changed)`,
        );
      }
      sealingKey = randomBytes(32);
      try {
        await writeFile(keyFile, sealingKey.toString("base64") + "\n", { flag: "wx", mode: 0o600 });
      } catch (cause) {
        throw ioError(`cannot write ${keyFile}`, cause);
      }
      resumed = false;
    } else {
      let text: string;
      try {
        const info = await stat(keyFile);
        if ((info.mode & 0o077) !== 0) {
          throw new ShieldError(
            "ERR_CONFIG",
            `${keyFile} is readable by others (mode ${(info.mode & 0o777).toString(8)}); make it 0600`,
          );
        }
        text = await readFile(keyFile, "utf8");
      } catch (cause) {
        if (cause instanceof ShieldError) throw cause;
        throw ioError(`cannot read ${keyFile}`, cause);
      }
      sealingKey = Buffer.from(text.trim(), "base64");
      if (sealingKey.length !== 32 || sealingKey.toString("base64") !== text.trim()) {
        throw new ShieldError("ERR_CONFIG", `${keyFile} does not hold a 32-byte key in base64`);
      }
      resumed = others.includes("system.sealed");
      if (!resumed && others.some((name) => name !== SEALING_KEY_FILE)) {
        throw new ShieldError(
          "ERR_CONFIG",
          `${dir} holds data but no system.sealed: an incomplete or damaged state (nothing was changed)`,
        );
      }
    }

    const derive = (info: string) => Buffer.from(hkdfSync("sha256", sealingKey, Buffer.alloc(0), info, 32));
    const documentKey = derive("shield local state documents");
    sealingKey.fill(0);
    const fileOf = (name: StateDocument) => join(dir, `${name}.sealed`);
    const aadOf = (name: StateDocument) => Buffer.from(`shield-local-state:${name}`, "utf8");

    return {
      directory: dir,
      resumed,
      azuriteLocation: join(dir, "azurite"),
      keyVaultLocation: join(dir, "keyvault"),
      keyVaultMasterKey: () =>
        Buffer.from(
          hkdfSync("sha256", documentKey, Buffer.alloc(0), "shield local key vault master key", 32),
        ),
      read<T>(name: StateDocument): T | undefined {
        const file = fileOf(name);
        let text: string;
        try {
          text = readFileSync(file, "utf8");
        } catch (cause) {
          if (isMissing(cause)) return undefined;
          throw ioError(`cannot read ${file}`, cause);
        }
        try {
          const sealed = JSON.parse(text) as {
            format: number;
            nonce: string;
            ciphertext: string;
            tag: string;
          };
          if (sealed.format !== FORMAT) throw new Error("format");
          const decipher = createDecipheriv(CIPHER, documentKey, Buffer.from(sealed.nonce, "base64"));
          decipher.setAAD(aadOf(name));
          decipher.setAuthTag(Buffer.from(sealed.tag, "base64"));
          const plain = Buffer.concat([
            decipher.update(Buffer.from(sealed.ciphertext, "base64")),
            decipher.final(),
          ]);
          try {
            return JSON.parse(plain.toString("utf8")) as T;
          } finally {
            plain.fill(0);
          }
        } catch (cause) {
          throw new ShieldError(
            "ERR_CONFIG",
            `${file} does not open under ${keyFile} (edited or damaged, or another directory's key)`,
            { cause },
          );
        }
      },
      write(name: StateDocument, value: unknown): void {
        const file = fileOf(name);
        const nonce = randomBytes(NONCE_BYTES);
        const cipher = createCipheriv(CIPHER, documentKey, nonce);
        cipher.setAAD(aadOf(name));
        const plain = Buffer.from(JSON.stringify(value), "utf8");
        let ciphertext: Buffer;
        try {
          ciphertext = Buffer.concat([cipher.update(plain), cipher.final()]);
        } finally {
          plain.fill(0);
        }
        const text = JSON.stringify({
          format: FORMAT,
          nonce: nonce.toString("base64"),
          ciphertext: ciphertext.toString("base64"),
          tag: cipher.getAuthTag().toString("base64"),
        });
        const temporary = `${file}.${randomBytes(6).toString("hex")}.tmp`;
        try {
          const fd = openSync(temporary, "wx", 0o600);
          try {
            writeSync(fd, text);
            fsyncSync(fd);
          } finally {
            closeSync(fd);
          }
          renameSync(temporary, file);
        } catch (cause) {
          throw ioError(`cannot write ${file}`, cause);
        }
      },
      close: releaseLock,
    };
  } catch (error) {
    await releaseLock();
    throw error;
  }
}
