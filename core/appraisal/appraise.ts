/**
 * Appraises the claims of a validated MAA token against the project's appraisal policy and
 * reports every violation at once, each naming the MAA claim, what the policy wanted and what
 * the token said. Claims must arrive already validated (signature, issuer, lifetime); nothing
 * here looks at an unverified token. Claim names are MAA's (azure-wire-formats §1.5, §1.6);
 * container tokens carry them at the top level. A claim of the wrong JSON type (the string
 * "false" where MAA writes a boolean, "3" where it writes a number) is a violation, never
 * coerced and never an exception.
 */
import { ShieldError, type Violation } from "../errors.js";
import type { AppraisalPolicy, SevSnpAppraisalPolicy, SgxAppraisalPolicy } from "./appraisal-policy.js";

export const APPRAISAL_CLAIMS = {
  attestationType: "x-ms-attestation-type",
  complianceStatus: "x-ms-compliance-status",
  sevSnpIsDebuggable: "x-ms-sevsnpvm-is-debuggable",
  sevSnpHostData: "x-ms-sevsnpvm-hostdata",
  sevSnpLaunchMeasurement: "x-ms-sevsnpvm-launchmeasurement",
  sevSnpGuestSvn: "x-ms-sevsnpvm-guestsvn",
  sevSnpBootloaderSvn: "x-ms-sevsnpvm-bootloader-svn",
  sevSnpTeeSvn: "x-ms-sevsnpvm-tee-svn",
  sevSnpSnpFwSvn: "x-ms-sevsnpvm-snpfw-svn",
  sevSnpMicrocodeSvn: "x-ms-sevsnpvm-microcode-svn",
  sevSnpVmpl: "x-ms-sevsnpvm-vmpl",
  sevSnpMigrationAllowed: "x-ms-sevsnpvm-migration-allowed",
  sgxIsDebuggable: "x-ms-sgx-is-debuggable",
  sgxMrEnclave: "x-ms-sgx-mrenclave",
  sgxMrSigner: "x-ms-sgx-mrsigner",
  sgxProductId: "x-ms-sgx-product-id",
  sgxSvn: "x-ms-sgx-svn",
} as const;

export type AppraisedTee = "sevsnpvm" | "sgx";

export interface AppraisalResult {
  readonly ok: boolean;
  /** The TEE whose rules were applied; undefined when the token's type is not configured. */
  readonly attestationType: AppraisedTee | undefined;
  readonly violations: readonly Violation[];
  /** The measurement is one a rollout retired (its grace period is over). */
  readonly retired?: boolean;
}

type Claims = Readonly<Record<string, unknown>>;

const HEX = /^[0-9a-fA-F]+$/;
const MAX_LISTED = 5;

/** A claim's value as it appears in a violation. */
function shown(value: unknown): string {
  if (value === undefined) return "(missing)";
  if (value === null) return "(null)";
  if (typeof value === "string") return value.length <= 200 ? value : `(string of ${value.length} chars)`;
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  return Array.isArray(value) ? "(array)" : "(object)";
}

function oneOf(values: ReadonlySet<string>): string {
  if (values.size === 0) return "none (no measurement is allowed)";
  const sorted = [...values].sort();
  const listed = sorted.slice(0, MAX_LISTED).join(", ");
  return sorted.length > MAX_LISTED
    ? `one of ${listed} (+${sorted.length - MAX_LISTED} more)`
    : `one of ${listed}`;
}

function claimOf(claims: Claims, name: string): unknown {
  return Object.hasOwn(claims, name) ? claims[name] : undefined;
}

/** The claim must be the boolean `false`; absence and any other type are violations. */
function requireFalse(claims: Claims, name: string, out: Violation[]): void {
  const value = claimOf(claims, name);
  if (value !== false) out.push({ field: name, expected: "false (boolean)", actual: shown(value) });
}

/** The claim must be hex of `digits` digits, and (case-insensitively) one of `allowed`. */
function requireHexIn(
  claims: Claims,
  name: string,
  digits: number,
  allowed: ReadonlySet<string>,
  out: Violation[],
  retired?: { readonly values: ReadonlySet<string> | undefined; found: boolean },
) {
  const value = claimOf(claims, name);
  if (typeof value !== "string" || value.length !== digits || !HEX.test(value)) {
    out.push({ field: name, expected: `${digits} hex digits, ${oneOf(allowed)}`, actual: shown(value) });
  } else if (!allowed.has(value.toLowerCase())) {
    out.push({ field: name, expected: oneOf(allowed), actual: value });
    if (retired?.values?.has(value.toLowerCase())) retired.found = true;
  }
}

function integerClaim(claims: Claims, name: string, out: Violation[], expected: string): number | undefined {
  const value = claimOf(claims, name);
  if (typeof value === "number" && Number.isSafeInteger(value)) return value;
  out.push({ field: name, expected: `${expected} (integer)`, actual: shown(value) });
  return undefined;
}

function requireAtLeast(claims: Claims, name: string, min: number, out: Violation[]): void {
  const value = integerClaim(claims, name, out, `>= ${min}`);
  if (value !== undefined && value < min)
    out.push({ field: name, expected: `>= ${min}`, actual: String(value) });
}

function requireAtMost(claims: Claims, name: string, max: number, out: Violation[]): void {
  const value = integerClaim(claims, name, out, `<= ${max}`);
  if (value !== undefined && value > max)
    out.push({ field: name, expected: `<= ${max}`, actual: String(value) });
}

function requireInteger(claims: Claims, name: string, expected: number, out: Violation[]): void {
  const value = integerClaim(claims, name, out, `${expected}`);
  if (value !== undefined && value !== expected)
    out.push({ field: name, expected: `${expected}`, actual: String(value) });
}

function requireStringIn(claims: Claims, name: string, allowed: ReadonlySet<string>, out: Violation[]): void {
  const value = claimOf(claims, name);
  if (typeof value !== "string" || !allowed.has(value)) {
    out.push({ field: name, expected: oneOf(allowed), actual: shown(value) });
  }
}

/**
 * SEV-SNP checks, in order:
 * 1. `x-ms-sevsnpvm-is-debuggable` is false (absent is a violation);
 * 2. `x-ms-sevsnpvm-hostdata` is an allowed hostData;
 * 3. `x-ms-sevsnpvm-launchmeasurement` is an allowed launch measurement (when configured);
 * 4. `x-ms-sevsnpvm-guestsvn` >= minGuestSvn (when configured);
 * 5. TCB: `-bootloader-svn`, `-tee-svn`, `-snpfw-svn`, `-microcode-svn` >= minTcb (each when configured);
 * 6. `x-ms-sevsnpvm-vmpl` <= maxVmpl (default 0);
 * 7. `x-ms-compliance-status` is allowed (when configured);
 * 8. `x-ms-sevsnpvm-migration-allowed` is false unless migration is allowed.
 */
function appraiseSevSnp(
  claims: Claims,
  policy: SevSnpAppraisalPolicy,
  out: Violation[],
  retired: { found: boolean },
): void {
  const c = APPRAISAL_CLAIMS;
  requireFalse(claims, c.sevSnpIsDebuggable, out);
  const retiredHostData = { values: policy.retiredHostData, found: false };
  requireHexIn(claims, c.sevSnpHostData, 64, policy.hostData, out, retiredHostData);
  retired.found ||= retiredHostData.found;
  if (policy.launchMeasurements !== undefined) {
    requireHexIn(claims, c.sevSnpLaunchMeasurement, 96, policy.launchMeasurements, out);
  }
  if (policy.minGuestSvn !== undefined) requireAtLeast(claims, c.sevSnpGuestSvn, policy.minGuestSvn, out);
  const tcb = policy.minTcb;
  if (tcb?.bootloader !== undefined) requireAtLeast(claims, c.sevSnpBootloaderSvn, tcb.bootloader, out);
  if (tcb?.tee !== undefined) requireAtLeast(claims, c.sevSnpTeeSvn, tcb.tee, out);
  if (tcb?.snp !== undefined) requireAtLeast(claims, c.sevSnpSnpFwSvn, tcb.snp, out);
  if (tcb?.microcode !== undefined) requireAtLeast(claims, c.sevSnpMicrocodeSvn, tcb.microcode, out);
  requireAtMost(claims, c.sevSnpVmpl, policy.maxVmpl, out);
  if (policy.complianceStatus !== undefined)
    requireStringIn(claims, c.complianceStatus, policy.complianceStatus, out);
  if (!policy.allowMigration) requireFalse(claims, c.sevSnpMigrationAllowed, out);
}

/**
 * SGX checks, in order:
 * 1. `x-ms-sgx-is-debuggable` is false (absent is a violation);
 * 2. `x-ms-sgx-mrenclave` is allowed (when configured);
 * 3. `x-ms-sgx-mrsigner` is allowed (when configured);
 * 4. `x-ms-sgx-product-id` equals productId (when configured);
 * 5. `x-ms-sgx-svn` >= minSvn (when configured).
 */
function appraiseSgx(
  claims: Claims,
  policy: SgxAppraisalPolicy,
  out: Violation[],
  retired: { found: boolean },
): void {
  const c = APPRAISAL_CLAIMS;
  requireFalse(claims, c.sgxIsDebuggable, out);
  const retiredEnclave = { values: policy.retiredMrEnclave, found: false };
  const retiredSigner = { values: policy.retiredMrSigner, found: false };
  if (policy.mrEnclave !== undefined)
    requireHexIn(claims, c.sgxMrEnclave, 64, policy.mrEnclave, out, retiredEnclave);
  if (policy.mrSigner !== undefined)
    requireHexIn(claims, c.sgxMrSigner, 64, policy.mrSigner, out, retiredSigner);
  retired.found ||= retiredEnclave.found || retiredSigner.found;
  if (policy.productId !== undefined) requireInteger(claims, c.sgxProductId, policy.productId, out);
  if (policy.minSvn !== undefined) requireAtLeast(claims, c.sgxSvn, policy.minSvn, out);
}

/**
 * Appraises validated token claims. `x-ms-attestation-type` selects the TEE's rules; a type the
 * policy does not configure is itself a violation. Never throws for bad claims.
 */
export function appraiseClaims(
  claims: Readonly<Record<string, unknown>>,
  policy: AppraisalPolicy,
): AppraisalResult {
  if (typeof claims !== "object" || claims === null || Array.isArray(claims)) {
    throw new TypeError("claims must be an object");
  }
  if (typeof policy !== "object" || policy === null)
    throw new TypeError("policy must be a parsed AppraisalPolicy");
  const violations: Violation[] = [];
  const retired = { found: false };
  const type = claimOf(claims, APPRAISAL_CLAIMS.attestationType);
  let attestationType: AppraisedTee | undefined;
  if (type === "sevsnpvm" && policy.sevsnpvm !== undefined) {
    attestationType = "sevsnpvm";
    appraiseSevSnp(claims, policy.sevsnpvm, violations, retired);
  } else if (type === "sgx" && policy.sgx !== undefined) {
    attestationType = "sgx";
    appraiseSgx(claims, policy.sgx, violations, retired);
  } else {
    const configured = [policy.sevsnpvm && "sevsnpvm", policy.sgx && "sgx"].filter(Boolean).join(", ");
    violations.push({
      field: APPRAISAL_CLAIMS.attestationType,
      expected: `one of ${configured}`,
      actual: shown(type),
    });
  }
  return {
    ok: violations.length === 0,
    attestationType,
    violations,
    ...(retired.found ? { retired: true } : {}),
  };
}

/**
 * Throws unless the appraisal passed: `ERR_MEASUREMENT_RETIRED` when the measurement is one a
 * rollout retired, else `ERR_APPRAISAL_DENIED`; either way with every violation.
 */
export function assertAppraised(result: AppraisalResult): void {
  if (!result.ok && result.retired === true) {
    throw new ShieldError("ERR_MEASUREMENT_RETIRED", "the workload's measurement was retired by a rollout", {
      violations: result.violations,
    });
  }
  if (!result.ok) {
    throw new ShieldError(
      "ERR_APPRAISAL_DENIED",
      `claims failed appraisal (${result.violations.length} violation(s))`,
      {
        violations: result.violations,
      },
    );
  }
}
