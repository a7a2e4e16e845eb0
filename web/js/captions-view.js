// The speaker page's transcript: its finals with their times (kept for the TXT/SRT/VTT downloads and Clear), the
// live partial line under them; the view follows new lines while the reader is at the bottom.
import { WRITERS, downloadText, el, fileStamp, hms } from "./common.js";

export class CaptionsView {
  /**
   * ui: {captions, partial, placeholder, scroll, clear, downloads}. `room` goes into the downloads' file names;
   * onClear() runs when the reader clears the transcript.
   */
  constructor(ui, { room, onClear }) {
    this.ui = ui;
    this.finals = []; // {start, end, text, segment, session}: seconds of audio captured since the first Start
    this.partial = null; // {segment, text}
    for (const button of ui.downloads) {
      button.addEventListener("click", () => {
        const { build, type } = WRITERS[button.dataset.format];
        const name = `captions${room ? "-" + room : ""}-${fileStamp()}.${button.dataset.format}`;
        downloadText(name, build(this.finals), type);
      });
    }
    ui.clear.addEventListener("click", () => {
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
    const stick = this.nearBottom();
    this.ui.captions.append(el("p", { className: "final", id },
      el("time", { className: "stamp", text: hms(final.start), datetime: `PT${final.start.toFixed(2)}S` }), " ",
      el("span", { className: "text", text: final.text })));
    this.ui.placeholder.hidden = true;
    this.enableButtons(true);
    if (stick) this.scrollDown();
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
