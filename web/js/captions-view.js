// The speaker page's transcript: its finals with their times (kept for the TXT/SRT/VTT downloads and Clear), the
// live partial line under them; the view follows new lines while the reader is at the bottom. A final whose words
// carry voices shows one line per voice with its name; a rename (or a later final's new name) relabels the lines of
// that voice (voices.js). The downloads are the server's own exports where it can give them (transcript-file.js).
import { downloadText, el, fileStamp, hms } from "./common.js";
import { txtLines } from "./cues.js";
import { transcriptFile } from "./transcript-file.js";
import { VoiceBook, relabel, voiceRuns } from "./voices.js";

const TYPES = { txt: "text/plain", srt: "application/x-subrip", vtt: "text/vtt" };

export class CaptionsView {
  /**
   * ui: {captions, partial, placeholder, scroll, clear, downloads}. `room` goes into the downloads' file names;
   * onClear() runs when the reader clears the transcript.
   */
  constructor(ui, { room, onClear }) {
    this.ui = ui;
    // {start, end, text, segment, session, offset, words, speaker}: times in seconds of audio captured since the
    // first Start (`offset`: that clock minus the session's); words and speaker as the server sent them.
    this.finals = [];
    this.partial = null; // {segment, text}
    this.voices = new VoiceBook();
    this.cleared = new Map(); // session -> text lines of its cleared finals (transcript-file.js)
    for (const button of ui.downloads) {
      button.addEventListener("click", async () => {
        const format = button.dataset.format;
        const name = `captions${room ? "-" + room : ""}-${fileStamp()}.${format}`;
        downloadText(name, await transcriptFile(format, [...this.finals], new Map(this.cleared)), TYPES[format]);
      });
    }
    ui.clear.addEventListener("click", () => {
      for (const f of this.finals) {
        this.cleared.set(f.session, (this.cleared.get(f.session) || 0) + txtLines([f]).length);
      }
      this.finals.length = 0;
      onClear();
      ui.captions.replaceChildren();
      this.enableButtons(false);
      ui.placeholder.hidden = Boolean(this.partial);
    });
  }

  /** A final with text, shown as the line with id `id` (which citations link to). */
  addFinal(final, id) {
    this.finals.push(final);
    for (const change of this.voices.learn(final)) relabel(this.ui.captions, change);
    const stick = this.nearBottom();
    const stamp = (t) => el("time", { className: "stamp", text: hms(t), datetime: `PT${t.toFixed(2)}S` });
    const runs = voiceRuns(final);
    const line = el("p", { className: "final" + (runs ? " voiced" : ""), id });
    if (runs) {
      for (const run of runs) {
        line.append(el("span", { className: "run", "data-session": final.session, "data-label": run.label || null },
          stamp(run.start), " ", el("span", { className: "who voice", text: `${run.voice || "speaker"}:` }), " ",
          el("span", { className: "text", text: run.text })));
      }
    } else {
      line.append(stamp(final.start), " ", el("span", { className: "text", text: final.text }));
    }
    this.ui.captions.append(line);
    this.ui.placeholder.hidden = true;
    this.enableButtons(true);
    if (stick) this.scrollDown();
  }

  /** The speaker renamed a voice of `session`: its lines show the new name now. */
  rename(session, label, name) {
    this.voices.set(session, label, name);
    relabel(this.ui.captions, { session, label, name });
  }

  /** The open window's words, {segment, text}, or null for none. */
  setPartial(p) {
    this.partial = p && p.text ? p : null;
    const stick = this.nearBottom();
    this.ui.partial.textContent = this.partial ? this.partial.text : "";
    this.ui.partial.hidden = !this.partial;
    if (this.partial) this.ui.placeholder.hidden = true;
    if (stick) this.scrollDown();
  }

  /** A final of window `segment` ends the partial of that window, or of an older one. */
  closePartial(segment) {
    if (this.partial && this.partial.segment <= segment) this.setPartial(null);
  }

  enableButtons(enabled) {
    for (const b of [...this.ui.downloads, this.ui.clear]) b.disabled = !enabled;
  }

  nearBottom() {
    const s = this.ui.scroll;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 48;
  }

  scrollDown() {
    this.ui.scroll.scrollTop = this.ui.scroll.scrollHeight;
  }
}
