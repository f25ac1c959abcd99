/**
 * The project's own appraisal policy: what a validated MAA token's claims must show before any
 * key is requested for the workload. It is stricter and richer than a Key Vault release policy
 * (TCB minimums, guest SVN, VMPL, migration), and is parsed from configuration as JSON:
 *
 * ```json
 * {
 *   "version": 1,                                     // optional; only 1 exists
 *   "sevsnpvm": {
 *     "hostData": ["<64 hex>"],                       // required: allowed x-ms-sevsnpvm-hostdata
 *     "launchMeasurements": ["<96 hex>"],             // optional: allowed x-ms-sevsnpvm-launchmeasurement
 *     "minGuestSvn": 1,                               // optional
 *     "minTcb": { "bootloader": 3, "tee": 0, "snp": 8, "microcode": 115 },  // optional, each optional
 *     "maxVmpl": 0,                                   // default 0
 *     "complianceStatus": ["azure-compliant-uvm"],    // optional: allowed x-ms-compliance-status
 *     "allowMigration": false                         // default false
 *   },
 *   "sgx": {
 *     "mrEnclave": ["<64 hex>"],                      // at least one of mrEnclave / mrSigner
 *     "mrSigner": ["<64 hex>"],
 *     "productId": 1,                                 // optional
 *     "minSvn": 0                                     // optional
 *   }
 * }
 * ```
 * At least one TEE must be configured. Debug is always forbidden; there is no switch for it.
 * Unknown members are errors, so a misspelt constraint cannot silently vanish.
 */
import { z } from "zod";
import { ShieldError } from "../errors.js";
import { zodViolations } from "../policy/release-policy.js";

export interface SevSnpAppraisalPolicy {
  /** Allowed `x-ms-sevsnpvm-hostdata` values (lower-case hex). */
  readonly hostData: ReadonlySet<string>;
  /** Allowed `x-ms-sevsnpvm-launchmeasurement` values (lower-case hex); unchecked when absent. */
  readonly launchMeasurements?: ReadonlySet<string>;
  readonly minGuestSvn?: number;
  readonly minTcb?: {
    readonly bootloader?: number;
    readonly tee?: number;
    readonly snp?: number;
    readonly microcode?: number;
  };
  readonly maxVmpl: number;
  /** Allowed `x-ms-compliance-status` values; unchecked when absent. */
  readonly complianceStatus?: ReadonlySet<string>;
  readonly allowMigration: boolean;
  /** hostData values a rollout retired: a denial for one of them is ERR_MEASUREMENT_RETIRED. */
  readonly retiredHostData?: ReadonlySet<string>;
}

export interface SgxAppraisalPolicy {
  readonly mrEnclave?: ReadonlySet<string>;
  readonly mrSigner?: ReadonlySet<string>;
  readonly productId?: number;
  readonly minSvn?: number;
  /** Retired `mrenclave` / `mrsigner` values (see `retiredHostData`). */
  readonly retiredMrEnclave?: ReadonlySet<string>;
  readonly retiredMrSigner?: ReadonlySet<string>;
}

export interface AppraisalPolicy {
  readonly sevsnpvm?: SevSnpAppraisalPolicy;
  readonly sgx?: SgxAppraisalPolicy;
}

const hexSet = (digits: number, what: string) =>
  z
    .array(z.string().regex(new RegExp(`^[0-9a-fA-F]{${digits}}$`), `${what} must be ${digits} hex digits`))
    .min(1, `at least one ${what}`)
    .transform((values): ReadonlySet<string> => new Set(values.map((v) => v.toLowerCase())));

const u8 = z.number().int().min(0).max(0xff);
const u32 = z.number().int().min(0).max(0xffffffff);

const appraisalPolicySchema = z
  .strictObject({
    version: z.literal(1).optional(),
    sevsnpvm: z
      .strictObject({
        hostData: hexSet(64, "hostData"),
        launchMeasurements: hexSet(96, "launchMeasurement").optional(),
        minGuestSvn: u32.optional(),
        minTcb: z
          .strictObject({
            bootloader: u8.optional(),
            tee: u8.optional(),
            snp: u8.optional(),
            microcode: u8.optional(),
          })
          .optional(),
        maxVmpl: z.number().int().min(0).max(3).default(0),
        complianceStatus: z
          .array(z.string().min(1))
          .min(1)
          .transform((values): ReadonlySet<string> => new Set(values))
          .optional(),
        allowMigration: z.boolean().default(false),
      })
      .optional(),
    sgx: z
      .strictObject({
        mrEnclave: hexSet(64, "mrEnclave").optional(),
        mrSigner: hexSet(64, "mrSigner").optional(),
        productId: z.number().int().min(0).max(0xffff).optional(),
        minSvn: z.number().int().min(0).max(0xffff).optional(),
      })
      .refine((sgx) => sgx.mrEnclave !== undefined || sgx.mrSigner !== undefined, {
        message: "at least one of mrEnclave, mrSigner",
      })
      .optional(),
  })
  .refine((p) => p.sevsnpvm !== undefined || p.sgx !== undefined, {
    message: "at least one of sevsnpvm, sgx",
  });

function withoutUndefined<T extends object>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as T;
}

/**
 * Parses an appraisal policy (object or JSON text). Throws `ERR_POLICY_MALFORMED` listing every
 * problem with its JSON path.
 */
export function parseAppraisalPolicy(input: unknown): AppraisalPolicy {
  let document = input;
  if (typeof input === "string") {
    if (input.length > 1024 * 1024)
      throw new ShieldError("ERR_INPUT_TOO_LARGE", "appraisal policy exceeds 1 MiB");
    try {
      document = JSON.parse(input) as unknown;
    } catch (cause) {
      throw new ShieldError("ERR_POLICY_MALFORMED", "appraisal policy is not valid JSON", { cause });
    }
  }
  const parsed = appraisalPolicySchema.safeParse(document);
  if (!parsed.success) {
    const violations = zodViolations(parsed.error, document);
    throw new ShieldError(
      "ERR_POLICY_MALFORMED",
      `appraisal policy is malformed at ${violations[0]?.field ?? "$"}`,
      {
        violations,
      },
    );
  }
  const out: { sevsnpvm?: SevSnpAppraisalPolicy; sgx?: SgxAppraisalPolicy } = {};
  const { sevsnpvm, sgx } = parsed.data;
  if (sevsnpvm !== undefined) {
    out.sevsnpvm = withoutUndefined({
      ...sevsnpvm,
      minTcb: sevsnpvm.minTcb === undefined ? undefined : withoutUndefined(sevsnpvm.minTcb),
    });
  }
  if (sgx !== undefined) out.sgx = withoutUndefined(sgx);
  return out;
}
