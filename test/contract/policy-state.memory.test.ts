import { createMemoryPolicyStateStore } from "../../adapters/state/policy-memory.js";
import { definePolicyStateContract } from "./policy-state.contract.js";

definePolicyStateContract("in memory", () => Promise.resolve(createMemoryPolicyStateStore()));
