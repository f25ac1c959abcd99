/**
 * Chooses the evidence provider at start: the one `SHIELD_TEE` names, or with `auto` the first
 * usable of configfs-tsm, the attestation sidecar and Gramine, probed in that order. The
 * simulated TEE is never a candidate for `auto`: it runs only when named, so a machine without
 * a TEE fails closed instead of attesting with made-up evidence. When nothing is usable the
 * error names every provider tried and why it was not usable.
 */
import { ShieldError } from "../../core/errors.js";
import { silentLogger, type Logger } from "../../core/ports/logger.js";
import type { AgentConfig } from "../config.js";
import { createAzureSidecarProvider } from "./azure-sidecar.js";
import { createConfigfsTsmProvider } from "./configfs-tsm.js";
import { createGramineProvider } from "./gramine.js";
import type { EvidenceProvider, ProviderName } from "./provider.js";
import { createSimulatedProvider, type SimulatedProviderOptions } from "./simulated.js";
import type { SnpCollateralSources } from "./snp-collateral.js";
import { createThimClient } from "./thim.js";

/** The order `auto` probes in: the kernel interface first, then the sidecar, then SGX. */
export const AUTO_PROBE_ORDER = [
  "sevsnp-configfs",
  "sevsnp-sidecar",
  "sgx-gramine",
] as const satisfies readonly ProviderName[];

export type ProviderFactory = (config: AgentConfig) => EvidenceProvider;

export interface SelectOptions {
  /** Replaces how a provider is built (tests point providers at fakes this way). */
  readonly factories?: Partial<Record<ProviderName, ProviderFactory>>;
  /** For `simulated`: a platform shared with the local attestation server, report fields. */
  readonly simulated?: SimulatedProviderOptions;
  readonly logger?: Logger;
}

/** One probe's outcome, as the failure message reports it. */
export interface ProbeOutcome {
  readonly provider: ProviderName;
  readonly usable: boolean;
  readonly reason?: string;
}

/**
 * The provider to use, or ERR_EVIDENCE_UNSUPPORTED whose message and violations name each
 * provider tried and why it was not usable.
 */
export async function selectProvider(
  config: AgentConfig,
  options: SelectOptions = {},
): Promise<EvidenceProvider> {
  const logger = options.logger ?? silentLogger;
  const candidates: readonly ProviderName[] = config.tee === "auto" ? AUTO_PROBE_ORDER : [config.tee];
  const outcomes: ProbeOutcome[] = [];
  for (const name of candidates) {
    const provider = buildProvider(name, config, options);
    const result = await safeProbe(provider);
    if (result.usable) {
      logger("info", "evidence provider selected", {
        provider: name,
        tee: provider.tee,
        selection: config.tee,
      });
      return provider;
    }
    logger("debug", "evidence provider not usable", { provider: name, reason: result.reason });
    outcomes.push({ provider: name, usable: false, reason: result.reason });
  }
  const tried = outcomes.map((outcome) => `${outcome.provider}: ${outcome.reason}`).join("; ");
  throw new ShieldError(
    "ERR_EVIDENCE_UNSUPPORTED",
    config.tee === "auto"
      ? `no usable TEE interface (SHIELD_TEE=auto; the simulated TEE is never chosen automatically). Tried ${tried}`
      : `SHIELD_TEE=${config.tee} is not usable here. Tried ${tried}`,
    {
      violations: outcomes.map((outcome) => ({
        field: outcome.provider,
        expected: "usable",
        actual: outcome.reason ?? "not usable",
      })),
    },
  );
}

/** Builds one provider from the configuration (no probing, no I/O). */
export function buildProvider(
  name: ProviderName,
  config: AgentConfig,
  options: SelectOptions = {},
): EvidenceProvider {
  const custom = options.factories?.[name];
  if (custom !== undefined) return custom(config);
  const logger = options.logger ?? silentLogger;
  switch (name) {
    case "sevsnp-configfs":
      return createConfigfsTsmProvider({
        root: config.tsm.root,
        ...(config.tsm.privlevel === undefined ? {} : { privlevel: config.tsm.privlevel }),
        collateral: collateralSources(config),
        logger,
      });
    case "sevsnp-sidecar":
      return createAzureSidecarProvider({
        url: config.sidecar.url,
        timeoutMs: config.timeouts.evidenceMs,
        probeTimeoutMs: config.timeouts.probeMs,
        collateral: collateralSources(config),
        logger,
      });
    case "sgx-gramine":
      return createGramineProvider({ root: config.gramine.root });
    case "simulated":
      return createSimulatedProvider(options.simulated);
  }
}

/** Where SEV-SNP providers find the chain when the interface gives none. */
export function collateralSources(config: AgentConfig): SnpCollateralSources {
  return {
    ...(config.snpChainFile === undefined ? {} : { chainFile: config.snpChainFile }),
    securityContext: config.uvmSecurityContextDir === undefined ? {} : { dir: config.uvmSecurityContextDir },
    ...(config.thimUrl === undefined
      ? {}
      : { thim: createThimClient({ url: config.thimUrl, timeoutMs: config.timeouts.evidenceMs }) }),
  };
}

async function safeProbe(
  provider: EvidenceProvider,
): Promise<{ usable: true } | { usable: false; reason: string }> {
  try {
    return await provider.probe();
  } catch (error) {
    return { usable: false, reason: error instanceof Error ? error.message : String(error) };
  }
}
