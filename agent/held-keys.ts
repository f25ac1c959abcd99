/**
 * The agent's key store: the keys Key Vault released to this enclave, held only in memory, by
 * name → version → material, with a pointer to the version currently served. Material is kept
 * as bytes the store owns — raw key bytes for `oct`, PKCS #8 DER for RSA and EC — each in its
 * own allocation (never a slice of Node's shared buffer pool), so that wiping can overwrite it
 * with zeros. Wiping overwrites first and then drops every reference. Readers get the store's
 * own Buffer, are asked not to keep it, and find it zeroed if they do; what they derive from it
 * (the key API's copies, PEM and JSON strings) is theirs to wipe, and JavaScript strings cannot
 * be wiped at all: they stay in the heap until the garbage collector reuses the memory.
 *
 * Version policy: the current version and the one before it are kept. A rotation makes the new
 * version current and keeps the old one for applications that still read data protected under
 * it (`GET /keys/{name}?version=`); a third version wipes the oldest. Revoked versions are
 * remembered (names and versions only, held or not, at most {@link REMEMBERED_VERSIONS_PER_KEY}
 * per key) so the key API can answer "revoked" instead of "unknown" and so that no later
 * result installs them again. The versions installed are remembered in order, so that a replayed
 * older release can never move the current version back.
 */
import { ShieldError } from "../core/errors.js";
import type { ReleasedKeyType } from "../core/keywrap/index.js";

/** How many versions of one key are held: the current one and its predecessor. */
export const HELD_VERSIONS_PER_KEY = 2;

/** Revoked and installed versions remembered per key; the oldest are forgotten first. */
export const REMEMBERED_VERSIONS_PER_KEY = 64;

/** Why a version may not be installed: revoked, or older than one installed before. */
export type InstallRefusal = "revoked" | "superseded";

export interface HeldKeyVersion {
  readonly name: string;
  readonly version: string;
  readonly kty: ReleasedKeyType;
  /**
   * `oct`: the key bytes; RSA and EC: the private key as PKCS #8 DER. The store's own Buffer:
   * zeroed when the version is wiped. Use it and let it go; never keep it.
   */
  readonly material: Buffer;
  readonly receivedAt: Date;
}

/** What `summary()` shows: names and versions, never material. */
export interface HeldKeySummary {
  readonly name: string;
  readonly current: string;
  /** Newest first. */
  readonly versions: readonly string[];
}

export interface InstallResult {
  /** False when this version was already held (its material is kept, the new copy zeroed). */
  readonly installed: boolean;
  /** True when the current version changed. */
  readonly currentChanged: boolean;
  /** Older versions wiped to keep HELD_VERSIONS_PER_KEY. */
  readonly dropped: readonly string[];
}

/** Read access for the key API and status: no installing, no wiping. */
export interface HeldKeysView {
  get(name: string, version?: string): HeldKeyVersion | undefined;
  currentVersion(name: string): string | undefined;
  /** True when `version` of `name` (any version when omitted) was wiped because it was revoked. */
  wasRevoked(name: string, version?: string): boolean;
  summary(): HeldKeySummary[];
  /**
   * The versions of `name` installed in this process, oldest first (held or not, at most
   * {@link REMEMBERED_VERSIONS_PER_KEY}): the only order Key Vault's versions have here.
   */
  installOrder(name: string): readonly string[];
  /** Versions held across all keys. */
  readonly size: number;
}

interface KeyEntry {
  current: string;
  /** Oldest first. */
  readonly versions: Map<string, HeldKeyVersion>;
}

export class HeldKeys implements HeldKeysView {
  readonly #keys = new Map<string, KeyEntry>();
  readonly #revoked = new Map<string, Set<string>>();
  /** Versions installed per key, oldest first; the last one is the newest ever installed. */
  readonly #installed = new Map<string, string[]>();

  /**
   * Takes a copy of `material` (the caller zeroes its own) and makes `version` current. A version
   * already held keeps its first copy, so Buffers handed out earlier stay the ones that are wiped.
   * A revoked version, or one installed before a newer one (see {@link refusal}), is refused with
   * ERR_RELEASE_RESPONSE_MALFORMED and nothing changes.
   */
  install(
    name: string,
    version: string,
    kty: ReleasedKeyType,
    material: Uint8Array,
    receivedAt: Date,
  ): InstallResult {
    if (typeof name !== "string" || name === "" || typeof version !== "string" || version === "") {
      throw new TypeError("name and version must be non-empty strings");
    }
    if (!(material instanceof Uint8Array) || material.length === 0) {
      throw new TypeError("material must be a non-empty Uint8Array");
    }
    let entry = this.#keys.get(name);
    if (entry?.versions.has(version)) {
      // A result re-delivering a held version (a late duplicate, an older round) changes
      // nothing: in particular it never moves the pointer back to an older version.
      return { installed: false, currentChanged: false, dropped: [] };
    }
    const refused = this.refusal(name, version);
    if (refused !== undefined) throw refusedVersion(name, version, refused);
    // Buffer.alloc never hands out pooled memory: zeroing this touches nothing else.
    const owned = Buffer.alloc(material.length);
    owned.set(material);
    const held: HeldKeyVersion = Object.freeze({ name, version, kty, material: owned, receivedAt });
    if (entry === undefined) {
      entry = { current: version, versions: new Map() };
      this.#keys.set(name, entry);
    }
    entry.versions.set(version, held);
    entry.current = version;
    remember(this.#installed, name, version);
    const dropped: string[] = [];
    while (entry.versions.size > HELD_VERSIONS_PER_KEY) {
      const oldest = entry.versions.keys().next().value!;
      this.#wipe(entry, oldest);
      dropped.push(oldest);
    }
    return { installed: true, currentChanged: true, dropped };
  }

  get(name: string, version?: string): HeldKeyVersion | undefined {
    const entry = this.#keys.get(name);
    if (entry === undefined) return undefined;
    return entry.versions.get(version ?? entry.current);
  }

  has(name: string, version: string): boolean {
    return this.#keys.get(name)?.versions.has(version) ?? false;
  }

  currentVersion(name: string): string | undefined {
    return this.#keys.get(name)?.current;
  }

  /**
   * Why `install` would refuse `version` of `name`, or undefined when it may be installed (or is
   * already held): a revoked version is never installed again, and neither is a version that was
   * installed before the newest one installed (a replayed older release would roll keys back).
   */
  refusal(name: string, version: string): InstallRefusal | undefined {
    if (this.has(name, version)) return undefined;
    if (this.#revoked.get(name)?.has(version) === true) return "revoked";
    const installed = this.#installed.get(name) ?? [];
    if (installed.includes(version) && installed.at(-1) !== version) return "superseded";
    return undefined;
  }

  /**
   * Remembers that `version` of `name` was revoked, whether it is held or not, so that no later
   * result installs it. Wiping a held version is `wipeVersion`'s job.
   */
  markRevoked(name: string, version: string): void {
    if (typeof name !== "string" || name === "" || typeof version !== "string" || version === "") {
      throw new TypeError("name and version must be non-empty strings");
    }
    this.#markRevoked(name, version);
  }

  wasRevoked(name: string, version?: string): boolean {
    const versions = this.#revoked.get(name);
    if (versions === undefined) return false;
    return version === undefined ? versions.size > 0 : versions.has(version);
  }

  /**
   * Wipes one version. When it is the current one, the key has no current version any more and
   * is dropped entirely (the agent revokes itself in that case, see state-machine.ts).
   */
  wipeVersion(name: string, version: string, options: { revoked: boolean }): boolean {
    const entry = this.#keys.get(name);
    if (entry === undefined || !entry.versions.has(version)) return false;
    if (options.revoked) this.#markRevoked(name, version);
    if (entry.current === version) {
      for (const held of [...entry.versions.keys()]) this.#wipe(entry, held);
      this.#keys.delete(name);
      return true;
    }
    this.#wipe(entry, version);
    return true;
  }

  /** Overwrites every held key with zeros and drops it. Returns how many versions were wiped. */
  wipeAll(options: { revoked: boolean } = { revoked: false }): number {
    let wiped = 0;
    for (const [name, entry] of this.#keys) {
      for (const version of [...entry.versions.keys()]) {
        if (options.revoked) this.#markRevoked(name, version);
        this.#wipe(entry, version);
        wiped++;
      }
    }
    this.#keys.clear();
    return wiped;
  }

  summary(): HeldKeySummary[] {
    return [...this.#keys].map(([name, entry]) => ({
      name,
      current: entry.current,
      versions: [...entry.versions.keys()].reverse(),
    }));
  }

  installOrder(name: string): readonly string[] {
    return [...(this.#installed.get(name) ?? [])];
  }

  get size(): number {
    let count = 0;
    for (const entry of this.#keys.values()) count += entry.versions.size;
    return count;
  }

  #wipe(entry: KeyEntry, version: string): void {
    entry.versions.get(version)?.material.fill(0);
    entry.versions.delete(version);
  }

  #markRevoked(name: string, version: string): void {
    let versions = this.#revoked.get(name);
    if (versions === undefined) {
      versions = new Set();
      this.#revoked.set(name, versions);
    }
    versions.add(version);
    // Sets iterate in insertion order: the first is the oldest revocation.
    if (versions.size > REMEMBERED_VERSIONS_PER_KEY) versions.delete(versions.values().next().value!);
  }
}

/** Appends `version` to `name`'s list (moving it to the end), keeping the newest entries only. */
function remember(lists: Map<string, string[]>, name: string, version: string): void {
  const list = (lists.get(name) ?? []).filter((seen) => seen !== version);
  list.push(version);
  lists.set(name, list.slice(-REMEMBERED_VERSIONS_PER_KEY));
}

function refusedVersion(name: string, version: string, refusal: InstallRefusal): ShieldError {
  return new ShieldError(
    "ERR_RELEASE_RESPONSE_MALFORMED",
    refusal === "revoked"
      ? `key ${name} version ${version} was revoked`
      : `key ${name} version ${version} is older than a version already installed`,
    {
      violations: [
        {
          field: "version",
          expected:
            refusal === "revoked" ? "a version not revoked" : "the newest version installed or a new one",
          actual: version,
        },
      ],
    },
  );
}
