/**
 * The proxy's SQL classifier: decides, for one statement text, whether it can pass to the server
 * untouched, how to rewrite it so that protected columns only ever meet ciphertext and blind
 * indexes, or that it must be refused. Deciding wrongly that a statement touches no protected
 * column means plaintext reaches the database, so the rules lean one way: a statement that names
 * a protected table or column anywhere (as an identifier, quoted or not, outside strings and
 * comments) is refused unless it is one of the few shapes below, with every protected column in
 * a place the proxy knows how to rewrite.
 *
 * | shape | protected column allowed as |
 * |---|---|
 * | `SELECT list FROM t [[AS] a] [WHERE cond] [ORDER BY ...] [LIMIT ...] [OFFSET ...]` | a list item on its own (`c`, `t.c`, `c AS x`); in `cond`, `c = v` (rewritten to the blind index) or `c IS [NOT] NULL` |
 * | `INSERT INTO t (cols) VALUES (row)[, (row)] [RETURNING list]` | a column of the list whose value is `v` or `NULL` (encrypted; the blind index column added) |
 * | `UPDATE t [[AS] a] SET c = v, ... [WHERE cond] [RETURNING list]` | `c = v` in `SET` (encrypted, index set too), and as in `cond` |
 * | `DELETE FROM t [[AS] a] [WHERE cond] [RETURNING list]` | as in `cond` |
 *
 * `v` is one parameter (`$n`), a plain string literal or a number. Anything else that mentions a
 * protected column — an expression, a function, `LIKE`, a comparison other than `=`, `ORDER BY`,
 * `GROUP BY`, `DISTINCT`, joins, subqueries, `WITH`, `COPY`, DDL, unknown statements — is refused
 * with a reason. A `$n` that fills a protected slot may appear nowhere else in the statement.
 *
 * The tokenizer follows PostgreSQL's lexical rules (scan.l) where they decide what is an
 * identifier: nested block comments, `--` comments, standard and escape strings, dollar quoting,
 * quoted identifiers with `""`; a `U&"..."` identifier (which could spell any name) makes the
 * statement count as touching a protected name, and with `standard_conforming_strings` off a
 * backslash in a plain string is refused, since the server would end that string elsewhere.
 * Names longer than 63 bytes are cut as the server cuts them (NAMEDATALEN).
 */
import { ShieldError } from "../../core/errors.js";

export type TokenKind = "ident" | "quoted" | "unicode-ident" | "string" | "number" | "param" | "op" | "punct";

export interface Token {
  readonly kind: TokenKind;
  /** ident: lowercased (ASCII, as PostgreSQL folds); quoted: the name; string: the value; else the text. */
  readonly value: string;
  readonly start: number;
  readonly end: number;
  /** For a string: true only for a plain `'...'` (no E, B, X, N, U& prefix, no dollar quoting). */
  readonly plain?: boolean;
  /** For a plain or N string: it holds a backslash (read differently as standard_conforming_strings is set). */
  readonly backslash?: boolean;
}

/** One protected column: its table, and the blind-index column beside it, if any. */
export interface ProtectedColumn {
  readonly table: string;
  readonly column: string;
  readonly index?: string;
}

export interface ProtectedSchema {
  /** Per table name, its protected columns by name. */
  readonly tables: ReadonlyMap<string, ReadonlyMap<string, ProtectedColumn>>;
}

/** What the rewritten statement needs per final parameter. */
export type ParameterRule =
  | { readonly kind: "keep"; readonly from: number }
  | { readonly kind: "encrypt"; readonly from: number; readonly column: ProtectedColumn }
  | { readonly kind: "index"; readonly from: number; readonly column: ProtectedColumn }
  | { readonly kind: "candidates"; readonly from: number; readonly column: ProtectedColumn };

/** How literal values are sealed while a statement is planned (the simple query protocol). */
export interface LiteralSealer {
  encrypt(column: ProtectedColumn, value: string): string;
  index(column: ProtectedColumn, value: string): string;
  candidates(column: ProtectedColumn, value: string): readonly string[];
}

export interface Plan {
  /** True when the statement text went to the server unchanged and no parameter needs work. */
  readonly untouched: boolean;
  readonly text: string;
  /** Per final parameter ($1 first): where its value comes from; empty when `untouched`. */
  readonly parameters: readonly ParameterRule[];
  /** How many parameters the original text uses (highest `$n`). */
  readonly originalParameters: number;
}

export function refused(reason: string): ShieldError {
  return new ShieldError("ERR_PROXY_UNSAFE_STATEMENT", reason);
}

const OPERATOR_CHARS = new Set("+-*/<>=~!@#%^&|`?");
const IDENT_START = /[A-Za-z_\u0080-\uffff]/;
const IDENT_PART = /[A-Za-z0-9_$\u0080-\uffff]/;
/**
 * Numbers as PostgreSQL before 16 reads them: digits only, so `0x1f` and `1_000` are a number
 * and then a name. Version 16 reads those as one number and rejects a number run into a name,
 * so this reading never misses a name either version sees.
 */
const NUMBER = /(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?/y;
/** The most parameters a Bind can carry (its count is an int16). */
const MAX_PARAMETER = 65_535;
const DOLLAR_TAG = /\$([A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$/y;

/** The tokens of `sql`, comments and whitespace dropped. */
export function tokenize(sql: string, options: { standardConformingStrings: boolean }): Token[] {
  return lex(sql, options.standardConformingStrings, true);
}

/**
 * The tokens as a server with `standardConformingStrings` reads them. `refuseBackslashes`: with
 * it off, a backslash in an ordinary string is refused (the proxy's own reading) rather than
 * read as an escape (what such a server does, for comparing the two readings).
 */
function lex(sql: string, standardConformingStrings: boolean, refuseBackslashes: boolean): Token[] {
  const options = { standardConformingStrings };
  const tokens: Token[] = [];
  let i = 0;
  const at = (offset: number): string => sql[i + offset] ?? "";
  while (i < sql.length) {
    const c = sql[i]!;
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    if (c === "-" && at(1) === "-") {
      // scan.l: a `--` comment runs to the next newline, and a newline is \n or \r.
      let end = i + 2;
      while (end < sql.length && sql[end] !== "\n" && sql[end] !== "\r") end++;
      i = end;
      continue;
    }
    if (c === "/" && at(1) === "*") {
      i = skipBlockComment(sql, i);
      continue;
    }
    const start = i;
    // Prefixed strings and U& identifiers.
    const prefix = /^(?:[eE]|[bB]|[xX]|[nN]|[uU]&)(?=['"])/.exec(sql.slice(i, i + 3))?.[0];
    if (prefix !== undefined) {
      const quote = sql[i + prefix.length]!;
      if (quote === '"') {
        if (!prefix.startsWith("u") && !prefix.startsWith("U")) {
          // e.g. x"name": an identifier `x` followed by a quoted one; lexed below as such.
        } else {
          const end = scanQuoted(sql, i + prefix.length, '"', false);
          tokens.push({ kind: "unicode-ident", value: sql.slice(start, end), start, end });
          i = end;
          continue;
        }
      } else {
        // N'...' is NCHAR followed by an ordinary string: its backslashes are escapes exactly
        // when a plain string's are (standard_conforming_strings off).
        const national = prefix === "n" || prefix === "N";
        const escapes = prefix === "e" || prefix === "E" || (national && !options.standardConformingStrings);
        const end = scanQuoted(sql, i + prefix.length, "'", escapes);
        const backslash = national && sql.slice(start, end).includes("\\");
        if (backslash && !options.standardConformingStrings && refuseBackslashes) {
          throw refused("a backslash in a string literal while standard_conforming_strings is off");
        }
        tokens.push({ kind: "string", value: sql.slice(start, end), start, end, plain: false, backslash });
        i = end;
        continue;
      }
    }
    if (c === "'") {
      const end = scanQuoted(sql, i, "'", !options.standardConformingStrings && !refuseBackslashes);
      const body = sql.slice(i + 1, end - 1);
      const backslash = body.includes("\\");
      if (!options.standardConformingStrings && backslash) {
        if (refuseBackslashes) {
          throw refused("a backslash in a string literal while standard_conforming_strings is off");
        }
        tokens.push({ kind: "string", value: sql.slice(start, end), start, end, plain: false, backslash });
        i = end;
        continue;
      }
      tokens.push({ kind: "string", value: body.replace(/''/g, "'"), start, end, plain: true, backslash });
      i = end;
      continue;
    }
    if (c === '"') {
      const end = scanQuoted(sql, i, '"', false);
      const name = truncateIdentifier(sql.slice(i + 1, end - 1).replace(/""/g, '"'));
      tokens.push({ kind: "quoted", value: name, start, end });
      i = end;
      continue;
    }
    if (c === "$") {
      const param = /^\$(\d+)/.exec(sql.slice(i, i + 12));
      if (param !== null) {
        if (param[1]!.length > 5 || Number(param[1]) > MAX_PARAMETER || Number(param[1]) === 0) {
          throw refused(`a parameter number beyond $${MAX_PARAMETER}`);
        }
        tokens.push({ kind: "param", value: param[1]!, start, end: i + param[0].length });
        i += param[0].length;
        continue;
      }
      DOLLAR_TAG.lastIndex = i;
      const tag = DOLLAR_TAG.exec(sql);
      if (tag !== null) {
        const close = sql.indexOf(tag[0], i + tag[0].length);
        if (close === -1) throw refused("an unterminated dollar-quoted string");
        const end = close + tag[0].length;
        tokens.push({ kind: "string", value: sql.slice(start, end), start, end, plain: false });
        i = end;
        continue;
      }
      throw refused("a stray $ outside a parameter or dollar quote");
    }
    if (/\d/.test(c) || (c === "." && /\d/.test(at(1)))) {
      NUMBER.lastIndex = i;
      const number = NUMBER.exec(sql)![0];
      tokens.push({ kind: "number", value: number, start, end: i + number.length });
      i += number.length;
      continue;
    }
    if (IDENT_START.test(c)) {
      let end = i + 1;
      while (end < sql.length && IDENT_PART.test(sql[end]!)) end++;
      const word = truncateIdentifier(sql.slice(i, end).replace(/[A-Z]/g, (letter) => letter.toLowerCase()));
      tokens.push({ kind: "ident", value: word, start, end });
      i = end;
      continue;
    }
    if (c === ":" && at(1) === ":") {
      tokens.push({ kind: "punct", value: "::", start, end: i + 2 });
      i += 2;
      continue;
    }
    if ("(),;[].:".includes(c)) {
      tokens.push({ kind: "punct", value: c, start, end: i + 1 });
      i++;
      continue;
    }
    if (OPERATOR_CHARS.has(c)) {
      let end = i + 1;
      while (
        end < sql.length &&
        OPERATOR_CHARS.has(sql[end]!) &&
        !(sql[end] === "-" && sql[end + 1] === "-") &&
        !(sql[end] === "/" && sql[end + 1] === "*")
      ) {
        end++;
      }
      tokens.push({ kind: "op", value: sql.slice(i, end), start, end });
      i = end;
      continue;
    }
    throw refused(
      `a character the proxy does not lex (U+${c.codePointAt(0)!.toString(16).padStart(4, "0")})`,
    );
  }
  return tokens;
}

/** NAMEDATALEN - 1: the server cuts longer names (quoted or not) to this many bytes. */
const MAX_IDENTIFIER_BYTES = 63;

/** A name as the server keeps it: cut to 63 bytes of UTF-8, at a character boundary. */
function truncateIdentifier(name: string): string {
  if (Buffer.byteLength(name, "utf8") <= MAX_IDENTIFIER_BYTES) return name;
  let kept = "";
  let bytes = 0;
  for (const character of name) {
    const size = Buffer.byteLength(character, "utf8");
    if (bytes + size > MAX_IDENTIFIER_BYTES) break;
    kept += character;
    bytes += size;
  }
  return kept;
}

function skipBlockComment(sql: string, from: number): number {
  let depth = 0;
  let i = from;
  while (i < sql.length) {
    if (sql[i] === "/" && sql[i + 1] === "*") {
      depth++;
      i += 2;
    } else if (sql[i] === "*" && sql[i + 1] === "/") {
      depth--;
      i += 2;
      if (depth === 0) return i;
    } else {
      i++;
    }
  }
  throw refused("an unterminated block comment");
}

/** The offset after the closing quote of the literal opening at `from`. */
function scanQuoted(sql: string, from: number, quote: string, backslashEscapes: boolean): number {
  let i = from + 1;
  while (i < sql.length) {
    const c = sql[i]!;
    if (backslashEscapes && c === "\\") {
      i += 2;
      continue;
    }
    if (c === quote) {
      if (sql[i + 1] === quote) {
        i += 2;
        continue;
      }
      return i + 1;
    }
    i++;
  }
  throw refused(quote === '"' ? "an unterminated quoted identifier" : "an unterminated string literal");
}

interface Edit {
  readonly start: number;
  readonly end: number;
  readonly text: string;
}

/** Words that end a clause at the top level of a statement. */
const CLAUSE_WORDS = new Set([
  "from",
  "where",
  "group",
  "having",
  "window",
  "order",
  "limit",
  "offset",
  "fetch",
  "for",
  "returning",
  "union",
  "intersect",
  "except",
  "values",
  "set",
  "using",
  "on",
]);

/**
 * Plans one statement text (one or more statements separated by `;`). Throws
 * ERR_PROXY_UNSAFE_STATEMENT with the reason when it cannot be rewritten safely.
 */
export function planStatement(
  sql: string,
  schema: ProtectedSchema,
  options: { standardConformingStrings: boolean; sealer?: LiteralSealer },
): Plan {
  const tokens = tokenize(sql, options);
  const names = protectedNames(schema);
  if (options.standardConformingStrings && tokens.some((token) => token.backslash === true)) {
    refuseIfReadElsewhere(sql, tokens, names);
  }
  let originalParameters = 0;
  for (const token of tokens) {
    if (token.kind === "param") originalParameters = Math.max(originalParameters, Number(token.value));
  }
  const edits: Edit[] = [];
  const parameters = new Map<number, ParameterRule>();
  const appended: ParameterRule[] = [];
  let statement: Token[] = [];
  const flush = (): void => {
    if (statement.length > 0) {
      planOne(statement, schema, names, {
        edits,
        parameters,
        appended,
        nextParameter: () => originalParameters + appended.length + 1,
        ...(options.sealer === undefined ? {} : { sealer: options.sealer }),
      });
    }
    statement = [];
  };
  for (const token of tokens) {
    if (token.kind === "punct" && token.value === ";") flush();
    else statement.push(token);
  }
  flush();
  if (edits.length === 0 && parameters.size === 0 && appended.length === 0) {
    return { untouched: true, text: sql, parameters: [], originalParameters };
  }
  let text = "";
  let cursor = 0;
  for (const edit of [...edits].sort((a, b) => a.start - b.start)) {
    text += sql.slice(cursor, edit.start) + edit.text;
    cursor = edit.end;
  }
  text += sql.slice(cursor);
  const rules: ParameterRule[] = [];
  for (let n = 1; n <= originalParameters; n++) rules.push(parameters.get(n) ?? { kind: "keep", from: n });
  rules.push(...appended);
  return { untouched: false, text, parameters: rules, originalParameters };
}

/**
 * The proxy knows standard_conforming_strings only from the server's last ParameterStatus; a
 * statement pipelined behind a `SET` (or a `set_config()`, or a rollback) reaches a server on
 * which it may already be off, and the server reports the change only at its next ReadyForQuery.
 * A text whose strings end elsewhere with it off is therefore refused when either reading names
 * a protected table or column. A text that does not lex with it off would fail on such a server,
 * whole (a simple query is parsed before any of it runs).
 */
function refuseIfReadElsewhere(sql: string, tokens: readonly Token[], names: ReadonlySet<string>): void {
  let other: Token[];
  try {
    other = lex(sql, false, false);
  } catch (error) {
    if (error instanceof ShieldError && error.code === "ERR_PROXY_UNSAFE_STATEMENT") return;
    throw error;
  }
  const same =
    other.length === tokens.length &&
    other.every(
      (token, i) =>
        token.kind === tokens[i]!.kind && token.start === tokens[i]!.start && token.end === tokens[i]!.end,
    );
  if (!same && (touchesProtected(tokens, names) || touchesProtected(other, names))) {
    throw refused(
      "a backslash in a string literal that ends elsewhere when standard_conforming_strings is off, in a statement that may name a protected table",
    );
  }
}

function touchesProtected(tokens: readonly Token[], names: ReadonlySet<string>): boolean {
  return tokens.some((token) => token.kind === "unicode-ident" || (isName(token) && names.has(token.value)));
}

function protectedNames(schema: ProtectedSchema): Set<string> {
  const names = new Set<string>();
  for (const [table, columns] of schema.tables) {
    names.add(table);
    for (const column of columns.values()) {
      names.add(column.column);
      if (column.index !== undefined) names.add(column.index);
    }
  }
  return names;
}

interface PlanState {
  readonly edits: Edit[];
  readonly parameters: Map<number, ParameterRule>;
  readonly appended: ParameterRule[];
  nextParameter(): number;
  readonly sealer?: LiteralSealer;
}

const isWord = (token: Token | undefined, ...words: string[]): boolean =>
  token !== undefined && token.kind === "ident" && words.includes(token.value);
const isPunct = (token: Token | undefined, value: string): boolean =>
  token !== undefined && token.kind === "punct" && token.value === value;
const isName = (token: Token | undefined): boolean =>
  token !== undefined && (token.kind === "ident" || token.kind === "quoted");

/** One statement, already known to be between `;`s. */
function planOne(
  tokens: readonly Token[],
  schema: ProtectedSchema,
  names: ReadonlySet<string>,
  state: PlanState,
): void {
  const head = tokens[0]!;
  // Code the server runs from a string: its names are out of the proxy's sight (and may be
  // put together at run time), so it is refused whatever it names.
  const creates = isWord(head, "create")
    ? isWord(tokens[1], "or") && isWord(tokens[2], "replace")
      ? 3
      : 1
    : 0;
  if (isWord(head, "do") || (creates > 0 && isWord(tokens[creates], "function", "procedure"))) {
    throw refused(
      `${isWord(head, "do") ? "DO" : `CREATE ${tokens[creates]!.value.toUpperCase()}`}: code in a string, which the proxy cannot read`,
    );
  }
  const touches = tokens.some(
    (token) => token.kind === "unicode-ident" || (isName(token) && names.has(token.value)),
  );
  if (!touches) return;
  if (tokens.some((token) => token.kind === "unicode-ident")) {
    throw refused('a U&"..." identifier in a statement that may name a protected table');
  }
  const keyword = head.kind === "ident" ? head.value : "";
  if (keyword === "copy") throw refused("COPY of a protected table");
  if (!["select", "insert", "update", "delete"].includes(keyword)) {
    throw refused(
      `${keyword === "" ? "this statement" : keyword.toUpperCase()} names a protected table or column`,
    );
  }
  const later = tokens.slice(1);
  if (later.some((token) => isWord(token, "select", "with", "union", "intersect", "except", "lateral"))) {
    throw refused("subqueries, WITH and set operations over a protected table");
  }
  switch (keyword) {
    case "select":
      return new StatementPlanner(tokens, schema, state).select();
    case "insert":
      return new StatementPlanner(tokens, schema, state).insert();
    case "update":
      return new StatementPlanner(tokens, schema, state).update();
    case "delete":
      return new StatementPlanner(tokens, schema, state).delete();
    case "copy":
      throw refused("COPY of a protected table");
    default:
      throw refused(
        `${keyword === "" ? "this statement" : keyword.toUpperCase()} names a protected table or column`,
      );
  }
}

type Slot =
  | { readonly kind: "param"; readonly parameter: number; readonly at: number }
  | { readonly kind: "literal"; readonly value: string; readonly at: number }
  | { readonly kind: "null"; readonly at: number };

/** A top-level clause: its keyword (or "head") and its tokens' range. */
interface Clause {
  readonly word: string;
  readonly from: number;
  readonly to: number;
}

class StatementPlanner {
  readonly #tokens: readonly Token[];
  readonly #schema: ProtectedSchema;
  readonly #state: PlanState;
  #table: ReadonlyMap<string, ProtectedColumn> = new Map();
  #qualifiers = new Set<string>();
  /** Token positions already accepted as protected references (or parts of them). */
  readonly #accepted = new Set<number>();
  /** $n that fill a protected slot, and every $n seen elsewhere. */
  readonly #slotParameters = new Set<number>();

  constructor(tokens: readonly Token[], schema: ProtectedSchema, state: PlanState) {
    this.#tokens = tokens;
    this.#schema = schema;
    this.#state = state;
  }

  select(): void {
    const clauses = this.#clauses(1);
    const first = clauses[0]!;
    const from = clauses.find((clause) => clause.word === "from");
    if (from !== undefined) this.#target(from.from, true);
    if (isWord(this.#tokens[first.from], "distinct")) this.#refuseIfProtectedIn(first, "SELECT DISTINCT");
    for (const clause of clauses) {
      if (clause === first) this.#outputList(clause);
      else if (clause.word === "where") this.#condition(clause);
      else if (clause.word === "from") continue;
      else if (clause.word === "order" || clause.word === "limit" || clause.word === "offset") {
        this.#refuseIfProtectedIn(clause, clause.word === "order" ? "ORDER BY" : clause.word.toUpperCase());
      } else
        this.#refuseIfProtectedIn(clause, clause.word === "group" ? "GROUP BY" : clause.word.toUpperCase());
    }
    this.#finish();
  }

  insert(): void {
    const tokens = this.#tokens;
    if (!isWord(tokens[1], "into")) throw refused("INSERT without INTO");
    const tableEnd = this.#target(2, false);
    if (!isPunct(tokens[tableEnd], "(")) {
      throw refused("INSERT into a protected table without a column list");
    }
    const listClose = this.#matching(tableEnd);
    const columns: { token: number; column: ProtectedColumn | undefined }[] = [];
    for (const [from, to] of this.#items(tableEnd + 1, listClose)) {
      if (to - from !== 1 || !isName(tokens[from]))
        throw refused("an INSERT column list entry that is not a name");
      const column = this.#table.get(tokens[from]!.value);
      this.#rejectIndexColumn(from);
      if (column !== undefined) this.#accepted.add(from);
      columns.push({ token: from, column });
    }
    const protectedColumns = columns.filter((entry) => entry.column !== undefined);
    if (!isWord(tokens[listClose + 1], "values")) {
      throw refused(
        "INSERT without VALUES (e.g. INSERT ... SELECT, DEFAULT VALUES) naming a protected table or column",
      );
    }
    let at = listClose + 2;
    const indexed = protectedColumns.filter((entry) => entry.column!.index !== undefined);
    if (indexed.length > 0) {
      const close = tokens[listClose]!;
      this.#state.edits.push({
        start: close.start,
        end: close.start,
        text: indexed.map((entry) => `, ${entry.column!.index!}`).join(""),
      });
    }
    for (;;) {
      if (!isPunct(tokens[at], "(")) throw refused("an INSERT VALUES row that is not a parenthesised list");
      const rowClose = this.#matching(at);
      const values = this.#items(at + 1, rowClose);
      if (values.length !== columns.length)
        throw refused("an INSERT row whose length differs from its column list");
      const additions: string[] = [];
      for (const [position, [from, to]] of values.entries()) {
        const column = columns[position]!.column;
        if (column === undefined) continue;
        const slot = this.#slot(from, to, `the value of ${column.table}.${column.column}`);
        this.#encryptSlot(slot, column);
        if (column.index !== undefined) additions.push(this.#indexOf(slot, column));
      }
      if (additions.length > 0) {
        const close = tokens[rowClose]!;
        this.#state.edits.push({ start: close.start, end: close.start, text: `, ${additions.join(", ")}` });
      }
      at = rowClose + 1;
      if (isPunct(tokens[at], ",")) {
        at++;
        continue;
      }
      break;
    }
    if (at < tokens.length) {
      if (!isWord(tokens[at], "returning")) {
        throw refused(`INSERT ... ${tokens[at]!.value.toUpperCase()} naming a protected table or column`);
      }
      this.#outputList({ word: "returning", from: at + 1, to: tokens.length });
    }
    this.#finish();
  }

  update(): void {
    const clauses = this.#clauses(this.#target(1, true));
    if (clauses[0]!.to > clauses[0]!.from) throw refused("an UPDATE target the proxy does not recognise");
    for (const clause of clauses) {
      if (clause.word === "head") continue;
      if (clause.word === "set") this.#assignments(clause);
      else if (clause.word === "where") this.#condition(clause);
      else if (clause.word === "returning") this.#outputList(clause);
      else if (clause.word === "from") throw refused("UPDATE ... FROM over a protected table");
      else this.#refuseIfProtectedIn(clause, clause.word.toUpperCase());
    }
    this.#finish();
  }

  delete(): void {
    const tokens = this.#tokens;
    if (!isWord(tokens[1], "from")) throw refused("DELETE without FROM");
    const clauses = this.#clauses(this.#target(2, true));
    if (clauses[0]!.to > clauses[0]!.from) throw refused("a DELETE target the proxy does not recognise");
    for (const clause of clauses) {
      if (clause.word === "head") continue;
      if (clause.word === "where") this.#condition(clause);
      else if (clause.word === "returning") this.#outputList(clause);
      else if (clause.word === "using") throw refused("DELETE ... USING over a protected table");
      else this.#refuseIfProtectedIn(clause, clause.word.toUpperCase());
    }
    this.#finish();
  }

  /** The table at `from` (`name` or `schema.name`, then an optional alias); the position after it. */
  #target(from: number, alias: boolean): number {
    const tokens = this.#tokens;
    let at = from;
    if (isWord(tokens[at], "only")) at++;
    if (!isName(tokens[at])) throw refused("a table reference the proxy does not recognise");
    let name = tokens[at]!.value;
    at++;
    if (isPunct(tokens[at], ".") && isName(tokens[at + 1])) {
      name = tokens[at + 1]!.value;
      at += 2;
    }
    this.#table = this.#schema.tables.get(name) ?? new Map();
    this.#qualifiers = new Set([name]);
    if (alias) {
      if (isWord(tokens[at], "as")) at++;
      if (isName(tokens[at]) && !isWord(tokens[at], ...CLAUSE_WORDS)) {
        this.#qualifiers.add(tokens[at]!.value);
        at++;
      }
    }
    return at;
  }

  /** Top-level clauses from `from`: the first is `head` (before any clause word). */
  #clauses(from: number): Clause[] {
    const tokens = this.#tokens;
    const clauses: Clause[] = [];
    let word = "head";
    let start = from;
    let depth = 0;
    for (let i = from; i < tokens.length; i++) {
      const token = tokens[i]!;
      if (isPunct(token, "(") || isPunct(token, "[")) depth++;
      else if (isPunct(token, ")") || isPunct(token, "]")) depth--;
      else if (depth === 0 && token.kind === "ident" && CLAUSE_WORDS.has(token.value)) {
        // `ORDER BY` / `GROUP BY`: the BY belongs to the clause word.
        clauses.push({ word, from: start, to: i });
        word = token.value;
        start = isWord(tokens[i + 1], "by") ? i + 2 : i + 1;
        if (start === i + 2) i++;
      }
    }
    clauses.push({ word, from: start, to: tokens.length });
    const from_ = clauses.find((clause) => clause.word === "from");
    if (from_ !== undefined) {
      // A SELECT's FROM must hold exactly one table and an optional alias.
      let at = from_.from;
      if (isWord(tokens[at], "only")) at++;
      at++;
      if (isPunct(tokens[at], ".")) at += 2;
      if (isWord(tokens[at], "as")) at++;
      if (at < from_.to && isName(tokens[at])) at++;
      if (at !== from_.to)
        throw refused("joins or more than one table in FROM with a protected table or column");
    }
    return clauses;
  }

  /** All protected references (and index columns) in `[from, to)`, qualified ones included. */
  #referencesIn(
    from: number,
    to: number,
  ): { column: ProtectedColumn; from: number; to: number; name: number }[] {
    const tokens = this.#tokens;
    const found: { column: ProtectedColumn; from: number; to: number; name: number }[] = [];
    for (let i = from; i < to; i++) {
      this.#rejectIndexColumn(i);
      const token = tokens[i]!;
      if (!isName(token)) continue;
      const column = this.#table.get(token.value);
      if (column === undefined) continue;
      if (isPunct(tokens[i + 1], ".") || isPunct(tokens[i + 1], "(")) {
        throw refused(`a function or field access on protected column ${column.table}.${column.column}`);
      }
      if (isPunct(tokens[i - 1], ".")) {
        const qualifier = tokens[i - 2];
        if (!isName(qualifier) || !this.#qualifiers.has(qualifier!.value)) {
          throw refused(`protected column ${column.table}.${column.column} under an unknown qualifier`);
        }
        let start = i - 2;
        if (isPunct(tokens[i - 3], ".") && isName(tokens[i - 4])) start = i - 4;
        found.push({ column, from: start, to: i + 1, name: i });
      } else {
        found.push({ column, from: i, to: i + 1, name: i });
      }
    }
    return found;
  }

  #rejectIndexColumn(at: number): void {
    const token = this.#tokens[at];
    if (!isName(token)) return;
    for (const column of this.#table.values()) {
      if (column.index === token!.value) {
        throw refused(`${column.table}.${column.index} is a blind index the proxy manages`);
      }
    }
  }

  /** A SELECT list or RETURNING list: protected columns only as whole items. */
  #outputList(clause: Clause): void {
    const tokens = this.#tokens;
    for (const [from, to] of this.#items(clause.from, clause.to)) {
      const references = this.#referencesIn(from, to);
      if (references.length === 0) continue;
      const reference = references[0]!;
      let end = reference.to;
      if (isWord(tokens[end], "as")) end++;
      if (end < to && isName(tokens[end])) end++;
      if (references.length > 1 || reference.from !== from || end !== to) {
        throw refused(
          `protected column ${reference.column.table}.${reference.column.column} inside an expression (only the column itself can be read)`,
        );
      }
      this.#accepted.add(reference.name);
    }
  }

  /** WHERE: `c = v` (to the blind index) and `c IS [NOT] NULL` only. */
  #condition(clause: Clause): void {
    const tokens = this.#tokens;
    for (const reference of this.#referencesIn(clause.from, clause.to)) {
      const { column } = reference;
      const name = `${column.table}.${column.column}`;
      const before = tokens[reference.from - 1];
      const openBoundary =
        reference.from === clause.from || isWord(before, "and", "or", "not") || isPunct(before, "(");
      const closes = (at: number): boolean =>
        at === clause.to || isWord(tokens[at], "and", "or") || isPunct(tokens[at], ")");
      const next = tokens[reference.to];
      if (isWord(next, "is")) {
        let at = reference.to + 1;
        if (isWord(tokens[at], "not")) at++;
        if (isWord(tokens[at], "null") && openBoundary && closes(at + 1)) {
          this.#accepted.add(reference.name);
          continue;
        }
        throw refused(`IS ... on protected column ${name} other than IS [NOT] NULL`);
      }
      if (isWord(next, "like", "ilike", "similar") || (next?.kind === "op" && next.value.includes("~"))) {
        throw refused(`LIKE or pattern matching on protected column ${name}`);
      }
      if (next?.kind === "op" && next.value !== "=") {
        throw refused(
          `comparison ${next.value} on protected column ${name}: only = works, through its blind index`,
        );
      }
      if (next?.kind !== "op" || !openBoundary) {
        throw refused(`protected column ${name} inside an expression in WHERE`);
      }
      if (column.index === undefined) {
        throw refused(`equality on protected column ${name}, which has no blind index`);
      }
      const valueAt = reference.to + 1;
      if (!closes(valueAt + 1)) throw refused(`protected column ${name} compared with an expression`);
      const slot = this.#slot(valueAt, valueAt + 1, `the value compared with ${name}`);
      this.#accepted.add(reference.name);
      // `[q.]c` → `[q.]index`, `= v` → `= ANY(candidates)`.
      const nameToken = tokens[reference.name]!;
      this.#state.edits.push({ start: nameToken.start, end: nameToken.end, text: column.index });
      const value = tokens[valueAt]!;
      if (slot.kind === "param") {
        this.#state.parameters.set(slot.parameter, { kind: "candidates", from: slot.parameter, column });
        this.#state.edits.push({
          start: value.start,
          end: value.end,
          text: `ANY($${slot.parameter}::text[])`,
        });
      } else if (slot.kind === "literal") {
        const candidates = this.#sealer().candidates(column, slot.value);
        this.#state.edits.push({
          start: value.start,
          end: value.end,
          text: `ANY(ARRAY[${candidates.map(quoteLiteral).join(", ")}]::text[])`,
        });
      }
    }
  }

  /** UPDATE's SET: `c = v` for protected columns (index set beside it). */
  #assignments(clause: Clause): void {
    const tokens = this.#tokens;
    for (const [from, to] of this.#items(clause.from, clause.to)) {
      const target = tokens[from];
      this.#rejectIndexColumn(from);
      const column = isName(target) ? this.#table.get(target!.value) : undefined;
      if (column === undefined) {
        // Unprotected target: its value must not read a protected column.
        if (this.#referencesIn(from + 1, to).length > 0) {
          throw refused("a protected column read inside an UPDATE expression");
        }
        continue;
      }
      if (!(tokens[from + 1]?.kind === "op" && tokens[from + 1]!.value === "=")) {
        throw refused(
          `an assignment to protected column ${column.table}.${column.column} the proxy does not recognise`,
        );
      }
      this.#accepted.add(from);
      const slot = this.#slot(from + 2, to, `the value of ${column.table}.${column.column}`);
      this.#encryptSlot(slot, column);
      if (column.index !== undefined) {
        const last = tokens[to - 1]!;
        this.#state.edits.push({
          start: last.end,
          end: last.end,
          text: `, ${column.index} = ${this.#indexOf(slot, column)}`,
        });
      }
    }
  }

  #refuseIfProtectedIn(clause: Clause, what: string): void {
    const references = this.#referencesIn(clause.from, clause.to);
    if (references.length > 0) {
      const { column } = references[0]!;
      throw refused(`${what} over protected column ${column.table}.${column.column}`);
    }
  }

  /** `[from, to)` split at top-level commas. */
  #items(from: number, to: number): [number, number][] {
    const items: [number, number][] = [];
    let depth = 0;
    let start = from;
    for (let i = from; i < to; i++) {
      const token = this.#tokens[i]!;
      if (isPunct(token, "(") || isPunct(token, "[")) depth++;
      else if (isPunct(token, ")") || isPunct(token, "]")) depth--;
      else if (depth === 0 && isPunct(token, ",")) {
        items.push([start, i]);
        start = i + 1;
      }
    }
    if (to > from) items.push([start, to]);
    return items;
  }

  #matching(open: number): number {
    let depth = 0;
    for (let i = open; i < this.#tokens.length; i++) {
      if (isPunct(this.#tokens[i], "(")) depth++;
      else if (isPunct(this.#tokens[i], ")")) {
        depth--;
        if (depth === 0) return i;
      }
    }
    throw refused("unbalanced parentheses");
  }

  /** The value of a protected slot: one `$n`, a plain string, a number, or NULL. */
  #slot(from: number, to: number, what: string): Slot {
    const token = this.#tokens[from];
    if (to - from !== 1 || token === undefined) throw refused(`${what} is an expression, not one value`);
    if (token.kind === "param") {
      const parameter = Number(token.value);
      if (this.#slotParameters.has(parameter)) throw refused(`$${parameter} fills two protected places`);
      this.#slotParameters.add(parameter);
      this.#accepted.add(from);
      return { kind: "param", parameter, at: from };
    }
    if (token.kind === "string" && token.plain === true)
      return { kind: "literal", value: token.value, at: from };
    if (token.kind === "number") return { kind: "literal", value: token.value, at: from };
    if (isWord(token, "null")) return { kind: "null", at: from };
    throw refused(`${what} is not a parameter, a plain string or a number`);
  }

  #encryptSlot(slot: Slot, column: ProtectedColumn): void {
    if (slot.kind === "param") {
      this.#state.parameters.set(slot.parameter, { kind: "encrypt", from: slot.parameter, column });
    } else if (slot.kind === "literal") {
      const token = this.#tokens[slot.at]!;
      this.#state.edits.push({
        start: token.start,
        end: token.end,
        text: quoteLiteral(this.#sealer().encrypt(column, slot.value)),
      });
    }
  }

  /** What the index column gets for this slot's value: a new parameter or a sealed literal. */
  #indexOf(slot: Slot, column: ProtectedColumn): string {
    if (slot.kind === "null") return "NULL";
    if (slot.kind === "literal") return quoteLiteral(this.#sealer().index(column, slot.value));
    const parameter = this.#state.nextParameter();
    this.#state.appended.push({ kind: "index", from: slot.parameter, column });
    return `$${parameter}`;
  }

  #sealer(): LiteralSealer {
    if (this.#state.sealer === undefined) throw new TypeError("literal values need a sealer");
    return this.#state.sealer;
  }

  /** Every protected reference must have been accepted; a slot's $n may appear nowhere else. */
  #finish(): void {
    for (const reference of this.#referencesIn(0, this.#tokens.length)) {
      if (!this.#accepted.has(reference.name)) {
        const { column } = reference;
        throw refused(`protected column ${column.table}.${column.column} where the proxy cannot rewrite it`);
      }
    }
    for (const [position, token] of this.#tokens.entries()) {
      if (
        token.kind === "param" &&
        this.#slotParameters.has(Number(token.value)) &&
        !this.#accepted.has(position)
      ) {
        throw refused(`$${token.value} fills a protected place and is used elsewhere too`);
      }
    }
  }
}

/** A standard SQL string literal; ciphertext and indexes are ASCII without quotes or backslashes. */
function quoteLiteral(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}
