import { randomBytes } from "node:crypto";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { parseSgxQuote } from "../../../core/evidence/sgx/index.js";
import {
  createSimulatedSgxPlatform,
  type SimulatedSgxPlatform,
} from "../../../core/evidence/simulated/sgx.js";
import { createGramineProvider } from "../../../agent/evidence/gramine.js";
import { createFakeGramine, rejectsWithCode, type FakeGramine, type FakeGramineOptions } from "./fakes.js";

let platform: SimulatedSgxPlatform;
const cleanup: (() => Promise<void>)[] = [];

beforeAll(() => {
  platform = createSimulatedSgxPlatform();
});

afterEach(async () => {
  for (const close of cleanup.splice(0)) await close();
});

async function gramine(options: Partial<FakeGramineOptions> = {}): Promise<FakeGramine> {
  const fake = await createFakeGramine({ platform, ...options });
  cleanup.push(() => fake.close());
  return fake;
}

const provider = (fake: FakeGramine) => createGramineProvider({ root: fake.root, files: fake.files });

describe("Gramine provider", () => {
  it("writes user_report_data, reads the quote and checks its REPORT_DATA", async () => {
    const fake = await gramine();
    const data = randomBytes(64);
    const evidence = await provider(fake).collect(data);
    expect(evidence.tee).toBe("sgx");
    if (evidence.format !== "dcap-quote") throw new Error("unreachable");
    const quote = parseSgxQuote(Buffer.from(evidence.quote, "base64url"));
    expect(quote.reportBody.reportData).toEqual(data);
  });

  it("runs concurrent collections one at a time: user_report_data is process-global", async () => {
    const fake = await gramine();
    const slow = createGramineProvider({
      root: fake.root,
      files: {
        ...fake.files,
        readFile: async (path) => {
          // A slow quote read leaves room for another collection's write, were it allowed.
          if (path.endsWith("quote")) await new Promise((resolve) => setTimeout(resolve, 30));
          return fake.files.readFile(path);
        },
      },
    });
    const data = [randomBytes(64), randomBytes(64), randomBytes(64)];
    const evidence = await Promise.all(data.map((bytes) => slow.collect(bytes)));
    evidence.forEach((item, index) => {
      if (item.format !== "dcap-quote") throw new Error("unreachable");
      const quote = parseSgxQuote(Buffer.from(item.quote, "base64url"));
      expect(quote.reportBody.reportData).toEqual(data[index]);
    });
  });

  it("accepts attestation_type with a trailing newline", async () => {
    const fake = await gramine({ attestationType: "dcap\n" });
    expect(await provider(fake).probe()).toEqual({ usable: true });
  });

  it("accepts quotes whose PCK chain MAA fetches itself", async () => {
    const quotes: Buffer[] = [];
    const fake = await gramine({
      quote: (data) => {
        const quote = platform.generateQuote(
          { reportData: data },
          { certificationData: { type: 3, data: randomBytes(16) } },
        );
        quotes.push(quote);
        return quote;
      },
    });
    const data = randomBytes(64);
    const evidence = await provider(fake).collect(data);
    expect(evidence.tee).toBe("sgx");
    if (evidence.format !== "dcap-quote") throw new Error("unreachable");
    // The quote Gramine gave, byte for byte, over this REPORT_DATA, still without a PCK chain.
    const bytes = Buffer.from(evidence.quote, "base64url");
    expect(quotes).toHaveLength(1);
    expect(bytes.equals(quotes[0]!)).toBe(true);
    const quote = parseSgxQuote(bytes, { externalPckChain: true });
    expect(quote.reportBody.reportData).toEqual(data);
    expect(quote.signatureData.certificationData.type).toBe(3);
  });

  it("refuses an attestation type other than dcap", async () => {
    const fake = await gramine({ attestationType: "none" });
    const error = await rejectsWithCode(provider(fake).collect(randomBytes(64)), "ERR_EVIDENCE_UNSUPPORTED");
    expect(error.message).toContain('"none"');
    const probe = await provider(fake).probe();
    expect(probe.usable).toBe(false);
    if (!probe.usable) expect(probe.reason).toContain("not dcap");
  });

  it("fails with ERR_EVIDENCE_UNSUPPORTED without /dev/attestation", async () => {
    const fake = await gramine({ absent: true });
    await rejectsWithCode(provider(fake).collect(randomBytes(64)), "ERR_EVIDENCE_UNSUPPORTED");
    const probe = await provider(fake).probe();
    expect(probe.usable).toBe(false);
    if (!probe.usable) expect(probe.reason).toContain("does not exist");
  });

  it("refuses a quote over other REPORT_DATA", async () => {
    const fake = await gramine({ quote: () => platform.generateQuote({ reportData: Buffer.alloc(64, 9) }) });
    await rejectsWithCode(provider(fake).collect(randomBytes(64)), "ERR_EVIDENCE_REPORT_DATA");
  });

  it("refuses a malformed quote", async () => {
    const truncated = await gramine({
      quote: (data) => platform.generateQuote({ reportData: data }).subarray(0, 500),
    });
    await rejectsWithCode(provider(truncated).collect(randomBytes(64)), "ERR_EVIDENCE_MALFORMED");
    const empty = await gramine({ quote: () => Buffer.alloc(0) });
    await rejectsWithCode(provider(empty).collect(randomBytes(64)), "ERR_EVIDENCE_MALFORMED");
  });

  it("rejects misuse: REPORT_DATA must be 64 bytes", async () => {
    const fake = await gramine();
    await expect(provider(fake).collect(Buffer.alloc(63))).rejects.toThrow(TypeError);
  });
});
