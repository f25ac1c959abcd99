/**
 * Plain `http://` is accepted by the adapters only for a service on this machine (Azurite and the
 * local MAA- and Key Vault-compatible servers); everything else must be `https://`. One
 * definition of "this machine", as a URL's `hostname` spells it.
 */
import { ShieldError } from "../core/errors.js";

export function isLoopbackUrlHost(hostname: string): boolean {
  return hostname === "localhost" || hostname === "[::1]" || /^127(\.\d{1,3}){3}$/.test(hostname);
}

export interface ServiceOriginMessages {
  readonly invalid: string;
  readonly notOrigin: string;
  readonly insecure: string;
}

/**
 * A service's base URL as the adapters accept it: an origin (no path, query, fragment or
 * credentials), `https://`, or plain `http://` on loopback. Returns the origin and whether it
 * is a local one; every refusal is ERR_CONFIG with the caller's wording.
 */
export function serviceOrigin(
  text: string,
  messages: ServiceOriginMessages,
): { origin: string; local: boolean } {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new ShieldError("ERR_CONFIG", messages.invalid);
  }
  if (
    url.username !== "" ||
    url.password !== "" ||
    url.search !== "" ||
    url.hash !== "" ||
    url.pathname !== "/"
  ) {
    throw new ShieldError("ERR_CONFIG", messages.notOrigin);
  }
  if (url.protocol === "https:") return { origin: url.origin, local: false };
  if (url.protocol === "http:" && isLoopbackUrlHost(url.hostname)) return { origin: url.origin, local: true };
  throw new ShieldError("ERR_CONFIG", messages.insecure);
}
