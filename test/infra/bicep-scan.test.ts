/**
 * The Bicep scanner the infrastructure tests rely on: declarations, comments, strings with
 * escapes and interpolation, nested braces, conditional and existing resources, and its errors.
 */
import { describe, expect, it } from "vitest";
import { BicepScanError, objectKeys, property, scanBicep, stringValue, stripComments } from "./bicep-scan.js";

const SAMPLE = `
// a comment with a quote: the agents' identity { not a brace
targetScope = 'resourceGroup'

@description('A description with // slashes, a } brace and an escaped \\' quote.')
param name string = 'shield'
param count int
param tags object = {
  a: 'b'
}

var queue = 'rotate-key' // trailing comment
var token = toLower(uniqueString(resourceGroup().id, name))
/* a block
   comment */
resource ns 'Microsoft.ServiceBus/namespaces@2021-11-01' = {
  name: 'sb-\${token}-{x}'
  properties: { disableLocalAuth: true }
}

resource q 'Microsoft.ServiceBus/namespaces/queues@2021-11-01' = if (count > 1) {
  parent: ns
  name: queue
  properties: {
    requiresSession: true
    nested: { deeper: { value: '\${'}'}' } }
  }
}

resource old 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: 'kv'
}

output QUEUE_NAME string = q.name
output SETTINGS object = {
  'quoted-key': 1
  plain: { inner: 2 }
}
`;

describe("scanBicep", () => {
  const file = scanBicep(SAMPLE);

  it("reads params with and without defaults, vars, resources and outputs", () => {
    expect([...file.params.values()]).toEqual([
      { name: "name", type: "string", defaultText: "'shield'" },
      { name: "count", type: "int" },
      { name: "tags", type: "object", defaultText: "{\n  a: 'b'\n}" },
    ]);
    expect([...file.vars.keys()]).toEqual(["queue", "token"]);
    expect(file.vars.get("queue")).toBe("'rotate-key'");
    expect(file.resources.map((r) => [r.symbol, r.type, r.apiVersion, r.existing, r.condition])).toEqual([
      ["ns", "Microsoft.ServiceBus/namespaces", "2021-11-01", false, undefined],
      ["q", "Microsoft.ServiceBus/namespaces/queues", "2021-11-01", false, "count > 1"],
      ["old", "Microsoft.KeyVault/vaults", "2023-07-01", true, undefined],
    ]);
    expect([...file.outputs.keys()]).toEqual(["QUEUE_NAME", "SETTINGS"]);
  });

  it("finds top-level properties, resolves string literals and vars, lists object keys", () => {
    const q = file.resources[1]!;
    expect(property(q.body, "name")).toBe("queue");
    expect(stringValue(file, property(q.body, "name")!)).toBe("rotate-key");
    const props = property(q.body, "properties")!;
    expect(property(props, "requiresSession")).toBe("true");
    expect(property(props, "deeper")).toBeUndefined();
    expect(stringValue(file, property(file.resources[0]!.body, "name")!)).toBeUndefined();
    expect(stringValue(file, "'it\\'s'")).toBe("it's");
    expect(objectKeys(file.outputs.get("SETTINGS")!.valueText)).toEqual(["quoted-key", "plain"]);
  });

  it("blanks comments but keeps strings and line numbers", () => {
    const stripped = stripComments("a // x 'y'\n/* b\n c */ 'd // e'\n");
    expect(stripped.split("\n")).toHaveLength(4);
    expect(stripped).toContain("'d // e'");
    expect(stripped).not.toContain("x 'y'");
  });

  it("refuses what it cannot read", () => {
    expect(() => scanBicep("resource r 'A/b@1' = {\n  name: 'x'\n")).toThrow(BicepScanError);
    expect(() => scanBicep("var x = 'open\n")).toThrow(BicepScanError);
    expect(() => scanBicep("param a string\nparam a int\n")).toThrow(/declared twice/);
    expect(() => scanBicep("/* never closed")).toThrow(/unterminated block comment/);
  });
});
