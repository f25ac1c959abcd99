/**
 * PostgreSQL frontend/backend protocol v3 framing for the proxy. Backend messages (server →
 * proxy) are decoded with the maintained `pg-protocol` parser, the one `pg` runs on, and
 * frontend messages to the server are written with its serializer and buffer writer. What
 * `pg-protocol` does not cover — it is a client library — is here: splitting both streams into
 * raw frames (so that what the proxy does not change is forwarded byte for byte), reading the
 * frontend messages an application sends, the few backend messages the proxy writes itself, and
 * `DataRow` values as bytes (the parser decodes them to strings, which would corrupt binary
 * results of unprotected columns).
 */
import { Writer } from "pg-protocol/dist/buffer-writer.js";
import type { BackendMessage } from "pg-protocol/dist/messages.js";
import { Parser } from "pg-protocol/dist/parser.js";
import { ShieldError } from "../../core/errors.js";

/** Largest message the proxy accepts from either side (the server's own limit is 1 GB). */
export const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

export const SSL_REQUEST_CODE = 80877103;
export const GSSENC_REQUEST_CODE = 80877104;
export const CANCEL_REQUEST_CODE = 80877102;
export const PROTOCOL_3_0 = 196608;

export interface Frame {
  /** The message type byte as a character (`Q`, `P`, `D`, ...). */
  readonly type: string;
  /** The body, without type byte and length. */
  readonly body: Buffer;
  /** The whole frame, to forward unchanged. */
  readonly raw: Buffer;
}

function protocolError(message: string): ShieldError {
  return new ShieldError("ERR_PROXY_PROTOCOL", message);
}

/** Splits a stream of typed messages (`type`, int32 length, body) into frames. */
export class FrameReader {
  #buffer: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.#buffer = this.#buffer.length === 0 ? chunk : Buffer.concat([this.#buffer, chunk]);
    const frames: Frame[] = [];
    let offset = 0;
    while (this.#buffer.length - offset >= 5) {
      const length = this.#buffer.readInt32BE(offset + 1);
      if (length < 4 || length > MAX_MESSAGE_BYTES) throw protocolError("a message length out of range");
      if (this.#buffer.length - offset < 1 + length) break;
      const raw = this.#buffer.subarray(offset, offset + 1 + length);
      frames.push({ type: String.fromCharCode(raw[0]!), body: raw.subarray(5), raw });
      offset += 1 + length;
    }
    this.#buffer = this.#buffer.subarray(offset);
    return frames;
  }

  /** What is buffered but not yet a whole frame. */
  rest(): Buffer {
    return this.#buffer;
  }
}

/** Reads the untyped startup packets (length, code, body) before the typed messages begin. */
export function readStartupPacket(buffer: Buffer): { packet: Buffer; rest: Buffer } | undefined {
  if (buffer.length < 8) return undefined;
  const length = buffer.readInt32BE(0);
  if (length < 8 || length > 10_000) throw protocolError("a startup packet length out of range");
  if (buffer.length < length) return undefined;
  return { packet: buffer.subarray(0, length), rest: buffer.subarray(length) };
}

/** The parameters of a v3 StartupMessage. */
export function startupParameters(packet: Buffer): Map<string, string> {
  const reader = new BodyReader(packet.subarray(8));
  const parameters = new Map<string, string>();
  for (;;) {
    const name = reader.cstring();
    if (name === "") break;
    parameters.set(name, reader.cstring());
  }
  return parameters;
}

/** Decodes one backend frame with pg-protocol's parser. */
export function decodeBackend(frame: Frame): BackendMessage {
  let decoded: BackendMessage | undefined;
  new Parser().parse(frame.raw, (message) => {
    decoded = message;
  });
  if (decoded === undefined) throw protocolError("a backend message that does not parse");
  return decoded;
}

/** Reads the fields of a frontend message body. */
export class BodyReader {
  readonly #body: Buffer;
  #offset = 0;
  constructor(body: Buffer) {
    this.#body = body;
  }
  cstring(): string {
    const end = this.#body.indexOf(0, this.#offset);
    if (end === -1) throw protocolError("a string without its terminator");
    const value = this.#body.toString("utf8", this.#offset, end);
    this.#offset = end + 1;
    return value;
  }
  int16(): number {
    this.#need(2);
    const value = this.#body.readInt16BE(this.#offset);
    this.#offset += 2;
    return value;
  }
  int32(): number {
    this.#need(4);
    const value = this.#body.readInt32BE(this.#offset);
    this.#offset += 4;
    return value;
  }
  byte(): string {
    this.#need(1);
    return String.fromCharCode(this.#body[this.#offset++]!);
  }
  bytes(length: number): Buffer {
    this.#need(length);
    const value = this.#body.subarray(this.#offset, this.#offset + length);
    this.#offset += length;
    return value;
  }
  #need(count: number): void {
    if (this.#offset + count > this.#body.length) throw protocolError("a message shorter than its fields");
  }
}

export interface ParseMessage {
  readonly name: string;
  readonly text: string;
  readonly types: readonly number[];
}

export function readParse(body: Buffer): ParseMessage {
  const reader = new BodyReader(body);
  const name = reader.cstring();
  const text = reader.cstring();
  const count = reader.int16();
  const types: number[] = [];
  for (let i = 0; i < count; i++) types.push(reader.int32());
  return { name, text, types };
}

export interface BindMessage {
  readonly portal: string;
  readonly statement: string;
  /** One format code per value (0 text, 1 binary), expanded from the message's short forms. */
  readonly formats: readonly number[];
  readonly values: readonly (Buffer | null)[];
  readonly resultFormats: readonly number[];
}

export function readBind(body: Buffer): BindMessage {
  const reader = new BodyReader(body);
  const portal = reader.cstring();
  const statement = reader.cstring();
  const formatCount = reader.int16();
  const declared: number[] = [];
  for (let i = 0; i < formatCount; i++) declared.push(reader.int16());
  const valueCount = reader.int16();
  const values: (Buffer | null)[] = [];
  for (let i = 0; i < valueCount; i++) {
    const length = reader.int32();
    values.push(length === -1 ? null : reader.bytes(length));
  }
  const resultCount = reader.int16();
  const resultFormats: number[] = [];
  for (let i = 0; i < resultCount; i++) resultFormats.push(reader.int16());
  if (formatCount > 1 && formatCount !== valueCount)
    throw protocolError("Bind format codes do not match its values");
  const formats = values.map((_, i) =>
    formatCount === 0 ? 0 : formatCount === 1 ? declared[0]! : declared[i]!,
  );
  return { portal, statement, formats, values, resultFormats };
}

/** Bind with per-value format codes (pg-protocol's `serialize.bind` sets one for all results). */
export function writeBind(message: BindMessage): Buffer {
  const writer = new Writer();
  writer.addCString(message.portal).addCString(message.statement);
  writer.addInt16(message.formats.length);
  for (const format of message.formats) writer.addInt16(format);
  writer.addInt16(message.values.length);
  for (const value of message.values) {
    if (value === null) writer.addInt32(-1);
    else writer.addInt32(value.length).add(value);
  }
  writer.addInt16(message.resultFormats.length);
  for (const format of message.resultFormats) writer.addInt16(format);
  return writer.flush(0x42);
}

/** `Describe` / `Close`: the target kind (`S` statement, `P` portal) and its name. */
export function readTarget(body: Buffer): { kind: string; name: string } {
  const reader = new BodyReader(body);
  return { kind: reader.byte(), name: reader.cstring() };
}

export function readExecutePortal(body: Buffer): string {
  return new BodyReader(body).cstring();
}

export function readQuery(body: Buffer): string {
  return new BodyReader(body).cstring();
}

/** A DataRow's values as bytes (null for SQL NULL). */
export function readDataRow(body: Buffer): (Buffer | null)[] {
  const reader = new BodyReader(body);
  const count = reader.int16();
  const values: (Buffer | null)[] = [];
  for (let i = 0; i < count; i++) {
    const length = reader.int32();
    values.push(length === -1 ? null : reader.bytes(length));
  }
  return values;
}

export function writeDataRow(values: readonly (Buffer | null)[]): Buffer {
  const writer = new Writer();
  writer.addInt16(values.length);
  for (const value of values) {
    if (value === null) writer.addInt32(-1);
    else writer.addInt32(value.length).add(value);
  }
  return writer.flush(0x44);
}

/** One RowDescription field as the proxy forwards it (pg-protocol's Field, with its format as a code). */
export interface FieldDescription {
  readonly name: string;
  readonly tableID: number;
  readonly columnID: number;
  readonly dataTypeID: number;
  readonly dataTypeSize: number;
  readonly dataTypeModifier: number;
  readonly format: "text" | "binary";
}

export function writeRowDescription(fields: readonly FieldDescription[]): Buffer {
  const writer = new Writer();
  writer.addInt16(fields.length);
  for (const field of fields) {
    writer
      .addCString(field.name)
      .addInt32(field.tableID)
      .addInt16(field.columnID)
      .addInt32(field.dataTypeID)
      .addInt16(field.dataTypeSize)
      .addInt32(field.dataTypeModifier)
      .addInt16(field.format === "binary" ? 1 : 0);
  }
  return writer.flush(0x54);
}

export function writeParameterDescription(types: readonly number[]): Buffer {
  const writer = new Writer();
  writer.addInt16(types.length);
  for (const type of types) writer.addInt32(type);
  return writer.flush(0x74);
}

export function writeAuthentication(code: number): Buffer {
  return new Writer().addInt32(code).flush(0x52);
}

/** An ErrorResponse: severity, SQLSTATE, message, and optional detail and hint. */
export function writeError(error: {
  readonly severity: "ERROR" | "FATAL";
  readonly sqlState: string;
  readonly message: string;
  readonly detail?: string;
  readonly hint?: string;
}): Buffer {
  const writer = new Writer();
  const field = (code: string, value: string): void => {
    writer.addString(code).addCString(value);
  };
  field("S", error.severity);
  field("V", error.severity);
  field("C", error.sqlState);
  field("M", error.message);
  if (error.detail !== undefined) field("D", error.detail);
  if (error.hint !== undefined) field("H", error.hint);
  writer.addString("\0");
  return writer.flush(0x45);
}
