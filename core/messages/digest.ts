/**
 * The digest that binds an answer to the request it answers. Request ids are chosen by agents
 * and visible on the bus, so an id alone does not say which request a result is about: someone
 * who can write to the requests queue could send a doctored copy under the agent's request id
 * and have the control plane sign a denial for it. A result therefore carries `requestDigest`,
 * sha256 over the canonical JSON (keys sorted at every level) of the parsed request, and the
 * agent acts only on a result whose digest is that of the request it sent.
 */
import { createHash } from "node:crypto";
import type { AttestationRequest } from "./v1.js";

/** base64url (unpadded) sha256 of the request's canonical JSON. */
export function requestDigest(request: AttestationRequest): string {
  return createHash("sha256").update(canonicalJson(request), "utf8").digest("base64url");
}

/** What an attestation request asks for, as its runtime data binds it (`"request"` member). */
export interface RequestBindingFields {
  readonly agentId: string;
  readonly requestId: string;
  readonly workload: string;
  readonly tee: string;
  readonly keys: readonly string[];
}

/**
 * base64url sha256 of the canonical JSON of the fields a request's evidence does not otherwise
 * cover. The agent puts it into the runtime data, whose hash the hardware signs, so a copy of the
 * evidence sent with another agent id, request id, workload or key list is refused before
 * anything is attested, released or recorded.
 */
export function requestBinding(fields: RequestBindingFields): string {
  const { agentId, requestId, workload, tee, keys } = fields;
  return createHash("sha256")
    .update(canonicalJson({ agentId, requestId, workload, tee, keys: [...keys] }), "utf8")
    .digest("base64url");
}

/** JSON with object keys sorted, so both sides hash the same bytes whatever order they built. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== "object") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map((item) => canonicalJson(item)).join(",")}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, item]) => item !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([key, item]) => `${JSON.stringify(key)}:${canonicalJson(item)}`).join(",")}}`;
}
