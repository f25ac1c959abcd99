/**
 * Plain `http://` is accepted by the adapters only for a service on this machine (Azurite and the
 * local MAA- and Key Vault-compatible servers); everything else must be `https://`. One
 * definition of "this machine", as a URL's `hostname` spells it.
 */
export function isLoopbackUrlHost(hostname: string): boolean {
  return hostname === "localhost" || hostname === "[::1]" || /^127(\.\d{1,3}){3}$/.test(hostname);
}
