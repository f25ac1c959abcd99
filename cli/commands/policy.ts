/**
 * `shield policy render|diff|test`: what a release policy allows, how two policies differ, and
 * whether Key Vault would release a key to a given token — clause by clause.
 */
import {
  diffReleasePolicies,
  evaluateReleasePolicy,
  formatPolicyDiff,
  formatReleaseDecision,
  parseReleasePolicy,
  releasePolicyToJson,
  renderReleasePolicy,
  authorityMatchesIssuer,
  type ReleasePolicy,
} from "../../core/policy/index.js";
import { ShieldError } from "../../core/errors.js";
import { UsageError, optionalString, parseAt, requireString, type Command } from "../command.js";
import { readJson } from "../io.js";
import { verifyTokenFromFiles } from "./token.js";

async function readPolicy(path: string, what: string): Promise<ReleasePolicy> {
  return parseReleasePolicy(await readJson(path, what));
}

export const policyRender: Command = {
  words: ["policy", "render"],
  summary: "print the release policy for a set of allowed measurements",
  usage: [
    "Usage: shield policy render --authority URL --measurements F [--json]",
    "",
    "  --authority URL    the MAA issuer the policy trusts (e.g. https://sharedeus.eus.attest.azure.net)",
    '  --measurements F   JSON: {"sevsnpvm": {"hostData": [...], "complianceStatus"?: ...},',
    '                     "sgx": {"mrEnclave"?: [...], "mrSigner"?: [...], "productId"?: n, "minSvn"?: n}}',
  ].join("\n"),
  options: { authority: { type: "string" }, measurements: { type: "string" } },
  async run(values) {
    const authority = requireString(values, "authority");
    const measurements = await readJson(requireString(values, "measurements"), "--measurements");
    const policy = releasePolicyToJson(renderReleasePolicy({ authority, measurements }));
    return { ok: true, data: { policy }, lines: [JSON.stringify(policy, null, 2)] };
  },
};

export const policyDiff: Command = {
  words: ["policy", "diff"],
  summary: "show what changes between two release policies, measurement by measurement",
  usage: "Usage: shield policy diff --from F --to F [--json]",
  options: { from: { type: "string" }, to: { type: "string" } },
  async run(values) {
    const from = await readPolicy(requireString(values, "from"), "--from");
    const to = await readPolicy(requireString(values, "to"), "--to");
    const diff = diffReleasePolicies(from, to);
    return { ok: true, data: { diff }, lines: [formatPolicyDiff(diff)] };
  },
};

export const policyTest: Command = {
  words: ["policy", "test"],
  summary: "evaluate a release policy as Key Vault does and say why it would not release",
  usage: [
    "Usage: shield policy test --policy F (--token F [--jwks F] | --claims F [--issuer URL]) [--at T] [--json]",
    "",
    "  --policy F    a release policy (JSON, or Key Vault's {contentType, data} wrapper)",
    "  --token F     an MAA token; its signature is checked first: with --jwks against that /certs",
    "                document, otherwise against <authority>/certs of the policy authority that",
    "                names the token's issuer (as Key Vault does)",
    "  --claims F    a JSON object of token claims (no signature to check); the issuer is --issuer",
    "                or the claims' iss (without either, no authority matches)",
    "  --at T        evaluate token expiry as of this ISO 8601 time",
    "",
    "Exit code 0 when Key Vault would release, 1 when not.",
  ].join("\n"),
  options: {
    policy: { type: "string" },
    token: { type: "string" },
    jwks: { type: "string" },
    claims: { type: "string" },
    issuer: { type: "string" },
    at: { type: "string" },
  },
  async run(values) {
    const policy = await readPolicy(requireString(values, "policy"), "--policy");
    const tokenPath = optionalString(values, "token");
    const claimsPath = optionalString(values, "claims");
    if ((tokenPath === undefined) === (claimsPath === undefined)) {
      throw new UsageError("give exactly one of --token or --claims");
    }
    let issuer: string | undefined;
    let claims: Record<string, unknown>;
    if (tokenPath !== undefined) {
      const at = parseAt(values);
      const verified = await verifyTokenFromFiles({
        tokenPath,
        jwksPath: optionalString(values, "jwks"),
        at,
        // Key Vault fetches signing keys only for an issuer the policy names as an authority.
        issuerFor: (iss) => {
          const authority = policy.authorities.find((a) => authorityMatchesIssuer(a.authority, iss));
          if (authority === undefined) {
            throw new ShieldError(
              "ERR_POLICY_DENIED",
              "the token's issuer is not an authority of this policy",
              {
                violations: [
                  {
                    field: "iss",
                    expected: `one of ${policy.authorities.map((a) => a.authority).join(", ")}`,
                    actual: iss,
                  },
                ],
              },
            );
          }
          return authority.authority;
        },
      });
      issuer = verified.issuer;
      claims = verified.claims;
    } else {
      const parsed = await readJson(claimsPath!, "--claims");
      if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
        throw new ShieldError("ERR_INPUT_MALFORMED", "--claims must hold a JSON object");
      }
      claims = parsed as Record<string, unknown>;
      const iss = optionalString(values, "issuer") ?? claims["iss"];
      // Key Vault matches authorities by iss: claims without one (or with a non-string one) are
      // released to by no authority, which is an answer, not a usage error.
      issuer = typeof iss === "string" ? iss : undefined;
    }
    const decision = evaluateReleasePolicy(policy, { issuer, claims });
    return {
      ok: decision.released,
      data: {
        released: decision.released,
        issuer,
        summary: decision.summary,
        violations: decision.violations,
        authorities: decision.authorities,
      },
      lines: [formatReleaseDecision(decision)],
    };
  },
};
