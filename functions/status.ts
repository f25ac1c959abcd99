/**
 * `status`: HTTP trigger, `GET /api/status` — agents, keys, rollouts in progress and the latest
 * denials as JSON (core/status), for machines and for `shield status`. Behind a function key
 * (or Entra ID with App Service authentication in front); it carries ids, measurements, key
 * versions and error codes, never a token, a secret or key material.
 */
import { app, type HttpResponseInit } from "@azure/functions";
import { composition } from "./composition/lazy.js";

export async function status(): Promise<HttpResponseInit> {
  const { rollout } = await composition();
  return { status: 200, jsonBody: await rollout.status(), headers: { "cache-control": "no-store" } };
}

app.http("status", { methods: ["GET"], authLevel: "function", route: "status", handler: status });
