// Type declarations for the sidetrace Node.js SDK.
//
// Contract: no method throws into the application or blocks on the network;
// events that cannot be delivered are dropped and counted in Client.stats().
// The types below are what each call expects; at run time a call given
// another type does not throw either: the value is converted when that is
// unambiguous (counted in argsCoerced) or left out (argsDropped). The rules
// are in docs/emitting.md ("Arguments of the wrong type").
// Sockets and timers never keep the process alive, except while flush() or
// the bounded flush run when the event loop empties is waiting.

export declare const PROTOCOL_VERSION: 1;
export declare const DEFAULT_ENDPOINT: string;

export interface ClientOptions {
  /** unix://PATH or udp://HOST:PORT (unixgram:// is not available in Node.js).
   *  Default: $SIDETRACE_ENDPOINT, else unix:///run/sidetrace/agent.sock. */
  endpoint?: string;
  /** Messages waiting for the agent; past this, new ones are dropped (counted). Default 10000. */
  maxQueue?: number;
  /** Bytes waiting for the agent; past this, new ones are dropped (counted). Default 16 MiB. */
  maxQueueBytes?: number;
  /** A larger message has its input/output truncated, or is dropped. Default 1 MiB. */
  maxMessageBytes?: number;
  /** Bound of the flush run when the event loop empties. Default 2000. */
  exitFlushMs?: number;
}

export interface TraceContext {
  conversationId?: string;
  sessionId?: string;
  interactionId?: string;
  channelId?: string;
  metadata?: Record<string, unknown> | Metadata;
  user?: ({ id: string } & Record<string, unknown>) | User;
  /** Continue an existing trace instead of starting a new one. */
  traceId?: string;
}

/** ns since the Unix epoch (bigint or number), or a Date. */
export type Timestamp = bigint | number | Date;

export interface StartOptions {
  name?: string;
  attrs?: Record<string, unknown>;
  ts?: Timestamp;
}

export interface EndOptions {
  /** 'ok' (default) or 'error'; giving `error` implies 'error'. */
  status?: 'ok' | 'error';
  error?: string;
  /** Merged into the event's attributes (model, input_tokens, ...). */
  attrs?: Record<string, unknown>;
  ts?: Timestamp;
}

export interface FeedbackOptions {
  feedbackTag?: string;
  feedbackText?: string;
  score?: number;
  ts?: Timestamp;
}

export interface SendOptions extends EndOptions {
  /** MESSAGE, TOOL, GENERATION, AGENT, RETRIEVAL, ROUTER, SYSTEM, CUSTOM (any case) or a custom name. */
  eventType?: string;
  input?: unknown;
  output?: unknown;
  /** Milliseconds. */
  latency?: number;
  name?: string;
  parent?: Event | string;
}

export interface ClientStats {
  enqueued: number;
  sent: number;
  droppedQueueFull: number;
  droppedNoAgent: number;
  droppedSendError: number;
  droppedTooLarge: number;
  droppedClosed: number;
  droppedBadEndpoint: number;
  droppedUnsupportedEndpoint: number;
  degradedValues: number;
  truncated: number;
  /** Arguments of another type converted: a number given as text, a number id, a user given as its id... */
  argsCoerced: number;
  /** Arguments left out: a wrong type, a value out of range, an unknown option key. */
  argsDropped: number;
  internalErrors: number;
  connects: number;
  connectFailures: number;
  queued: number;
  dropped: number;
}

export declare class Client {
  constructor(options?: ClientOptions);
  readonly endpoint: string;
  exitFlushMs: number;
  trace(context?: TraceContext): Trace;
  /** Resolves true when everything emitted so far reached the agent's socket. Never rejects. */
  flush(timeoutMs?: number): Promise<boolean>;
  /** Flushes, then closes; later emits are dropped (counted). Never rejects. */
  close(timeoutMs?: number): Promise<boolean>;
  stats(): ClientStats;
}

interface EventFactory {
  tool(input?: unknown, opts?: StartOptions): Event;
  generation(input?: unknown, opts?: StartOptions): Event;
  agent(input?: unknown, opts?: StartOptions): Event;
  retrieval(input?: unknown, opts?: StartOptions): Event;
  router(input?: unknown, opts?: StartOptions): Event;
  message(input?: unknown, opts?: StartOptions): Event;
  system(input?: unknown, opts?: StartOptions): Event;
  custom(name: string, input?: unknown, opts?: StartOptions): Event;
}

export declare class Trace implements EventFactory {
  readonly client: Client;
  readonly traceId: string;
  update(context: Omit<TraceContext, 'traceId'>): void;
  tool(input?: unknown, opts?: StartOptions): Event;
  generation(input?: unknown, opts?: StartOptions): Event;
  agent(input?: unknown, opts?: StartOptions): Event;
  retrieval(input?: unknown, opts?: StartOptions): Event;
  router(input?: unknown, opts?: StartOptions): Event;
  message(input?: unknown, opts?: StartOptions): Event;
  system(input?: unknown, opts?: StartOptions): Event;
  custom(name: string, input?: unknown, opts?: StartOptions): Event;
  feedback(feedback: FeedbackOptions & { target?: Event | string }): void;
  send(event: SendOptions): Event;
}

export declare class Event implements EventFactory {
  readonly trace: Trace;
  readonly traceId: string;
  readonly id: string;
  readonly type: string;
  readonly parentId: string | undefined;
  readonly ended: boolean;
  tool(input?: unknown, opts?: StartOptions): Event;
  generation(input?: unknown, opts?: StartOptions): Event;
  agent(input?: unknown, opts?: StartOptions): Event;
  retrieval(input?: unknown, opts?: StartOptions): Event;
  router(input?: unknown, opts?: StartOptions): Event;
  message(input?: unknown, opts?: StartOptions): Event;
  system(input?: unknown, opts?: StartOptions): Event;
  custom(name: string, input?: unknown, opts?: StartOptions): Event;
  send(event: Omit<SendOptions, 'parent'>): Event;
  /** Only the first end() is sent. */
  end(output?: unknown, opts?: EndOptions): void;
  feedback(feedback: FeedbackOptions): void;
  /** Runs fn and ends the event when it returns or its promise settles; a
   *  throw or rejection ends it with status 'error' and is passed on. A
   *  non-function fn ends the event and returns undefined (argsDropped). */
  run<T>(fn: (event: Event) => T): T;
}

export declare class Metadata {
  constructor(fields?: Record<string, unknown>);
  [key: string]: unknown;
}

export declare class User {
  /** The fields, or the id alone. */
  constructor(fields: ({ id: string } & Record<string, unknown>) | string | number);
  id: string;
  [key: string]: unknown;
}
