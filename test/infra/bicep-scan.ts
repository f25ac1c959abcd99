/**
 * A small scanner for the Bicep the tests check (there is no Bicep compiler here). It reads the
 * top-level declarations — `param`, `var`, `resource`, `output` — with their text, following
 * Bicep's lexical rules for what matters to finding where a declaration ends: `//` and `/* *\/`
 * comments, single-quoted strings with `\'` escapes and `${...}` interpolation (which may nest
 * braces and strings), `'''` multi-line strings, and balanced `{}`/`[]`/`()`. It does not type
 * check, resolve modules or evaluate expressions; `stringValue` resolves only a string literal
 * or the name of a `var` whose value is one.
 */

export interface BicepParam {
  readonly name: string;
  readonly type: string;
  /** The default value's source text, when there is one. */
  readonly defaultText?: string;
}

export interface BicepResource {
  readonly symbol: string;
  readonly type: string;
  readonly apiVersion: string;
  readonly existing: boolean;
  /** The `if (...)` condition's source, when the resource is conditional. */
  readonly condition?: string;
  /** The body's source, from `{` to the matching `}`. */
  readonly body: string;
}

export interface BicepOutput {
  readonly name: string;
  readonly type: string;
  readonly valueText: string;
}

export interface BicepFile {
  readonly params: ReadonlyMap<string, BicepParam>;
  readonly vars: ReadonlyMap<string, string>;
  readonly resources: readonly BicepResource[];
  readonly outputs: ReadonlyMap<string, BicepOutput>;
}

export class BicepScanError extends Error {
  override readonly name = "BicepScanError";
}

/** Replaces comments with spaces (keeping offsets and line breaks); strings are left alone. */
export function stripComments(source: string): string {
  let out = "";
  let i = 0;
  while (i < source.length) {
    const c = source[i]!;
    const next = source[i + 1];
    if (source.startsWith("'''", i)) {
      const end = source.indexOf("'''", i + 3);
      if (end < 0) throw new BicepScanError("unterminated multi-line string");
      out += source.slice(i, end + 3);
      i = end + 3;
    } else if (c === "'") {
      const end = skipString(source, i);
      out += source.slice(i, end);
      i = end;
    } else if (c === "/" && next === "/") {
      while (i < source.length && source[i] !== "\n") {
        out += " ";
        i++;
      }
    } else if (c === "/" && next === "*") {
      const end = source.indexOf("*/", i + 2);
      if (end < 0) throw new BicepScanError("unterminated block comment");
      out += source.slice(i, end + 2).replace(/[^\n]/g, " ");
      i = end + 2;
    } else {
      out += c;
      i++;
    }
  }
  return out;
}

/** Index just past the single-quoted string starting at `start`. */
function skipString(source: string, start: number): number {
  let i = start + 1;
  while (i < source.length) {
    const c = source[i]!;
    if (c === "\\") {
      i += 2;
    } else if (c === "'") {
      return i + 1;
    } else if (c === "$" && source[i + 1] === "{") {
      i = skipBalanced(source, i + 1, "{", "}");
    } else if (c === "\n") {
      throw new BicepScanError(`unterminated string at offset ${start}`);
    } else {
      i++;
    }
  }
  throw new BicepScanError(`unterminated string at offset ${start}`);
}

/** Index just past the bracket that closes the one at `start` (comments already stripped). */
function skipBalanced(source: string, start: number, open: string, close: string): number {
  if (source[start] !== open) throw new BicepScanError(`expected ${open} at offset ${start}`);
  const pairs: Record<string, string> = { "{": "}", "[": "]", "(": ")" };
  const stack: string[] = [close];
  let i = start + 1;
  while (i < source.length) {
    const c = source[i]!;
    if (source.startsWith("'''", i)) {
      const end = source.indexOf("'''", i + 3);
      if (end < 0) throw new BicepScanError("unterminated multi-line string");
      i = end + 3;
      continue;
    }
    if (c === "'") {
      i = skipString(source, i);
      continue;
    }
    if (pairs[c] !== undefined) stack.push(pairs[c]);
    else if (c === "}" || c === "]" || c === ")") {
      if (stack.pop() !== c) throw new BicepScanError(`unbalanced ${c} at offset ${i}`);
      if (stack.length === 0) return i + 1;
    }
    i++;
  }
  throw new BicepScanError(`unclosed ${open} at offset ${start}`);
}

/** The end of an expression that starts at `start` and runs to the end of its line (or its brackets). */
function skipExpression(source: string, start: number): number {
  let i = start;
  while (i < source.length && source[i] !== "\n") {
    const c = source[i]!;
    if (c === "'") i = skipString(source, i);
    else if (c === "{") i = skipBalanced(source, i, "{", "}");
    else if (c === "[") i = skipBalanced(source, i, "[", "]");
    else if (c === "(") i = skipBalanced(source, i, "(", ")");
    else i++;
  }
  return i;
}

export function scanBicep(source: string): BicepFile {
  const text = stripComments(source);
  const params = new Map<string, BicepParam>();
  const vars = new Map<string, string>();
  const resources: BicepResource[] = [];
  const outputs = new Map<string, BicepOutput>();
  const declaration = /^(param|var|resource|output|targetScope|metadata|module|type|func|import)\b[ \t]*/gm;
  let match: RegExpExecArray | null;
  while ((match = declaration.exec(text)) !== null) {
    const keyword = match[1]!;
    let i = match.index + match[0].length;
    const rest = text.slice(i);
    if (keyword === "param") {
      const m = /^([A-Za-z_][A-Za-z0-9_]*)\s+([A-Za-z_][A-Za-z0-9_.]*(?:\[\])?)/.exec(rest);
      if (m === null) throw new BicepScanError(`malformed param at offset ${match.index}`);
      i += m[0].length;
      const eq = /^[ \t]*=[ \t]*/.exec(text.slice(i));
      let defaultText: string | undefined;
      if (eq !== null) {
        const start = i + eq[0].length;
        const end = skipExpression(text, start);
        defaultText = text.slice(start, end).trim();
        i = end;
      }
      if (params.has(m[1]!)) throw new BicepScanError(`param ${m[1]} declared twice`);
      params.set(m[1]!, { name: m[1]!, type: m[2]!, ...(defaultText === undefined ? {} : { defaultText }) });
    } else if (keyword === "var") {
      const m = /^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*/.exec(rest);
      if (m === null) throw new BicepScanError(`malformed var at offset ${match.index}`);
      const start = i + m[0].length;
      const end = skipExpression(text, start);
      vars.set(m[1]!, text.slice(start, end).trim());
      i = end;
    } else if (keyword === "resource") {
      const m =
        /^([A-Za-z_][A-Za-z0-9_]*)\s+'([A-Za-z0-9.]+\/[A-Za-z0-9./]+)@([0-9A-Za-z-]+)'\s*(existing\s*)?=\s*(?:\[[^\n]*?\]\s*)?(?:if\s*)?/.exec(
          rest,
        );
      if (m === null) throw new BicepScanError(`malformed resource at offset ${match.index}`);
      i += m[0].length;
      let condition: string | undefined;
      if (text[i] === "(") {
        const end = skipBalanced(text, i, "(", ")");
        condition = text.slice(i + 1, end - 1).trim();
        i = end;
        while (text[i] === " " || text[i] === "\t") i++;
      }
      const end = skipBalanced(text, i, "{", "}");
      resources.push({
        symbol: m[1]!,
        type: m[2]!,
        apiVersion: m[3]!,
        existing: m[4] !== undefined,
        ...(condition === undefined ? {} : { condition }),
        body: text.slice(i, end),
      });
      i = end;
    } else if (keyword === "output") {
      const m = /^([A-Za-z_][A-Za-z0-9_]*)\s+([A-Za-z_][A-Za-z0-9_]*)\s*=\s*/.exec(rest);
      if (m === null) throw new BicepScanError(`malformed output at offset ${match.index}`);
      const start = i + m[0].length;
      const end = skipExpression(text, start);
      if (outputs.has(m[1]!)) throw new BicepScanError(`output ${m[1]} declared twice`);
      outputs.set(m[1]!, { name: m[1]!, type: m[2]!, valueText: text.slice(start, end).trim() });
      i = end;
    } else {
      i = skipExpression(text, i);
    }
    declaration.lastIndex = i;
  }
  return { params, vars, resources, outputs };
}

/** A string literal's value (without interpolation), or a var's when it is one; else undefined. */
export function stringValue(file: BicepFile, expression: string): string | undefined {
  const literal = /^'((?:[^'\\$]|\\.|\$(?!\{))*)'$/.exec(expression.trim());
  if (literal !== null) return literal[1]!.replace(/\\(.)/g, "$1");
  const name = /^[A-Za-z_][A-Za-z0-9_]*$/.exec(expression.trim());
  if (name !== null) {
    const value = file.vars.get(name[0]);
    return value === undefined ? undefined : stringValue(file, value);
  }
  return undefined;
}

/** The source of a top-level property of an object body (`{ ... }`), e.g. `name` or `scope`. */
export function property(body: string, key: string): string | undefined {
  const inner = body.slice(1, -1);
  let depth = 0;
  let i = 0;
  let lineStart = true;
  while (i < inner.length) {
    const c = inner[i]!;
    if (c === "'") {
      i = skipString(inner, i);
      lineStart = false;
      continue;
    }
    if (c === "{" || c === "[" || c === "(") depth++;
    else if (c === "}" || c === "]" || c === ")") depth--;
    else if (c === "\n") {
      lineStart = true;
      i++;
      continue;
    } else if (lineStart && depth === 0 && /\s/.test(c)) {
      i++;
      continue;
    } else if (lineStart && depth === 0) {
      const m = new RegExp(`^${key}\\s*:\\s*`).exec(inner.slice(i));
      if (m !== null) {
        const start = i + m[0].length;
        return inner.slice(start, skipExpression(inner, start)).trim();
      }
    }
    lineStart = false;
    i++;
  }
  return undefined;
}

/** The keys of an object literal's top level (`{ a: 1, b: { c: 2 } }` → a, b). */
export function objectKeys(objectText: string): string[] {
  const keys: string[] = [];
  const inner = objectText.trim().slice(1, -1);
  let depth = 0;
  let i = 0;
  let atKey = true;
  while (i < inner.length) {
    const c = inner[i]!;
    if (c === "'") {
      if (atKey && depth === 0) {
        const end = skipString(inner, i);
        const after = /^\s*:/.exec(inner.slice(end));
        if (after !== null) keys.push(inner.slice(i + 1, end - 1));
        i = end;
        atKey = false;
        continue;
      }
      i = skipString(inner, i);
      continue;
    }
    if (c === "{" || c === "[" || c === "(") depth++;
    else if (c === "}" || c === "]" || c === ")") depth--;
    if (depth === 0 && (c === "\n" || c === ",")) {
      atKey = true;
      i++;
      continue;
    }
    if (atKey && depth === 0 && /[A-Za-z_]/.test(c)) {
      const m = /^([A-Za-z_][A-Za-z0-9_]*)\s*:/.exec(inner.slice(i));
      if (m !== null) keys.push(m[1]!);
      atKey = false;
    } else if (!/\s/.test(c)) atKey = false;
    i++;
  }
  return keys;
}
