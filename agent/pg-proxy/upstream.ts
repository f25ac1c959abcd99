/**
 * The proxy's own connection to the real PostgreSQL server. The proxy rewrites the stream, so it
 * cannot relay the application's authentication (SCRAM with channel binding exists to stop
 * exactly that); it authenticates itself: TLS first (`verify-full` checks the chain and the host
 * name, as libpq's `sslmode=verify-full`), then whatever the server asks among cleartext
 * password (what Azure Database for PostgreSQL asks for a Microsoft Entra token), MD5 and
 * SCRAM-SHA-256 (with channel binding when the server offers SCRAM-SHA-256-PLUS over TLS). The
 * SCRAM exchange is `pg`'s own implementation; messages are written with `pg-protocol`.
 *
 * The password is asked for per connection (`password()`), so a token that expires or a secret
 * that is rotated in Key Vault is read afresh, and never stored here.
 */
import { createHash } from "node:crypto";
import { connect as netConnect, type Socket } from "node:net";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import sasl from "pg/lib/crypto/sasl.js";
import { serialize } from "pg-protocol";
import { ShieldError } from "../../core/errors.js";
import { FrameReader, decodeBackend, readDataRow, type Frame } from "./wire.js";

export type UpstreamTlsMode = "disable" | "require" | "verify-full";

export interface UpstreamSettings {
  readonly host: string;
  readonly port: number;
  readonly database: string;
  readonly user: string;
  /** Read per connection: a password, a Key Vault secret, or a Microsoft Entra access token. */
  readonly password: () => Promise<string> | string;
  readonly tls: {
    readonly mode: UpstreamTlsMode;
    /** PEM roots to trust instead of Node's bundled ones (e.g. the DigiCert / Microsoft roots Azure uses). */
    readonly ca?: string;
    /** The name the server certificate must carry (default: `host`). */
    readonly servername?: string;
  };
  readonly connectTimeoutMs?: number;
}

export interface UpstreamConnection {
  readonly socket: Socket | TLSSocket;
  /** The frames after AuthenticationOk up to and including the first ReadyForQuery. */
  readonly greeting: readonly Frame[];
  /** The frame reader, holding any bytes that arrived after the greeting. */
  readonly reader: FrameReader;
  /** The rows of the `lookup` query, run before the connection is handed over. */
  readonly rows: readonly (readonly (Buffer | null)[])[];
}

const upstreamError = (message: string, cause?: unknown): ShieldError =>
  new ShieldError("ERR_UPSTREAM_UNAVAILABLE", message, cause === undefined ? {} : { cause });

/** Reads frames one at a time while the handshake runs. */
class HandshakeReader {
  readonly reader = new FrameReader();
  readonly #frames: Frame[] = [];
  #waiting: ((frame: Frame | Error) => void) | undefined;
  #failure: Error | undefined;
  readonly #socket: Socket;
  readonly #onData = (chunk: Buffer): void => {
    try {
      this.#frames.push(...this.reader.push(chunk));
    } catch (error) {
      this.#fail(error as Error);
      return;
    }
    this.#wake();
  };
  readonly #onEnd = (): void => this.#fail(upstreamError("the server closed the connection"));
  readonly #onError = (error: Error): void =>
    this.#fail(upstreamError("the server connection failed", error));

  constructor(socket: Socket) {
    this.#socket = socket;
    socket.on("data", this.#onData);
    socket.on("end", this.#onEnd);
    socket.on("error", this.#onError);
  }

  next(): Promise<Frame> {
    const frame = this.#frames.shift();
    if (frame !== undefined) return Promise.resolve(frame);
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    return new Promise((resolve, reject) => {
      this.#waiting = (next) => (next instanceof Error ? reject(next) : resolve(next));
    });
  }

  detach(): void {
    this.#socket.off("data", this.#onData);
    this.#socket.off("end", this.#onEnd);
    this.#socket.off("error", this.#onError);
  }

  #fail(error: Error): void {
    this.#failure ??= error;
    const waiting = this.#waiting;
    this.#waiting = undefined;
    waiting?.(error);
  }

  #wake(): void {
    const waiting = this.#waiting;
    if (waiting === undefined) return;
    const frame = this.#frames.shift();
    if (frame === undefined) return;
    this.#waiting = undefined;
    waiting(frame);
  }
}

/** Connects, negotiates TLS, authenticates and reads up to the first ReadyForQuery. */
export async function connectUpstream(
  settings: UpstreamSettings,
  parameters: ReadonlyMap<string, string>,
  lookup?: string,
): Promise<UpstreamConnection> {
  const timeoutMs = settings.connectTimeoutMs ?? 10_000;
  let socket: Socket | TLSSocket = await openSocket(settings.host, settings.port, timeoutMs);
  const timer = setTimeout(() => socket.destroy(upstreamError("the server handshake timed out")), timeoutMs);
  try {
    if (settings.tls.mode !== "disable") socket = await startTls(socket, settings);
    const handshake = new HandshakeReader(socket);
    socket.write(
      serialize.startup({
        ...Object.fromEntries(parameters),
        user: settings.user,
        database: settings.database,
      }),
    );
    const greeting: Frame[] = [];
    let session: ReturnType<typeof sasl.startSession> | undefined;
    for (;;) {
      const frame = await handshake.next();
      if (frame.type === "E") {
        const error = decodeBackend(frame) as { message?: string; code?: string };
        throw upstreamError(
          `the server refused the connection: ${error.code ?? ""} ${error.message ?? ""}`.trim(),
        );
      }
      if (frame.type === "R") {
        // The code is read here: pg-protocol reads unknown codes as AuthenticationOk.
        const code = frame.body.readInt32BE(0);
        if (code === 0) continue;
        if (code === 3) {
          socket.write(serialize.password(await settings.password()));
        } else if (code === 5) {
          const salt = frame.body.subarray(4, 8);
          socket.write(serialize.password(md5Password(settings.user, await settings.password(), salt)));
        } else if (code === 10) {
          const { mechanisms } = decodeBackend(frame) as unknown as { mechanisms: string[] };
          session = sasl.startSession(mechanisms, settings.tls.mode === "disable" ? undefined : socket);
          socket.write(serialize.sendSASLInitialResponseMessage(session.mechanism, session.response));
        } else if (code === 11 && session !== undefined) {
          const { data } = decodeBackend(frame) as unknown as { data: string };
          await sasl.continueSession(
            session,
            await settings.password(),
            data,
            settings.tls.mode === "disable" ? undefined : socket,
          );
          socket.write(serialize.sendSCRAMClientFinalMessage(session.response));
        } else if (code === 12 && session !== undefined) {
          const { data } = decodeBackend(frame) as unknown as { data: string };
          sasl.finalizeSession(session, data);
        } else {
          throw upstreamError(
            `the server asks for an authentication method the proxy does not speak (${code})`,
          );
        }
        continue;
      }
      greeting.push(frame);
      if (frame.type === "Z") break;
    }
    const rows: (Buffer | null)[][] = [];
    if (lookup !== undefined) {
      socket.write(serialize.query(lookup));
      for (;;) {
        const frame = await handshake.next();
        if (frame.type === "D") rows.push(readDataRow(frame.body));
        else if (frame.type === "E") throw upstreamError("the catalog lookup failed");
        else if (frame.type === "Z") break;
      }
    }
    handshake.detach();
    return { socket, greeting, reader: handshake.reader, rows };
  } catch (error) {
    socket.destroy();
    throw error instanceof ShieldError ? error : upstreamError("the server handshake failed", error);
  } finally {
    clearTimeout(timer);
  }
}

/** A CancelRequest for the server, sent on a connection of its own as the protocol wants. */
export async function sendCancel(settings: UpstreamSettings, packet: Buffer): Promise<void> {
  let socket: Socket | TLSSocket = await openSocket(
    settings.host,
    settings.port,
    settings.connectTimeoutMs ?? 10_000,
  );
  try {
    if (settings.tls.mode !== "disable") socket = await startTls(socket, settings);
    await new Promise<void>((resolve) => socket.end(packet, resolve));
  } finally {
    socket.destroy();
  }
}

function openSocket(host: string, port: number, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = netConnect({ host, port });
    socket.setNoDelay(true);
    const timer = setTimeout(
      () => socket.destroy(upstreamError("connecting to the server timed out")),
      timeoutMs,
    );
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.off("error", onError);
      resolve(socket);
    });
    const onError = (error: Error): void => {
      clearTimeout(timer);
      reject(upstreamError("the server cannot be reached", error));
    };
    socket.once("error", onError);
  });
}

/** SSLRequest, then TLS on the same socket; a server that answers `N` is refused. */
function startTls(socket: Socket, settings: UpstreamSettings): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    socket.once("data", (answer: Buffer) => {
      if (answer.length !== 1 || answer[0] !== 0x53) {
        reject(upstreamError("the server does not offer TLS"));
        return;
      }
      const verify = settings.tls.mode === "verify-full";
      const secure = tlsConnect({
        socket,
        servername: settings.tls.servername ?? settings.host,
        rejectUnauthorized: verify,
        ...(settings.tls.ca === undefined ? {} : { ca: settings.tls.ca }),
      });
      secure.once("secureConnect", () => {
        secure.off("error", onError);
        resolve(secure);
      });
      const onError = (error: Error): void =>
        reject(upstreamError("the TLS handshake with the server failed", error));
      secure.once("error", onError);
    });
    socket.once("error", (error) => reject(upstreamError("the server connection failed", error)));
    socket.write(serialize.requestSsl());
  });
}

/** `md5` || md5(md5(password || user) || salt), as the server's MD5 method wants. */
function md5Password(user: string, password: string, salt: Buffer): string {
  const inner = createHash("md5")
    .update(password + user)
    .digest("hex");
  return `md5${createHash("md5")
    .update(Buffer.concat([Buffer.from(inner), salt]))
    .digest("hex")}`;
}
