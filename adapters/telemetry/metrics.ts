/**
 * The metrics port over OpenTelemetry: the one module that names Shield's instruments. It takes
 * a `MeterProvider` (the global one, which Microsoft's distro sets up when Application Insights is
 * configured; an SDK provider with an in-memory reader in tests) and records through
 * `@opentelemetry/api` only — a no-op until some provider is registered.
 *
 * | instrument | kind | attributes |
 * |---|---|---|
 * | `shield.attestations` | counter | `verdict` (trusted, denied, error), `tee` |
 * | `shield.denials` | counter | `code` (the typed error code), `tee` |
 * | `shield.key.releases` | counter | `key` |
 * | `shield.challenge.round_trip` | histogram, s | `tee` |
 * | `shield.reattest.missed_deadlines` | counter | `tee` |
 * | `shield.key.rotations` | counter | `key`, `reason`, `outcome` |
 * | `shield.rollout.steps` | counter | `key`, `step` (policy-update, retirement), `outcome` |
 */
import type { MeterProvider } from "@opentelemetry/api";
import type { ShieldMetrics } from "../../core/ports/metrics.js";

export const SHIELD_METER = "shield-acc";

/** Bounds for the round trip, in seconds: evidence comes in well under a second to minutes. */
const ROUND_TRIP_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

export function createOpenTelemetryMetrics(provider: MeterProvider): ShieldMetrics {
  const meter = provider.getMeter(SHIELD_METER);
  const attestations = meter.createCounter("shield.attestations", {
    description: "Attestation requests judged, by verdict and TEE",
  });
  const denials = meter.createCounter("shield.denials", {
    description: "Attestation requests denied, by error code",
  });
  const releases = meter.createCounter("shield.key.releases", {
    description: "Keys released to attested workloads, per key",
  });
  const roundTrip = meter.createHistogram("shield.challenge.round_trip", {
    description: "From a challenge's issue to the arrival of the evidence answering it",
    unit: "s",
    advice: { explicitBucketBoundaries: ROUND_TRIP_BOUNDARIES },
  });
  const missed = meter.createCounter("shield.reattest.missed_deadlines", {
    description: "Agents revoked for not answering a re-attestation challenge by its deadline",
  });
  const rotations = meter.createCounter("shield.key.rotations", {
    description: "rotate-key messages handled, by reason and outcome",
  });
  const rolloutSteps = meter.createCounter("shield.rollout.steps", {
    description: "Rollout steps on key versions, by step and outcome",
  });
  // A metric must never change the outcome of the work it describes.
  const safely = (record: () => void): void => {
    try {
      record();
    } catch {
      // dropped
    }
  };
  return {
    attestation: ({ verdict, tee }) => safely(() => attestations.add(1, { verdict, tee })),
    denial: ({ code, tee }) => safely(() => denials.add(1, { code, tee })),
    release: ({ keyName }) => safely(() => releases.add(1, { key: keyName })),
    challengeRoundTrip: ({ seconds, tee }) => safely(() => roundTrip.record(seconds, { tee })),
    missedDeadline: ({ tee }) => safely(() => missed.add(1, { tee })),
    rotation: ({ keyName, reason, outcome }) =>
      safely(() => rotations.add(1, { key: keyName, reason, outcome })),
    rolloutStep: ({ keyName, step, outcome }) =>
      safely(() => rolloutSteps.add(1, { key: keyName, step, outcome })),
  };
}
