import { MemoryBus } from "../../adapters/local/bus/memory.js";
import { defineBusContract } from "./bus.contract.js";

defineBusContract("in-process", ({ maxDeliveryCount }) => {
  // A limit the contract's size tests can reach with a valid request.
  const bus = new MemoryBus({ maxDeliveryCount, maxBodyBytes: 40_000 });
  return Promise.resolve({
    bus,
    maxBodyBytes: bus.maxBodyBytes,
    fifo: true,
    putRawRequest: (text) => Promise.resolve(bus.enqueueRawRequest(text)),
    putRawAgentMessage: (agentId, text) => Promise.resolve(bus.enqueueRawAgentMessage(agentId, text)),
  });
});
