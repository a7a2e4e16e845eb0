// Small helpers shared by the speaker page, the overlay and the room page (plain ES module, no build step).

/** Room names the server accepts (docs/protocol.md, Rooms). */
export const ROOM_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** Sample rates the server accepts in `start` (it resamples them to 16 kHz with soxr). */
export const SERVER_RATES = [8000, 16000, 22050, 24000, 32000, 44100, 48000];

/** Most characters of `context` (names and terms likely to be said) a `start` may carry. */
export const MAX_CONTEXT = 500;

/** A context as `start` carries it: ends trimmed, at most MAX_CONTEXT characters (code points); "" = none. */
export function cleanContext(text) {
  return Array.from(String(text ?? "").trim()).slice(0, MAX_CONTEXT).join("").trim();
}

/** The token this page was opened with (`?token=T` on its address), or "": the room page and the overlay send it on
 * their watch websocket (watchUrl), the speaker page on its listen websocket (listenUrl), the room and speaker pages
 * on the ask API (as a Bearer token). */
export function pageToken() {
  return new URLSearchParams(location.search).get("token") || "";
}

/** The websocket URL that watches `room`, with the page's token: with `auth.viewer_tokens` set the server refuses a
 * watcher without one (close 4401). */
export function watchUrl(room) {
  return wsUrl("/v1/watch", { room, token: pageToken() });
}

/** The websocket URL that streams audio, with the page's token: with `auth.speaker_tokens` set the server refuses a
 * speaker without one (close 4401). */
export function listenUrl() {
  return wsUrl("/v1/listen", { token: pageToken() });
}

/** Why the server closed a watch websocket for good, or "" when reconnecting may help: a refused token, or a bad room
 * name (1008, which also drops a viewer too slow to keep up: that one may come back). */
export function watchRefusal(event) {
  const refused = tokenRefusal(event, "viewer", "watch this room");
  if (refused) return refused;
  if (event.code === 1008 && !event.reason.includes("slow")) return `Refused: ${event.reason || "policy violation"}`;
  return "";
}

/** Why the server closed a listen websocket for good, or "" when reconnecting may help: a refused token. */
export function listenRefusal(event) {
  return tokenRefusal(event, "speaker", "stream audio: that takes a speaker token");
}

// A refused token would be refused again: none or an unknown one (4401), or one that may not do this (4403).
function tokenRefusal(event, kind, action) {
  if (event.code === 4401) return `Needs a ${kind} token: add token=YOUR_TOKEN to this page's address`;
  if (event.code === 4403) return `This token may not ${action}`;
  return "";
}

/** A websocket URL on this page's host and port: ws: for http:, wss: for https:. */
export function wsUrl(path, params = {}) {
  const url = new URL(path, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.hash = "";
  url.search = "";
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  return url.href;
}

/** Seconds -> "hh:mm:ss". */
export function hms(seconds) {
  const t = Math.max(0, Math.floor(seconds));
  return `${pad(Math.floor(t / 3600))}:${pad(Math.floor(t / 60) % 60)}:${pad(t % 60)}`;
}

/** A Date -> local "hh:mm:ss". */
export function wallClock(date = new Date()) {
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

function pad(n) {
  return String(n).padStart(2, "0");
}

/** The transcript writers, as the server's caption_formats writes them (cues.js: cues cut at word times, with
 * voices); the speaker page downloads the server's own exports, and uses these only where it cannot
 * (transcript-file.js). */
export { toSrt, toTxt, toVtt } from "./cues.js";

/** Saves `text` as a file through a Blob URL and a download link (a navigation, not a fetch). */
export function downloadText(filename, text, type) {
  const blob = new Blob([text], { type: `${type};charset=utf-8` });
  const href = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = href;
  a.download = filename;
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10000);
}

/** "20250101-120000": a file-name-safe local time stamp. */
export function fileStamp(date = new Date()) {
  return `${date.getFullYear()}${pad(date.getMonth() + 1)}${pad(date.getDate())}-` +
    `${pad(date.getHours())}${pad(date.getMinutes())}${pad(date.getSeconds())}`;
}

/** Creates an element; children are nodes or strings (strings become text nodes: never parsed as HTML). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "className") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== undefined && child !== null) node.append(child);
  }
  return node;
}

/** Delay before reconnect attempt `n` (0, 1, ...): 0.5 s doubling up to 10 s, with +-20 % jitter. */
export function backoff(attempt) {
  const base = Math.min(10000, 500 * 2 ** attempt);
  return Math.round(base * (0.8 + 0.4 * Math.random()));
}

/**
 * A websocket that reconnects with backoff until close() is called.
 * handlers: open(ws), message(msg, ws) with parsed JSON, close(event) -> false to stop retrying,
 * state(name, detail) with name in connecting | open | reconnecting | closed.
 * Call healthy() once the server has accepted the connection (resets the backoff).
 */
export class ReconnectingSocket {
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    this.ws = null;
    this.attempt = 0;
    this.closed = true;
    this.timer = null;
  }

  open() {
    this.closed = false;
    this.attempt = 0;
    this._connect();
  }

  healthy() {
    this.attempt = 0;
  }

  send(data) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(data);
      return true;
    }
    return false;
  }

  /** No reconnect after the current socket closes (the server is expected to close it, e.g. after `end`). */
  stopRetrying() {
    this.closed = true;
    clearTimeout(this.timer);
    if (!this.ws) this._state("closed");
  }

  /** Closes now, for good: no more reconnects. */
  close(code = 1000, reason = "") {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(code, reason);
    else this._state("closed");
  }

  _state(name, detail = {}) {
    this.handlers.state?.(name, detail);
  }

  _connect() {
    clearTimeout(this.timer);
    const url = typeof this.url === "function" ? this.url() : this.url;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (err) {
      this._state("closed", { error: String(err) });
      this.closed = true;
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this._state("connecting", { attempt: this.attempt });
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this._state("open");
      this.handlers.open?.(ws);
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws || typeof event.data !== "string") return;
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        return;
      }
      if (msg && typeof msg === "object") this.handlers.message?.(msg, ws);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      const retry = this.handlers.close?.(event) !== false;
      if (this.closed || !retry) {
        this.closed = true;
        this._state("closed", { code: event.code, reason: event.reason });
        return;
      }
      const delay = backoff(this.attempt);
      this.attempt += 1;
      this._state("reconnecting", { delay, attempt: this.attempt, code: event.code });
      this.timer = setTimeout(() => this._connect(), delay);
    };
    ws.onerror = () => {}; // a close event always follows
  }
}

/** Sets the text and data-state of a connection-state badge. */
export function showState(node, state, text) {
  node.dataset.state = state;
  node.textContent = text;
}
