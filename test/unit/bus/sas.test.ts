/**
 * Shared Access Signature checks of the local Service Bus endpoint (adapters/local/servicebus/
 * sas.ts), without a connection: tokens made the way the SDK makes them are accepted, and each
 * kind of bad token is refused with Service Bus's reason and without its material.
 */
import { createHmac, randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  SasRefusal,
  covers,
  createSasToken,
  verifySasToken,
  type SharedAccessRule,
} from "../../../adapters/local/servicebus/sas.js";

const NOW = new Date("2026-03-01T12:00:00Z");
const LATER = new Date(NOW.getTime() + 3_600_000);
const ROOT: SharedAccessRule = {
  keyName: "root",
  key: randomBytes(32).toString("base64"),
  rights: ["Manage"],
};
const QUEUE_RULE: SharedAccessRule = {
  keyName: "requests-send",
  key: randomBytes(32).toString("base64"),
  rights: ["Send"],
  entity: "attestation-requests",
};
const RULES = [ROOT, QUEUE_RULE];

function refusal(token: string, rules = RULES, now = NOW): SasRefusal {
  try {
    verifySasToken(token, rules, now);
  } catch (error) {
    expect(error).toBeInstanceOf(SasRefusal);
    return error as SasRefusal;
  }
  throw new Error("the token was accepted");
}

describe("SAS tokens at the local Service Bus endpoint", () => {
  it("accepts a token made as the SDK makes it, for the resource it names", () => {
    const token = createSasToken("sb://127.0.0.1:5672/attestation-requests", ROOT.keyName, ROOT.key, LATER);
    expect(token).toMatch(
      /^SharedAccessSignature sr=sb%3A%2F%2F127\.0\.0\.1%3A5672%2Fattestation-requests&sig=.+&se=\d+&skn=root$/,
    );
    const grant = verifySasToken(token, RULES, NOW);
    expect(grant).toMatchObject({
      resourcePath: "attestation-requests",
      rights: ["Manage"],
      keyName: "root",
    });
    expect(grant.expiresAt.getTime()).toBe(Math.floor(LATER.getTime() / 1000) * 1000);
  });

  it("checks the HMAC-SHA256 over the encoded resource and the expiry, keyed with the key's text", () => {
    const encoded = encodeURIComponent("sb://ns/attestation-requests");
    const se = String(Math.floor(LATER.getTime() / 1000));
    const sig = createHmac("sha256", ROOT.key).update(`${encoded}\n${se}`).digest("base64");
    const token = `SharedAccessSignature sr=${encoded}&sig=${encodeURIComponent(sig)}&se=${se}&skn=root`;
    expect(verifySasToken(token, RULES, NOW).resourcePath).toBe("attestation-requests");
    // The same signature over a longer expiry is no longer valid.
    const extended = token.replace(`se=${se}`, `se=${Number(se) + 3600}`);
    expect(refusal(extended).message).toMatch(/^InvalidSignature/);
  });

  it("refuses a wrong key, an unknown key name and a changed resource alike, as an invalid signature", () => {
    const wrongKey = createSasToken("sb://ns/q", ROOT.keyName, randomBytes(32).toString("base64"), LATER);
    const unknownName = createSasToken("sb://ns/q", "nobody", ROOT.key, LATER);
    const good = createSasToken("sb://ns/q", ROOT.keyName, ROOT.key, LATER);
    const otherResource = good.replace("sr=sb%3A%2F%2Fns%2Fq", "sr=sb%3A%2F%2Fns%2Fother");
    for (const token of [wrongKey, unknownName, otherResource]) {
      const refused = refusal(token);
      expect(refused.message).toBe("InvalidSignature: The token has an invalid signature.");
      expect(refused.message).not.toContain(ROOT.key);
    }
  });

  it("refuses an expired token, naming the expiry as Service Bus does", () => {
    const token = createSasToken("sb://ns/q", ROOT.keyName, ROOT.key, new Date(NOW.getTime() - 1_000));
    expect(refusal(token).message).toBe(
      "ExpiredToken: The token is expired. Expiration time: '2026-03-01 11:59:59Z'",
    );
    // Expiry is checked as of the clock given: the same token was fine a minute earlier.
    expect(() => verifySasToken(token, RULES, new Date(NOW.getTime() - 60_000))).not.toThrow();
  });

  it("keeps an entity rule's tokens within its entity", () => {
    const inside = createSasToken("sb://ns/attestation-requests", QUEUE_RULE.keyName, QUEUE_RULE.key, LATER);
    expect(verifySasToken(inside, RULES, NOW).rights).toEqual(["Send"]);
    const outside = createSasToken("sb://ns/attestation-results", QUEUE_RULE.keyName, QUEUE_RULE.key, LATER);
    expect(refusal(outside).message).toMatch(/^InvalidAudience/);
    const namespace = createSasToken("sb://ns/", QUEUE_RULE.keyName, QUEUE_RULE.key, LATER);
    expect(refusal(namespace).message).toMatch(/^InvalidAudience/);
  });

  it("refuses what is not a shared access signature", () => {
    const good = createSasToken("sb://ns/q", ROOT.keyName, ROOT.key, LATER);
    for (const token of [
      "Bearer abc",
      good.replace("&skn=root", ""),
      `${good}&sr=sb%3A%2F%2Fns%2Fother`,
      good.replace(/se=\d+/, "se=soon"),
      "x".repeat(5000),
    ]) {
      expect(refusal(token).message).toMatch(/^(InvalidToken|InvalidSignature)/);
    }
    expect(refusal(42 as unknown as string).message).toMatch(/^InvalidToken/);
  });

  it("covers a resource and what lies under it, by path segment", () => {
    expect(covers("", "q")).toBe(true);
    expect(covers("q", "q")).toBe(true);
    expect(covers("q", "Q/$management")).toBe(true);
    expect(covers("q", "queue")).toBe(false);
    expect(covers("q/$management", "q")).toBe(false);
  });
});
