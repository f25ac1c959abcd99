/**
 * Structured logging as a port. Callers pass a message and flat fields they built themselves
 * (ids, codes, counts, sha256 hashes); nothing here ever receives a message body, a token,
 * evidence or key material, so there is nothing to redact after the fact.
 */
export type LogLevel = "debug" | "info" | "warn" | "error";
export type LogFields = Readonly<Record<string, string | number | boolean | undefined>>;
export type Logger = (level: LogLevel, message: string, fields?: LogFields) => void;

export const silentLogger: Logger = () => undefined;
