/**
 * The control-plane signer on Key Vault / Managed HSM: a non-exportable HSM key used only
 * through `sign` (`@azure/keyvault-keys` `CryptographyClient`), so the private key that agents'
 * trust rests on never leaves the HSM. The functions' identity needs only the `sign` data action
 * on that one key (Key Vault Crypto User scoped to the key; DESIGN §3).
 *
 * The key id is pinned with its version: it is the JWS `kid` agents look up, so rotating the
 * control key is an explicit step (pin old and new in the agents, then switch the setting).
 */
import type { CryptographyClient } from "@azure/keyvault-keys";
import { ShieldError } from "../../core/errors.js";
import {
  CONTROL_ALGORITHMS,
  type ControlAlgorithm,
  type ControlSigner,
} from "../../core/ports/control-signer.js";
import {
  checkVaultUrl,
  keyClientOptions,
  keyVaultError,
  type KeyVaultClientSettings,
  type TokenCredential,
} from "./mapping.js";

export interface KeyVaultControlSignerOptions {
  /** The versioned key id: `https://<vault>/keys/<name>/<version>` (plain http only on loopback). */
  readonly keyId: string;
  readonly algorithm: ControlAlgorithm;
  readonly credential: TokenCredential;
  readonly clientOptions?: KeyVaultClientSettings;
  /** Per-request timeout in ms (default 10 000: a signature is on the answer's critical path). */
  readonly requestTimeoutMs?: number;
}

const KEY_ID_PATH = /^\/keys\/([0-9A-Za-z-]{1,127})\/([0-9A-Za-z]{1,64})$/;

/** Parses a versioned key id; ERR_CONFIG when it is not one. */
export function parseControlKeyId(keyId: string): {
  origin: string;
  local: boolean;
  name: string;
  version: string;
} {
  let url: URL;
  try {
    url = new URL(keyId);
  } catch {
    throw new ShieldError("ERR_CONFIG", "the control key id is not a URL");
  }
  const match = KEY_ID_PATH.exec(url.pathname);
  if (match === null || url.search !== "" || url.hash !== "") {
    throw new ShieldError("ERR_CONFIG", "the control key id must be https://<vault>/keys/<name>/<version>");
  }
  const { origin, local } = checkVaultUrl(url.origin);
  return { origin, local, name: match[1]!, version: match[2]! };
}

export function createKeyVaultControlSigner(options: KeyVaultControlSignerOptions): ControlSigner {
  if (typeof options?.credential?.getToken !== "function") {
    throw new TypeError("credential must be a TokenCredential");
  }
  if (!(CONTROL_ALGORITHMS as readonly string[]).includes(options.algorithm)) {
    throw new ShieldError(
      "ERR_CONFIG",
      `the control key algorithm must be one of ${CONTROL_ALGORITHMS.join(", ")}`,
    );
  }
  const { origin, local, name, version } = parseControlKeyId(options.keyId);
  const keyId = `${origin}/keys/${name}/${version}`;
  const timeoutMs = options.requestTimeoutMs ?? 10_000;
  let client: Promise<CryptographyClient> | undefined;
  const getClient = (): Promise<CryptographyClient> => {
    client ??= import("@azure/keyvault-keys").then(
      (sdk) =>
        new sdk.CryptographyClient(keyId, options.credential, keyClientOptions(local, options.clientOptions)),
      (cause: unknown) => {
        client = undefined;
        throw new ShieldError("ERR_CONFIG", "the Key Vault SDK could not be loaded", { cause });
      },
    );
    return client;
  };
  return {
    keyId,
    algorithm: options.algorithm,
    async sign(digest: Buffer): Promise<Buffer> {
      if (!Buffer.isBuffer(digest) || digest.length !== 32) throw new TypeError("digest must be 32 bytes");
      const sdk = await getClient();
      let result;
      try {
        result = await sdk.sign(options.algorithm, digest, { requestOptions: { timeout: timeoutMs } });
      } catch (error) {
        const mapped = keyVaultError(error, "sign", name);
        // The SDK refuses on its own (no REST call) when the key's key_ops lack `sign`.
        if (mapped.code === "ERR_IO") {
          throw new ShieldError("ERR_CONFIG", `the control key ${name} cannot be used to sign`, {
            cause: error,
          });
        }
        throw mapped;
      }
      // Key Vault answers with the key it used; a signature by another key would only be refused
      // by every agent, so it is caught here where the operator can see why.
      if (result.keyID !== undefined && !sameKeyVersion(result.keyID, name, version)) {
        throw new ShieldError("ERR_CONFIG", "Key Vault signed with another key version than configured");
      }
      return Buffer.from(result.result);
    },
  };
}

/** Whether a key id Key Vault reports names this key and version (its host may be an alias). */
function sameKeyVersion(reported: string, name: string, version: string): boolean {
  try {
    return new URL(reported).pathname === `/keys/${name}/${version}`;
  } catch {
    return false;
  }
}
