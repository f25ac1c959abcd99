/**
 * The JSON Schema (draft-07) keywords values.schema.json uses, evaluated as Helm's validator
 * does. Any other keyword is an error, so the schema can never rely on something this file
 * silently ignores.
 */
type Schema = Readonly<Record<string, unknown>>;

const KEYWORDS = new Set([
  "$schema",
  "title",
  "description",
  "definitions",
  "$ref",
  "type",
  "enum",
  "properties",
  "required",
  "additionalProperties",
  "items",
  "pattern",
  "minLength",
  "minimum",
  "maximum",
  "minItems",
  "uniqueItems",
  "not",
]);

function typeOf(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  if (typeof value === "number") return Number.isInteger(value) ? "integer" : "number";
  return typeof value;
}

function matchesType(value: unknown, type: string): boolean {
  const actual = typeOf(value);
  return actual === type || (type === "number" && actual === "integer");
}

/** Every violation, as `path: message`. */
export function validateSchema(root: Schema, value: unknown): string[] {
  let problems: string[] = [];
  const resolve = (schema: Schema): Schema => {
    const ref = schema["$ref"];
    if (typeof ref !== "string") return schema;
    const match = /^#\/definitions\/([A-Za-z0-9_-]+)$/.exec(ref);
    const definitions = root["definitions"] as Record<string, Schema> | undefined;
    const target = match === null ? undefined : definitions?.[match[1]!];
    if (target === undefined) throw new Error(`unresolvable $ref ${ref}`);
    return target;
  };
  const check = (raw: Schema, v: unknown, path: string): void => {
    for (const key of Object.keys(raw)) if (!KEYWORDS.has(key)) throw new Error(`unsupported keyword ${key}`);
    const schema = resolve(raw);
    for (const key of Object.keys(schema))
      if (!KEYWORDS.has(key)) throw new Error(`unsupported keyword ${key}`);
    const type = schema["type"];
    if (type !== undefined) {
      const types = Array.isArray(type) ? (type as string[]) : [type as string];
      if (!types.some((t) => matchesType(v, t))) {
        problems.push(`${path}: expected ${types.join(" or ")}, got ${typeOf(v)}`);
        return;
      }
    }
    const allowed = schema["enum"] as unknown[] | undefined;
    if (allowed !== undefined && !allowed.some((a) => a === v)) {
      problems.push(`${path}: expected one of ${JSON.stringify(allowed)}`);
    }
    const not = schema["not"] as Schema | undefined;
    if (not !== undefined) {
      const outer = problems;
      problems = [];
      check(not, v, path);
      const matched = problems.length === 0;
      problems = outer;
      if (matched) problems.push(`${path}: must not match ${JSON.stringify(not)}`);
    }
    if (typeof v === "string") {
      const pattern = schema["pattern"] as string | undefined;
      if (pattern !== undefined && !new RegExp(pattern, "u").test(v))
        problems.push(`${path}: does not match ${pattern}`);
      const minLength = schema["minLength"] as number | undefined;
      if (minLength !== undefined && [...v].length < minLength)
        problems.push(`${path}: shorter than ${minLength}`);
    }
    if (typeof v === "number") {
      const minimum = schema["minimum"] as number | undefined;
      const maximum = schema["maximum"] as number | undefined;
      if (minimum !== undefined && v < minimum) problems.push(`${path}: below ${minimum}`);
      if (maximum !== undefined && v > maximum) problems.push(`${path}: above ${maximum}`);
    }
    if (Array.isArray(v)) {
      const minItems = schema["minItems"] as number | undefined;
      if (minItems !== undefined && v.length < minItems)
        problems.push(`${path}: fewer than ${minItems} items`);
      if (schema["uniqueItems"] === true && new Set(v.map((x) => JSON.stringify(x))).size !== v.length) {
        problems.push(`${path}: items are not unique`);
      }
      const items = schema["items"] as Schema | undefined;
      if (items !== undefined) v.forEach((item, i) => check(items, item, `${path}[${i}]`));
    }
    if (typeOf(v) === "object") {
      const object = v as Record<string, unknown>;
      const properties = (schema["properties"] ?? {}) as Record<string, Schema>;
      for (const name of (schema["required"] ?? []) as string[]) {
        if (!(name in object)) problems.push(`${path}: ${name} is required`);
      }
      const additional = schema["additionalProperties"] as boolean | Schema | undefined;
      for (const [name, child] of Object.entries(object)) {
        const childPath = path === "" ? name : `${path}.${name}`;
        const declared = properties[name];
        if (declared !== undefined) check(declared, child, childPath);
        else if (additional === false) problems.push(`${childPath}: not allowed`);
        else if (typeof additional === "object") check(additional, child, childPath);
      }
    }
  };
  check(root, value, "");
  return problems;
}
