// Type-aware lint: the promise rules catch un-awaited I/O, which on the release path would
// mean a decision taken before its check finished.
import js from "@eslint/js";
import tseslint from "typescript-eslint";
import prettier from "eslint-config-prettier";

export default tseslint.config(
  { ignores: ["dist/**", "node_modules/**", "coverage/**", "**/*.js", "**/*.mjs"] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/no-misused-promises": "error",
      "@typescript-eslint/await-thenable": "error",
      "@typescript-eslint/consistent-type-imports": "error",
      "@typescript-eslint/no-explicit-any": "error",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      eqeqeq: ["error", "always"],
      "no-console": "off",
    },
  },
  {
    // The layering of DESIGN §4: the composition of the whole system lives in local/, never in
    // an adapter, and the core knows nothing of the functions app, the agent or Azure SDKs.
    files: ["core/**/*.ts", "adapters/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            {
              group: ["**/functions/**", "**/agent/**", "../../local/**", "../../../local/**"],
              message: "core/ and adapters/ never import functions/, agent/ or local/",
            },
          ],
        },
      ],
    },
  },
  {
    files: ["core/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            {
              group: [
                "**/functions/**",
                "**/agent/**",
                "../../local/**",
                "../../../local/**",
                "**/adapters/**",
              ],
              message: "core/ imports only node built-ins, jose and zod",
            },
            { group: ["@azure/*"], message: "core/ imports no Azure SDK" },
          ],
        },
      ],
    },
  },
  {
    // The client is what an application copies or imports: Node built-ins only. The examples use
    // the package's public face (the client), never the agent's or the core's insides.
    files: ["client/**/*.ts", "examples/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            {
              group: ["**/functions/**", "**/agent/**", "**/core/**", "**/adapters/**", "**/local/**"],
              message: "client/ and examples/ use only the client and public packages",
            },
          ],
        },
      ],
    },
  },
  prettier,
);
