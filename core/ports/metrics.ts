/**
 * The metrics port: what the use cases count and time, in the domain's words. The functions
 * give it an OpenTelemetry implementation (adapters/telemetry/metrics.ts, the only module that
 * knows instrument names and the SDK); tests and the agent-free paths get {@link noMetrics}.
 *
 * Attributes are public values only — verdicts, TEE kinds, error codes, key names, rotation
 * reasons, rollout steps — never agent ids (unbounded), tokens, measurements or key material.
 * Recording never throws and never waits: a metric must not change the outcome of the work.
 */
export type MetricVerdict = "trusted" | "denied" | "error";

export interface ShieldMetrics {
  /** One attestation request judged (fresh work, not a redelivery resending a stored answer). */
  attestation(event: { readonly verdict: MetricVerdict; readonly tee: string }): void;
  /** One denial, by its error code. */
  denial(event: { readonly code: string; readonly tee: string }): void;
  /** One key released to an attested workload. */
  release(event: { readonly keyName: string }): void;
  /** From a challenge's issue to the arrival of the evidence answering it, in seconds. */
  challengeRoundTrip(event: { readonly seconds: number; readonly tee: string }): void;
  /** An agent that did not answer its re-attestation challenge by the deadline. */
  missedDeadline(event: { readonly tee: string }): void;
  /** One `rotate-key` handled, by reason and what came of it. */
  rotation(event: { readonly keyName: string; readonly reason: string; readonly outcome: string }): void;
  /** One step of a rollout on one key version (`policy-update` or `retirement`). */
  rolloutStep(event: { readonly keyName: string; readonly step: string; readonly outcome: string }): void;
}

const nothing = (): void => undefined;

export const noMetrics: ShieldMetrics = {
  attestation: nothing,
  denial: nothing,
  release: nothing,
  challengeRoundTrip: nothing,
  missedDeadline: nothing,
  rotation: nothing,
  rolloutStep: nothing,
};
