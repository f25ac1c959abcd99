/** Test runs start Azurite through the same in-process starter the embedded default uses. */
export { startAzurite, type AzuriteServices } from "../../adapters/local/azurite.js";
