import { createLocalAttestationEngine } from "../../adapters/local/maa/engine.js";
import { createMaaTokenIssuer } from "../../core/token/index.js";
import { defineAttestationServiceContract } from "./attestation-service.contract.js";

defineAttestationServiceContract("local engine (in-process)", async (setup) => {
  const issuer = await createMaaTokenIssuer({ issuer: "http://127.0.0.1:8443" });
  const port = createLocalAttestationEngine({ issuer, ...setup });
  return { port, close: () => Promise.resolve() };
});
