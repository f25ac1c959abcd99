/**
 * `deployment-status`: HTTP trigger, `GET /api/deployments/{id}` — how far a deployment got:
 * queued, applying, applied or failed, with each key's versions and what happened to them.
 * Behind a function key; it shows measurements and key versions, never secrets.
 */
import { app, type HttpRequest, type HttpResponseInit } from "@azure/functions";
import { composition } from "./composition/lazy.js";

export async function getDeployment(request: HttpRequest): Promise<HttpResponseInit> {
  const { rollout } = await composition();
  const answer = await rollout.getDeployment(request.params["id"] ?? "");
  return { status: answer.status, jsonBody: answer.body, headers: { "cache-control": "no-store" } };
}

app.http("deployment-status", {
  methods: ["GET"],
  authLevel: "function",
  route: "deployments/{id}",
  handler: getDeployment,
});
