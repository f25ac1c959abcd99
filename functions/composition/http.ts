/**
 * Reading an HTTP trigger's request the way the webhook needs it: headers lower-cased into a
 * plain record, and the raw body bytes — left unread when the declared length is over the limit
 * (the use case then sees a body one byte too long and refuses it), and cut at the limit plus
 * one byte otherwise.
 */
import type { HttpRequest } from "@azure/functions";

export interface DeployHttpRequest {
  readonly headers: Readonly<Record<string, string | undefined>>;
  readonly body: Uint8Array;
}

export async function readHttpRequest(
  request: HttpRequest,
  maxBodyBytes: number,
): Promise<DeployHttpRequest> {
  const headers: Record<string, string> = {};
  request.headers.forEach((value, name) => {
    headers[name.toLowerCase()] = value;
  });
  const declared = Number(headers["content-length"]);
  if (Number.isFinite(declared) && declared > maxBodyBytes) {
    return { headers, body: new Uint8Array(maxBodyBytes + 1) };
  }
  // Without a declared length the host has buffered the body already (it caps request size).
  const body = new Uint8Array(await request.arrayBuffer());
  return { headers, body: body.length > maxBodyBytes ? body.subarray(0, maxBodyBytes + 1) : body };
}
