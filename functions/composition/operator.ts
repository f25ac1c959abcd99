/**
 * What the operator endpoints share: who is acting (behind App Service authentication with
 * Entra ID, `x-ms-client-principal-name`; with a bare function key, `function-key`), an id for
 * the act from the invocation, and the JSON answers.
 */
import type { HttpRequest, HttpResponseInit, InvocationContext } from "@azure/functions";

export function operatorOf(request: HttpRequest): string {
  const principal = request.headers.get("x-ms-client-principal-name");
  // eslint-disable-next-line no-control-regex -- excluding control characters is the point
  if (principal !== null && /^[^\u0000-\u001f\u007f]{1,128}$/.test(principal)) return principal;
  return "function-key";
}

export function requestIdOf(context: InvocationContext): string {
  const id = context.invocationId.replace(/[^A-Za-z0-9._:-]/g, "").slice(0, 100);
  return id === "" ? "operator" : id;
}

export function json(status: number, body: unknown): HttpResponseInit {
  return { status, jsonBody: body, headers: { "content-type": "application/json" } };
}
