/**
 * Secrets the functions read at run time — the deployment webhook's HMAC key — from Azure Key
 * Vault's secrets API (or the local Key Vault-compatible server), never from app settings. A
 * secret's value is handed to the one caller that asked and goes nowhere else: not into a log
 * field, an error message or a table row. A missing secret is ERR_CONFIG.
 */
export interface SecretReader {
  /** The current version's value. */
  getSecret(name: string): Promise<string>;
}
