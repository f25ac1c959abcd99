/**
 * A small client for Node applications of the Shield agent's encryption API (the agent's
 * loopback key API, `POST /v1/...`). The application hands values to the agent and gets
 * ciphertext, plaintext or blind-index values back; the key never reaches the application.
 * It depends on nothing but Node's `http`, so an application can copy this one file.
 *
 * ```ts
 * const shield = createShieldClient({ url: "http://127.0.0.1:8280", token });
 * const { ciphertext } = await shield.encrypt("orders-key", Buffer.from("4111 1111 1111 1111"));
 * const plaintext = await shield.decrypt("orders-key", ciphertext);
 * ```
 *
 * Every refusal rejects with a {@link ShieldApiError} carrying the API's `code` (`revoked`,
 * `decryption-failed`, `not-ready`, ...) and HTTP status; a connection failure with code
 * `unavailable`. Batch forms send many values in one request (all or nothing).
 */
import { Agent, request as httpRequest, type RequestOptions } from "node:http";

export interface ShieldClientOptions {
  /** `http://127.0.0.1:<port>` (TCP) or `unix:/path/to/socket`, as the agent's SHIELD_LISTEN. */
  readonly url: string;
  /** The key API's bearer token, when the agent requires one (SHIELD_KEY_API_TOKEN_FILE). */
  readonly token?: string;
  /** Per request (default 10 s). */
  readonly timeoutMs?: number;
}

/** A value to encrypt, with optional associated data (authenticated, not encrypted). */
export interface PlaintextItem {
  readonly plaintext: Uint8Array;
  readonly associatedData?: Uint8Array;
}

export interface CiphertextItem {
  readonly ciphertext: string;
  readonly associatedData?: Uint8Array;
}

export interface RewrapItem extends CiphertextItem {
  /** Also return the blind index of the plaintext under the new version, for this context. */
  readonly hmacContext?: string;
}

export interface Encrypted {
  /** `shield:v1:<version>:<base64url>` */
  readonly ciphertext: string;
  readonly version: string;
}

export interface Decrypted {
  readonly plaintext: Buffer;
  readonly version: string;
}

export interface Rewrapped extends Encrypted {
  readonly hmac?: string;
}

export interface BlindIndex {
  /** Under the current version: the value to store. */
  readonly hmac: string;
  readonly version: string;
  /** Under every version that still decrypts, current first: the values to look up by. */
  readonly candidates: readonly { readonly version: string; readonly hmac: string }[];
}

export interface AgentKeyStatus {
  readonly name: string;
  readonly current: string;
  readonly versions: readonly string[];
}

/** What `GET /status` says, as far as an application needs it. */
export interface AgentStatusSummary {
  readonly state: string;
  readonly keys: readonly AgentKeyStatus[];
}

export class ShieldApiError extends Error {
  override readonly name = "ShieldApiError";
  constructor(
    /** The API's error code, or `unavailable` when the agent could not be reached. */
    readonly code: string,
    /** HTTP status; 0 when the agent could not be reached. */
    readonly status: number,
    message: string,
    /** In a batch, the index of the first item refused. */
    readonly item?: number,
  ) {
    super(message);
  }
}

export interface ShieldClient {
  encrypt(key: string, plaintext: Uint8Array, associatedData?: Uint8Array): Promise<Encrypted>;
  encryptBatch(key: string, items: readonly PlaintextItem[]): Promise<Encrypted[]>;
  decrypt(key: string, ciphertext: string, associatedData?: Uint8Array): Promise<Buffer>;
  decryptBatch(key: string, items: readonly CiphertextItem[]): Promise<Decrypted[]>;
  rewrap(key: string, ciphertext: string, associatedData?: Uint8Array): Promise<Encrypted>;
  rewrapBatch(key: string, items: readonly RewrapItem[]): Promise<Rewrapped[]>;
  hmac(key: string, data: Uint8Array, context?: string): Promise<BlindIndex>;
  hmacBatch(key: string, items: readonly { data: Uint8Array; context?: string }[]): Promise<BlindIndex[]>;
  /** The agent's state and the versions it holds (names and versions only). */
  status(): Promise<AgentStatusSummary>;
  /** Closes idle connections. */
  close(): void;
}

/** The version a ciphertext names, without asking the agent; undefined when it is not one. */
export function ciphertextVersion(ciphertext: string): string | undefined {
  return /^shield:v1:([0-9a-zA-Z]{1,64}):[A-Za-z0-9_-]+$/.exec(ciphertext)?.[1];
}

export function createShieldClient(options: ShieldClientOptions): ShieldClient {
  const target = parseTarget(options.url);
  const agent = new Agent({ keepAlive: true, maxSockets: 16 });
  const timeoutMs = options.timeoutMs ?? 10_000;

  function call(method: "GET" | "POST", path: string, body?: unknown): Promise<unknown> {
    const text = body === undefined ? undefined : JSON.stringify(body);
    const headers: Record<string, string> = { accept: "application/json" };
    if (text !== undefined) {
      headers["content-type"] = "application/json";
      headers["content-length"] = String(Buffer.byteLength(text));
    }
    if (options.token !== undefined) headers["authorization"] = `Bearer ${options.token}`;
    const requestOptions: RequestOptions = { ...target, method, path, headers, agent, timeout: timeoutMs };
    return new Promise((resolve, reject) => {
      const outgoing = httpRequest(requestOptions, (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("end", () => {
          const status = response.statusCode ?? 0;
          let json: unknown;
          try {
            json = JSON.parse(Buffer.concat(chunks).toString("utf8"));
          } catch {
            reject(new ShieldApiError("bad-response", status, "the agent's answer is not JSON"));
            return;
          }
          if (status >= 200 && status < 300) resolve(json);
          else reject(apiError(status, json));
        });
        response.on("error", (error) => reject(unavailable(error)));
      });
      outgoing.on("timeout", () => outgoing.destroy(new Error("timeout")));
      outgoing.on("error", (error) => reject(unavailable(error)));
      outgoing.end(text);
    });
  }

  const post = (operation: string, key: string, body: unknown): Promise<unknown> =>
    call("POST", `/v1/${operation}/${encodeURIComponent(key)}`, body);
  const many = async <T>(operation: string, key: string, items: readonly unknown[]): Promise<T[]> =>
    items.length === 0 ? [] : ((await post(operation, key, { items })) as { items: T[] }).items;

  return {
    async encrypt(key, plaintext, associatedData) {
      return (await post("encrypt", key, plaintextBody({ plaintext, associatedData }))) as Encrypted;
    },
    encryptBatch: (key, items) => many<Encrypted>("encrypt", key, items.map(plaintextBody)),
    async decrypt(key, ciphertext, associatedData) {
      const answer = (await post("decrypt", key, ciphertextBody({ ciphertext, associatedData }))) as {
        plaintext: string;
      };
      return Buffer.from(answer.plaintext, "base64");
    },
    async decryptBatch(key, items) {
      const answers = await many<{ plaintext: string; version: string }>(
        "decrypt",
        key,
        items.map(ciphertextBody),
      );
      return answers.map((answer) => ({
        plaintext: Buffer.from(answer.plaintext, "base64"),
        version: answer.version,
      }));
    },
    async rewrap(key, ciphertext, associatedData) {
      return (await post("rewrap", key, ciphertextBody({ ciphertext, associatedData }))) as Encrypted;
    },
    rewrapBatch: (key, items) =>
      many<Rewrapped>(
        "rewrap",
        key,
        items.map((item) => ({
          ...ciphertextBody(item),
          ...(item.hmacContext === undefined ? {} : { hmacContext: item.hmacContext }),
        })),
      ),
    async hmac(key, data, context) {
      return (await post("hmac", key, hmacBody({ data, context }))) as BlindIndex;
    },
    hmacBatch: (key, items) => many<BlindIndex>("hmac", key, items.map(hmacBody)),
    async status() {
      return (await call("GET", "/status")) as AgentStatusSummary;
    },
    close: () => agent.destroy(),
  };
}

function plaintextBody(item: { plaintext: Uint8Array; associatedData?: Uint8Array | undefined }) {
  return {
    plaintext: Buffer.from(item.plaintext).toString("base64"),
    ...(item.associatedData === undefined
      ? {}
      : { associatedData: Buffer.from(item.associatedData).toString("base64") }),
  };
}

function ciphertextBody(item: { ciphertext: string; associatedData?: Uint8Array | undefined }) {
  return {
    ciphertext: item.ciphertext,
    ...(item.associatedData === undefined
      ? {}
      : { associatedData: Buffer.from(item.associatedData).toString("base64") }),
  };
}

function hmacBody(item: { data: Uint8Array; context?: string | undefined }) {
  return {
    data: Buffer.from(item.data).toString("base64"),
    ...(item.context === undefined ? {} : { context: item.context }),
  };
}

function parseTarget(url: string): { socketPath: string } | { host: string; port: number } {
  if (url.startsWith("unix:")) return { socketPath: url.slice("unix:".length) };
  const parsed = new URL(url);
  if (parsed.protocol !== "http:") throw new TypeError("url must be http://host:port or unix:/path");
  return { host: parsed.hostname.replace(/^\[(.*)\]$/, "$1"), port: Number(parsed.port || "80") };
}

function apiError(status: number, json: unknown): ShieldApiError {
  const error = (json as { error?: { code?: unknown; message?: unknown; item?: unknown } } | null)?.error;
  const code = typeof error?.code === "string" ? error.code : "unknown";
  const message = typeof error?.message === "string" ? error.message : `the agent answered ${status}`;
  return new ShieldApiError(code, status, message, typeof error?.item === "number" ? error.item : undefined);
}

function unavailable(error: Error): ShieldApiError {
  const code = (error as NodeJS.ErrnoException).code ?? error.message;
  return new ShieldApiError("unavailable", 0, `the agent cannot be reached (${code})`);
}
