/**
 * `deployments`: HTTP trigger, `POST /api/deployments` — a pipeline announces a new measurement.
 * An adapter only: it reads the headers and the raw body (size-limited), runs the webhook use
 * case (core/deploy), and hands an accepted deployment's `policy-update` to the
 * `policy-updates` Service Bus queue through an output binding. The route is anonymous at the
 * Functions level on purpose: every request must carry an HMAC signature or a pipeline OIDC
 * token, checked by the use case before anything else happens.
 */
import {
  app,
  output,
  type HttpRequest,
  type HttpResponseInit,
  type InvocationContext,
} from "@azure/functions";
import { composition } from "./composition/lazy.js";
import { readHttpRequest } from "./composition/http.js";

export const policyUpdatesOutput = output.serviceBusQueue({
  connection: "ServiceBusConnection",
  queueName: "policy-updates",
});

export async function postDeployment(
  request: HttpRequest,
  context: InvocationContext,
): Promise<HttpResponseInit> {
  const { settings, rollout } = await composition();
  const read = await readHttpRequest(request, settings.deploy.maxBodyBytes);
  const answer = await rollout.postDeployment(read, (message) => {
    context.extraOutputs.set(policyUpdatesOutput, message);
    return Promise.resolve();
  });
  return { status: answer.status, jsonBody: answer.body, headers: { "cache-control": "no-store" } };
}

app.http("deployments", {
  methods: ["POST"],
  authLevel: "anonymous",
  route: "deployments",
  extraOutputs: [policyUpdatesOutput],
  handler: postDeployment,
});
