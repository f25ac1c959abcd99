/**
 * Shield's appraisal policy as it lives in state (DESIGN §9). The static setting
 * (`SHIELD_APPRAISAL_POLICY`) gives everything but the measurements — TCB minimums, VMPL,
 * compliance status — and seeds the measurements of a key that no rollout has touched yet; a
 * key's record in the PolicyStateStore then holds the measurements it allows. An attestation
 * asks for keys, so the measurements it may have are those every requested key allows; one
 * that a requested key retired is denied as `ERR_MEASUREMENT_RETIRED`.
 */
import type { AppraisalPolicy } from "../appraisal/index.js";
import type { Measurement, TeeKind } from "../messages/index.js";
import type { KeyPolicyState, PolicyStateStore } from "../ports/policy-state.js";

export interface AppraisalRequest {
  readonly workload: string;
  readonly tee: TeeKind;
  readonly keys: readonly string[];
}

/** Where the attest use case gets the appraisal policy for one request. */
export interface AppraisalPolicySource {
  policyFor(request: AppraisalRequest): Promise<AppraisalPolicy>;
}

type MeasurementKind = "hostData" | "mrenclave" | "mrsigner";

function valuesOf(measurements: readonly Measurement[], kind: MeasurementKind): Set<string> {
  const out = new Set<string>();
  for (const m of measurements) {
    if (kind === "hostData" && m.tee === "sevsnp") out.add(m.hostData);
    if (kind === "mrenclave" && m.tee === "sgx" && m.mrenclave !== undefined) out.add(m.mrenclave);
    if (kind === "mrsigner" && m.tee === "sgx" && m.mrsigner !== undefined) out.add(m.mrsigner);
  }
  return out;
}

/** The measurements a seed (static) appraisal policy allows, one per value. */
export function seedMeasurements(seed: AppraisalPolicy): Measurement[] {
  const out: Measurement[] = [];
  for (const hostData of seed.sevsnpvm?.hostData ?? []) out.push({ tee: "sevsnp", hostData });
  for (const mrenclave of seed.sgx?.mrEnclave ?? []) out.push({ tee: "sgx", mrenclave });
  for (const mrsigner of seed.sgx?.mrSigner ?? []) out.push({ tee: "sgx", mrsigner });
  return out;
}

/** A key's state before any rollout: the seed's measurements, none retiring. */
export function seedKeyPolicy(keyName: string, seed: AppraisalPolicy, at: Date): KeyPolicyState {
  return {
    keyName,
    allowed: seedMeasurements(seed).map((measurement) => ({
      measurement,
      addedAt: at,
      deploymentId: "seed",
    })),
    retired: [],
    updatedAt: at,
  };
}

function intersect(sets: readonly Set<string>[]): Set<string> {
  const [first, ...rest] = sets;
  return new Set([...(first ?? [])].filter((v) => rest.every((s) => s.has(v))));
}

/**
 * The appraisal policy for a request asking for keys whose states are `states`: the seed with
 * its measurement lists replaced by those all of them allow, and the retired ones noted.
 */
export function appraisalPolicyFor(
  seed: AppraisalPolicy,
  states: readonly KeyPolicyState[],
): AppraisalPolicy {
  if (states.length === 0) return seed;
  const allowed = (kind: MeasurementKind) =>
    intersect(
      states.map((s) =>
        valuesOf(
          s.allowed.map((a) => a.measurement),
          kind,
        ),
      ),
    );
  const retired = (kind: MeasurementKind) => {
    const out = new Set<string>();
    for (const s of states)
      for (const v of valuesOf(
        s.retired.map((r) => r.measurement),
        kind,
      ))
        out.add(v);
    return out;
  };
  const out: { sevsnpvm?: AppraisalPolicy["sevsnpvm"]; sgx?: AppraisalPolicy["sgx"] } = {};
  if (seed.sevsnpvm !== undefined) {
    out.sevsnpvm = { ...seed.sevsnpvm, hostData: allowed("hostData"), retiredHostData: retired("hostData") };
  }
  if (seed.sgx !== undefined) {
    const mrEnclave = allowed("mrenclave");
    const mrSigner = allowed("mrsigner");
    out.sgx = {
      ...seed.sgx,
      // A list the seed does not check stays unchecked unless a rollout pinned values for it.
      ...(seed.sgx.mrEnclave !== undefined || mrEnclave.size > 0 ? { mrEnclave } : {}),
      ...(seed.sgx.mrSigner !== undefined || mrSigner.size > 0 ? { mrSigner } : {}),
      retiredMrEnclave: retired("mrenclave"),
      retiredMrSigner: retired("mrsigner"),
    };
  }
  return out;
}

/** Reads each requested key's state (a key without one counts with the seed's measurements). */
export function createAppraisalPolicySource(
  store: PolicyStateStore,
  seed: AppraisalPolicy,
): AppraisalPolicySource {
  return {
    async policyFor(request) {
      const records = await Promise.all(request.keys.map((key) => store.getKeyPolicy(key)));
      if (records.every((r) => r === undefined)) return seed;
      const epoch = new Date(0);
      return appraisalPolicyFor(
        seed,
        records.map((r, i) => r ?? seedKeyPolicy(request.keys[i]!, seed, epoch)),
      );
    },
  };
}
