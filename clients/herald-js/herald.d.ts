// Types of herald.js (README.md beside it).

/** An event as the page receives it; `data` is the event's JSON decoded (the raw text if it is not JSON). */
export interface HeraldEvent<T = unknown, K extends string = string> {
  /** Herald's id, `<epoch>-<seq>`. */
  id: string;
  /** The event's type (`message` when it was published without one). */
  type: K;
  data: T;
  /** The `data:` lines as sent. */
  raw: string;
}

/** `herald.resume`: what a resume found. */
export type ResumeVerdict =
  | { recovered: true }
  | {
      recovered: false;
      reason: "expired" | "unknown" | "malformed" | "epoch";
      earliest?: string;
      head?: string;
    };

/** `herald.live`: the replay is over. */
export interface LiveInfo {
  replayed: number;
}

/** `herald.refused`: the server could not take the stream now; the browser retries after `retry_ms`. */
export interface Refusal {
  code: "too_many_connections" | "draining" | "unavailable" | string;
  retry_ms: number;
  message: string;
}

export type StreamState = "connecting" | "open" | "reconnecting" | "closed";

export interface Options<E extends Record<string, unknown> = Record<string, unknown>> {
  /** Topics and patterns (`scores`, `news.*`, `news.>`). */
  topics: string[];
  /** The stream endpoint (default `/v1/stream` on this origin). */
  url?: string;
  /** A handler per event type; `message` is the type of events published without one. */
  events?: { [K in keyof E & string]?: (event: HeraldEvent<E[K], K>) => void };
  /** Start after this id (say, the last one the server rendered). Default: the id this tab last delivered, else live. */
  lastEventId?: string;
  /** Share one connection between the tabs of this origin (default true; needs Web Locks and BroadcastChannel). */
  share?: boolean;
  /** Keep the last delivered id in sessionStorage, so a reload resumes (default true). */
  persist?: boolean;
  /** Send cookies to another origin (`EventSource` `withCredentials`). */
  withCredentials?: boolean;
  /** Called on `herald.auth` (the token expired) and before reopening a stream the browser gave up on. A string returned is posted to `/v1/auth/cookie`. */
  refreshToken?: () => Promise<string | void> | string | void;
  onResume?: (verdict: ResumeVerdict) => void;
  /** A resume that could not recover: events were missed; refetch the page's state. */
  onGap?: (verdict: Extract<ResumeVerdict, { recovered: false }>) => void;
  onLive?: (info: LiveInfo) => void;
  onRefused?: (refusal: Refusal) => void;
  onAuthExpired?: (info: { reason: string }) => void;
  onState?: (state: StreamState) => void;
  /** A refreshToken() that failed. */
  onError?: (error: unknown) => void;
}

export declare class HeraldStream<E extends Record<string, unknown> = Record<string, unknown>> {
  constructor(options: Options<E>);
  /** The last id this tab delivered. */
  readonly lastEventId: string | null;
  /** `leader` holds the connection, `follower` gets the leader's events, `single` is not shared. */
  readonly role: "starting" | "leader" | "follower" | "single" | "closed";
  readonly state: StreamState;
  /** Closes the stream; a leader hands the connection to another tab. */
  close(): void;
}

export declare function connect<E extends Record<string, unknown> = Record<string, unknown>>(
  options: Options<E>,
): HeraldStream<E>;

/** Whether Herald id `id` comes after `last`. */
export declare function isAfter(id: string, last: string | null): boolean;
