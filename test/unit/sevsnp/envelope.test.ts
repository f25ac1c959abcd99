import { beforeAll, describe, expect, it } from "vitest";
import {
  MAA_SNP_ENVELOPE_LIMITS,
  buildMaaSnpEnvelope,
  parseMaaSnpEnvelope,
} from "../../../core/evidence/sevsnp/index.js";
import {
  createSimulatedSnpPlatform,
  type SimulatedSnpPlatform,
} from "../../../core/evidence/simulated/sevsnp.js";
import { derToPem } from "../../../core/x509/certificate.js";
import { expectCode } from "./helpers.js";

/** Padded base64url, as Go's base64.URLEncoding writes it. */
const b64u = (data: string | Uint8Array): string =>
  Buffer.from(data).toString("base64").replaceAll("+", "-").replaceAll("/", "_");

describe("MAA SEV-SNP envelope", () => {
  let platform: SimulatedSnpPlatform;
  let report: Buffer;
  let certChain: string;

  beforeAll(() => {
    platform = createSimulatedSnpPlatform({ rsaBits: 2048 });
    report = platform.signReport();
    certChain = platform.leafPem + platform.chainPem;
  });

  const envelope = (outer: Record<string, unknown>): string => b64u(JSON.stringify(outer));

  it("round-trips report, VCEK, chain and UVM endorsements", () => {
    const uvm = [Buffer.from("cose-sign1-a"), Buffer.from([0xd2, 0x84, 0x00, 0xff])];
    const built = buildMaaSnpEnvelope({
      report,
      vcek: platform.leaf,
      chain: [platform.intermediate, platform.ark],
      uvmEndorsements: uvm,
    });
    expect(built).toMatch(/^[A-Za-z0-9_-]+=*$/);
    const parsed = parseMaaSnpEnvelope(built);
    expect(parsed.report).toEqual(report);
    expect(parsed.vcek.raw).toEqual(platform.leaf.raw);
    expect(parsed.chain.map((c) => c.raw)).toEqual([platform.intermediate.raw, platform.ark.raw]);
    expect(parsed.endorsements?.uvm).toEqual(uvm);
  });

  it("builds from PEM text and omits Endorsements when there are none", () => {
    const built = buildMaaSnpEnvelope({ report, vcek: platform.leafPem, chain: platform.chainPem });
    const outer = JSON.parse(Buffer.from(built, "base64url").toString("utf8")) as Record<string, string>;
    expect(Object.keys(outer).sort()).toEqual(["SnpReport", "VcekCertChain"]);
    expect(Buffer.from(outer.SnpReport!, "base64url")).toEqual(report);
    expect(parseMaaSnpEnvelope(built).endorsements).toBeUndefined();
  });

  it("reads the sidecar's shape: padded, with an empty Endorsements string and extra keys", () => {
    const parsed = parseMaaSnpEnvelope(
      envelope({ SnpReport: b64u(report), VcekCertChain: b64u(certChain), Endorsements: "", Extra: 1 }),
    );
    expect(parsed.chain).toHaveLength(2);
    expect(parsed.endorsements).toBeUndefined();
  });

  it("reads unpadded base64url at every layer", () => {
    const strip = (s: string): string => s.replace(/=+$/, "");
    const inner = strip(b64u(JSON.stringify({ Uvm: [strip(b64u("x"))] })));
    const outer = strip(
      b64u(
        JSON.stringify({
          SnpReport: strip(b64u(report)),
          VcekCertChain: strip(b64u(certChain)),
          Endorsements: inner,
        }),
      ),
    );
    const parsed = parseMaaSnpEnvelope(outer);
    expect(parsed.report).toEqual(report);
    expect(parsed.endorsements?.uvm).toEqual([Buffer.from("x")]);
  });

  describe("rejects malformed envelopes", () => {
    const cases: [string, () => string][] = [
      ["not base64url", () => "abc+/def"],
      ["bad padding", () => "QQ="],
      ["impossible length", () => "QUJDR"],
      ["not JSON", () => b64u("{not json")],
      ["JSON but not an object", () => b64u("[1,2]")],
      ["missing SnpReport", () => envelope({ VcekCertChain: b64u(certChain) })],
      ["missing VcekCertChain", () => envelope({ SnpReport: b64u(report) })],
      ["SnpReport not a string", () => envelope({ SnpReport: 5, VcekCertChain: b64u(certChain) })],
      [
        "SnpReport truncated",
        () => envelope({ SnpReport: b64u(report.subarray(0, 1000)), VcekCertChain: b64u(certChain) }),
      ],
      [
        "SnpReport with a standard-base64 character",
        () => envelope({ SnpReport: b64u(report).replace(/^./, "+"), VcekCertChain: b64u(certChain) }),
      ],
      ["no certificate", () => envelope({ SnpReport: b64u(report), VcekCertChain: b64u("hello") })],
      [
        "too many certificates",
        () => envelope({ SnpReport: b64u(report), VcekCertChain: b64u(certChain.repeat(4)) }),
      ],
      [
        "Endorsements not JSON",
        () =>
          envelope({ SnpReport: b64u(report), VcekCertChain: b64u(certChain), Endorsements: b64u("nope") }),
      ],
      [
        "Endorsements wrong shape",
        () =>
          envelope({
            SnpReport: b64u(report),
            VcekCertChain: b64u(certChain),
            Endorsements: b64u('{"Uvm":"x"}'),
          }),
      ],
      [
        "empty UVM endorsement",
        () =>
          envelope({
            SnpReport: b64u(report),
            VcekCertChain: b64u(certChain),
            Endorsements: b64u('{"Uvm":[""]}'),
          }),
      ],
    ];
    for (const [label, make] of cases) {
      it(label, () => {
        expectCode(() => parseMaaSnpEnvelope(make()), "ERR_EVIDENCE_MALFORMED");
      });
    }

    it("a certificate that does not parse is a chain failure: garbage, or truncated", () => {
      const garbage = envelope({
        SnpReport: b64u(report),
        VcekCertChain: b64u("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
      });
      expectCode(() => parseMaaSnpEnvelope(garbage), "ERR_EVIDENCE_CHAIN");
      const ask = platform.intermediate.raw;
      const truncated = derToPem(platform.leaf.raw) + derToPem(ask.subarray(0, ask.length - 40));
      expectCode(
        () => parseMaaSnpEnvelope(envelope({ SnpReport: b64u(report), VcekCertChain: b64u(truncated) })),
        "ERR_EVIDENCE_CHAIN",
      );
    });

    it("oversized input", () => {
      expectCode(
        () => parseMaaSnpEnvelope("A".repeat(MAA_SNP_ENVELOPE_LIMITS.envelopeChars + 4)),
        "ERR_INPUT_TOO_LARGE",
      );
    });

    it("too many UVM endorsements", () => {
      const uvm = Array.from({ length: MAA_SNP_ENVELOPE_LIMITS.uvmEndorsements + 1 }, () => b64u("x"));
      const e = envelope({
        SnpReport: b64u(report),
        VcekCertChain: b64u(certChain),
        Endorsements: b64u(JSON.stringify({ Uvm: uvm })),
      });
      expectCode(() => parseMaaSnpEnvelope(e), "ERR_EVIDENCE_MALFORMED");
    });
  });

  it("throws TypeError when asked to build from a report of the wrong size", () => {
    expect(() => buildMaaSnpEnvelope({ report: report.subarray(1), vcek: platform.leaf, chain: [] })).toThrow(
      TypeError,
    );
    expect(() => parseMaaSnpEnvelope(42 as unknown as string)).toThrow(TypeError);
  });
});
