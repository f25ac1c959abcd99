import { randomBytes } from "node:crypto";
import { lstat, open, readFile, readdir, rm, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { HELD_VERSIONS_PER_KEY, HeldKeys, REMEMBERED_VERSIONS_PER_KEY } from "../../../agent/held-keys.js";
import { openKeyFiles } from "../../../agent/key-files.js";
import { keyFileBytes } from "../../../agent/key-format.js";
import { tempDir } from "./fakes.js";

const AT = new Date("2030-01-01T00:00:00Z");

describe("held keys", () => {
  it("keeps its own copy: the caller's buffer can be zeroed, and wiping touches nothing else", () => {
    const store = new HeldKeys();
    const source = randomBytes(32);
    const expected = Buffer.from(source);
    // A pooled neighbour: small Buffer.from copies share Node's pool.
    const neighbour = Buffer.from("neighbour bytes");
    store.install("orders", "v1", "oct-HSM", source, AT);
    source.fill(0);
    const held = store.get("orders")!;
    expect(held.material.equals(expected)).toBe(true);
    expect(held.material.byteOffset).toBe(0);
    expect(held.material.buffer.byteLength).toBe(32);
    store.wipeAll();
    expect(held.material.equals(Buffer.alloc(32))).toBe(true);
    expect(neighbour.toString()).toBe("neighbour bytes");
  });

  it("serves the newest version as current and keeps one version before it", () => {
    const store = new HeldKeys();
    const v1 = randomBytes(32);
    store.install("orders", "v1", "oct-HSM", v1, AT);
    const first = store.get("orders", "v1")!;
    expect(store.install("orders", "v2", "oct-HSM", randomBytes(32), AT)).toEqual({
      installed: true,
      currentChanged: true,
      dropped: [],
    });
    expect(store.currentVersion("orders")).toBe("v2");
    expect(store.get("orders", "v1")!.material.equals(v1)).toBe(true);
    const third = store.install("orders", "v3", "oct-HSM", randomBytes(32), AT);
    expect(third.dropped).toEqual(["v1"]);
    expect(HELD_VERSIONS_PER_KEY).toBe(2);
    expect(store.get("orders", "v1")).toBeUndefined();
    expect(first.material.every((byte) => byte === 0)).toBe(true);
    expect(store.summary()).toEqual([{ name: "orders", current: "v3", versions: ["v3", "v2"] }]);
    expect(store.size).toBe(2);
  });

  it("a version already held keeps its first copy and never moves the pointer back", () => {
    const store = new HeldKeys();
    store.install("orders", "v1", "oct-HSM", randomBytes(32), AT);
    store.install("orders", "v2", "oct-HSM", randomBytes(32), AT);
    const held = store.get("orders", "v1")!;
    expect(store.install("orders", "v1", "oct-HSM", randomBytes(32), AT)).toEqual({
      installed: false,
      currentChanged: false,
      dropped: [],
    });
    expect(store.get("orders", "v1")).toBe(held);
    expect(store.currentVersion("orders")).toBe("v2");
  });

  it("wiping a revoked older version keeps the current one and remembers the revocation", () => {
    const store = new HeldKeys();
    store.install("orders", "v1", "oct-HSM", randomBytes(32), AT);
    store.install("orders", "v2", "oct-HSM", randomBytes(32), AT);
    const old = store.get("orders", "v1")!;
    expect(store.wipeVersion("orders", "v1", { revoked: true })).toBe(true);
    expect(old.material.every((byte) => byte === 0)).toBe(true);
    expect(store.get("orders", "v1")).toBeUndefined();
    expect(store.currentVersion("orders")).toBe("v2");
    expect(store.wasRevoked("orders", "v1")).toBe(true);
    expect(store.wasRevoked("orders", "v2")).toBe(false);
    expect(store.wipeVersion("orders", "v9", { revoked: true })).toBe(false);
  });

  it("wiping the current version drops the key", () => {
    const store = new HeldKeys();
    store.install("orders", "v1", "oct-HSM", randomBytes(32), AT);
    store.install("orders", "v2", "oct-HSM", randomBytes(32), AT);
    const held = [store.get("orders", "v1")!, store.get("orders", "v2")!];
    store.wipeVersion("orders", "v2", { revoked: true });
    expect(store.size).toBe(0);
    expect(store.currentVersion("orders")).toBeUndefined();
    for (const key of held) expect(key.material.every((byte) => byte === 0)).toBe(true);
  });

  it("wipeAll zeroes every returned buffer and leaves the store empty", () => {
    const store = new HeldKeys();
    store.install("a", "1", "oct-HSM", randomBytes(16), AT);
    store.install("b", "1", "RSA-HSM", randomBytes(1200), AT);
    const held = [store.get("a")!, store.get("b")!];
    expect(store.wipeAll({ revoked: true })).toBe(2);
    expect(store.size).toBe(0);
    expect(store.summary()).toEqual([]);
    expect(store.get("a")).toBeUndefined();
    for (const key of held) expect(key.material.every((byte) => byte === 0)).toBe(true);
    expect(store.wasRevoked("a")).toBe(true);
    // A revoked version is never installed again, whatever result brings it.
    expect(() => store.install("a", "1", "oct-HSM", randomBytes(16), AT)).toThrow(
      expect.objectContaining({ code: "ERR_RELEASE_RESPONSE_MALFORMED" }),
    );
    expect(store.wasRevoked("a", "1")).toBe(true);
    expect(store.size).toBe(0);
  });

  it("remembers revocations of versions it does not hold and refuses to install them", () => {
    const store = new HeldKeys();
    store.install("orders", "v1", "oct-HSM", randomBytes(32), AT);
    store.markRevoked("orders", "v2");
    expect(store.refusal("orders", "v2")).toBe("revoked");
    expect(store.wasRevoked("orders", "v2")).toBe(true);
    expect(() => store.install("orders", "v2", "oct-HSM", randomBytes(32), AT)).toThrow(
      expect.objectContaining({ code: "ERR_RELEASE_RESPONSE_MALFORMED" }),
    );
    expect(store.currentVersion("orders")).toBe("v1");
    expect(store.get("orders", "v2")).toBeUndefined();
  });

  it("never moves the current version back to one installed before a newer one", () => {
    const store = new HeldKeys();
    for (const version of ["v1", "v2", "v3"])
      store.install("orders", version, "oct-HSM", randomBytes(32), AT);
    expect(store.get("orders", "v1")).toBeUndefined();
    expect(store.refusal("orders", "v1")).toBe("superseded");
    expect(() => store.install("orders", "v1", "oct-HSM", randomBytes(32), AT)).toThrow(
      expect.objectContaining({ code: "ERR_RELEASE_RESPONSE_MALFORMED" }),
    );
    expect(store.currentVersion("orders")).toBe("v3");
    // After a lapse wiped everything, the newest version installed may come back.
    store.wipeAll();
    expect(store.refusal("orders", "v3")).toBeUndefined();
    expect(store.install("orders", "v3", "oct-HSM", randomBytes(32), AT).currentChanged).toBe(true);
    expect(store.refusal("orders", "v2")).toBe("superseded");
  });

  it("remembers a bounded number of revoked versions per key", () => {
    const store = new HeldKeys();
    for (let i = 0; i <= REMEMBERED_VERSIONS_PER_KEY; i++) store.markRevoked("orders", `v${i}`);
    expect(store.wasRevoked("orders", "v0")).toBe(false);
    expect(store.wasRevoked("orders", `v${REMEMBERED_VERSIONS_PER_KEY}`)).toBe(true);
  });

  it("refuses misuse with TypeError", () => {
    const store = new HeldKeys();
    expect(() => store.install("", "v", "oct", randomBytes(1), AT)).toThrow(TypeError);
    expect(() => store.install("a", "v", "oct", new Uint8Array(0), AT)).toThrow(TypeError);
  });
});

describe("key files", () => {
  const dirs: string[] = [];
  afterEach(async () => {
    for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
  });

  it("writes the current version atomically with mode 0600 and removes it again", async () => {
    const dir = await tempDir("keyfiles");
    dirs.push(dir);
    const files = await openKeyFiles({ dir, names: ["orders", "ledger"] });
    const store = new HeldKeys();
    const bytes = randomBytes(32);
    store.install("orders", "v1", "oct-HSM", bytes, AT);
    await files.write(store.get("orders")!);
    expect((await readFile(join(dir, "orders"))).equals(bytes)).toBe(true);
    expect((await stat(join(dir, "orders"))).mode & 0o777).toBe(0o600);
    const newer = randomBytes(32);
    store.install("orders", "v2", "oct-HSM", newer, AT);
    await files.write(store.get("orders")!);
    expect((await readFile(join(dir, "orders"))).equals(newer)).toBe(true);
    expect(await readdir(dir)).toEqual(["orders"]);
    await files.removeAll();
    expect(await readdir(dir)).toEqual([]);
  });

  it("removes files an earlier run left, and only those of configured keys", async () => {
    const dir = await tempDir("keyfiles");
    dirs.push(dir);
    await writeFile(join(dir, "orders"), "old key");
    await writeFile(join(dir, ".orders.0123456789abcdef.tmp"), "half");
    await writeFile(join(dir, "unrelated"), "keep");
    await openKeyFiles({ dir, names: ["orders"] });
    expect(await readdir(dir)).toEqual(["unrelated"]);
  });

  it("overwrites the replaced version's file on rotation, and leaves the store's Buffer alone", async () => {
    const dir = await tempDir("keyfiles");
    dirs.push(dir);
    const files = await openKeyFiles({ dir, names: ["orders"] });
    const store = new HeldKeys();
    store.install("orders", "v1", "oct-HSM", randomBytes(32), AT);
    await files.write(store.get("orders")!);
    // A reader that still has the old file open sees zeros once the new version is in place.
    const reader = await open(join(dir, "orders"), "r");
    try {
      store.install("orders", "v2", "oct-HSM", randomBytes(32), AT);
      await files.write(store.get("orders")!);
      const old = Buffer.alloc(32);
      await reader.read(old, 0, 32, 0);
      expect(old.every((byte) => byte === 0)).toBe(true);
    } finally {
      await reader.close();
    }
    expect(store.get("orders", "v1")!.material.every((byte) => byte === 0)).toBe(false);
    expect(store.get("orders", "v2")!.material.every((byte) => byte === 0)).toBe(false);
    expect(keyFileBytes(store.get("orders")!)).not.toBe(store.get("orders")!.material);
  });

  it("never follows a symbolic link planted in place of a key file", async () => {
    const dir = await tempDir("keyfiles");
    const elsewhere = await tempDir("elsewhere");
    dirs.push(dir, elsewhere);
    const victim = join(elsewhere, "victim");
    await writeFile(victim, "precious");
    await symlink(victim, join(dir, "orders"));
    const files = await openKeyFiles({ dir, names: ["orders", "ledger"] });
    expect(await readdir(dir)).toEqual([]);
    await symlink(victim, join(dir, "ledger"));
    files.removeAllSync();
    await expect(lstat(join(dir, "ledger"))).rejects.toMatchObject({ code: "ENOENT" });
    await symlink(victim, join(dir, "ledger"));
    await files.remove("ledger");
    expect(await readFile(victim, "utf8")).toBe("precious");
  });

  it("removeAllSync overwrites and removes every key file at once", async () => {
    const dir = await tempDir("keyfiles");
    dirs.push(dir);
    const files = await openKeyFiles({ dir, names: ["orders"] });
    const store = new HeldKeys();
    store.install("orders", "v1", "oct-HSM", randomBytes(32), AT);
    await files.write(store.get("orders")!);
    const reader = await open(join(dir, "orders"), "r");
    try {
      files.removeAllSync();
      expect(await readdir(dir)).toEqual([]);
      const old = Buffer.alloc(32);
      await reader.read(old, 0, 32, 0);
      expect(old.every((byte) => byte === 0)).toBe(true);
    } finally {
      await reader.close();
    }
  });

  it("refuses a missing directory and unknown key names", async () => {
    await expect(openKeyFiles({ dir: "/nonexistent/shield-keys", names: ["a"] })).rejects.toMatchObject({
      code: "ERR_CONFIG",
    });
    const dir = await tempDir("keyfiles");
    dirs.push(dir);
    const files = await openKeyFiles({ dir, names: ["a"] });
    await expect(files.remove("b")).rejects.toThrow(TypeError);
  });
});
