/**
 * Renders the Key Vault release policy for a set of allowed measurements — the policy a key gets
 * when it is created, rotated or rolled out to a new image.
 *
 * The allowed-measurements document (the CLI's `--measurements F`) is JSON:
 *
 * ```json
 * {
 *   "version": 1,                                   // optional; only 1 exists
 *   "sevsnpvm": {
 *     "complianceStatus": "azure-signed-katacc-uvm", // optional: azure-compliant-uvm (ACI),
 *                                                    //   azure-signed-katacc-uvm (AKS), azure-compliant-cvm
 *     "hostData": ["<64 hex>", "..."],              // required, at least one
 *     "vmpl": 0                                     // optional, 0..3
 *   },
 *   "sgx": {
 *     "mrEnclave": ["<64 hex>"],                    // at least one of mrEnclave / mrSigner
 *     "mrSigner": ["<64 hex>"],
 *     "productId": 1,                               // optional
 *     "minSvn": 2                                   // optional
 *   }
 * }
 * ```
 *
 * At least one of `sevsnpvm` / `sgx` is required; each present TEE becomes one authority entry.
 * Several measurements may be allowed at once (a rollout holds the old and the new image), so each
 * list becomes an anyOf nested inside the entry's allOf — the shape of Microsoft's published CVM
 * data-disk policy. Every entry always carries `x-ms-attestation-type` equals and the TEE's
 * `is-debuggable` equals "false". Values that Key Vault compares against booleans and numbers are
 * written as strings ("false", "0"), as in Microsoft's own policies. Hex is lower-cased (MAA
 * writes it so), de-duplicated and sorted, so the same set always renders the same bytes.
 */
import { z } from "zod";
import { ShieldError } from "../errors.js";
import {
  normalizeIssuer,
  RELEASE_POLICY_VERSION,
  type AuthorityRule,
  type ClaimCondition,
  type ClaimOperator,
  type ClaimValue,
  type Condition,
  type ReleasePolicy,
  zodViolations,
} from "./release-policy.js";

/** MAA claim names used in rendered policies (azure-wire-formats §1.5, §1.6). */
export const RELEASE_CLAIMS = {
  attestationType: "x-ms-attestation-type",
  complianceStatus: "x-ms-compliance-status",
  sevSnpHostData: "x-ms-sevsnpvm-hostdata",
  sevSnpIsDebuggable: "x-ms-sevsnpvm-is-debuggable",
  sevSnpVmpl: "x-ms-sevsnpvm-vmpl",
  sgxMrEnclave: "x-ms-sgx-mrenclave",
  sgxMrSigner: "x-ms-sgx-mrsigner",
  sgxIsDebuggable: "x-ms-sgx-is-debuggable",
  sgxProductId: "x-ms-sgx-product-id",
  sgxSvn: "x-ms-sgx-svn",
} as const;

export const COMPLIANCE_STATUSES = [
  "azure-compliant-uvm",
  "azure-signed-katacc-uvm",
  "azure-compliant-cvm",
] as const;
export type ComplianceStatus = (typeof COMPLIANCE_STATUSES)[number];

export interface AllowedSevSnpMeasurements {
  readonly complianceStatus?: ComplianceStatus;
  /** Lower-case hex, sorted, unique. */
  readonly hostData: readonly string[];
  readonly vmpl?: number;
}

export interface AllowedSgxMeasurements {
  readonly mrEnclave?: readonly string[];
  readonly mrSigner?: readonly string[];
  readonly productId?: number;
  readonly minSvn?: number;
}

export interface AllowedMeasurements {
  readonly sevsnpvm?: AllowedSevSnpMeasurements;
  readonly sgx?: AllowedSgxMeasurements;
}

const HEX_32_BYTES = /^[0-9a-fA-F]{64}$/;

/** Lower-cased, de-duplicated, sorted. */
function canonicalHexList(values: readonly string[]): string[] {
  return [...new Set(values.map((v) => v.toLowerCase()))].sort();
}

const hex32List = (what: string) =>
  z
    .array(z.string().regex(HEX_32_BYTES, `${what} must be 64 hex digits`))
    .min(1, `at least one ${what}`)
    .transform(canonicalHexList);

const svn = z.number().int().min(0).max(0xffffffff);

const allowedMeasurementsSchema = z
  .strictObject({
    version: z.literal(1).optional(),
    sevsnpvm: z
      .strictObject({
        complianceStatus: z.enum(COMPLIANCE_STATUSES).optional(),
        hostData: hex32List("hostData"),
        vmpl: z.number().int().min(0).max(3).optional(),
      })
      .optional(),
    sgx: z
      .strictObject({
        mrEnclave: hex32List("mrEnclave").optional(),
        mrSigner: hex32List("mrSigner").optional(),
        productId: z.number().int().min(0).max(0xffff).optional(),
        minSvn: svn.optional(),
      })
      .refine((sgx) => sgx.mrEnclave !== undefined || sgx.mrSigner !== undefined, {
        message: "at least one of mrEnclave, mrSigner",
      })
      .optional(),
  })
  .refine((m) => m.sevsnpvm !== undefined || m.sgx !== undefined, {
    message: "at least one of sevsnpvm, sgx",
  });

/**
 * Parses an allowed-measurements document (object or JSON text). Throws `ERR_POLICY_MALFORMED`
 * listing every problem with its JSON path.
 */
export function parseAllowedMeasurements(input: unknown): AllowedMeasurements {
  let document = input;
  if (typeof input === "string") {
    if (input.length > 1024 * 1024) {
      throw new ShieldError("ERR_INPUT_TOO_LARGE", "allowed measurements exceed 1 MiB");
    }
    try {
      document = JSON.parse(input) as unknown;
    } catch (cause) {
      throw new ShieldError("ERR_POLICY_MALFORMED", "allowed measurements are not valid JSON", { cause });
    }
  }
  const parsed = allowedMeasurementsSchema.safeParse(document);
  if (!parsed.success) {
    const violations = zodViolations(parsed.error, document);
    throw new ShieldError(
      "ERR_POLICY_MALFORMED",
      `allowed measurements are malformed at ${violations[0]?.field ?? "$"}`,
      { violations },
    );
  }
  const { sevsnpvm, sgx } = parsed.data;
  const out: { sevsnpvm?: AllowedSevSnpMeasurements; sgx?: AllowedSgxMeasurements } = {};
  if (sevsnpvm !== undefined) out.sevsnpvm = dropUndefined(sevsnpvm);
  if (sgx !== undefined) out.sgx = dropUndefined(sgx);
  return out;
}

function dropUndefined<T extends object>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as T;
}

function claim(name: string, operator: ClaimOperator, value: ClaimValue): ClaimCondition {
  return { kind: "claim", claim: name, operator, value };
}

function anyOfEquals(name: string, values: readonly string[]): Condition {
  return { kind: "anyOf", conditions: values.map((v) => claim(name, "equals", v)) };
}

function sevSnpRule(authority: string, m: AllowedSevSnpMeasurements): AuthorityRule {
  const conditions: Condition[] = [
    claim(RELEASE_CLAIMS.attestationType, "equals", "sevsnpvm"),
    claim(RELEASE_CLAIMS.sevSnpIsDebuggable, "equals", "false"),
  ];
  if (m.complianceStatus !== undefined) {
    conditions.push(claim(RELEASE_CLAIMS.complianceStatus, "equals", m.complianceStatus));
  }
  if (m.vmpl !== undefined) conditions.push(claim(RELEASE_CLAIMS.sevSnpVmpl, "equals", String(m.vmpl)));
  conditions.push(anyOfEquals(RELEASE_CLAIMS.sevSnpHostData, canonicalHexList(m.hostData)));
  return { authority, kind: "allOf", conditions };
}

function sgxRule(authority: string, m: AllowedSgxMeasurements): AuthorityRule {
  const conditions: Condition[] = [
    claim(RELEASE_CLAIMS.attestationType, "equals", "sgx"),
    claim(RELEASE_CLAIMS.sgxIsDebuggable, "equals", "false"),
  ];
  if (m.productId !== undefined) {
    conditions.push(claim(RELEASE_CLAIMS.sgxProductId, "equals", String(m.productId)));
  }
  // Key Vault's grammar page calls operators other than equals future work, yet Microsoft's own
  // SGX example uses `greater`; a minimum SVN has no equals-only form.
  if (m.minSvn !== undefined) conditions.push(claim(RELEASE_CLAIMS.sgxSvn, "greaterOrEquals", m.minSvn));
  if (m.mrEnclave !== undefined)
    conditions.push(anyOfEquals(RELEASE_CLAIMS.sgxMrEnclave, canonicalHexList(m.mrEnclave)));
  if (m.mrSigner !== undefined)
    conditions.push(anyOfEquals(RELEASE_CLAIMS.sgxMrSigner, canonicalHexList(m.mrSigner)));
  return { authority, kind: "allOf", conditions };
}

function checkAuthority(authority: unknown): string {
  if (typeof authority !== "string") throw new TypeError("authority must be a string");
  let url: URL | undefined;
  try {
    url = new URL(authority);
  } catch {
    url = undefined;
  }
  if (
    url === undefined ||
    (url.protocol !== "https:" && url.protocol !== "http:") ||
    url.search ||
    url.hash
  ) {
    throw new ShieldError("ERR_POLICY_MALFORMED", "authority must be an http(s) issuer URL", {
      violations: [
        { field: "authority", expected: "https://<attestation provider>", actual: authority.slice(0, 200) },
      ],
    });
  }
  return normalizeIssuer(authority);
}

/**
 * The release policy allowing exactly `measurements`, attested by `authority` (the MAA issuer,
 * written as its `iss`). Deterministic: equal inputs give byte-identical policies.
 */
export function renderReleasePolicy(options: { authority: string; measurements: unknown }): ReleasePolicy {
  if (typeof options !== "object" || options === null) throw new TypeError("options must be an object");
  const authority = checkAuthority(options.authority);
  const measurements = parseAllowedMeasurements(options.measurements);
  const authorities: AuthorityRule[] = [];
  if (measurements.sevsnpvm !== undefined) authorities.push(sevSnpRule(authority, measurements.sevsnpvm));
  if (measurements.sgx !== undefined) authorities.push(sgxRule(authority, measurements.sgx));
  return { version: RELEASE_POLICY_VERSION, authorities };
}
