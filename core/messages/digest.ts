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

/** JSON with object keys sorted, so both sides hash the same bytes whatever order they built. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== "object") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map((item) => canonicalJson(item)).join(",")}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, item]) => item !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([key, item]) => `${JSON.stringify(key)}:${canonicalJson(item)}`).join(",")}}`;
}
