// The speaker page's "Send captions to…" panel (docs/protocol.md, Caption outputs): the room's finals pushed into
// Zoom (the meeting's caption URL, "API token"), YouTube Live (the stream's caption ingestion URL), Teams (the CART
// link) or a webhook. A host pastes the URL here; the server checks it (http(s) only, an allowed host, no private
// address) and answers 400 with the reason when it will not send there, shown under the form.
// - Add: POST /v1/rooms/NAME/outputs {kind, url, lang[, secret]} -> 201.
// - The list: GET /v1/rooms/NAME/outputs every 2 s while the panel is open and the page visible: each output's
//   kind, host, state (ok, retrying, failed), counts (delivered, retried, dropped), last error; Remove: DELETE
//   /v1/rooms/NAME/outputs/ID -> 204.
// A caption URL is a credential (Zoom's signature, YouTube's stream key, Teams' token are in it): its box is masked,
// emptied once the server has taken it, and the page never shows it again (the API never lists it either).
// Only a page with a room has outputs: without one the form is disabled and says so. The page's `?token=T`
// (pageToken) is sent as a Bearer token; the API takes speaker tokens only.
import { el, pageToken } from "./common.js";

const POLL_MS = 2000;
const KINDS = [
  { kind: "zoom", name: "Zoom", hint: "The meeting's caption URL (the “API token” the host copies in Zoom to let a " +
    "third-party service send captions).", placeholder: "https://wmcapi.zoom.us/closedcaption?id=…" },
  { kind: "youtube", name: "YouTube Live", hint: "The live stream's caption ingestion URL (captions sent by HTTP " +
    "POST).", placeholder: "http://upload.youtube.com/closedcaption?cid=…" },
  { kind: "teams", name: "Teams CART", hint: "The meeting's CART captions link (in its meeting options).",
    placeholder: "https://api.captions.office.microsoft.com/cartcaption?meetingid=…" },
  { kind: "webhook", name: "Webhook", hint: "Each final as JSON, signed with the secret (HMAC-SHA256, in the " +
    "X-Captions-Signature header). Its host must be in the server's outputs.allowed_hosts.",
    placeholder: "https://example.com/captions" },
];
const KIND_NAMES = Object.fromEntries(KINDS.map((k) => [k.kind, k.name]));
const STATE_TEXT = { ok: "ok", retrying: "retrying", failed: "failed" };

/** Builds the panel in `container` (a hidden section) for `room` ("" = none: the form is disabled); returns
 * {refresh(), get polling()} (for tests). */
export function mountOutputs(container, { room }) {
  const base = room ? `/v1/rooms/${encodeURIComponent(room)}/outputs` : "";
  const ui = {
    kind: el("select", { id: "output-kind", name: "kind" },
      ...KINDS.map((k) => el("option", { value: k.kind, text: k.name }))),
    url: el("input", { id: "output-url", name: "url", type: "password", required: true, autocomplete: "off",
      spellcheck: "false", "aria-describedby": "output-kind-hint" }),
    lang: el("input", { id: "output-lang", name: "lang", type: "text", value: "en-US", maxlength: 35,
      autocomplete: "off", spellcheck: "false", pattern: "[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*" }),
    secret: el("input", { id: "output-secret", name: "secret", type: "password", autocomplete: "off",
      spellcheck: "false" }),
    secretBox: el("label", { className: "output-field", for: "output-secret" }),
    hint: el("p", { className: "hint", id: "output-kind-hint" }),
    add: el("button", { type: "submit", className: "primary", text: "Add" }),
    status: el("p", { className: "output-status", id: "output-status", role: "status" }),
    list: el("ul", { className: "output-list", id: "output-list", "aria-label": "Outputs of this room" }),
    empty: el("p", { className: "note", id: "output-empty", text: "No outputs yet." }),
  };
  ui.secretBox.append("Webhook secret", ui.secret);
  const fieldset = el("fieldset", { className: "output-fields" },
    el("label", { className: "output-field", for: "output-kind" }, "Send to", ui.kind),
    el("label", { className: "output-field", for: "output-url" }, "Caption URL", ui.url),
    ui.hint,
    el("label", { className: "output-field", for: "output-lang" }, "Language", ui.lang),
    ui.secretBox,
    el("div", { className: "output-actions" }, ui.add));
  const form = el("form", { className: "output-form", id: "output-form", "aria-label": "Add an output" }, fieldset);
  const details = el("details", { className: "outputs-box", id: "outputs-box" },
    el("summary", { id: "outputs-title", text: "Send captions to…" }),
    el("p", { className: "hint", text: room
      ? `This room's captions (“${room}”), as they are finalised, go to each output below.`
      : "Join a room first: outputs send a room's captions." }),
    form, ui.status, ui.empty, ui.list);
  container.replaceChildren(details);
  container.hidden = false;

  fieldset.disabled = !room;
  const rows = new Map(); // id -> {li, state, counts, error, remove}
  let timer = null;
  let fetching = false;
  let refused = false; // the token may not manage outputs: no more polling (a new token means reloading)

  function showKind() {
    const kind = KINDS.find((k) => k.kind === ui.kind.value) || KINDS[0];
    ui.hint.textContent = kind.hint;
    ui.url.placeholder = kind.placeholder;
    ui.secretBox.hidden = kind.kind !== "webhook";
    ui.secret.required = kind.kind === "webhook";
  }
  showKind();
  ui.kind.addEventListener("change", showKind);

  // --- the list, polled while the panel is open ---------------------------------------------------------------
  function polling() {
    return Boolean(room) && details.open && !document.hidden && !refused;
  }

  function schedule() {
    clearTimeout(timer);
    timer = polling() ? setTimeout(refresh, POLL_MS) : null;
  }

  async function refresh() {
    clearTimeout(timer);
    timer = null;
    if (!polling() || fetching) return;
    fetching = true;
    try {
      const r = await request(base);
      if (r.ok) {
        const body = await r.json();
        showList(Array.isArray(body.outputs) ? body.outputs : []);
      } else {
        const why = await failure(r);
        if (r.status === 401 || r.status === 403) refused = true;
        status(why, "error");
      }
    } catch (err) {
      status(`Could not reach the server: ${err && err.message ? err.message : err}`, "error");
    } finally {
      fetching = false;
      schedule();
    }
  }

  details.addEventListener("toggle", () => (details.open ? refresh() : schedule()));
  document.addEventListener("visibilitychange", () => (document.hidden ? schedule() : refresh()));

  function showList(outputs) {
    const seen = new Set();
    for (const output of outputs) {
      const id = upsert(output);
      if (id !== null) seen.add(id);
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        row.li.remove();
        rows.delete(id);
      }
    }
    ui.empty.hidden = rows.size > 0;
  }

  // Shows `output` (a new row, or its row updated); returns its id, or null for an output without one.
  function upsert(output) {
    if (!output || (typeof output.id !== "string" && typeof output.id !== "number")) return null;
    const id = String(output.id);
    let row = rows.get(id);
    if (!row) {
      row = makeRow(id, output);
      rows.set(id, row);
      ui.list.append(row.li);
    }
    updateRow(row, output);
    ui.empty.hidden = true;
    return id;
  }

  function makeRow(id, output) {
    const name = KIND_NAMES[output.kind] || String(output.kind || "output");
    const host = String(output.host || "");
    const row = {
      li: el("li", { className: "output", "data-id": id, "data-kind": output.kind }),
      state: el("span", { className: "output-state" }),
      delivered: el("span", { className: "output-delivered" }),
      retried: el("span", { className: "output-retried" }),
      dropped: el("span", { className: "output-dropped" }),
      queued: el("span", { className: "output-queued" }),
      error: el("p", { className: "output-error" }),
      remove: el("button", { type: "button", className: "quiet", text: "Remove",
        "aria-label": `Remove ${name} output to ${host}` }),
    };
    row.li.append(
      el("div", { className: "output-head" },
        el("span", { className: "output-kind", text: name }), " ",
        el("span", { className: "output-host", text: host }), " ", row.state),
      el("p", { className: "output-counts" },
        "delivered ", row.delivered, " · retried ", row.retried, " · dropped ", row.dropped, row.queued),
      row.error, row.remove);
    row.remove.addEventListener("click", () => remove(id, row, name));
    return row;
  }

  function updateRow(row, output) {
    const state = STATE_TEXT[output.state] ? output.state : "unknown";
    row.li.dataset.state = state;
    row.state.dataset.state = state;
    row.state.textContent = STATE_TEXT[state] || String(output.state ?? "?");
    row.delivered.textContent = count(output.delivered);
    row.retried.textContent = count(output.retried);
    row.dropped.textContent = count(output.dropped);
    const queued = Number(output.queued) || 0;
    row.queued.textContent = queued ? ` · ${queued} waiting` : "";
    row.error.textContent = output.last_error ? `Last error: ${output.last_error}` : "";
    row.li.title = output.last_seq != null ? `last seq ${output.last_seq}` : "";
  }

  // --- add and remove -----------------------------------------------------------------------------------------
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!room) return;
    const kind = ui.kind.value;
    const url = ui.url.value.trim();
    const lang = ui.lang.value.trim() || "en-US";
    if (!url) {
      status("Paste the caption URL first.", "error");
      ui.url.focus();
      return;
    }
    const body = { kind, url, lang };
    if (kind === "webhook") body.secret = ui.secret.value;
    ui.add.disabled = true;
    status(`Adding the ${KIND_NAMES[kind]} output…`, "");
    try {
      const r = await request(base, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      if (r.ok) {
        const output = await r.json().catch(() => ({}));
        ui.url.value = ""; // a credential: not kept on the page once the server has it
        ui.secret.value = "";
        status(`Added: ${KIND_NAMES[kind]} at ${output.host || "its host"}. Captions go there from the room's next ` +
          "final on.", "ok");
        upsert(output);
        refresh();
      } else {
        status(await failure(r, "add"), "error");
      }
    } catch (err) {
      status(`Could not reach the server: ${err && err.message ? err.message : err}`, "error");
    } finally {
      ui.add.disabled = false;
    }
  });

  async function remove(id, row, name) {
    row.remove.disabled = true;
    try {
      const r = await request(`${base}/${encodeURIComponent(id)}`, { method: "DELETE" });
      if (r.ok || r.status === 404) { // 404: gone already
        row.li.remove();
        rows.delete(id);
        ui.empty.hidden = rows.size > 0;
        status(`Removed the ${name} output.`, "ok");
      } else {
        status(await failure(r, "remove"), "error");
        row.remove.disabled = false;
      }
    } catch (err) {
      status(`Could not reach the server: ${err && err.message ? err.message : err}`, "error");
      row.remove.disabled = false;
    }
  }

  function status(text, kind) {
    ui.status.textContent = text;
    ui.status.dataset.kind = kind;
    ui.status.setAttribute("role", kind === "error" ? "alert" : "status");
  }

  return {
    refresh,
    get polling() { return timer !== null || fetching; },
  };
}

function count(value) {
  const n = Number(value);
  return String(Number.isFinite(n) ? n : 0);
}

// --- HTTP -----------------------------------------------------------------------------------------------------
function request(path, options = {}) {
  const token = pageToken();
  const headers = { ...(options.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  return fetch(path, { ...options, headers, cache: "no-store" });
}

// What went wrong with a refused request, in plain words; `action` is "add" or "remove" ("" for the list).
async function failure(response, action = "") {
  let body = {};
  try {
    body = await response.json();
  } catch {
    // not JSON: the status says enough
  }
  const why = body && typeof body.message === "string" ? body.message : "";
  switch (response.status) {
    case 400: return action === "add" ? `Refused: ${why || "bad request"}` : `Bad request: ${why}`;
    case 401: return "Needs a speaker token: add token=YOUR_TOKEN to this page's address.";
    case 403: return "This page's token may not manage outputs: that takes a speaker token.";
    case 404: return action === "remove" ? "That output is gone already." : `Not found: ${why || "no such room"}`;
    case 409: return `Refused: ${why || "too many outputs in this room"}`;
    case 429: return `The server is busy: try again in ${response.headers.get("Retry-After") || "a few"} s.`;
    case 503: return `Not available on this server: ${why || "try again later"}`;
    default: return `The server answered ${response.status}${why ? `: ${why}` : ""}`;
  }
}
