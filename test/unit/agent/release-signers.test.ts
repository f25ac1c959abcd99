import { generateKeyPairSync, randomBytes, type KeyObject, type X509Certificate } from "node:crypto";
import { rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { reachesAnchor, releaseSignerTrust } from "../../../agent/release-signers.js";
import { createRuntimeKey, type RuntimeKey } from "../../../agent/runtime-key.js";
import { buildReleaseResponse } from "../../../core/keywrap/index.js";
import { buildCertificate } from "../../../core/x509/certificate.js";
import { tlv } from "../../../core/x509/der.js";
import { tempDir } from "./fakes.js";

const DAY = 86_400_000;
let dir: string;
let runtimeKey: RuntimeKey;
let ca: { cert: X509Certificate; key: KeyObject };
let leaf: { cert: X509Certificate; key: KeyObject };
let otherHostLeaf: { cert: X509Certificate; key: KeyObject };
let rogue: { cert: X509Certificate; key: KeyObject };
/** A release response signed by a self-signed certificate nobody trusts. */
let rogueResponse: string;

function certificate(
  subject: string,
  issuer: { name: string; key: KeyObject } | undefined,
  options: { isCa?: boolean; host?: string } = {},
): { cert: X509Certificate; key: KeyObject } {
  const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const now = Date.now();
  const cert = buildCertificate({
    subject: [["CN", subject]],
    issuer: [["CN", issuer?.name ?? subject]],
    serialNumber: BigInt(`0x${randomBytes(6).toString("hex")}`),
    notBefore: new Date(now - DAY),
    notAfter: new Date(now + 365 * DAY),
    publicKey,
    signingKey: issuer?.key ?? privateKey,
    signatureAlgorithm: "rsa-sha256",
    ...(options.isCa ? { isCa: true } : {}),
    ...(options.host
      ? {
          extensions: [{ oid: "2.5.29.17", value: tlv(0x30, tlv(0x82, Buffer.from(options.host, "ascii"))) }],
        }
      : {}),
  });
  return { cert, key: privateKey };
}

beforeAll(async () => {
  dir = await tempDir("signers");
  runtimeKey = await createRuntimeKey();
  ca = certificate("Vault CA", undefined, { isCa: true });
  leaf = certificate(
    "contoso release signer",
    { name: "Vault CA", key: ca.key },
    { host: "contoso.vault.azure.net" },
  );
  otherHostLeaf = certificate(
    "fabrikam release signer",
    { name: "Vault CA", key: ca.key },
    {
      host: "fabrikam.vault.azure.net",
    },
  );
  rogue = certificate("rogue", undefined);
  rogueResponse = await releaseSignedBy(rogue, [rogue.cert]);
  await writeFile(join(dir, "ca.pem"), ca.cert.toString());
  await writeFile(join(dir, "bad.pem"), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
  await writeFile(join(dir, "empty.pem"), "nothing here");
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function releaseSignedBy(signer: { cert: X509Certificate; key: KeyObject }, chain: X509Certificate[]) {
  return buildReleaseResponse({
    keyId: "https://contoso.vault.azure.net/keys/orders/v1",
    kty: "oct-HSM",
    keyOps: ["encrypt"],
    attributes: { exportable: true },
    enc: "RSA_AES_KEY_WRAP_256",
    targetKey: runtimeKey.publicJwk,
    plaintext: randomBytes(32),
    signer: { privateKey: signer.key, certificateChain: chain },
    requestApiVersion: "7.4",
    at: new Date(),
  });
}

describe("release signer trust", () => {
  it("is required: no CA file and no host is a configuration error", async () => {
    await expect(releaseSignerTrust({})).rejects.toMatchObject({ code: "ERR_CONFIG" });
  });

  it("refuses a CA file that cannot be read, is malformed or holds no certificate", async () => {
    for (const file of ["missing.pem", "bad.pem", "empty.pem"]) {
      await expect(releaseSignerTrust({ caFile: join(dir, file) })).rejects.toMatchObject({
        code: "ERR_CONFIG",
      });
    }
  });

  it("with a CA file: trusts chains issued by it, with or without the CA in x5c", async () => {
    const trust = await releaseSignerTrust({ caFile: join(dir, "ca.pem") });
    if (typeof trust !== "function") throw new Error("a predicate was expected");
    expect(trust([leaf.cert])).toBe(true);
    expect(trust([leaf.cert, ca.cert])).toBe(true);
    expect(trust([rogue.cert])).toBe(false);
    const released = runtimeKey.unwrapReleased(await releaseSignedBy(leaf, [leaf.cert, ca.cert]), {
      trustedSigners: trust,
    });
    expect(released.signerTrusted).toBe(true);
    expect(() => runtimeKey.unwrapReleased(rogueResponse, { trustedSigners: trust })).toThrow(
      expect.objectContaining({ code: "ERR_RELEASE_RESPONSE_SIGNATURE" }) as Error,
    );
  });

  it("with a host: the signing certificate must be issued to that host", async () => {
    const trust = await releaseSignerTrust({ caFile: join(dir, "ca.pem"), host: "contoso.vault.azure.net" });
    if (typeof trust !== "function") throw new Error("a predicate was expected");
    expect(trust([leaf.cert, ca.cert])).toBe(true);
    expect(trust([otherHostLeaf.cert, ca.cert])).toBe(false);
  });

  it("with only a host: the chain must reach a public root CA, which a private chain does not", async () => {
    const trust = await releaseSignerTrust({ host: "contoso.vault.azure.net" });
    if (typeof trust !== "function") throw new Error("a predicate was expected");
    expect(trust([leaf.cert, ca.cert])).toBe(false);
  });

  it("reachesAnchor: the anchor itself in the chain, or issuing its last certificate", () => {
    expect(reachesAnchor([ca.cert], [ca.cert])).toBe(true);
    expect(reachesAnchor([leaf.cert], [ca.cert])).toBe(true);
    expect(reachesAnchor([leaf.cert], [rogue.cert])).toBe(false);
    expect(reachesAnchor([], [ca.cert])).toBe(false);
  });
});
