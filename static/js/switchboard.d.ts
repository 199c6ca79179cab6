// Type declarations for switchboard.js (the client of a Switchboard server), so that editors
// complete its API. The library itself is plain JavaScript: no build step uses this file.

/** A transport, in the order the default chain tries them ("polling" only when named). */
export type TransportName = "websocket" | "sse" | "long-polling" | "polling";

/** The connection's state: "idle" until the first subscribe. */
export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export type SubscriptionState = "subscribing" | "subscribed" | "unsubscribed" | "failed";

/** An event as the server stores it (DESIGN.md section 3). */
export interface SwitchboardEvent<T = unknown> {
  /** The cursor: opaque; hand it back as `since` to resume after this event. */
  id: string;
  topic: string;
  type: string;
  data: T;
  /** Who published it, set by the server (null: anonymous). */
  sender: string | null;
  /** Unix seconds. */
  time: number;
}

/** Server codes (`forbidden`, `rate_limited`, `unauthorized`, `bad_topic`, `too_large`,
 *  `shutting_down`, ...) and this library's own (`network`, `timeout`, `disconnected`,
 *  `closed`, `token_failed`, `bad_reply`, `bad_option`, `already_subscribed`). */
export class SwitchboardError extends Error {
  readonly name: "SwitchboardError";
  readonly code: string;
  /** The HTTP status, when the failure came over HTTP (or its equivalent for /ws codes). */
  readonly status: number | null;
  readonly topic: string | null;
  /** Seconds the server asked to wait before trying again (rate limits). */
  readonly retryAfter: number | null;
  readonly transport: TransportName | "http" | null;
  /** The server itself answered with this code (not a network failure). */
  readonly fromServer: boolean;
  /** A WebSocket's close code and reason, when the failure was the socket closing. */
  readonly closeCode: number | null;
  readonly closeReason: string | null;
  constructor(code: string, message: string, details?: {
    status?: number; topic?: string; retryAfter?: number; transport?: string; fromServer?: boolean; cause?: unknown;
    closeCode?: number; closeReason?: string;
  });
}

/** A token, or a function that returns one (sync or async); asked again before it expires
 *  (a JWT's `exp`) and after the server says it has. null: anonymous (or the session cookie). */
export type TokenOption = string | null | (() => string | null | Promise<string | null>);

export interface SwitchboardOptions {
  token?: TokenOption;
  /** Transports to try, in order. Default ["websocket", "sse", "long-polling"]; one name forces it. */
  transports?: TransportName[];
  /** A WebSocket constructor (Node 20: the `ws` package). Default: globalThis.WebSocket. */
  WebSocket?: unknown;
  /** A fetch function. Default: globalThis.fetch. */
  fetch?: typeof fetch;
  paths?: Partial<{ ws: string; stream: string; longPoll: string; events: string; health: string }>;
  /** Reconnect waits in ms: each is between half and all of min(cap, base * 2^attempt). */
  backoff?: { base?: number; cap?: number };
  /** ms a connection must last before the backoff starts over (default 5000). */
  stableAfter?: number;
  /** ms for a socket's first reply or a stream's first bytes before the next transport (default 8000). */
  connectTimeout?: number;
  /** ms for the reply to a /ws op (default 10000). */
  replyTimeout?: number;
  /** ms of silence on /ws before a ping checks the socket (default 25000). */
  pingInterval?: number;
  /** ms without a byte on an SSE stream before a new one (default 45000). */
  streamIdleTimeout?: number;
  /** Seconds a long poll may be held (default 25; the server caps it). */
  longPollTimeout?: number;
  /** ms between two rounds of interval polling (default 1000). */
  pollInterval?: number;
  /** Events per poll or long-poll answer (default 100). */
  pageLimit?: number;
  /** Read the SSE stream with EventSource when no token is sent (a session cookie, or anonymous):
   *  the first connection carries ?last_event_id=, and the browser reconnects by itself with the
   *  Last-Event-ID header. Default false (fetch, which can send Authorization). */
  eventSource?: boolean;
  /** An EventSource constructor (Node: the `eventsource` package). Default: globalThis.EventSource. */
  EventSource?: unknown;
  /** Event types an EventSource listens to ("gap" always). Default ["message", "presence"]. */
  eventTypes?: string[];
  /** EventSource: send cookies to another origin (default false). */
  withCredentials?: boolean;
}

export interface DeliveryInfo {
  /** The event came from the `history` read on subscribe, not live. */
  history: boolean;
  transport: TransportName | "http";
}

export interface GapInfo {
  topic: string;
  /** The server dropped this subscriber for falling behind (else: history no longer has what was missed). */
  slow: boolean;
  transport: TransportName;
}

export interface SubscribeOptions<T = unknown> {
  /** Resume after this cursor (an event's id): replay what followed it, then live. */
  since?: string;
  /** First deliver the topic's newest events, at most this many. */
  history?: number;
  /** Each event once, in order. */
  onEvent?: (event: SwitchboardEvent<T>, info: DeliveryInfo) => void;
  /** Events were lost before the next one (the server restarted, or history moved on). */
  onGap?: (gap: GapInfo) => void;
  /** A failure of this subscription (then also the "error" event, if listened to). */
  onError?: (error: SwitchboardError) => void;
  onState?: (detail: { state: SubscriptionState; transport?: TransportName }) => void;
}

export interface Subscription {
  readonly topic: string;
  /** The id of the last event delivered: where a resume starts. */
  readonly cursor: string | null;
  readonly state: SubscriptionState;
  /** Resolves once the server confirmed the subscription; rejects if it failed (e.g. forbidden). */
  readonly ready: Promise<Subscription>;
  unsubscribe(): void;
}

export interface StateDetail {
  state: ConnectionState;
  transport: TransportName | null;
  /** ms until the next attempt, when reconnecting. */
  retryIn?: number;
  error?: SwitchboardError;
  dropped?: boolean;
  /** EventSource is reconnecting by itself (eventSource: true), sending this Last-Event-ID. */
  browser?: boolean;
  lastEventId?: string;
}

export interface TrafficDetail {
  type: "start" | "end" | "in" | "out" | "open";
  /** "eventsource" when an SSE stream is read with EventSource. */
  reader?: "eventsource";
  transport: TransportName | "http";
  kind: string;
  url?: string;
  method?: string;
  status?: number;
  text?: string;
  bytes?: number;
}

export interface SwitchboardEventMap {
  state: StateDetail;
  transport: { transport: TransportName; previous: TransportName | null };
  error: SwitchboardError;
  traffic: TrafficDetail;
}

export interface PublishResult {
  id: string;
  topic: string;
  /** Over HTTP the whole stored event comes back; over /ws, its id and topic. */
  [key: string]: unknown;
}

export class Switchboard {
  /** @param url the server's base URL (relative to the page in a browser). */
  constructor(url?: string, options?: SwitchboardOptions);
  readonly url: string;
  readonly state: ConnectionState;
  /** The transport in use, or being tried. */
  readonly transport: TransportName | null;
  /** The transports this client may use, in order. */
  readonly transports: TransportName[];
  readonly stats: { events: number; gaps: number; duplicates: number; reconnects: number };
  on<K extends keyof SwitchboardEventMap>(name: K, listener: (detail: SwitchboardEventMap[K]) => void): () => void;
  off<K extends keyof SwitchboardEventMap>(name: K, listener: (detail: SwitchboardEventMap[K]) => void): void;
  subscribe<T = unknown>(topic: string, options?: SubscribeOptions<T>): Subscription;
  /** Over the socket when /ws is open, else HTTP. Never retried; rejects with a SwitchboardError. */
  publish(topic: string, data: unknown, options?: { type?: string }): Promise<PublishResult>;
  /** The topic's newest events (or those after `since`). */
  history(topic: string, options?: { limit?: number; since?: string }): Promise<{
    events: SwitchboardEvent[]; cursor: string; gap: boolean;
  }>;
  /** Cut the connection as a network failure would; reconnect after delayMs (default: the backoff). */
  drop(delayMs?: number): void;
  close(): void;
}

export default Switchboard;
