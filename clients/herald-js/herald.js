// herald.js: Herald's browser client, an ES module with no dependencies (README.md beside it).
//
//   import { connect } from "/herald.js";
//   const stream = connect({
//     topics: ["scores"],
//     events: { message: (e) => show(e.data), goal: (e) => cheer(e.data) },
//     onGap: (verdict) => refetchState(),
//     refreshToken: async () => (await fetch("/my/token")).text(),
//   });
//
// It wraps a native EventSource and adds what every page wants from Herald:
// - One stream per browser for a URL, shared by every tab of the origin: the tabs elect a leader
//   with the Web Locks API, the leader holds the EventSource and relays each event over a
//   BroadcastChannel. When the leader's tab closes, the next tab takes the lock and resumes from
//   the last id it has. Each tab delivers an event only if its id is after the last one it
//   delivered, so a handover neither loses nor doubles one.
// - The last id this tab delivered is kept in sessionStorage, so a reload resumes from it. A tab
//   that joins behind the leader reads what it missed over a stream of its own, until Herald's
//   `herald.live` says it is caught up, then follows the leader again.
// - Herald's control events: `herald.resume` (onResume, and onGap when `recovered` is false),
//   `herald.live` (onLive), `herald.refused` (onRefused; the browser retries by itself), and
//   `herald.auth` (the token expired: refreshToken(), then the stream reopens from the last id).
//   A stream the browser gave up on (any answer but 200) reopens after a growing delay.
//
// Ids are Herald's `<epoch>-<seq>`: within an epoch the sequence orders every event.

const CONTROL = ["herald.resume", "herald.live", "herald.refused", "herald.auth"];
const MAX_BACKOFF_MS = 30000;

// Whether `id` comes after `last`: a later sequence of the same epoch, or another epoch.
export function isAfter(id, last) {
  if (!last) return true;
  const i = id.lastIndexOf("-");
  const j = last.lastIndexOf("-");
  if (i < 0 || j < 0 || id.slice(0, i) !== last.slice(0, j)) return id !== last;
  const a = id.slice(i + 1);
  const b = last.slice(j + 1);
  return a.length !== b.length ? a.length > b.length : a > b;
}

function decode(raw) {
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

function storage() {
  try {
    return window.sessionStorage;
  } catch {
    return null; // storage disabled: nothing is kept across reloads
  }
}

export function connect(options) {
  return new HeraldStream(options);
}

export class HeraldStream {
  constructor(options) {
    const o = (this.options = Object.assign({ share: true, persist: true }, options));
    if (!o.topics || !o.topics.length) throw new TypeError("herald.js: topics are required");
    const url = new URL(o.url || "/v1/stream", location.href);
    for (const topic of [...o.topics].sort()) url.searchParams.append("topic", topic);
    this.url = url.href;
    // Tabs share a stream when they ask for the same URL, credentials and event types.
    this.types = [...new Set(["message", ...Object.keys(o.events || {})])].sort();
    this.key = ["herald", this.url, !!o.withCredentials, ...this.types].join(" ");
    this.store = o.persist ? storage() : null;
    this.lastEventId = o.lastEventId || (this.store && this.store.getItem(this.key)) || null;
    this.role = "starting"; // then "leader", "follower" or "single"; "closed" after close()
    this.state = "connecting";
    this.source = null; // the leader's, a single tab's or a catching-up follower's EventSource
    this.buffer = null; // a follower's relayed events, held until it is in step with the leader
    this.backoff = 0;
    this.timer = null;
    this.id = Math.random().toString(36).slice(2);
    const shared = o.share && navigator.locks && typeof BroadcastChannel === "function";
    if (!shared) {
      this.role = "single";
      this.open();
      return;
    }
    this.channel = new BroadcastChannel(this.key);
    this.channel.onmessage = (e) => this.relayed(e.data);
    this.abort = new AbortController();
    navigator.locks
      .request(this.key, { signal: this.abort.signal }, () => this.lead())
      .catch(() => {}); // aborted by close()
    // Until the lock is ours, follow whoever holds it.
    this.role = "follower";
    this.buffer = [];
    this.hello();
  }

  // Closes the stream and, in the leader's tab, hands it to another tab.
  close() {
    if (this.role === "closed") return;
    this.role = "closed";
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    if (this.release) this.release();
    if (this.abort) this.abort.abort();
    if (this.channel) this.channel.close();
    this.setState("closed");
  }

  // --- the leader's side ---

  lead() {
    if (this.role === "closed") return;
    this.role = "leader";
    if (this.source) this.source.close(); // a follower's catch-up: the leader's stream replaces it
    this.flush();
    this.setState("connecting");
    this.open();
    this.post({ t: "lead" });
    return new Promise((resolve) => (this.release = resolve)); // held until close() or the tab goes
  }

  // Opens the stream from the last id (the browser sends later ones itself as Last-Event-ID).
  open() {
    clearTimeout(this.timer);
    const url = new URL(this.url);
    if (this.lastEventId) url.searchParams.set("lastEventId", this.lastEventId);
    const source = (this.source = new EventSource(url.href, {
      withCredentials: !!this.options.withCredentials,
    }));
    const catchingUp = this.role === "follower";
    source.onopen = () => {
      this.backoff = 0;
      if (!catchingUp) this.setState("open");
    };
    source.onerror = () => {
      if (source !== this.source) return;
      if (source.readyState === EventSource.CLOSED) this.reopen(!!this.options.refreshToken);
      else if (!catchingUp) this.setState("reconnecting");
    };
    for (const type of this.types) this.listen(source, type);
    for (const type of CONTROL) {
      source.addEventListener(type, (e) => {
        if (source !== this.source) return;
        const data = decode(e.data);
        if (!catchingUp) this.post({ t: "c", type, data });
        this.control(type, data, true);
      });
    }
  }

  listen(source, type) {
    source.addEventListener(type, (e) => {
      if (source !== this.source || !this.deliver(e.lastEventId, type, e.data)) return;
      if (this.role === "leader") this.post({ t: "e", id: e.lastEventId, type, raw: e.data });
    });
  }

  // The browser gave up on the stream (an answer other than 200), or the token expired: open it
  // again after a delay growing to 30 s, getting a fresh token first when asked to.
  reopen(refresh) {
    if (this.source) this.source.close();
    this.source = null;
    if (this.role === "closed") return;
    this.setState("reconnecting");
    const delay = this.backoff ? Math.min(this.backoff * 2, MAX_BACKOFF_MS) : 1000;
    this.backoff = delay;
    this.timer = setTimeout(async () => {
      if (refresh) await this.refresh();
      if (this.role !== "closed" && !this.source) this.open();
    }, delay * (0.5 + Math.random() / 2));
  }

  // Calls the page's refreshToken(). A token it returns is posted to Herald's
  // /v1/auth/cookie, which sets the cookie the next EventSource sends.
  async refresh() {
    try {
      const token = await this.options.refreshToken();
      if (typeof token === "string" && token) {
        await fetch(new URL("/v1/auth/cookie", this.url), {
          method: "POST",
          headers: { Authorization: "Bearer " + token },
          credentials: this.options.withCredentials ? "include" : "same-origin",
        });
      }
    } catch (e) {
      this.call("onError", e);
    }
  }

  // A control event on this tab's own stream, or relayed by the leader (`relayed`).
  control(type, data, own) {
    if (type === "herald.resume") {
      if (!data.recovered) {
        // What follows is live from the head: the sequence may have restarted (an epoch).
        this.lastEventId = data.head || null;
        this.keep();
      }
      this.call("onResume", data);
      if (!data.recovered) this.call("onGap", data);
      if (own && this.buffer && !data.recovered) this.caughtUp();
    } else if (type === "herald.live") {
      this.call("onLive", data);
      if (own && this.buffer) this.caughtUp();
    } else if (type === "herald.refused") {
      this.call("onRefused", data);
    } else if (type === "herald.auth") {
      this.call("onAuthExpired", data);
      // Herald ends the stream after it; reopen with a fresh token rather than racing the
      // browser's own retry.
      if (own && this.source) {
        this.backoff = 0;
        this.reopen(true);
      }
    }
  }

  // --- the followers' side ---

  hello() {
    this.post({ t: "hello", from: this.id });
  }

  relayed(m) {
    if (m.t === "e") {
      if (this.buffer) this.buffer.push(m);
      else this.deliver(m.id, m.type, m.raw);
    } else if (m.t === "c") {
      if (!this.buffer) this.control(m.type, m.data, false);
    } else if (m.t === "s") {
      if (this.role === "follower") this.setState(m.state);
    } else if (m.t === "hello" && this.role === "leader") {
      this.post({ t: "at", to: m.from, last: this.lastEventId, state: this.state });
    } else if (m.t === "at" && m.to === this.id && this.buffer && !this.source) {
      this.setState(m.state);
      if (!this.lastEventId || (m.last && !isAfter(m.last, this.lastEventId))) {
        // In step with the leader (or a new tab starting where it is).
        if (!this.lastEventId) this.lastEventId = m.last;
        this.flush();
      } else {
        this.open(); // behind the leader: catch up over a stream of our own
      }
    } else if (m.t === "lead" && this.buffer && !this.source) {
      this.hello(); // a leader came after our hello: ask again
    }
  }

  // The catch-up stream reached live (or Herald said what it missed is gone): what the leader
  // relayed meanwhile follows, and the tab's own stream closes.
  caughtUp() {
    if (this.source) this.source.close();
    this.source = null;
    this.flush();
  }

  flush() {
    const held = this.buffer || [];
    this.buffer = null;
    for (const m of held) this.deliver(m.id, m.type, m.raw);
  }

  // --- every tab ---

  // Hands an event to the page once: only an id after the last delivered one.
  deliver(id, type, raw) {
    if (!id || !isAfter(id, this.lastEventId)) return false;
    this.lastEventId = id;
    this.keep();
    const handler = (this.options.events || {})[type];
    if (handler) {
      try {
        handler({ id, type, data: decode(raw), raw });
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    }
    return true;
  }

  keep() {
    if (!this.store) return;
    try {
      if (this.lastEventId) this.store.setItem(this.key, this.lastEventId);
      else this.store.removeItem(this.key);
    } catch {
      // full or disabled: the next load starts from the page's own id, or live
    }
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    if (this.role === "leader") this.post({ t: "s", state });
    this.call("onState", state);
  }

  post(m) {
    if (this.channel && this.role !== "closed") this.channel.postMessage(m);
  }

  call(name, arg) {
    const f = this.options[name];
    if (f) f.call(this, arg);
  }
}
