// The speaker page's "Speakers" list, with "Label speakers" on (`diarize`): each voice label the session's finals
// carry ("Speaker 1", ...), the name it shows now, and a box to rename it. A rename goes on the stream's websocket,
// {"type":"rename","speaker":LABEL,"name":NAME}; the server answers with the same message, or with an error
// `bad_message` (a label it never sent, a stream without diarize), shown under the list. The new name shows on the
// viewers' pages from the next final of that voice on (docs/protocol.md, Words and speakers).
import { el } from "./common.js";

const MAX_NAME = 64; // characters of a name, as for a room label

export class VoicesPanel {
  /**
   * ui: {section, list, status}. send(message) -> false when the stream is not connected; onRenamed(session, label,
   * name) once the server has taken a rename.
   */
  constructor(ui, { send, onRenamed }) {
    this.ui = ui;
    this.send = send;
    this.onRenamed = onRenamed;
    this.session = null;
    this.rows = new Map(); // label -> {name (shown now), current (its node), input, button}
    this.pending = null; // {label, name}: the rename waiting for the server's answer
    this.live = false;
  }

  /** A new session (a Start, or a refused resume): its voices are labelled afresh. */
  newSession(session) {
    if (session === this.session) return;
    this.session = session;
    this.rows.clear();
    this.pending = null;
    this.ui.list.replaceChildren();
    this.ui.section.hidden = true;
  }

  /** A final of the current session: its voices' labels and names. */
  seen(final) {
    if (final.session !== this.session) return;
    for (const w of final.words || []) {
      if (typeof w.speaker === "string" && w.speaker && typeof w.name === "string") this.show(w.speaker, w.name);
    }
  }

  /** Whether the stream can take renames now (its connection is live). */
  setLive(live) {
    this.live = live;
    for (const row of this.rows.values()) row.button.disabled = !live;
  }

  /** The server's answer to a rename. */
  answered(msg) {
    this.pending = null;
    this.show(msg.speaker, msg.name);
    const row = this.rows.get(msg.speaker);
    if (row && row.input.value.trim() === msg.name) row.input.value = "";
    this.status(`${msg.speaker} is now “${msg.name}” on new captions.`, "ok");
    this.onRenamed(this.session, msg.speaker, msg.name);
  }

  /** An error from the server: true if it answers the pending rename (it is shown here, not as the page's notice). */
  failed(msg) {
    if (!this.pending || msg.code !== "bad_message") return false;
    this.status(`Could not rename ${this.pending.label}: ${msg.message || msg.code}`, "error");
    this.pending = null;
    return true;
  }

  show(label, name) {
    let row = this.rows.get(label);
    if (!row) {
      const input = el("input", { name: "name", maxlength: MAX_NAME, autocomplete: "off", spellcheck: "false",
        placeholder: "Name", "aria-label": `Name for ${label}` });
      const button = el("button", { type: "submit", text: "Rename" });
      button.disabled = !this.live;
      const current = el("span", { className: "voice-name" });
      const form = el("form", { className: "voice-row" },
        el("span", { className: "voice-head" }, el("span", { className: "voice-label", text: label }), " ", current),
        input, button);
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        this.rename(label, input.value);
      });
      row = { name: null, current, input, button };
      this.rows.set(label, row);
      this.ui.list.append(el("li", { "data-label": label }, form));
      this.ui.section.hidden = false;
    }
    row.name = name;
    row.current.textContent = name && name !== label ? `shown as “${name}”` : "";
  }

  rename(label, value) {
    const name = String(value || "").trim();
    if (!name || Array.from(name).length > MAX_NAME) {
      this.status(`A name is 1 to ${MAX_NAME} characters.`, "error");
      return;
    }
    if (!this.send({ type: "rename", speaker: label, name })) {
      this.status("Not connected: rename once captioning is live.", "error");
      return;
    }
    this.pending = { label, name };
    this.status(`Renaming ${label}…`, "");
  }

  status(text, kind) {
    this.ui.status.textContent = text;
    this.ui.status.dataset.kind = kind;
  }
}
