/**
 * The page's WebSocket to /ws: it reconnects by itself and tells the page what state it is in.
 *
 * Reconnects back off exponentially with jitter, so a restarted server is not hit by every open page at
 * the same instant. Browsers cannot send WebSocket pings, so an application ping (protocol v1 `ping`)
 * every few seconds measures the round-trip time and detects a connection that died without a close
 * frame (a sleeping laptop, a dropped mobile network): no pong in time means reconnect.
 */

const FIRST_RETRY_MS = 400;
const MAX_RETRY_MS = 15000;
const HELLO_TIMEOUT_MS = 5000;
const HEARTBEAT_MS = 10000;
const PONG_TIMEOUT_MS = 5000;

/** What a close code means to a person, when the server gave no reason of its own. */
const CLOSE_REASONS = {
  1001: "server restarting",
  1008: "the server closed the connection",
  1009: "the drawing was too large to send",
  1011: "connection timed out",
  1012: "server restarting",
  1013: "server busy",
};

export class Connection {
  /**
   * @param {string} url ws:// or wss:// address of /ws
   * @param {{onReady?: (hello: object) => void, onMessage?: (message: object) => void,
   *          onStatus?: (status: {state: string, reason: string|null, rtt: number|null}) => void}} callbacks
   *   onReady after each server `hello`, onMessage for every other reply, onStatus on every change.
   */
  constructor(url, { onReady = () => {}, onMessage = () => {}, onStatus = () => {} } = {}) {
    this.url = url;
    this.onReady = onReady;
    this.onMessage = onMessage;
    this.onStatus = onStatus;
    this.socket = null;
    this.hello = null;
    this.state = "connecting";
    this.reason = null;
    this.rtt = null;
    this.attempt = 0;
    this.timers = { retry: 0, hello: 0, heartbeat: 0, pong: 0 };
    this.pingCount = 0;
    this.pendingPing = null;
    window.addEventListener("online", () => this.#retryNow());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") {
        this.#retryNow();
      }
    });
  }

  /** True once the server's hello arrived on the current socket. */
  get ready() {
    return this.hello !== null && this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  /** True when earlier messages are still queued in the browser: a slow link; live frames should wait. */
  get congested() {
    return this.socket !== null && this.socket.bufferedAmount > 64 * 1024;
  }

  /** The server's limits from its last hello (empty before the first). */
  get limits() {
    return (this.hello && this.hello.limits) || {};
  }

  start() {
    this.#connect();
  }

  /** Send one message as JSON; false (nothing sent) while not connected. */
  send(message) {
    if (!this.ready) {
      return false;
    }
    this.socket.send(JSON.stringify(message));
    return true;
  }

  #connect() {
    clearTimeout(this.timers.retry);
    this.#report(this.state === "reconnecting" ? "reconnecting" : "connecting");
    let socket;
    try {
      socket = new WebSocket(this.url);
    } catch (error) {
      this.#lost(String(error.message || error));
      return;
    }
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.timers.hello = setTimeout(() => this.#lost("no greeting from the server"), HELLO_TIMEOUT_MS);
    });
    socket.addEventListener("message", (event) => this.#receive(event));
    socket.addEventListener("close", (event) => {
      if (socket === this.socket) {
        this.#lost(event.reason || CLOSE_REASONS[event.code] || null);
      }
    });
  }

  #receive(event) {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message === null || typeof message !== "object") {
      return;
    }
    if (message.type === "hello") {
      clearTimeout(this.timers.hello);
      this.hello = message;
      this.attempt = 0;
      this.reason = null;
      this.#report("connected");
      this.#ping();
      this.timers.heartbeat = setInterval(() => this.#ping(), HEARTBEAT_MS);
      this.onReady(message);
      return;
    }
    if (message.type === "pong" && this.pendingPing && message.id === this.pendingPing.id) {
      clearTimeout(this.timers.pong);
      this.rtt = performance.now() - this.pendingPing.sentAt;
      this.pendingPing = null;
      this.#report(this.state);
      return;
    }
    this.onMessage(message);
  }

  #ping() {
    if (this.pendingPing !== null) {
      return;
    }
    this.pingCount += 1;
    const ping = { id: `ping-${this.pingCount}`, sentAt: performance.now() };
    if (this.send({ type: "ping", id: ping.id })) {
      this.pendingPing = ping;
      this.timers.pong = setTimeout(() => this.#lost("no reply from the server"), PONG_TIMEOUT_MS);
    }
  }

  /**
   * The socket is gone or unusable: drop it and schedule the next attempt. A server's reason (such as
   * "server restarting") is kept over later attempts that fail without one, so it stays on screen.
   */
  #lost(reason) {
    const socket = this.socket;
    this.socket = null;
    this.hello = null;
    this.pendingPing = null;
    this.rtt = null;
    clearTimeout(this.timers.hello);
    clearTimeout(this.timers.pong);
    clearInterval(this.timers.heartbeat);
    if (socket !== null && socket.readyState <= WebSocket.OPEN) {
      socket.close();
    }
    if (reason) {
      this.reason = reason;
    } else if (this.reason === null) {
      this.reason = this.state === "connected" ? "connection lost" : "server unreachable";
    }
    const ceiling = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** this.attempt);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.attempt += 1;
    this.timers.retry = setTimeout(() => this.#connect(), delay);
    this.#report("reconnecting");
  }

  /** Skip the wait when the browser says the network or the tab is back. */
  #retryNow() {
    if (this.state === "reconnecting" && this.socket === null) {
      this.#connect();
    }
  }

  #report(state) {
    this.state = state;
    this.onStatus({ state, reason: this.reason, rtt: this.rtt });
  }
}
