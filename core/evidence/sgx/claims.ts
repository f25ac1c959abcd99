/**
 * The claims an SGX quote makes about its enclave, in the form appraisal and release policies
 * compare: numbers as numbers, byte strings as lowercase hex. Only meaningful for a quote that
 * `verify.ts` has verified; reading them from an unverified quote decides nothing.
 */
import type { SgxClaims } from "../types.js";
import type { SgxQuote } from "./quote.js";

export type { SgxClaims };

/** ATTRIBUTES.FLAGS bit 1 (`SGX_FLAGS_DEBUG`): the enclave can be inspected by a debugger. */
const SGX_FLAGS_DEBUG = 0x02;

export function sgxClaims(quote: SgxQuote): SgxClaims {
  const body = quote.reportBody;
  return {
    quoteVersion: quote.header.version,
    mrEnclave: body.mrEnclave.toString("hex"),
    mrSigner: body.mrSigner.toString("hex"),
    isvProdId: body.isvProdId,
    isvSvn: body.isvSvn,
    reportData: body.reportData.toString("hex"),
    // FLAGS is a little-endian u64, so bit 1 is in its first byte.
    debug: ((body.attributes[0] ?? 0) & SGX_FLAGS_DEBUG) !== 0,
    attributes: body.attributes.toString("hex"),
    cpuSvn: body.cpuSvn.toString("hex"),
    miscSelect: body.miscSelect,
    qeSvn: quote.header.qeSvn,
    pceSvn: quote.header.pceSvn,
  };
}
