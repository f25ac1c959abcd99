/**
 * An agent's side of the protocol for integration tests, through the exported `attest`
 * function: it asks for a challenge, reads the signed challenge from its inbox, answers with
 * simulated SEV-SNP evidence whose host data is the image's measurement, and returns the
 * signed result as the agent verifies it.
 */
import { InvocationContext } from "@azure/functions";
import { randomUUID } from "node:crypto";
import type { RuntimeKey } from "../../agent/runtime-key.js";
import type { LocalStack } from "../../local/stack.js";
import type { StorageQueueBus } from "../../adapters/storage-queue/bus.js";
import { controlKeySet, verifyControlMessage } from "../../core/control/signed.js";
import type { SimulatedSnpPlatform } from "../../core/evidence/simulated/sevsnp.js";
import {
  makeAttestationRequest,
  makeChallengeRequest,
  requestBinding,
  type AttestationResult,
} from "../../core/messages/index.js";
import { attest } from "../../functions/attest.js";

export interface AttestingAgentSetup {
  readonly stack: LocalStack;
  readonly bus: StorageQueueBus;
  readonly platform: SimulatedSnpPlatform;
  readonly runtimeKey: RuntimeKey;
  /** The time the agent lives at (the composition's clock when a test moves it; default now). */
  readonly now?: () => Date;
}

export function invocation(name: string): InvocationContext {
  return new InvocationContext({
    functionName: name,
    invocationId: `${name}-${randomUUID()}`,
    triggerMetadata: { messageId: randomUUID(), deliveryCount: 1 },
    logHandler: () => undefined,
  });
}

async function nextMessage(setup: AttestingAgentSetup, agentId: string) {
  const inbox = setup.bus.openAgentInbox(agentId);
  try {
    const received = await inbox.receive(10_000);
    if (received === undefined) throw new Error("no message for the agent");
    const verified = await verifyControlMessage(received.body, {
      keys: controlKeySet(setup.stack.controlKeys),
      agentId,
      at: setup.now?.() ?? new Date(),
    });
    return verified.message;
  } finally {
    await inbox.close();
  }
}

/** One attestation by a fresh agent running the image with `hostData`, asking for `keys`. */
export async function attestAs(
  setup: AttestingAgentSetup,
  hostData: string,
  keys: readonly string[],
  agentId = `agent-${randomUUID().slice(0, 8)}`,
): Promise<AttestationResult> {
  await attest(
    makeChallengeRequest({ agentId, workload: "orders", tee: "sevsnp", sentAt: setup.now?.() ?? new Date() }),
    invocation("attest"),
  );
  const challenge = await nextMessage(setup, agentId);
  if (challenge.type !== "challenge") throw new Error("expected a challenge");
  const requestId = `req-${randomUUID().slice(0, 8)}`;
  const runtimeData = setup.runtimeKey.bindToNonce(
    challenge.nonce,
    requestBinding({ agentId, requestId, workload: "orders", tee: "sevsnp", keys: [...keys] }),
  );
  const report = setup.platform.signReport({
    reportData: runtimeData.reportData.subarray(0, 32),
    hostData: Buffer.from(hostData, "hex"),
  });
  await attest(
    makeAttestationRequest({
      agentId,
      requestId,
      workload: "orders",
      tee: "sevsnp",
      evidence: {
        tee: "sevsnp",
        format: "raw",
        report: report.toString("base64url"),
        vcekChain: setup.platform.leafPem + setup.platform.chainPem,
      },
      runtimeData: runtimeData.base64url,
      keys: [...keys],
      challenge: challenge.nonce,
      sentAt: setup.now?.() ?? new Date(),
    }),
    invocation("attest"),
  );
  const result = await nextMessage(setup, agentId);
  if (result.type !== "attestation-result") throw new Error("expected a result");
  return result;
}
