/**
 * `shield deploy --dry-run|--apply` announces a new measurement to Shield's deployment webhook
 * for pipelines without OIDC: it builds the request body, signs `timestamp + "." + body` with the
 * HMAC key (from `--secret-file` or `SHIELD_DEPLOY_SECRET`, never from a flag), and posts it with
 * a fresh delivery id. A dry run prints the policy diff per key and version; an applied one
 * prints the deployment id to follow with `GET /api/deployments/{id}`. Exit 0 when the webhook
 * accepted the request, 1 when it refused it (its typed code is shown), 3 on network errors.
 */
import { randomUUID } from "node:crypto";
import { ShieldError } from "../../core/errors.js";
import {
  DELIVERY_HEADER,
  SIGNATURE_HEADER,
  TIMESTAMP_HEADER,
  webhookSignature,
} from "../../core/deploy/authenticate.js";
import { deploymentRequestSchema } from "../../core/deploy/deployments.js";
import { UsageError, optionalString, requireString, type Command } from "../command.js";
import { readText } from "../io.js";

function measurementsOf(tee: string, values: readonly string[]): Record<string, string>[] {
  if (tee === "sevsnp")
    return values.map((hostData) => ({ tee: "sevsnp", hostData: hostData.toLowerCase() }));
  if (tee === "sgx-mrenclave")
    return values.map((mrenclave) => ({ tee: "sgx", mrenclave: mrenclave.toLowerCase() }));
  if (tee === "sgx-mrsigner")
    return values.map((mrsigner) => ({ tee: "sgx", mrsigner: mrsigner.toLowerCase() }));
  throw new UsageError("--tee must be sevsnp, sgx-mrenclave or sgx-mrsigner");
}

const list = (raw: string | undefined) =>
  raw === undefined
    ? undefined
    : raw
        .split(",")
        .map((s) => s.trim())
        .filter((s) => s.length > 0);

async function secretOf(path: string | undefined): Promise<string> {
  const secret =
    path === undefined
      ? process.env["SHIELD_DEPLOY_SECRET"]
      : (await readText(path, "--secret-file", 4096)).trim();
  if (secret === undefined || secret.length < 16) {
    throw new UsageError(
      "give the HMAC key with --secret-file F or SHIELD_DEPLOY_SECRET (at least 16 characters)",
    );
  }
  return secret;
}

export const deploy: Command = {
  words: ["deploy"],
  summary: "announce a new measurement to the deployment webhook, signed with the HMAC key",
  usage: [
    "Usage: shield deploy --url URL --keys K1,K2 --measurement HEX [--tee sevsnp|sgx-mrenclave|sgx-mrsigner]",
    "                     [--retire HEX,...] --grace-seconds N (--dry-run | --apply) [--secret-file F] [--json]",
    "",
    "  --url URL           the Functions app (https://<app>.azurewebsites.net); posts to URL/api/deployments",
    "  --keys K1,K2        the keys whose release policies follow the new image",
    "  --measurement HEX   the new measurement (SEV-SNP hostdata: sha256 of the container policy)",
    "  --tee T             default sevsnp",
    "  --retire HEX,...    what to retire after the grace period (default: the keys' other measurements)",
    "  --grace-seconds N   how long the old measurement stays allowed",
    "  --secret-file F     the HMAC key (or SHIELD_DEPLOY_SECRET)",
  ].join("\n"),
  options: {
    url: { type: "string" },
    keys: { type: "string" },
    measurement: { type: "string" },
    tee: { type: "string" },
    retire: { type: "string" },
    "grace-seconds": { type: "string" },
    "dry-run": { type: "boolean" },
    apply: { type: "boolean" },
    "secret-file": { type: "string" },
  },
  async run(values) {
    const dryRun = values["dry-run"] === true;
    if (dryRun === (values["apply"] === true)) throw new UsageError("give exactly one of --dry-run, --apply");
    const base = requireString(values, "url").replace(/\/+$/, "");
    let target: URL;
    try {
      target = new URL(`${base}/api/deployments`);
    } catch {
      throw new UsageError("--url must be a URL");
    }
    const tee = optionalString(values, "tee") ?? "sevsnp";
    const retire = list(optionalString(values, "retire"));
    const document = {
      keys: list(requireString(values, "keys")),
      add: measurementsOf(tee, [requireString(values, "measurement")]),
      ...(retire === undefined ? {} : { retire: measurementsOf(tee, retire) }),
      graceSeconds: Number(requireString(values, "grace-seconds")),
      dryRun,
    };
    const checked = deploymentRequestSchema.safeParse(document);
    if (!checked.success) {
      throw new UsageError(
        `the request would be refused: ${checked.error.issues[0]?.path.join(".")} ${checked.error.issues[0]?.message}`,
      );
    }
    const secret = await secretOf(optionalString(values, "secret-file"));
    const body = Buffer.from(JSON.stringify(document), "utf8");
    const timestamp = String(Math.floor(Date.now() / 1000));
    let response: Response;
    try {
      response = await fetch(target, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          [SIGNATURE_HEADER]: webhookSignature(secret, timestamp, body),
          [TIMESTAMP_HEADER]: timestamp,
          [DELIVERY_HEADER]: randomUUID(),
        },
        body,
        signal: AbortSignal.timeout(30_000),
      });
    } catch (cause) {
      throw new ShieldError("ERR_NETWORK", `POST ${target.origin}/api/deployments failed`, { cause });
    }
    if (response.status >= 500) {
      throw new ShieldError("ERR_UPSTREAM_UNAVAILABLE", `the webhook answered HTTP ${response.status}`);
    }
    const answer = (await response.json().catch(() => ({}))) as Record<string, unknown>;
    const accepted = response.status === 200 || response.status === 202;
    const error = answer["error"] as { code?: string; message?: string } | undefined;
    const plans = (answer["keys"] ?? []) as {
      keyName: string;
      versions: { version: string; outcome: string; diff?: string }[];
    }[];
    return {
      ok: accepted,
      data: { ...answer, httpStatus: response.status },
      lines: !accepted
        ? [`refused (HTTP ${response.status}): ${error?.code ?? "?"} ${error?.message ?? ""}`]
        : dryRun
          ? plans.flatMap((p) => [
              `key ${p.keyName}`,
              ...p.versions.flatMap((v) => [
                `  version ${v.version}: ${v.outcome}`,
                ...(v.diff ?? "")
                  .split("\n")
                  .filter(Boolean)
                  .map((l) => `    ${l}`),
              ]),
            ])
          : [
              `deployment ${String(answer["deploymentId"])} queued; follow ${base}${String(answer["location"])}`,
            ],
    };
  },
};
