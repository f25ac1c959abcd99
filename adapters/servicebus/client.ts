/**
 * The part of `@azure/service-bus` the bus adapters use, as small interfaces the real client
 * satisfies (and a test fake can), the client built lazily on first use, and the mapping of the
 * SDK's errors to ShieldError codes. This is the one file that knows the SDK's shapes; the SDK
 * module itself is loaded only when a client is first needed, so importing the adapters costs a
 * cold start nothing.
 */
import type { TokenCredential } from "@azure/core-auth";
import type * as ServiceBusSdkModule from "@azure/service-bus";
import type { ServiceBusMessage, ServiceBusSessionReceiverOptions } from "@azure/service-bus";
import { ShieldError } from "../../core/errors.js";

export interface ServiceBusSenderLike {
  sendMessages(message: ServiceBusMessage): Promise<void>;
  close(): Promise<void>;
}

/** The fields of a received message the inbox reads. */
export interface ServiceBusReceivedMessageLike {
  readonly body: unknown;
  readonly messageId?: string | number | Buffer;
  /** As the JavaScript SDK gives it: the AMQP header's count of earlier deliveries (0 on the first). */
  readonly deliveryCount?: number;
  readonly enqueuedTimeUtc?: Date;
}

export interface ServiceBusSessionReceiverLike {
  /** Until when the session is locked to this receiver. */
  readonly sessionLockedUntilUtc: Date | undefined;
  receiveMessages(
    maxMessageCount: number,
    options?: { maxWaitTimeInMs?: number; abortSignal?: AbortSignal },
  ): Promise<ServiceBusReceivedMessageLike[]>;
  completeMessage(message: ServiceBusReceivedMessageLike): Promise<void>;
  renewSessionLock(): Promise<Date>;
  close(): Promise<void>;
}

/** A peek-locked message as the request receiver reads and settles it. */
export interface ServiceBusLockedMessageLike extends ServiceBusReceivedMessageLike {
  readonly deadLetterReason?: string;
  readonly deadLetterErrorDescription?: string;
}

/** A peek-lock receiver on a queue (or its dead-letter queue). */
export interface ServiceBusReceiverLike {
  receiveMessages(
    maxMessageCount: number,
    options?: { maxWaitTimeInMs?: number; abortSignal?: AbortSignal },
  ): Promise<ServiceBusLockedMessageLike[]>;
  completeMessage(message: ServiceBusLockedMessageLike): Promise<void>;
  abandonMessage(message: ServiceBusLockedMessageLike): Promise<void>;
  deadLetterMessage(
    message: ServiceBusLockedMessageLike,
    options: { deadLetterReason: string; deadLetterErrorDescription: string },
  ): Promise<void>;
  renewMessageLock(message: ServiceBusLockedMessageLike): Promise<Date>;
  /** Successive calls continue after the last message peeked. */
  peekMessages(maxMessageCount: number): Promise<ServiceBusLockedMessageLike[]>;
  close(): Promise<void>;
}

export interface ServiceBusClientLike {
  createSender(queueName: string): ServiceBusSenderLike;
  acceptSession(
    queueName: string,
    sessionId: string,
    options?: ServiceBusSessionReceiverOptions,
  ): Promise<ServiceBusSessionReceiverLike>;
  close(): Promise<void>;
}

/** A client that can also receive from a queue: what the functions' side of the bus needs. */
export interface ServiceBusReceivingClientLike extends ServiceBusClientLike {
  createReceiver(
    queueName: string,
    options?: {
      receiveMode?: "peekLock";
      maxAutoLockRenewalDurationInMs?: number;
      subQueueType?: "deadLetter";
      skipParsingBodyAsJson?: boolean;
    },
  ): ServiceBusReceiverLike;
}

/**
 * How to reach Service Bus: a client the caller built and closes (shared between the agent's
 * channel and inbox, or a fake in tests), or a namespace and a credential (managed identity),
 * or a connection string with a shared access key or signature (the local endpoint, or a
 * namespace without Entra ID), from which the adapter builds its own client on first use and
 * closes it on `close()`.
 */
export type ServiceBusConnection =
  | { readonly client: ServiceBusClientLike }
  | { readonly fullyQualifiedNamespace: string; readonly credential: TokenCredential }
  | { readonly connectionString: string };

const NAMESPACE = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))+$/;

type ServiceBusSdk = typeof ServiceBusSdkModule;

/**
 * The SDK module. It is CommonJS: Node's own loader gives its exports as named exports, but in
 * the agent's esbuild bundle (ESM with split chunks) they arrive as the default export only.
 */
export async function loadServiceBusSdk(): Promise<ServiceBusSdk> {
  const loaded: unknown = await import("@azure/service-bus");
  const named = loaded as Partial<ServiceBusSdk>;
  return typeof named.ServiceBusClient === "function"
    ? (loaded as ServiceBusSdk)
    : (loaded as { readonly default: ServiceBusSdk }).default;
}

/** Builds a real ServiceBusClient, loading the SDK only now. */
export async function createServiceBusClient(
  fullyQualifiedNamespace: string,
  credential: TokenCredential,
): Promise<ServiceBusClientLike> {
  checkNamespace(fullyQualifiedNamespace);
  const { ServiceBusClient } = await loadServiceBusSdk();
  const client: ServiceBusClientLike = new ServiceBusClient(fullyQualifiedNamespace, credential);
  return client;
}

/**
 * Builds a real ServiceBusClient from a connection string (`Endpoint=sb://…` with
 * `SharedAccessKeyName` and `SharedAccessKey`, or `SharedAccessSignature`; `UseDevelopmentEmulator=true`
 * for a local endpoint), loading the SDK only now. A malformed string is ERR_CONFIG that never
 * repeats it, since it holds a key.
 */
export async function createServiceBusClientFromConnectionString(
  connectionString: string,
): Promise<ServiceBusReceivingClientLike> {
  checkConnectionString(connectionString);
  const { ServiceBusClient } = await loadServiceBusSdk();
  const client: ServiceBusReceivingClientLike = new ServiceBusClient(connectionString);
  return client;
}

/** True for what the SDK accepts as a Service Bus connection string; never says what was seen. */
export function isServiceBusConnectionString(text: unknown): text is string {
  if (typeof text !== "string" || text.length > 4096) return false;
  const fields = new Map(
    text
      .split(";")
      .filter((part) => part.trim() !== "")
      .map((part) => {
        const at = part.indexOf("=");
        return [part.slice(0, at).trim().toLowerCase(), at < 0 ? "" : part.slice(at + 1)] as const;
      }),
  );
  const endpoint = fields.get("endpoint") ?? "";
  const keyed =
    (fields.get("sharedaccesskeyname") ?? "") !== "" && (fields.get("sharedaccesskey") ?? "") !== "";
  const signed = (fields.get("sharedaccesssignature") ?? "").startsWith("SharedAccessSignature ");
  return /^sb:\/\/[^/\s]+\/?$/i.test(endpoint) && (keyed || signed);
}

function checkConnectionString(connectionString: string): void {
  if (!isServiceBusConnectionString(connectionString)) {
    throw new ShieldError(
      "ERR_CONFIG",
      "Service Bus connection string must hold Endpoint=sb://<host> and SharedAccessKeyName with SharedAccessKey, or SharedAccessSignature",
    );
  }
}

function checkNamespace(fullyQualifiedNamespace: string): void {
  if (typeof fullyQualifiedNamespace !== "string" || !NAMESPACE.test(fullyQualifiedNamespace)) {
    throw new ShieldError(
      "ERR_CONFIG",
      "Service Bus namespace must be a host name such as <namespace>.servicebus.windows.net",
    );
  }
}

/** The client a connection names, built once on first use; closed only when built here. */
export class LazyServiceBusClient {
  readonly #connection: ServiceBusConnection;
  #client: Promise<ServiceBusClientLike> | undefined;

  constructor(connection: ServiceBusConnection) {
    if (typeof connection !== "object" || connection === null) {
      throw new TypeError(
        "Service Bus connection must be { client }, { fullyQualifiedNamespace, credential } or { connectionString }",
      );
    }
    if ("connectionString" in connection) checkConnectionString(connection.connectionString);
    else if (!("client" in connection)) checkNamespace(connection.fullyQualifiedNamespace);
    this.#connection = connection;
  }

  get(): Promise<ServiceBusClientLike> {
    if (this.#client === undefined) {
      const connection = this.#connection;
      this.#client =
        "client" in connection
          ? Promise.resolve(connection.client)
          : "connectionString" in connection
            ? createServiceBusClientFromConnectionString(connection.connectionString)
            : createServiceBusClient(connection.fullyQualifiedNamespace, connection.credential);
      // A failed build is tried again on the next use.
      this.#client.catch(() => {
        this.#client = undefined;
      });
    }
    return this.#client;
  }

  async close(): Promise<void> {
    const client = this.#client;
    this.#client = undefined;
    if (client === undefined || "client" in this.#connection) return;
    await (await client).close();
  }
}

const CODES: Readonly<Record<string, ShieldError["code"]>> = {
  ServiceBusy: "ERR_THROTTLED",
  QuotaExceeded: "ERR_THROTTLED",
  ServiceTimeout: "ERR_TIMEOUT",
  ServiceCommunicationProblem: "ERR_NETWORK",
  GeneralError: "ERR_UPSTREAM_UNAVAILABLE",
  MessageSizeExceeded: "ERR_INPUT_TOO_LARGE",
  MessagingEntityNotFound: "ERR_CONFIG",
  MessagingEntityDisabled: "ERR_CONFIG",
  UnauthorizedAccess: "ERR_CONFIG",
  SessionCannotBeLocked: "ERR_CONFLICT",
  SessionLockLost: "ERR_CONFLICT",
  MessageLockLost: "ERR_CONFLICT",
};

/** The SDK's error code (`ServiceBusError.code`), when the error has one. */
export function serviceBusErrorCode(error: unknown): string | undefined {
  if (typeof error !== "object" || error === null) return undefined;
  const code = (error as { code?: unknown }).code;
  return typeof code === "string" ? code : undefined;
}

/**
 * Maps an SDK failure to a ShieldError: transient for what a retry can fix (busy, timeout,
 * communication), ERR_CONFLICT for session and message locks, ERR_CONFIG for a missing queue or
 * missing rights. The message names the operation and the SDK's code only.
 */
export function serviceBusError(operation: string, error: unknown): ShieldError {
  if (error instanceof ShieldError) return error;
  const code = serviceBusErrorCode(error);
  const mapped = code === undefined ? undefined : CODES[code];
  const said = `${operation}: Service Bus failed${code === undefined ? "" : ` with ${code}`}`;
  return new ShieldError(mapped ?? "ERR_IO", said, { cause: error });
}

/**
 * Runs one SDK call with an abort signal of its own, aborted when `closing` is. The SDK adds an
 * abort listener to the signal of every `receiveMessages` and leaves it there, so a long-lived
 * signal passed on each call (an inbox waits in slices for as long as the agent runs) would
 * collect one listener per call; this way only the short-lived signal holds them.
 */
export async function withCallSignal<T>(
  closing: AbortSignal,
  call: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const own = new AbortController();
  const abort = (): void => own.abort();
  if (closing.aborted) own.abort();
  else closing.addEventListener("abort", abort, { once: true });
  try {
    return await call(own.signal);
  } finally {
    closing.removeEventListener("abort", abort);
  }
}

export function isAbortError(error: unknown): boolean {
  return error instanceof Error && error.name === "AbortError";
}
