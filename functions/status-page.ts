/**
 * `status-page`: HTTP trigger, `GET /api/status/page` — the status snapshot as one
 * self-contained HTML page for people (core/status/page.ts), served with a strict
 * Content-Security-Policy that allows exactly its one stylesheet and nothing else; it refreshes
 * itself with a meta refresh, so it needs no script.
 */
import { app, type HttpResponseInit } from "@azure/functions";
import { renderStatusPage, STATUS_PAGE_CSP } from "../core/status/page.js";
import { composition } from "./composition/lazy.js";

export async function statusPage(): Promise<HttpResponseInit> {
  const { rollout } = await composition();
  return {
    status: 200,
    body: renderStatusPage(await rollout.status(), { refreshSeconds: 30 }),
    headers: {
      "content-type": "text/html; charset=utf-8",
      "content-security-policy": STATUS_PAGE_CSP,
      "x-content-type-options": "nosniff",
      "referrer-policy": "no-referrer",
      "cache-control": "no-store",
    },
  };
}

app.http("status-page", {
  methods: ["GET"],
  authLevel: "function",
  route: "status/page",
  handler: statusPage,
});
