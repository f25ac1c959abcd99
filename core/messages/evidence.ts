/**
 * Hardware evidence as an agent sends it: a union keyed by `tee`, then by `format`, so each
 * shape an agent can actually obtain has its own variant and a new one can be added without
 * reinterpreting an old one.
 *
 * - `sevsnp` / `raw`: the 1184-byte ATTESTATION_REPORT (Linux configfs-tsm `outblob`, or the
 *   `/dev/sev-guest` ioctl, or the Microsoft sidecar's `/attest/combined` `evidence`), the VCEK
 *   chain as PEM (VCEK, then ASK, then ARK; from THIM, AMD KDS or the sidecar's `endorsements`)
 *   and, for confidential containers, the UVM endorsement (COSE_Sign1 reference info). The
 *   functions assemble MAA's `report` envelope from these.
 * - `sevsnp` / `maa-report`: the envelope already built (`base64url(JSON{SnpReport,
 *   VcekCertChain, Endorsements?})`, what the sidecar posts to `/attest/SevSnpVm`), passed on
 *   to MAA as is. Go writes it with `=` padding, so padding is accepted here.
 * - `sgx` / `dcap-quote`: an Intel SGX DCAP quote (version 3) as Gramine's
 *   `/dev/attestation/quote` returns it; MAA's `/attest/SgxEnclave` takes it as `quote`.
 *
 * Only the shape is checked here; parsing and verifying the bytes is the evidence verifiers' job.
 */
import { z } from "zod";
import { base64url, paddedBase64url, pemCertificates } from "./fields.js";

/** Upper bounds in characters; a real SNP report is 1579, a DCAP quote with its chain about 6,500. */
export const EVIDENCE_LIMITS = {
  rawReportChars: 4096,
  vcekChainChars: 16_384,
  uvmEndorsementsChars: 65_536,
  maaReportChars: 131_072,
  sgxQuoteChars: 32_768,
} as const;

const sevSnpRaw = z.strictObject(
  {
    tee: z.literal("sevsnp"),
    format: z.literal("raw"),
    report: base64url("SEV-SNP report", EVIDENCE_LIMITS.rawReportChars),
    vcekChain: pemCertificates("VCEK chain", EVIDENCE_LIMITS.vcekChainChars),
    uvmEndorsements: base64url("UVM endorsements", EVIDENCE_LIMITS.uvmEndorsementsChars).optional(),
  },
  { error: "object" },
);

const sevSnpMaaReport = z.strictObject(
  {
    tee: z.literal("sevsnp"),
    format: z.literal("maa-report"),
    report: paddedBase64url("MAA SevSnpVm report envelope", EVIDENCE_LIMITS.maaReportChars),
  },
  { error: "object" },
);

const sgxDcapQuote = z.strictObject(
  {
    tee: z.literal("sgx"),
    format: z.literal("dcap-quote"),
    quote: base64url("SGX DCAP quote", EVIDENCE_LIMITS.sgxQuoteChars),
  },
  { error: "object" },
);

export const evidence = z.discriminatedUnion(
  "tee",
  [z.discriminatedUnion("format", [sevSnpRaw, sevSnpMaaReport], { error: "object" }), sgxDcapQuote],
  { error: "evidence object with tee and format" },
);

export type Evidence = z.infer<typeof evidence>;
export type SevSnpRawEvidence = z.infer<typeof sevSnpRaw>;
export type SevSnpMaaReportEvidence = z.infer<typeof sevSnpMaaReport>;
export type SgxDcapQuoteEvidence = z.infer<typeof sgxDcapQuote>;
export type EvidenceFormat = Evidence["format"];
