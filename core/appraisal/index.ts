/** Claim appraisal: the project's own policy over validated MAA token claims. */
export * from "./appraisal-policy.js";
export * from "./appraise.js";
