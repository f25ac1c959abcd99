/**
 * A local Service Bus-compatible AMQP 1.0 endpoint on loopback, built on `rhea` (the AMQP
 * library under `@azure/service-bus`), so that the unmodified SDK — connection, CBS, links,
 * settlement, management requests — is what the Service Bus adapters run against in tests and
 * in the embedded default. The SDK reaches it with a connection string carrying
 * `UseDevelopmentEmulator=true`, which makes it speak plain AMQP (no TLS) to the host and port
 * of `Endpoint` (`@azure/core-amqp` `ConnectionContextBase`), as it does for Microsoft's emulator.
 *
 * What happens on the wire, in the order a client meets it:
 *
 * 1. SASL ANONYMOUS is offered: the SDK uses it (its user name is the key name) when the
 *    connection string names a key, and skips SASL when it carries a ready-made signature, so a
 *    connection without SASL is taken as well. Authorization is the CBS token that follows.
 * 2. `$cbs` `put-token` with a `servicebus.windows.net:sastoken`: the token is verified against
 *    the configured rules (sas.ts), must cover the audience it is put for, and grants that
 *    audience the rule's rights until it expires. The answer is `status-code` 202, or 401 with
 *    Service Bus's `status-description`. Entra ID tokens (`jwt`) are refused with 401.
 * 3. An attach to an entity is checked against the connection's grants: a sending link needs
 *    `Send` on the queue, a receiving link `Listen`, a `$management` request `Listen`. A refused
 *    attach is answered with an attach and a detach carrying `amqp:unauthorized-access` (or
 *    `amqp:not-found` for an unknown entity), as Service Bus refuses it.
 * 4. Messages sent are accepted (stored by engine.ts) or rejected with
 *    `amqp:link:message-size-exceeded` above the message size limit; a message sent without a
 *    message id is given one (32 hex digits), as Service Bus does.
 * 5. A receiving link on a session-enabled queue names its session in the source filter
 *    `com.microsoft:session-filter` (or leaves it empty for the next free session); the reply
 *    echoes the session id and puts `com.microsoft:locked-until-utc` (.NET ticks) in the link
 *    properties. Messages go out peek-locked: the delivery tag is the lock token (in .NET GUID
 *    byte order, which the SDK reverses), the header's delivery count is that of earlier
 *    deliveries, and the annotations carry `x-opt-enqueued-time`, `x-opt-sequence-number` and
 *    `x-opt-locked-until`.
 * 6. Dispositions settle: accepted → complete; modified → abandon (`undeliverable-here` → defer,
 *    refused); rejected with `com.microsoft:dead-letter` → dead-letter with the
 *    `DeadLetterReason` / `DeadLetterErrorDescription` of its info; a lock that is gone is
 *    answered `com.microsoft:message-lock-lost` (`session-lock-lost` in a session).
 * 7. `<entity>/$management` answers `com.microsoft:renew-lock`, `renew-session-lock` and
 *    `peek-message` with `statusCode` 200 (204: nothing to peek); every other operation gets 501
 *    with `errorCondition` `amqp:not-implemented`, so a feature the endpoint lacks fails at once.
 *
 * Logs name connections, links, entities, operations and outcomes — never a token, a key, a
 * signature or a message body.
 */
import { randomUUID } from "node:crypto";
import rhea, { type Connection, type EventContext, type Message, type Receiver, type Sender } from "rhea";
import { systemClock, type Clock } from "../../../core/ports/clock.js";
import { silentLogger, type Logger } from "../../../core/ports/logger.js";
import {
  BrokerError,
  DEAD_LETTER_QUEUE_SUFFIX,
  EntityQueue,
  SESSION_LOCK_LOST,
  type Consumer,
  type MessageLock,
  type QueueSettings,
  type Settlement,
  type StoredMessage,
} from "./engine.js";
import {
  SasRefusal,
  covers,
  resourcePath,
  verifySasToken,
  type AccessRight,
  type SasGrant,
  type SharedAccessRule,
} from "./sas.js";

export type { QueueSettings } from "./engine.js";
export type { AccessRight, SharedAccessRule } from "./sas.js";

export interface LocalServiceBusOptions {
  readonly queues: readonly QueueSettings[];
  readonly rules: readonly SharedAccessRule[];
  /** Largest encoded message accepted, in bytes (default 262 144: Standard tier's 256 KB). */
  readonly maxMessageBytes?: number;
  /** Time for token expiry and timestamps (lock timers run on the event loop's time). */
  readonly clock?: Clock;
  readonly logger?: Logger;
}

export interface LocalServiceBus {
  /** `sb://127.0.0.1:<port>`: the `Endpoint` of connection strings. */
  readonly endpoint: string;
  readonly port: number;
  /** A connection string for one of the configured rules, as the SDK takes it. */
  connectionString(keyName: string): string;
  /** Adds a queue (and its dead-letter queue); refused if the name is taken. */
  createQueue(settings: QueueSettings): void;
  /** A queue's state, for tests and status output. */
  queue(name: string): EntityQueue | undefined;
  close(): Promise<void>;
}

const DEFAULT_MAX_MESSAGE_BYTES = 262_144;
const SAS_TOKEN_TYPE = "servicebus.windows.net:sastoken";
const SESSION_FILTER = "com.microsoft:session-filter";
const LOCKED_UNTIL_UTC = "com.microsoft:locked-until-utc";
const DEAD_LETTER_CONDITION = "com.microsoft:dead-letter";
const MANAGEMENT_SUFFIX = "/$management";
/** .NET ticks (100 ns since 0001-01-01) at the Unix epoch. */
const EPOCH_TICKS = 621_355_968_000_000_000n;

/** What a link is for, kept beside rhea's link object. */
type LinkRole =
  | { readonly kind: "cbs-requests" }
  | { readonly kind: "management-requests"; readonly queue: EntityQueue; readonly path: string }
  | { readonly kind: "responses"; readonly node: string }
  | { readonly kind: "entity-in"; readonly queue: EntityQueue }
  | { readonly kind: "entity-out"; readonly queue: EntityQueue; readonly consumer: LinkConsumer };

/** The parts of rhea's link objects its typings leave out. */
interface LinkInternals {
  readonly local: {
    readonly attach: {
      properties?: Record<string, unknown>;
      max_message_size?: number;
      snd_settle_mode?: number;
    };
  };
}

interface ConnectionState {
  grants: SasGrant[];
}

export async function startLocalServiceBus(options: LocalServiceBusOptions): Promise<LocalServiceBus> {
  const clock = options.clock ?? systemClock;
  const log = options.logger ?? silentLogger;
  const maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  const rules = [...options.rules];
  const queues = new Map<string, EntityQueue>();
  const roles = new WeakMap<object, LinkRole>();
  const connections = new WeakMap<Connection, ConnectionState>();
  const open = new Set<Connection>();
  let endpoint = "sb://127.0.0.1";

  const addQueue = (settings: QueueSettings): void => {
    const key = settings.name.toLowerCase();
    if (queues.has(key)) throw new TypeError(`queue ${settings.name} exists already`);
    queues.set(key, new EntityQueue(settings, clock));
  };
  for (const settings of options.queues) addQueue(settings);

  /** A queue or its dead-letter queue by entity path (names are case-insensitive). */
  const entity = (path: string): EntityQueue | undefined => {
    const lower = path.toLowerCase();
    if (lower.endsWith(DEAD_LETTER_QUEUE_SUFFIX)) {
      return queues.get(lower.slice(0, -DEAD_LETTER_QUEUE_SUFFIX.length))?.deadLetterQueue;
    }
    return queues.get(lower);
  };

  const state = (connection: Connection): ConnectionState => {
    let found = connections.get(connection);
    if (found === undefined) {
      found = { grants: [] };
      connections.set(connection, found);
    }
    return found;
  };

  /** Refuses unless a live grant on this connection covers `path` with `right`. */
  const authorize = (connection: Connection, path: string, right: AccessRight): void => {
    const now = clock.now().getTime();
    const granted = state(connection).grants.some(
      (grant) =>
        grant.expiresAt.getTime() > now &&
        covers(grant.resourcePath, path) &&
        (grant.rights.includes(right) || grant.rights.includes("Manage")),
    );
    if (!granted) {
      throw new BrokerError(
        "amqp:unauthorized-access",
        `Unauthorized access. '${right}' claim(s) are required to perform this operation. Resource: '${endpoint}/${path}'.`,
      );
    }
  };

  const notFound = (path: string): BrokerError =>
    new BrokerError("amqp:not-found", `The messaging entity '${endpoint}/${path}' could not be found.`);

  // ---- CBS ------------------------------------------------------------------------------

  function putToken(connection: Connection, request: Message): { code: number; description: string } {
    const properties = request.application_properties ?? {};
    if (properties["operation"] !== "put-token") {
      return {
        code: 501,
        description: `The operation '${String(properties["operation"])}' is not supported by $cbs.`,
      };
    }
    if (properties["type"] !== SAS_TOKEN_TYPE) {
      return {
        code: 401,
        description: "InvalidToken: Only shared access signature tokens are accepted here.",
      };
    }
    const audience: unknown = properties["name"];
    try {
      if (typeof audience !== "string")
        throw new SasRefusal("InvalidAudience: The put-token request names no audience.");
      const grant = verifySasToken(request.body, rules, clock.now());
      const audiencePath = resourcePath(audience);
      if (!covers(grant.resourcePath, audiencePath)) {
        throw new SasRefusal("InvalidAudience: The token's resource does not cover the audience.");
      }
      state(connection).grants.push({ ...grant, resourcePath: audiencePath });
      log("debug", "cbs token accepted", { keyName: grant.keyName, audience: audiencePath });
      return { code: 202, description: "Accepted" };
    } catch (error) {
      if (!(error instanceof SasRefusal)) throw error;
      log("info", "cbs token refused", { reason: error.message.split(":")[0] });
      return { code: 401, description: error.message };
    }
  }

  // ---- management -----------------------------------------------------------------------

  interface ManagementAnswer {
    readonly code: number;
    readonly description: string;
    readonly condition?: string;
    readonly body?: unknown;
  }

  function manage(
    connection: Connection,
    role: LinkRole & { kind: "management-requests" },
    request: Message,
  ): ManagementAnswer {
    const operation: unknown = request.application_properties?.["operation"];
    try {
      authorize(connection, role.path, "Listen");
      const body = asRecord(request.body);
      switch (operation) {
        case "com.microsoft:renew-lock":
          return renewLocks(role.queue, body);
        case "com.microsoft:renew-session-lock":
          return renewSession(connection, role.queue, body);
        case "com.microsoft:peek-message":
          return peek(role.queue, body);
        default:
          return {
            code: 501,
            condition: "amqp:not-implemented",
            description: `The operation '${String(operation)}' is not implemented by the local Service Bus endpoint.`,
          };
      }
    } catch (error) {
      if (!(error instanceof BrokerError)) throw error;
      return { code: statusOf(error.condition), condition: error.condition, description: error.message };
    }
  }

  function renewLocks(queue: EntityQueue, body: Record<string, unknown>): ManagementAnswer {
    const tokens = body["lock-tokens"];
    if (!Array.isArray(tokens) || tokens.length === 0) {
      throw new BrokerError("com.microsoft:argument-error", "The request carries no lock-tokens.");
    }
    const expirations = tokens.map((token) => queue.renewLock(uuidText(token)));
    return {
      code: 200,
      description: "OK",
      body: { expirations: rhea.types.wrap_array(expirations, 0x83, undefined) },
    };
  }

  function renewSession(
    connection: Connection,
    queue: EntityQueue,
    body: Record<string, unknown>,
  ): ManagementAnswer {
    const sessionId = body["session-id"];
    if (typeof sessionId !== "string") {
      throw new BrokerError("com.microsoft:argument-error", "The request names no session-id.");
    }
    const lockedUntil = queue.renewSessionLock(
      sessionId,
      (owner) => owner instanceof LinkConsumer && owner.connection === connection,
    );
    return { code: 200, description: "OK", body: { expiration: new Date(lockedUntil) } };
  }

  function peek(queue: EntityQueue, body: Record<string, unknown>): ManagementAnswer {
    const from = longNumber(body["from-sequence-number"]);
    const count = body["message-count"];
    if (from === undefined || typeof count !== "number" || !Number.isSafeInteger(count) || count < 1) {
      throw new BrokerError(
        "com.microsoft:argument-error",
        "from-sequence-number and message-count are required.",
      );
    }
    const sessionId = typeof body["session-id"] === "string" ? body["session-id"] : undefined;
    const found = queue.peek(from, count, sessionId);
    if (found.length === 0) return { code: 204, description: "No Content" };
    return {
      code: 200,
      description: "OK",
      body: {
        messages: found.map((message) => ({ message: rhea.message.encode(asReceived(message, undefined)) })),
      },
    };
  }

  // ---- links ----------------------------------------------------------------------------

  function refuse(link: Sender | Receiver, error: BrokerError): void {
    log("info", "attach refused", { link: link.name, condition: error.condition });
    link.close({ condition: error.condition, description: error.message });
  }

  function onReceiverOpen(context: EventContext): void {
    const receiver = context.receiver!;
    const address = receiver.target?.address ?? "";
    try {
      if (address === "$cbs") {
        roles.set(receiver, { kind: "cbs-requests" });
      } else if (address.endsWith(MANAGEMENT_SUFFIX)) {
        const path = address.slice(0, -MANAGEMENT_SUFFIX.length);
        const queue = entity(path);
        if (queue === undefined) throw notFound(path);
        roles.set(receiver, { kind: "management-requests", queue, path: address });
      } else {
        const queue = entity(address);
        if (queue === undefined) throw notFound(address);
        if (queue.deadLetterQueue === undefined) {
          throw new BrokerError("amqp:not-allowed", "Messages cannot be sent to a dead-letter queue.");
        }
        authorize(context.connection, address, "Send");
        (receiver as unknown as LinkInternals).local.attach.max_message_size = maxMessageBytes;
        roles.set(receiver, { kind: "entity-in", queue });
      }
      receiver.set_target({ address });
      receiver.set_source(receiver.source ?? {});
      receiver.add_credit(100);
    } catch (error) {
      if (!(error instanceof BrokerError)) throw error;
      refuse(receiver, error);
    }
  }

  function onSenderOpen(context: EventContext): void {
    const sender = context.sender!;
    const source = sender.source ?? {};
    const address = source.address ?? "";
    try {
      if (address === "$cbs" || address.endsWith(MANAGEMENT_SUFFIX)) {
        sender.set_source({ address });
        sender.set_target(sender.target ?? {});
        // Answers go out settled: nobody settles a response.
        (sender as unknown as LinkInternals).local.attach.snd_settle_mode = 1;
        roles.set(sender, { kind: "responses", node: address });
        return;
      }
      const queue = entity(address);
      if (queue === undefined) throw notFound(address);
      authorize(context.connection, address, "Listen");
      const filter = (source.filter ?? {}) as Record<string, unknown>;
      const wantsSession = SESSION_FILTER in filter;
      if (queue.requiresSession && !wantsSession) {
        throw new BrokerError(
          "amqp:not-allowed",
          "It is not possible for an entity that requires sessions to create a non-sessionful message receiver.",
        );
      }
      let lockedUntil: number | undefined;
      const consumer = new LinkConsumer(sender, context.connection, queue);
      if (wantsSession) {
        const asked = filter[SESSION_FILTER];
        const accepted = queue.acceptSession(typeof asked === "string" ? asked : undefined, consumer);
        consumer.sessionId = accepted.sessionId;
        lockedUntil = accepted.lockedUntil;
      }
      const sessionId = consumer.sessionId;
      sender.set_source({
        address,
        ...(sessionId === undefined ? {} : { filter: { [SESSION_FILTER]: sessionId } }),
      });
      sender.set_target(sender.target ?? {});
      if (lockedUntil !== undefined) {
        (sender as unknown as LinkInternals).local.attach.properties = {
          [LOCKED_UNTIL_UTC]: rhea.types.wrap_long(ticks(lockedUntil)),
        };
      }
      consumer.onLost = () => {
        log("info", "session lock lost", { queue: queue.name, link: sender.name });
        sender.close({ condition: "com.microsoft:session-lock-lost", description: SESSION_LOCK_LOST });
      };
      roles.set(sender, { kind: "entity-out", queue, consumer });
      LinkConsumer.register(consumer);
      queue.attach(consumer);
      log("debug", "receiver attached", { queue: queue.name, session: sessionId !== undefined });
    } catch (error) {
      if (!(error instanceof BrokerError)) throw error;
      refuse(sender, error);
    }
  }

  function onMessage(context: EventContext): void {
    const receiver = context.receiver!;
    const delivery = context.delivery!;
    const message = context.message!;
    const role = roles.get(receiver);
    if (role?.kind === "cbs-requests") {
      const answer = putToken(context.connection, message);
      delivery.accept();
      respond(context.connection, "$cbs", message, {
        application_properties: { "status-code": answer.code, "status-description": answer.description },
      });
      return;
    }
    if (role?.kind === "management-requests") {
      const answer = manage(context.connection, role, message);
      delivery.accept();
      respond(context.connection, role.path, message, {
        application_properties: {
          statusCode: answer.code,
          statusDescription: answer.description,
          ...(answer.condition === undefined ? {} : { errorCondition: answer.condition }),
        },
        ...(answer.body === undefined ? {} : { body: answer.body }),
      });
      return;
    }
    if (role?.kind !== "entity-in") {
      delivery.reject({ condition: "amqp:not-allowed", description: "This link does not take messages." });
      return;
    }
    try {
      authorize(context.connection, role.queue.name, "Send");
      const format = (context as EventContext & { format?: number }).format ?? 0;
      // A batch (the SDK's `sendMessages([...])` and `createMessageBatch`) arrives as one
      // envelope in message format 0x80013700 whose data sections are the encoded messages;
      // Service Bus takes it whole or not at all. rhea hands such a delivery over undecoded.
      let messages: Message[];
      let size: number;
      if (format === BATCH_MESSAGE_FORMAT) {
        const raw = message as unknown as Buffer;
        size = raw.length;
        messages = unbatch(raw);
      } else if (format === 0) {
        messages = [message];
        size = -1;
      } else {
        throw new BrokerError("amqp:not-implemented", `Message format ${format} is not supported.`);
      }
      const prepared = messages.map((each) => {
        // Service Bus gives a message the sender sent without an id one of its own.
        each.message_id ??= randomUUID().replaceAll("-", "");
        const encoded = rhea.message.encode(each);
        return { each, encoded };
      });
      const total = size >= 0 ? size : prepared[0]!.encoded.length;
      if (total > maxMessageBytes) {
        throw new BrokerError(
          "amqp:link:message-size-exceeded",
          `The received message (size: ${total} bytes) exceeds the limit (${maxMessageBytes} bytes) currently allowed on the link.`,
        );
      }
      const inputs = prepared.map(({ each, encoded }) => ({
        encoded,
        sessionId: typeof each.group_id === "string" ? each.group_id : undefined,
        messageId: typeof each.message_id === "string" ? each.message_id : undefined,
        timeToLiveMs: typeof each.ttl === "number" ? each.ttl : undefined,
      }));
      // Checked for every message before any is stored, so a refused batch leaves nothing.
      if (role.queue.requiresSession) {
        const missing = inputs.find((input) => input.sessionId === undefined || input.sessionId === "");
        if (missing !== undefined) role.queue.enqueue(missing);
      }
      for (const input of inputs) {
        const stored = role.queue.enqueue(input);
        log("debug", "message enqueued", { queue: role.queue.name, sequenceNumber: stored.sequenceNumber });
      }
      delivery.accept();
    } catch (error) {
      if (!(error instanceof BrokerError)) throw error;
      delivery.reject({ condition: error.condition, description: error.message });
    }
  }

  /** Sends an answer on the connection's response link for `node`, addressed to the request's reply-to. */
  function respond(
    connection: Connection,
    node: string,
    request: Message,
    answer: Pick<Message, "application_properties"> & { body?: unknown },
  ): void {
    const replyTo = request.reply_to;
    const sender = connection.find_sender((candidate: Sender) => {
      const role = roles.get(candidate);
      return (
        role?.kind === "responses" &&
        role.node === node &&
        candidate.is_open() &&
        (candidate.name === replyTo || candidate.target?.address === replyTo)
      );
    });
    if (sender === undefined) {
      log("warn", "no response link for request", { node });
      return;
    }
    sender.send({ body: null, ...answer, correlation_id: request.message_id, to: replyTo });
  }

  /** A disposition from a receiving client: settles the lock its delivery tag names. */
  function onOutcome(context: EventContext): void {
    const delivery = context.delivery!;
    const role = roles.get(context.sender!);
    if (role?.kind !== "entity-out") return;
    const state = delivery.remote_state as OutcomeLike | undefined;
    const token = lockTokenFromTag(delivery.tag);
    const settlement = settlementOf(state);
    try {
      if (settlement === undefined) {
        throw new BrokerError(
          "amqp:not-implemented",
          "Deferring messages is not implemented by the local endpoint.",
        );
      }
      role.queue.settle(token, settlement);
      // The outcome is echoed, a rejection without its error (which would read as a failure).
      delivery.update(
        true,
        settlement.kind === "dead-letter"
          ? outcomes.rejected({}).described()
          : (state?.described?.() ?? outcomes.accepted().described()),
      );
      log("debug", "message settled", { queue: role.queue.name, outcome: settlement.kind });
    } catch (error) {
      if (!(error instanceof BrokerError)) throw error;
      const condition =
        error.condition === "com.microsoft:message-lock-lost" && role.queue.requiresSession
          ? "com.microsoft:session-lock-lost"
          : error.condition;
      const description = condition === error.condition ? error.message : SESSION_LOCK_LOST;
      delivery.update(true, outcomes.rejected({ error: { condition, description } }).described());
    }
  }

  function onLinkGone(context: EventContext): void {
    const link = context.sender ?? context.receiver;
    if (link === undefined) return;
    const role = roles.get(link);
    if (role?.kind === "entity-out") LinkConsumer.unregister(role.consumer);
    roles.delete(link);
  }

  function onConnectionGone(context: EventContext): void {
    open.delete(context.connection);
    for (const consumer of LinkConsumer.on(context.connection)) LinkConsumer.unregister(consumer);
  }

  const container = rhea.create_container({
    id: "shield-local-servicebus",
    sender_options: { autosettle: false, treat_modified_as_released: false },
    receiver_options: { autoaccept: false, credit_window: 0 },
  });
  (container.sasl_server_mechanisms as { enable_anonymous(): void }).enable_anonymous();
  container.on("connection_open", (context: EventContext) => {
    open.add(context.connection);
  });
  container.on("receiver_open", onReceiverOpen);
  container.on("sender_open", onSenderOpen);
  container.on("message", (context: EventContext) => {
    onMessage(context);
    context.receiver?.add_credit(1);
  });
  for (const outcome of ["accepted", "released", "rejected", "modified"]) container.on(outcome, onOutcome);
  for (const event of ["sendable", "sender_flow"]) {
    container.on(event, (context: EventContext) => {
      const role = context.sender === undefined ? undefined : roles.get(context.sender);
      if (role?.kind === "entity-out") role.queue.pump();
    });
  }
  container.on("sender_draining", (context: EventContext) => {
    const role = context.sender === undefined ? undefined : roles.get(context.sender);
    if (role?.kind === "entity-out") {
      role.queue.pump();
      role.consumer.drainWhenIdle();
    } else {
      context.sender?.set_drained(true);
    }
  });
  for (const event of ["sender_close", "receiver_close", "sender_error", "receiver_error"]) {
    container.on(event, onLinkGone);
  }
  container.on("session_close", (context: EventContext) => {
    for (const consumer of LinkConsumer.on(context.connection)) {
      if (consumer.sender.session === context.session) LinkConsumer.unregister(consumer);
    }
  });
  for (const event of ["disconnected", "connection_close", "connection_error"]) {
    container.on(event, onConnectionGone);
  }
  // rhea re-emits errors nobody handled on the container; a client's error is not the endpoint's.
  container.on("error", (error: unknown) => {
    log("debug", "amqp error", { name: error instanceof Error ? error.name : "unknown" });
  });

  const server = container.listen({ port: 0, host: "127.0.0.1" });
  await new Promise<void>((resolve, reject) => {
    server.once("listening", () => resolve());
    server.once("error", reject);
  });
  const address = server.address();
  const port = typeof address === "object" && address !== null ? address.port : 0;
  endpoint = `sb://127.0.0.1:${port}`;
  log("info", "local service bus listening", { port });

  return {
    endpoint,
    port,
    connectionString(keyName: string): string {
      const rule = rules.find((candidate) => candidate.keyName === keyName);
      if (rule === undefined) throw new TypeError(`no rule named ${keyName}`);
      return `Endpoint=${endpoint};SharedAccessKeyName=${rule.keyName};SharedAccessKey=${rule.key};UseDevelopmentEmulator=true`;
    },
    createQueue: addQueue,
    queue: (name: string) => entity(name),
    async close(): Promise<void> {
      for (const connection of open) connection.close();
      open.clear();
      for (const queue of queues.values()) queue.close();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * A receiving link as a queue consumer. One transfer is in flight at a time: rhea counts credit
 * only when it writes the transfer (on the next tick), so the next message waits for that.
 */
class LinkConsumer implements Consumer {
  static readonly #live = new Set<LinkConsumer>();
  sessionId: string | undefined;
  /** What to do when the session lock is lost (set once the link is registered). */
  onLost: () => void = () => undefined;
  #inFlight = false;
  #drainPending = false;

  constructor(
    readonly sender: Sender,
    readonly connection: Connection,
    readonly queue: EntityQueue,
  ) {}

  static register(consumer: LinkConsumer): void {
    LinkConsumer.#live.add(consumer);
  }

  /** The link is gone: the queue forgets it (releasing a session it held). */
  static unregister(consumer: LinkConsumer): void {
    if (!LinkConsumer.#live.delete(consumer)) return;
    consumer.queue.detach(consumer);
  }

  static on(connection: Connection): LinkConsumer[] {
    return [...LinkConsumer.#live].filter((consumer) => consumer.connection === connection);
  }

  credit(): number {
    if (this.#inFlight || !this.sender.is_open()) return 0;
    return (this.sender as unknown as { readonly credit: number }).credit;
  }

  deliver(message: StoredMessage, lock: MessageLock): void {
    this.#inFlight = true;
    this.sender.send(rhea.message.encode(asReceived(message, lock)), lockTokenTag(lock.token), 0);
    setImmediate(() => {
      this.#inFlight = false;
      if (!this.sender.is_open()) return;
      this.queue.pump();
      if (this.#drainPending && !this.#inFlight) this.#finishDrain();
    });
  }

  sessionLost(): void {
    this.onLost();
  }

  /** Answers a drain once nothing more is in flight: the link's remaining credit is used up. */
  drainWhenIdle(): void {
    this.#drainPending = true;
    if (!this.#inFlight) this.#finishDrain();
  }

  #finishDrain(): void {
    this.#drainPending = false;
    if (this.sender.is_open()) this.sender.set_drained(true);
  }
}

/** The message as a receiver gets it: the sender's message plus the broker's annotations. */
function asReceived(message: StoredMessage, lock: MessageLock | undefined): DecodedMessage {
  const decoded = rhea.message.decode(message.encoded);
  decoded.delivery_count = message.deliveryCount;
  const annotations = (decoded["message_annotations"] ?? {}) as Record<string, unknown>;
  decoded.message_annotations = {
    ...annotations,
    "x-opt-enqueued-time": message.enqueuedAt,
    "x-opt-sequence-number": rhea.types.wrap_long(message.sequenceNumber),
    ...(lock === undefined ? {} : { "x-opt-locked-until": new Date(lock.lockedUntil) }),
  };
  if (message.deadLetter !== undefined) {
    const properties = (decoded["application_properties"] ?? {}) as Record<string, unknown>;
    decoded.application_properties = {
      ...properties,
      DeadLetterReason: message.deadLetter.reason,
      DeadLetterErrorDescription: message.deadLetter.description,
    };
  }
  return decoded;
}

type DecodedMessage = ReturnType<typeof rhea.message.decode>;

interface DescribedOutcome {
  described(): unknown;
}

/** rhea's outcome constructors, which its typings leave out. */
const outcomes = rhea.message as unknown as {
  accepted(): DescribedOutcome;
  rejected(fields: { error?: { condition: string; description: string } }): DescribedOutcome;
};

interface OutcomeLike {
  readonly constructor: { readonly composite_type?: string };
  readonly undeliverable_here?: boolean;
  readonly error?: { readonly condition?: unknown; readonly info?: unknown };
  described?(): unknown;
}

/** What a client's outcome asks for; undefined for a deferral, which is not implemented. */
function settlementOf(state: OutcomeLike | undefined): Settlement | undefined {
  switch (state?.constructor.composite_type) {
    case "accepted":
      return { kind: "complete" };
    case "modified":
      return state.undeliverable_here === true ? undefined : { kind: "abandon" };
    case "released":
      return { kind: "abandon" };
    case "rejected": {
      const info = asRecord(state.error?.info);
      if (state.error?.condition !== DEAD_LETTER_CONDITION) {
        return { kind: "dead-letter", reason: "Rejected", description: "" };
      }
      return {
        kind: "dead-letter",
        reason: typeof info["DeadLetterReason"] === "string" ? info["DeadLetterReason"] : "",
        description:
          typeof info["DeadLetterErrorDescription"] === "string" ? info["DeadLetterErrorDescription"] : "",
      };
    }
    default:
      return { kind: "complete" };
  }
}

function asRecord(value: unknown): Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !Buffer.isBuffer(value)
    ? (value as Record<string, unknown>)
    : {};
}

/** HTTP-like status Service Bus answers a management failure with. */
function statusOf(condition: string): number {
  switch (condition) {
    case "com.microsoft:message-lock-lost":
    case "com.microsoft:session-lock-lost":
      return 410;
    case "amqp:unauthorized-access":
      return 401;
    case "amqp:not-found":
      return 404;
    case "amqp:not-implemented":
      return 501;
    default:
      return 400;
  }
}

/** A UUID as a delivery tag: .NET's GUID byte order (first three groups little-endian). */
function lockTokenTag(token: string): Buffer {
  const bytes = Buffer.from(token.replaceAll("-", ""), "hex");
  return Buffer.concat([
    Buffer.from(bytes.subarray(0, 4)).reverse(),
    Buffer.from(bytes.subarray(4, 6)).reverse(),
    Buffer.from(bytes.subarray(6, 8)).reverse(),
    bytes.subarray(8),
  ]);
}

function lockTokenFromTag(tag: Buffer | string): string {
  const bytes = lockTokenTag(uuidText(typeof tag === "string" ? Buffer.from(tag) : tag));
  return uuidText(bytes);
}

/** A UUID as text, from the 16 bytes AMQP carries or from text already. */
function uuidText(value: unknown): string {
  if (typeof value === "string") return value.toLowerCase();
  if (Buffer.isBuffer(value) && value.length === 16) {
    const hex = value.toString("hex");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }
  throw new BrokerError("com.microsoft:argument-error", "A lock token is not a UUID.");
}

/** An AMQP long as a number: rhea gives small ones as numbers, large ones as 8 bytes. */
function longNumber(value: unknown): number | undefined {
  if (typeof value === "number") return value;
  if (Buffer.isBuffer(value) && value.length === 8) return Number(value.readBigInt64BE(0));
  return undefined;
}

/** Epoch ms as .NET ticks in 8 big-endian bytes (how Service Bus sends locked-until-utc). */
function ticks(epochMs: number): Buffer {
  const buffer = Buffer.alloc(8);
  buffer.writeBigInt64BE(BigInt(epochMs) * 10_000n + EPOCH_TICKS);
  return buffer;
}

/** The AMQP message format of a Service Bus batch (Microsoft's vendor code 0x8001, 0x37). */
const BATCH_MESSAGE_FORMAT = 0x80013700;

/** The messages of a batch envelope: one encoded message per data section. */
function unbatch(raw: Buffer): Message[] {
  let envelope: Message;
  try {
    envelope = rhea.message.decode(raw) as unknown as Message;
  } catch {
    throw new BrokerError("amqp:decode-error", "The batch could not be decoded.");
  }
  const body = envelope.body as { typecode?: number; content?: unknown; multiple?: boolean } | undefined;
  if (body?.typecode !== 0x75) {
    throw new BrokerError("amqp:decode-error", "A batch must carry its messages as data sections.");
  }
  const sections = (body.multiple === true ? body.content : [body.content]) as unknown[];
  return sections.map((section) => {
    if (!Buffer.isBuffer(section))
      throw new BrokerError("amqp:decode-error", "A batch section is not binary.");
    try {
      return rhea.message.decode(section) as unknown as Message;
    } catch {
      throw new BrokerError("amqp:decode-error", "A message in the batch could not be decoded.");
    }
  });
}
