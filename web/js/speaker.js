// Speaker page: microphone -> AudioWorklet (s16le at the context rate) -> /v1/listen; shows captions, keeps
// the finals for TXT/SRT/VTT downloads, reconnects by itself and resumes its session (docs/protocol.md,
// Resuming a dropped session): it keeps the audio since its last final and sends it again after a drop, so no
// word is lost or doubled.
// With a room, the "This meeting" panel (ask.js) shows the room's summary and answers questions about the room's
// transcript; each final here has the id lineId(session, segment) its citations link to. Without a room the panel
// stays hidden: a page's own session changes with every Start (and refused resume), so the room is the one stable
// transcript to ask about. The summary shows from this page's first final on, or once a question is answered.
// With `?token=T` the page streams with that speaker token (auth.speaker_tokens); a server that refuses the token
// (close 4401 or 4403) would refuse it again, so the page stops and says why.
// With "Label speakers" (`?diarize=1`) the stream's `start` asks for voice labels (`diarize`): the transcript
// shows one line per voice, and the Speakers list (speaker-voices.js) renames a voice for the room's viewers.
// This module: the page's settings from its address, the stream link (start, resume, resending the backlog) and
// Start/Stop; the microphone is capture.js, the transcript and its downloads captions-view.js, the room's
// "Send captions to…" panel (Zoom, YouTube Live, Teams, a webhook) outputs-panel.js.
import { lineId, mountMeeting } from "./ask.js";
import { CaptionsView } from "./captions-view.js";
import { levelMeter, openCapture } from "./capture.js";
import { mountOutputs } from "./outputs-panel.js";
import { VoicesPanel } from "./speaker-voices.js";
import {
  MAX_CONTEXT, ROOM_RE, ReconnectingSocket, cleanContext, listenRefusal, listenUrl, pageToken, showState,
} from "./common.js";

const $ = (id) => document.getElementById(id);
const ui = {
  state: $("state"), toggle: $("toggle"), level: $("level"), backend: $("backend"), model: $("model"),
  notice: $("notice"), context: $("context"), contextNote: $("context-note"), contextCount: $("context-count"),
  roomFormSummary: $("room-form-summary"), roomSummary: $("room-summary"), roomInput: $("room-input"),
  speakerInput: $("speaker-input"), roomLinks: $("room-links"), roomLink: $("room-link"),
  overlayLink: $("overlay-link"), captions: $("captions"), partial: $("partial"), placeholder: $("placeholder"),
  scroll: $("scroll"), clear: $("clear"), downloads: [...document.querySelectorAll("[data-format]")],
  diarize: $("diarize"),
};

const MAX_BACKLOG_S = 30; // audio kept since the last final, to resend after a drop; older chunks are dropped
const STREAM_RATE = 16000; // the server's stream clock: `offset` counts samples at this rate
const STOP_TIMEOUT_MS = 15000; // how long to wait for the server's `end` after `stop`

// --- room, label and context from the page URL -----------------------------------------------------------
const params = new URLSearchParams(location.search);
let room = (params.get("room") || "").trim();
const speaker = Array.from((params.get("speaker") || "").trim()).slice(0, 64).join(""); // server: 1-64 chars
if (room && !ROOM_RE.test(room)) {
  notify(`“${room}” is not a valid room name (1-64 letters, digits, _ . -, starting with a letter or digit); ` +
    "captions stay on this page.");
  room = "";
}
ui.roomInput.value = room;
ui.speakerInput.value = speaker;
ui.context.maxLength = MAX_CONTEXT;
ui.context.value = cleanContext(params.get("context"));
ui.diarize.checked = params.get("diarize") === "1";
const CONTEXT_NOTE = ui.contextNote.textContent;
function showContextCount() {
  ui.contextCount.textContent = `${ui.context.value.length}/${MAX_CONTEXT}`;
}
showContextCount();
ui.context.addEventListener("input", showContextCount);
// The room form carries the field along (form="room-form"), so joining a room keeps it (an empty one stays out
// of the URL), and the page's token, so that the page it opens may stream too.
ui.roomInput.form.addEventListener("formdata", (event) => {
  if (!cleanContext(event.formData.get("context"))) event.formData.delete("context");
  if (pageToken()) event.formData.set("token", pageToken());
  if (ui.diarize.checked) event.formData.set("diarize", "1"); // sent even while the box is locked (disabled)
});
if (room) {
  ui.roomSummary.textContent = `Room: ${room}` + (speaker ? ` · as ${speaker}` : "");
  ui.roomLink.href = `/room/${encodeURIComponent(room)}`;
  ui.roomLink.textContent = new URL(ui.roomLink.getAttribute("href"), location.href).href;
  ui.overlayLink.href = `/overlay?room=${encodeURIComponent(room)}`;
  ui.overlayLink.textContent = new URL(ui.overlayLink.getAttribute("href"), location.href).href;
  ui.roomLinks.hidden = false;
  ui.roomFormSummary.textContent = "Change room or label";
  document.title = `Live captions · ${room}`;
}
const meeting = room ? mountMeeting($("meeting"), { room }) : null;
const outputs = mountOutputs($("outputs"), { room }); // "Send captions to…" (disabled without a room)
const view = new CaptionsView(ui, {
  room,
  onClear: () => {
    if (!running) earlierRuns = 0; // the transcript's clock starts again with the next Start
  },
});
const setLevel = levelMeter(ui.level);
const voices = new VoicesPanel({ section: $("voices"), list: $("voice-list"), status: $("rename-status") }, {
  send: (message) => live && socket.send(JSON.stringify(message)),
  onRenamed: (id, label, name) => view.rename(id, label, name),
});

// --- state ------------------------------------------------------------------------------------------------
let capture = null; // the open microphone: {rate, close()}
let rate = 48000; // the capture rate of the current or last run: the unit of the sample counters
let running = false; // the user wants captions (between Start and Stop)
let stopping = false;
let stopTimer = null;
let live = false; // `ready` received on the current connection
let backlog = []; // {index, pcm}: the chunks captured since the last final's end, sent or not (MAX_BACKLOG_S)
let captured = 0; // samples captured since Start, at `rate`
let earlierRuns = 0; // seconds captured by earlier Start..Stop runs: the transcript's clock goes on across them
let sessionBase = null; // capture sample index of the current session's first sample (its stream clock's 0)
let session = null;
let resumeToken = null; // the current session's secret from `ready`: set while the session can be resumed
let resumeFrom = null; // capture index from which this connection's `start` said it would resend the audio
let lastSegment = -1; // the current session's last final received: a final sent again after a resume is skipped
let lastFinalEnd = 0; // its end, in seconds on the session's stream clock
let resumes = 0; // sessions resumed after a drop (for tests)
let context = ""; // the names and terms of the current run, fixed at Start: every session's start sends them
let diarize = false; // "Label speakers" for the current run, fixed at Start
let streamSpeaker = null; // this stream's label in its room (from `ready`): the voice of finals without voices
let refusal = ""; // why the server refused this page's token for good (listenRefusal)

const socket = new ReconnectingSocket(listenUrl, {
  open: (ws) => sendStart(ws, Boolean(resumeToken)),
  message: onMessage,
  close: (event) => {
    live = false;
    voices.setLive(false);
    view.setPartial(null); // the open window comes back as a final when the session is resumed
    refusal = listenRefusal(event);
    return running && !stopping && !refusal;
  },
  state: (name, detail) => {
    if (name === "connecting") setState("connecting", detail.attempt ? "Reconnecting…" : "Connecting…");
    else if (name === "open") setState("connecting", "Starting stream…");
    else if (name === "reconnecting") {
      setState("reconnecting", `Connection lost: retrying in ${(detail.delay / 1000).toFixed(1)} s`);
    } else if (name === "closed") finishStop();
  },
});

// A `start` for a new session, or one that resumes the dropped session. Either way the audio sent after `ready`
// begins where the last final ended (or at the oldest chunk kept, if that is later); a resume says where that is
// on the session's stream clock: `offset`, in samples at 16 kHz (the page captures at `rate`, often 48 kHz).
function sendStart(ws, resume) {
  const start = { type: "start", sample_rate: rate, encoding: "pcm_s16le", channels: 1 };
  if (room) start.room = room;
  if (speaker) start.speaker = speaker;
  if (context) start.context = context; // sent again on a reconnect: a new session needs it too
  if (diarize) start.diarize = true;
  resumeFrom = null;
  if (resume) {
    resumeFrom = uncovered();
    Object.assign(start, {
      resume: session, resume_token: resumeToken,
      offset: Math.round((resumeFrom - sessionBase) * STREAM_RATE / rate),
    });
  }
  ws.send(JSON.stringify(start));
}

// --- messages from the server -----------------------------------------------------------------------------
function onMessage(msg, ws) {
  switch (msg.type) {
    case "ready": {
      const resumed = msg.resumed === true && resumeFrom !== null && msg.session === session;
      live = true;
      if (resumed) {
        resumes += 1; // same stream clock, same segment numbers: the missed finals come next
      } else {
        // A new session (the first, or after a refused resume): its stream begins with the audio no final covers.
        session = msg.session;
        sessionBase = uncovered();
        resumeFrom = sessionBase;
        lastSegment = -1;
        lastFinalEnd = 0;
      }
      resumeToken = msg.resume_token || null;
      streamSpeaker = msg.speaker ?? null;
      voices.newSession(session);
      voices.setLive(true);
      socket.healthy();
      ui.backend.textContent = String(msg.backend ?? "?");
      ui.backend.title = msg.reason || "";
      ui.model.textContent = String(msg.model ?? "?");
      hideNotice();
      if (!stopping) setState("live", "Live");
      sendBacklog(resumeFrom);
      break;
    }
    case "partial":
      if (msg.session && msg.session !== session) break;
      view.setPartial({ segment: msg.segment, text: msg.text || "" });
      break;
    case "final":
      addFinal(msg);
      break;
    case "rename":
      voices.answered(msg);
      break;
    case "error":
      if (voices.failed(msg)) break; // the answer to a rename: shown in the Speakers list
      if (!live && resumeFrom !== null && (msg.code === "resume_unknown" || msg.code === "resume_refused")) {
        // The session cannot go on (expired, or the server restarted): a new one, on the same connection.
        resumeToken = null;
        sendStart(ws, false);
        break;
      }
      notify(`Server: ${msg.message || msg.code}`);
      if (!live) stop(); // the start was refused: retrying would be refused again
      break;
    case "end":
      finishStop();
      break;
    default:
      break;
  }
}

function addFinal(msg) {
  if (msg.segment <= lastSegment) return; // sent again after a resume: shown already
  lastSegment = msg.segment;
  lastFinalEnd = msg.end;
  trimBacklog();
  const offset = earlierRuns + (sessionBase ?? 0) / rate;
  view.closePartial(msg.segment);
  const text = String(msg.text || "").trim();
  if (!text) return;
  const words = (msg.words || []).map((w) => ({ ...w, start: w.start + offset, end: w.end + offset }));
  const final = { start: msg.start + offset, end: msg.end + offset, text, segment: msg.segment, session, offset, words,
    speaker: msg.speaker ?? streamSpeaker ?? undefined };
  view.addFinal(final, lineId(session, msg.segment));
  voices.seen(final);
  meeting?.finalAdded();
}

// --- audio ------------------------------------------------------------------------------------------------
function closeCapture() {
  if (!capture) return;
  capture.close();
  capture = null;
  setLevel(0);
}

// Every chunk goes into the backlog; while live it is sent at once as well. After a (re)connect, `ready` sends
// the backlog from the point its `start` announced.
function onChunk({ pcm, samples, rms }) {
  const chunk = { index: captured, pcm };
  captured += samples;
  setLevel(rms);
  if (!running || stopping) return;
  backlog.push(chunk);
  trimBacklog();
  if (live) socket.send(pcm);
}

function chunkEnd(chunk) {
  return chunk.index + chunk.pcm.byteLength / 2; // s16le: 2 bytes a sample
}

function sendBacklog(from) {
  for (const chunk of backlog) {
    if (chunkEnd(chunk) <= from) continue;
    socket.send(chunk.index >= from ? chunk.pcm : chunk.pcm.slice((from - chunk.index) * 2));
  }
}

// Capture index up to which the current session's finals cover the audio.
function covered() {
  return sessionBase === null ? 0 : sessionBase + Math.round(lastFinalEnd * rate);
}

// Capture index where the audio that no final covers begins: the last final's end, or the oldest chunk kept.
function uncovered() {
  return Math.max(covered(), backlog.length ? backlog[0].index : captured);
}

// Drops the chunks that a final covers, and those older than MAX_BACKLOG_S.
function trimBacklog() {
  const oldest = Math.max(covered(), captured - MAX_BACKLOG_S * rate);
  while (backlog.length && chunkEnd(backlog[0]) <= oldest) backlog.shift();
}

// --- start / stop -----------------------------------------------------------------------------------------
async function start() {
  ui.toggle.disabled = true;
  hideNotice();
  setState("connecting", "Opening microphone…");
  try {
    capture = await openCapture({
      onChunk,
      onEnded: () => {
        notify("The microphone went away (unplugged or blocked); captioning stopped.");
        stop();
      },
    });
  } catch (err) {
    capture = null;
    setState("error", "Microphone unavailable");
    notify(`Could not open the microphone: ${err && err.message ? err.message : err}`);
    ui.toggle.disabled = false;
    return;
  }
  rate = capture.rate;
  context = cleanContext(ui.context.value);
  diarize = ui.diarize.checked;
  setContextLocked(true);
  running = true;
  stopping = false;
  refusal = "";
  captured = 0;
  backlog = [];
  sessionBase = null;
  session = null;
  resumeToken = null; // each Start begins a new session
  lastSegment = -1;
  lastFinalEnd = 0;
  setButton(true);
  ui.toggle.disabled = false;
  socket.open();
}

function stop() {
  if (!running || stopping) return;
  stopping = true;
  clearTimeout(stopTimer);
  closeCapture();
  backlog = [];
  resumeToken = null; // after `stop` the server ends the session: nothing to resume
  setButton(false);
  ui.toggle.disabled = true;
  if (live && socket.send(JSON.stringify({ type: "stop" }))) {
    // The server sends the open windows' finals, then `end`, then closes with 1000.
    setState("stopping", "Finishing the last captions…");
    socket.stopRetrying();
    stopTimer = setTimeout(() => socket.close(1000, "stop timeout"), STOP_TIMEOUT_MS);
  } else {
    socket.close(1000, "stopped");
  }
}

// After `end`, or once the socket is closed for good (after a stop, or when it cannot be opened at all).
function finishStop() {
  const unexpected = running && !stopping;
  clearTimeout(stopTimer);
  closeCapture();
  if (running) earlierRuns += captured / rate;
  running = false;
  stopping = false;
  live = false;
  backlog = [];
  resumeToken = null;
  view.setPartial(null);
  setButton(false);
  setContextLocked(false);
  ui.toggle.disabled = false;
  if (refusal) {
    setState("error", refusal);
    notify(refusal);
  } else if (unexpected) setState("error", "Disconnected");
  else setState("stopped", "Stopped");
  if (socket.ws) socket.close(1000, "done");
}

// While captioning, the field shows the context in use; an edit would only reach the next run.
const CONTEXT_PLACEHOLDER = ui.context.placeholder;
function setContextLocked(locked) {
  ui.context.readOnly = locked;
  ui.diarize.disabled = locked;
  ui.context.placeholder = locked ? "" : CONTEXT_PLACEHOLDER; // an example is not the context in use
  if (!locked) ui.contextNote.textContent = CONTEXT_NOTE;
  else if (context) ui.contextNote.textContent = "In use while captioning; edit it after you stop.";
  else ui.contextNote.textContent = "None for this run; add some after you stop.";
}

function setButton(on) {
  ui.toggle.textContent = on ? "Stop captioning" : "Start captioning";
  ui.toggle.setAttribute("aria-pressed", on ? "true" : "false");
  ui.toggle.classList.toggle("danger", on);
}

ui.toggle.addEventListener("click", () => (running ? stop() : start()));

// --- small UI helpers -------------------------------------------------------------------------------------
const stateLog = []; // recent states, for tests and debugging
function setState(state, text) {
  showState(ui.state, state, text);
  stateLog.push(state);
  if (stateLog.length > 200) stateLog.shift();
}

function notify(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = false;
}

function hideNotice() {
  ui.notice.hidden = true;
  ui.notice.textContent = "";
}

if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
  notify("The microphone needs a secure page: open this page as http://localhost or over https.");
}
if (!window.AudioWorkletNode) notify("This browser has no AudioWorklet: use a current Chrome, Edge, Firefox or Safari.");

// For tests and debugging: a read-only view of the transcript and the stream's counters.
window.captionsDebug = {
  finals: view.finals,
  stateLog,
  get state() { return ui.state.dataset.state; },
  get session() { return session; },
  get rate() { return rate; },
  get captured() { return captured; },
  get sessionBase() { return sessionBase; },
  get resumes() { return resumes; },
  get backlogSeconds() { return (captured - uncovered()) / rate; },
  get context() { return context; },
  get diarize() { return diarize; },
  get outputsPolling() { return outputs.polling; },
};
