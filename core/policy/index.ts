/**
 * Key Vault release policies: model and parser, evaluator with explanations, renderer for
 * allowed measurements, diff, and the safe-change guard.
 */
export * from "./release-policy.js";
export * from "./evaluate.js";
export * from "./render.js";
export * from "./diff.js";
