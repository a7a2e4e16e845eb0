// Room page (/room/NAME): the room's backlog, then every speaker's live partials and finals, with timestamps.
// A live final is stamped with the local time its words were spoken, estimated per session as
// min(arrival time - stream end) over that session's messages, plus the final's stream start: so finals that
// arrive together (a busy server) still get the times they were spoken at. A backlog final (sent before this
// page joined) is stamped with its stream time in its speaker's session, under an "earlier" divider.
// Each final line has the id lineId(session, segment), which the summary's and the answers' citations link to
// (ask.js: the "This meeting" panel). A final whose words carry voices (a stream with `diarize`) shows one line per
// run of the same voice, each with its name and time; when a later final brings a new name for a voice (a rename on
// the speaker's page), the earlier lines of that voice are relabelled (voices.js).
import { lineId, mountMeeting } from "./ask.js";
import { ROOM_RE, ReconnectingSocket, el, hms, showState, wallClock, watchRefusal, watchUrl } from "./common.js";
import { VoiceBook, relabel, voiceRuns } from "./voices.js";

const $ = (id) => document.getElementById(id);
const ui = {
  title: $("room-title"), speakers: $("speakers"), state: $("state"), scroll: $("scroll"),
  list: $("transcript"), partials: $("partials"), placeholder: $("placeholder"), jump: $("jump"),
};

const parts = location.pathname.split("/");
let room = "";
try {
  room = decodeURIComponent(parts[2] || "");
} catch {
  room = "";
}

const seen = new Set(); // session:segment of finals shown (a reconnect re-sends the backlog)
const partialNodes = new Map(); // session -> {node, segment}
const speakers = new Set();
const anchors = new Map(); // session -> estimated wall-clock time (ms) of its stream's time 0
const voices = new VoiceBook(); // each (session, voice label)'s current name
let backlogDivider = null;
let liveDivider = null;
let joins = 0; // `watching` messages so far: the backlog after a reconnect is news, not history
let meeting = null; // the summary and ask panel (ask.js)
let refusal = ""; // why the server closed the watch socket for good (watchRefusal)

ui.title.textContent = room ? `Room: ${room}` : "Room";
if (room) document.title = `${room} · live captions`;

if (!ROOM_RE.test(room)) {
  showState(ui.state, "error", "Invalid room name");
  ui.placeholder.textContent = "Room names are 1-64 letters, digits, _ . or -, starting with a letter or digit: " +
    "open /room/NAME.";
} else {
  meeting = mountMeeting($("meeting"), { room });
  const socket = new ReconnectingSocket(watchUrl(room), {
    message: (msg) => onMessage(msg, socket),
    close: (event) => {
      refusal = watchRefusal(event);
      return !refusal;
    },
    state: (name, detail) => {
      if (name === "connecting") showState(ui.state, "connecting", detail.attempt ? "Reconnecting…" : "Connecting…");
      else if (name === "reconnecting") {
        showState(ui.state, "reconnecting", `Disconnected: retrying in ${(detail.delay / 1000).toFixed(1)} s`);
        clearPartials();
      } else if (name === "closed") showState(ui.state, "error", refusal || "Disconnected");
    },
  });
  socket.open();
}

function onMessage(msg, socket) {
  if (msg.type === "watching") {
    socket.healthy();
    joins += 1;
    showState(ui.state, "live", "Live");
    for (const s of msg.speakers || []) speakers.add(s);
    showSpeakers();
  } else if (msg.type === "final") {
    onFinal(msg);
  } else if (msg.type === "partial") {
    onPartial(msg);
  } else if (msg.type === "error") {
    showState(ui.state, "error", msg.message || msg.code);
  }
}

function onFinal(msg) {
  if (!msg.backlog) anchor(msg);
  const key = `${msg.session}:${msg.segment}`;
  const stick = nearBottom();
  const current = partialNodes.get(msg.session);
  if (current && current.segment <= msg.segment) {
    current.node.remove();
    partialNodes.delete(msg.session);
  }
  if (msg.speaker) addSpeaker(msg.speaker);
  const runs = voiceRuns(msg); // null: no voices on its words
  const renamed = voices.learn(msg);
  for (const change of renamed) relabel(ui.list, change);
  if (renamed.length || runs) showSpeakers();
  const text = String(msg.text || "").trim();
  if (seen.has(key) || !text) return;
  seen.add(key);
  const earlier = msg.backlog && joins <= 1;
  if (earlier) {
    if (!backlogDivider) {
      backlogDivider = el("li", { className: "divider", text: "Earlier, before you joined (times from the start of " +
        "each speaker's stream)" });
      ui.list.prepend(backlogDivider);
    }
  } else if (backlogDivider && !liveDivider) {
    liveDivider = el("li", { className: "divider", text: "Live (local time)" });
    ui.list.append(liveDivider);
  }
  // A stream time as the line shows it: the local time it was spoken, or for the backlog the stream time itself.
  const stamp = (t) => `[${earlier ? hms(t) : wallClock(spoken(msg.session, t))}]`;
  const item = el("li", { className: "final" + (earlier ? " backlog" : "") + (runs ? " voiced" : ""),
    "data-session": msg.session, id: lineId(msg.session, msg.segment) });
  if (runs) {
    // One line per run of a voice: its own time, its name (data-label: relabelled on a rename).
    for (const run of runs) {
      item.append(el("span", { className: "run", "data-session": msg.session, "data-label": run.label || null },
        el("time", { className: "stamp", text: stamp(run.start) }), " ",
        el("span", { className: "who voice", text: `${run.voice || "speaker"}:` }), " ",
        el("span", { className: "text", text: run.text })));
    }
  } else {
    item.append(el("time", { className: "stamp", text: stamp(msg.start || 0) }), " ",
      el("span", { className: "who", text: `${msg.speaker || "speaker"}:` }), " ",
      el("span", { className: "text", text }));
  }
  if (earlier && liveDivider) ui.list.insertBefore(item, liveDivider);
  else ui.list.append(item);
  ui.placeholder.hidden = true;
  follow(stick);
  meeting?.finalAdded(msg.backlog ? 100 : undefined); // a backlog comes at once: one refresh when it is in
}

// When stream time `t` of `session` was spoken, on this computer's clock (now, if the session is not placed yet).
function spoken(session, t) {
  return anchors.has(session) ? new Date(anchors.get(session) + 1000 * t) : new Date();
}

function onPartial(msg) {
  anchor(msg);
  const text = String(msg.text || "").trim();
  const stick = nearBottom();
  let entry = partialNodes.get(msg.session);
  if (!text) {
    if (entry) {
      entry.node.remove();
      partialNodes.delete(msg.session);
    }
    return;
  }
  if (msg.speaker) addSpeaker(msg.speaker);
  if (!entry) {
    const node = el("p", { className: "partial" },
      el("span", { className: "who" }), " ", el("span", { className: "text" }));
    entry = { node, segment: msg.segment };
    partialNodes.set(msg.session, entry);
    ui.partials.append(node);
  }
  entry.segment = msg.segment;
  entry.node.children[0].textContent = `${msg.speaker || "speaker"}:`;
  entry.node.children[1].textContent = text;
  ui.placeholder.hidden = true;
  follow(stick);
}

function anchor(msg) {
  if (!msg.session || typeof msg.end !== "number") return;
  const zero = Date.now() - 1000 * msg.end;
  const known = anchors.get(msg.session);
  if (known === undefined || zero < known) anchors.set(msg.session, zero);
}

function clearPartials() {
  for (const { node } of partialNodes.values()) node.remove();
  partialNodes.clear();
}

function addSpeaker(name) {
  if (speakers.has(name)) return;
  speakers.add(name);
  showSpeakers();
}

function showSpeakers() {
  const names = voices.allNames();
  ui.speakers.textContent = (speakers.size ? `Speakers: ${[...speakers].join(", ")}` : "Speakers: none yet") +
    (names.length ? ` · voices: ${names.join(", ")}` : "");
}

// Auto-scroll while the reader is at the bottom; otherwise offer a button back to the latest line.
function nearBottom() {
  const s = ui.scroll;
  return s.scrollHeight - s.scrollTop - s.clientHeight < 48;
}

function follow(stick) {
  if (stick) ui.scroll.scrollTop = ui.scroll.scrollHeight;
  else ui.jump.hidden = false;
}

ui.scroll.addEventListener("scroll", () => {
  if (nearBottom()) ui.jump.hidden = true;
});
ui.jump.addEventListener("click", () => {
  ui.scroll.scrollTop = ui.scroll.scrollHeight;
  ui.jump.hidden = true;
});
