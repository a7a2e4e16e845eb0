// Caption overlay (/overlay?room=NAME) for OBS browser sources: the room's live captions, the newest 1-3
// lines, partial then final, fading after `fade` seconds without new text. Query parameters:
//   room      the room to watch (required)
//   size      font size in px (default 44, 12-200)
//   lines     visible lines, 1-3 (default 2)
//   color     text colour (CSS colour; "#" may be left out of hex colours, e.g. color=ffee00)
//   bg        caption box background (default rgba(0,0,0,0.62); "transparent" for none)
//   position  bottom | top (default bottom)
//   fade      seconds of silence before the captions fade (default 5; 0 = never)
//   names     1 = show the speaker's label before their text (default: only when several people speak);
//             0 = never, not even voices' names
//   token     a viewer token, when the server sets `auth.viewer_tokens`
// A final whose words carry voices (a stream with `diarize`) is shown as one line per voice, each with the voice's
// name (in a quieter style than the words); a later final's new name for a voice relabels its lines (voices.js).
import { ROOM_RE, ReconnectingSocket, el, watchRefusal, watchUrl } from "./common.js";
import { VoiceBook, voiceRuns } from "./voices.js";

const params = new URLSearchParams(location.search);
const root = document.documentElement.style;
const body = document.body;
const box = document.getElementById("box");
const captions = document.getElementById("captions");
const status = document.getElementById("state");

const room = (params.get("room") || "").trim();
const size = clampInt(params.get("size"), 12, 200, 44);
const lines = clampInt(params.get("lines"), 1, 3, 2);
const fadeS = clampNumber(params.get("fade"), 0, 3600, 5);
const names = params.get("names");
root.setProperty("--size", `${size}px`);
root.setProperty("--lines", String(lines));
setColor("--color", params.get("color"));
setColor("--bg", params.get("bg"));
body.dataset.position = params.get("position") === "top" ? "top" : "bottom";

const MAX_ENTRIES = 8; // recent captions kept; the box shows only the last `lines` lines of them
let entries = []; // {key, session, speaker, text, final, label, voiced}: speaker is the name shown
const speakersSeen = new Set();
const voices = new VoiceBook(); // each (session, voice label)'s current name
let fadeTimer = null;
let faded = false;
let refusal = ""; // why the server closed the watch socket for good (watchRefusal)

if (!ROOM_RE.test(room)) {
  setState("error", "No room");
  showMessage(room ? `Invalid room name: ${room}` : "Add ?room=NAME to this overlay's URL");
} else {
  document.title = `Captions · ${room}`;
  const socket = new ReconnectingSocket(watchUrl(room), {
    message: (msg) => {
      if (msg.type === "watching") {
        socket.healthy();
        setState("live", "Live");
      } else if ((msg.type === "partial" || msg.type === "final") && !msg.backlog) {
        onCaption(msg);
      }
    },
    close: (event) => {
      refusal = watchRefusal(event);
      return !refusal;
    },
    state: (name) => {
      if (name === "connecting") setState("connecting", "Connecting…");
      else if (name === "reconnecting") {
        setState("reconnecting", "Reconnecting…");
        entries = entries.filter((e) => e.final); // open windows of lost sessions get no final
        render();
      } else if (name === "closed") {
        setState("error", refusal || "Disconnected");
        if (refusal) showMessage(refusal); // a setup error, like a missing room: whoever sets up OBS must see it
      }
    },
  });
  socket.open();
}

function onCaption(msg) {
  const key = `${msg.session}:${msg.segment}`;
  const text = String(msg.text || "").trim();
  if (msg.speaker) speakersSeen.add(msg.speaker);
  if (faded) {
    entries = []; // after a pause, start a fresh box
    faded = false;
  }
  if (msg.type === "final") {
    for (const { session, label, name } of voices.learn(msg)) {
      for (const e of entries) if (e.session === session && e.label === label) e.speaker = name;
    }
  }
  let entry = entries.find((e) => e.key === key);
  if (entry && entry.final) return; // nothing follows a final
  if (!entry) {
    if (!text) return;
    entry = { key, session: msg.session, speaker: msg.speaker || "", text: "", final: false };
    entries.push(entry);
  }
  entry.text = text;
  entry.final = msg.type === "final";
  const runs = entry.final ? voiceRuns(msg) : null;
  if (!text) entries = entries.filter((e) => e !== entry);
  else if (runs) {
    // The window's text becomes one entry per voice (the first keeps the window's key).
    entries.splice(entries.indexOf(entry), 1, ...runs.map((run, i) => ({
      key: i ? `${key}#${i}` : key, session: msg.session, speaker: run.voice, label: run.label, voiced: true,
      text: run.text, final: true,
    })));
  }
  if (entries.length > MAX_ENTRIES) entries = entries.slice(-MAX_ENTRIES);
  render();
  if (text) wake();
}

function render() {
  const showNames = names === "1" || (names !== "0" && speakersSeen.size > 1);
  const paragraphs = [];
  let current = null;
  for (const e of entries) {
    // A voice's name shows unless names=0; a stream's label as before. A new voice starts a new line.
    const named = e.voiced ? names !== "0" : showNames;
    const who = e.voiced || showNames ? e.speaker : "";
    if (!current || current.who !== who || current.voiced !== Boolean(e.voiced)) {
      current = { who, voiced: Boolean(e.voiced), node: el("p", { "data-label": e.voiced ? e.label || null : null }) };
      if (named && e.speaker) {
        current.node.append(el("span", { className: e.voiced ? "who voice" : "who", text: `${e.speaker}: ` }));
      }
      paragraphs.push(current);
    } else {
      current.node.append(" ");
    }
    current.node.append(el("span", { className: e.final ? "final" : "partial", text: e.text }));
  }
  captions.replaceChildren(...paragraphs.map((p) => p.node));
  box.hidden = paragraphs.length === 0;
}

// Visible while captions come; faded `fade` seconds after the last one.
function wake() {
  box.classList.remove("faded");
  clearTimeout(fadeTimer);
  if (fadeS > 0) {
    fadeTimer = setTimeout(() => {
      box.classList.add("faded");
      faded = true;
    }, fadeS * 1000);
  }
}

function showMessage(text) {
  captions.replaceChildren(el("p", { text }));
  box.hidden = false;
}

function setState(state, text) {
  body.dataset.state = state;
  status.textContent = text;
}

function setColor(property, value) {
  if (!value) return;
  const v = value.trim();
  for (const candidate of [v, `#${v}`]) {
    if (CSS.supports("color", candidate)) {
      root.setProperty(property, candidate);
      return;
    }
  }
}

function clampInt(value, lo, hi, fallback) {
  const n = Number.parseInt(value ?? "", 10);
  return Number.isFinite(n) ? Math.min(hi, Math.max(lo, n)) : fallback;
}

function clampNumber(value, lo, hi, fallback) {
  const n = Number.parseFloat(value ?? "");
  return Number.isFinite(n) ? Math.min(hi, Math.max(lo, n)) : fallback;
}
