/**
 * Key Vault release policies: model and parser, evaluator with explanations, renderer for
 * allowed measurements, diff, the safe-change guard, and the key-store wrapper that applies it to
 * every policy write.
 */
export * from "./release-policy.js";
export * from "./evaluate.js";
export * from "./render.js";
export * from "./diff.js";
export * from "./write-guard.js";
