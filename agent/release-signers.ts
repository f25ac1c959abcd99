/**
 * Whom the agent believes when a Key Vault release response says "this key is yours". The
 * response is a JWS signed by the certificate in its `x5c`; core/keywrap verifies the signature
 * and the chain's links, and this module says which chains count:
 *
 * - `SHIELD_RELEASE_SIGNER_CA_FILE`: the chain must contain, or be issued by, one of the
 *   certificates in this PEM file. The embedded default writes the local Key Vault-compatible
 *   server's self-signed signer into it.
 * - `SHIELD_RELEASE_SIGNER_HOST`: the signing (leaf) certificate must be issued to this Key Vault
 *   or Managed HSM host name; without a CA file its chain must also reach one of the public root
 *   CAs Node ships (`tls.rootCertificates`) — the check Microsoft's SKR sidecar makes (chain to
 *   the system roots, DNS name = the vault's endpoint).
 *
 * In Azure mode one of the two is required: a release response whose signer nobody checks could
 * be made by anyone who can write to the agent's inbox, wrapping a key of their choosing to the
 * agent's public runtime key. Without either setting the agent does not start.
 */
import { X509Certificate } from "node:crypto";
import { readFile } from "node:fs/promises";
import { rootCertificates } from "node:tls";
import { ShieldError } from "../core/errors.js";
import type { SignerTrust } from "../core/keywrap/index.js";
import { loadCertificates } from "../core/x509/certificate.js";

export interface ReleaseSignerSettings {
  readonly caFile?: string;
  readonly host?: string;
}

/** Builds the signer trust from the settings (reads the CA file). ERR_CONFIG when unusable. */
export async function releaseSignerTrust(settings: ReleaseSignerSettings): Promise<SignerTrust> {
  const { caFile, host } = settings;
  if (caFile === undefined && host === undefined) {
    throw new ShieldError(
      "ERR_CONFIG",
      "no release-response signer is trusted: set SHIELD_RELEASE_SIGNER_CA_FILE or SHIELD_RELEASE_SIGNER_HOST",
    );
  }
  const anchors = caFile === undefined ? publicRoots() : await readAnchors(caFile);
  return (chain) => reachesAnchor(chain, anchors) && (host === undefined || issuedTo(chain[0], host));
}

async function readAnchors(file: string): Promise<X509Certificate[]> {
  let text: string;
  try {
    text = await readFile(file, "latin1");
  } catch (cause) {
    throw new ShieldError("ERR_CONFIG", `SHIELD_RELEASE_SIGNER_CA_FILE ${file} cannot be read`, { cause });
  }
  let anchors: X509Certificate[];
  try {
    anchors = loadCertificates(text);
  } catch (cause) {
    throw new ShieldError(
      "ERR_CONFIG",
      `SHIELD_RELEASE_SIGNER_CA_FILE ${file} holds a malformed certificate`,
      {
        cause,
      },
    );
  }
  if (anchors.length === 0) {
    throw new ShieldError("ERR_CONFIG", `SHIELD_RELEASE_SIGNER_CA_FILE ${file} holds no certificate`);
  }
  return anchors;
}

let roots: X509Certificate[] | undefined;

/** Node's bundled public roots, parsed once and only when asked for. */
function publicRoots(): X509Certificate[] {
  roots ??= rootCertificates.map((pem) => new X509Certificate(pem));
  return roots;
}

/** A certificate of the (already link-checked) chain is an anchor, or the last one is issued by one. */
export function reachesAnchor(
  chain: readonly X509Certificate[],
  anchors: readonly X509Certificate[],
): boolean {
  if (chain.some((cert) => anchors.some((anchor) => anchor.raw.equals(cert.raw)))) return true;
  const last = chain.at(-1);
  if (last === undefined) return false;
  return anchors.some((anchor) => anchor.ca && last.checkIssued(anchor) && last.verify(anchor.publicKey));
}

function issuedTo(leaf: X509Certificate | undefined, host: string): boolean {
  return leaf !== undefined && leaf.checkHost(host) !== undefined;
}
