// Voices on the pages' caption lines (docs/protocol.md, Words and speakers). With `diarize`, each word of a final
// carries its voice's stable label (`speaker`, "Speaker 2") and the name shown for that label when the final was
// made (`name`, "Priya" after a rename). The room page, the overlay and the speaker page show such a final as one
// line per run of the same voice, each with its name. Viewers get no rename message: a later final carries the new
// name, and the pages then relabel their earlier lines of that (session, label) with it (VoiceBook).

const clean = (text) => String(text ?? "").split(/\s+/).filter(Boolean).join(" ");

/**
 * The final's words as runs of one voice, [{voice, label, start, text}], or null when no word carries a voice
 * (the page shows the final as before). `voice` is the name to show: the word's `name`, else the final's `speaker`
 * (a room's label for the stream), else ""; `label` the voice's stable label ("" for a word without one, e.g. too
 * short to tell); `start` the run's first word's start, on the final's clock.
 */
export function voiceRuns(final) {
  const words = (final.words || []).filter((w) => clean(w.word));
  if (!words.some((w) => clean(w.name))) return null;
  const runs = [];
  for (const w of words) {
    const voice = clean(w.name) || clean(final.speaker);
    const label = clean(w.name) ? clean(w.speaker) : "";
    const last = runs[runs.length - 1];
    if (last && last.voice === voice && last.label === label) last.words.push(clean(w.word));
    else runs.push({ voice, label, start: Number(w.start) || 0, words: [clean(w.word)] });
  }
  return runs.map(({ words: ws, ...run }) => ({ ...run, text: ws.join(" ") }));
}

/** The name each (session, label) has now, learnt from the finals in the order they come. */
export class VoiceBook {
  constructor() {
    this.names = new Map(); // session -> Map(label -> name)
  }

  /** Learns the names the final's words carry; returns [{session, label, name}] for each label whose name changed
   * (lines shown with the old name are to be relabelled). */
  learn(final) {
    const changed = [];
    for (const w of final.words || []) {
      const label = clean(w.speaker);
      const name = clean(w.name);
      if (label && name && this.set(final.session, label, name)) changed.push({ session: final.session, label, name });
    }
    return changed;
  }

  /** Sets a label's name; true if it had another one before. */
  set(session, label, name) {
    if (!this.names.has(session)) this.names.set(session, new Map());
    const labels = this.names.get(session);
    const before = labels.get(label);
    labels.set(label, name);
    return before !== undefined && before !== name;
  }

  /** [label, name] pairs of a session's voices, in the order they were first heard. */
  voices(session) {
    return [...(this.names.get(session) || new Map())];
  }

  /** Every voice's current name, once each, in the order first heard. */
  allNames() {
    return [...new Set([...this.names.values()].flatMap((labels) => [...labels.values()]))];
  }
}

/** Relabels the lines shown for (session, label) under `root`: elements with data-session and data-label, whose
 * `.who` shows the name. */
export function relabel(root, { session, label, name }) {
  for (const node of root.querySelectorAll("[data-label]")) {
    if (node.dataset.session === session && node.dataset.label === label) {
      const who = node.querySelector(".who");
      if (who) who.textContent = `${name}:`;
    }
  }
}
