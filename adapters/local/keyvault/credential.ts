/**
 * The credential the local Key Vault-compatible server accepts: a `TokenCredential` (the shape
 * every Azure SDK client takes) that hands out one fixed bearer token. The Key Vault client's
 * challenge policy asks it for a token for the scope it derived from the server's
 * `WWW-Authenticate` challenge; this credential refuses any scope but the vault resource's, so
 * a wrong derivation fails loudly instead of passing by accident.
 */
import type { AccessToken, GetTokenOptions, TokenCredential } from "@azure/core-auth";
import { ShieldError } from "../../../core/errors.js";

/** The scope Key Vault's challenge (`resource="https://vault.azure.net"`) leads to. */
export const KEY_VAULT_SCOPE = "https://vault.azure.net/.default";

/** Tokens claim an hour of life, so the SDK's token cache reuses them. */
const TOKEN_LIFETIME_MS = 60 * 60 * 1000;

export function localKeyVaultCredential(token: string): TokenCredential {
  if (typeof token !== "string" || token.length === 0)
    throw new TypeError("token must be a non-empty string");
  return {
    getToken(scopes: string | string[], _options?: GetTokenOptions): Promise<AccessToken | null> {
      const requested = Array.isArray(scopes) ? scopes : [scopes];
      if (requested.length !== 1 || requested[0] !== KEY_VAULT_SCOPE) {
        // Typed, so that the Key Vault adapters report a miswired scope as the configuration error it is.
        return Promise.reject(
          new ShieldError("ERR_CONFIG", `the local Key Vault credential only serves ${KEY_VAULT_SCOPE}`),
        );
      }
      return Promise.resolve({
        token,
        expiresOnTimestamp: Date.now() + TOKEN_LIFETIME_MS,
        tokenType: "Bearer",
      });
    },
  };
}
