// Transcript files as the server writes them: SRT, WebVTT and text from finals, cut into cues at word times with
// their voices. A line-for-line port of the server's caption_formats (cues.py and __init__.py), for the one case
// where the page cannot get the server's own export (transcript-file.js): so that the page's downloads never
// disagree with the server's. Keep the two in step; tests/test_browser_speakers.py compares them on real finals.
//
// A final's `words` (times on its stream's clock) cut it into cues of at most 2 lines of 42 characters, from the
// first word's start to the last word's end, a new cue at each change of voice, cut after a sentence, a comma or
// at a pause when a cue would get too long. A final without words keeps its times, its text shared out over its
// cues by characters. A word's voice: its `name`, else the final's `speaker`, else none.

const MAX_CHARS = 42; // characters a line
const MAX_CUE_SECONDS = 7.0; // a longer cue of slow speech is cut
const MIN_SECONDS = 1.0; // a word-timed cue stays up this long, or its reading time at READING_CPS ...
const READING_CPS = 20.0; // ... unless the next cue of its stream starts sooner
const MAX_INDENT = 30; // room kept on a first line for "Name: "
const SENTENCE_ENDS = ".?!…。？！";
const CLAUSE_ENDS = ",;:—–、，；：";
const CLOSERS = "\"')]}»”’";

// Python's len() and slices count code points, not UTF-16 units.
const chars = (text) => Array.from(text);
const len = (text) => chars(text).length;

// Python's round(): halves go to the even neighbour.
function pyRound(x) {
  const floor = Math.floor(x);
  if (x - floor === 0.5) return floor % 2 === 0 ? floor : floor + 1;
  return Math.round(x);
}

const ms = (seconds) => Math.max(0, pyRound(Number(seconds) * 1000));
const clean = (text) => String(text || "").split(/\s+/).filter(Boolean).join(" ");
const sum = (values) => values.reduce((a, b) => a + b, 0);

/** The final's words grouped by voice, in order: [{voice, tokens: [{text, start, end}]}] (times in ms, null without
 * word times); a final without usable words is one run of its text. */
export function runs(final) {
  const fallback = clean(final.speaker) || null;
  const out = [];
  for (const w of final.words || []) {
    const text = clean(w.word);
    if (!text) continue;
    const voice = clean(w.name) || fallback;
    const start = ms(w.start);
    const token = { text, start, end: Math.max(start, ms(w.end ?? w.start)) };
    const last = out[out.length - 1];
    if (last && last.voice === voice) last.tokens.push(token);
    else out.push({ voice, tokens: [token] });
  }
  if (!out.length) {
    const text = clean(final.text);
    if (text) out.push({ voice: fallback, tokens: text.split(" ").map((t) => ({ text: t, start: null, end: null })) });
  }
  return out;
}

const runText = (run) => run.tokens.map((t) => t.text).join(" ");

// The cue's lines: one if it fits, else two broken where they balance best (the shorter on top on a tie); null if
// the words do not fit in two lines.
function lines(texts, indent) {
  const ends = [];
  for (const t of texts) ends.push((ends.length ? ends[ends.length - 1] : 0) + len(t) + 1);
  const total = ends[ends.length - 1] - 1;
  if (indent + total <= MAX_CHARS) return [texts.join(" ")];
  let best = null;
  for (let k = 1; k < texts.length; k++) {
    const top = indent + ends[k - 1] - 1;
    const bottom = total - ends[k - 1];
    const score = [Math.abs(top - bottom), top];
    if (top <= MAX_CHARS && bottom <= MAX_CHARS &&
        (best === null || score[0] < best[0][0] || (score[0] === best[0][0] && score[1] < best[0][1]))) {
      best = [score, k];
    }
  }
  return best && [texts.slice(0, best[1]).join(" "), texts.slice(best[1]).join(" ")];
}

// A token too long for any line in pieces of `width` characters, its time shared out by characters.
function pieces(token, width) {
  const cs = chars(token.text);
  if (cs.length <= width) return [token];
  const parts = [];
  for (let i = 0; i < cs.length; i += width) parts.push(cs.slice(i, i + width).join(""));
  if (token.start === null) return parts.map((p) => ({ text: p, start: null, end: null }));
  const span = token.end - token.start;
  const at = parts.map((_, i) => token.start + Math.floor((span * i * width) / cs.length));
  at.push(token.end);
  return parts.map((p, i) => ({ text: p, start: at[i], end: at[i + 1] }));
}

// How good a place to cut between two words is: a sentence's end, a clause's, a pause.
function breakStrength(before, after) {
  let text = before.text;
  while (text && CLOSERS.includes(text[text.length - 1])) text = text.slice(0, -1);
  const end = chars(text).pop() || "";
  let score = end && SENTENCE_ENDS.includes(end) ? 3 : end && CLAUSE_ENDS.includes(end) ? 2 : 0;
  if (before.end !== null) {
    const pause = after.start - before.end;
    score += pause >= 1000 ? 3 : pause >= 300 ? 1 : 0;
  }
  return score;
}

function fits(tokens, indent) {
  const timed = tokens[0].start !== null;
  if (timed && tokens.length > 1 && tokens[tokens.length - 1].end - tokens[0].start > MAX_CUE_SECONDS * 1000) {
    return false;
  }
  return lines(tokens.map((t) => t.text), indent) !== null;
}

// The run's tokens in cues: each as full as fits, except that when the run goes on, the cue ends at the best
// break among the places that keep it at least half full (the latest on a tie).
function cut(tokens, indent) {
  const groups = [];
  let i = 0;
  while (i < tokens.length) {
    let j = i + 1;
    while (j < tokens.length && fits(tokens.slice(i, j + 1), indent)) j += 1;
    if (j < tokens.length) {
      const full = sum(tokens.slice(i, j).map((t) => len(t.text) + 1));
      let count = 0;
      let best = [-1, j];
      for (let k = i + 1; k <= j; k++) {
        count += len(tokens[k - 1].text) + 1;
        if (2 * count >= full) {
          const score = breakStrength(tokens[k - 1], tokens[k]);
          if (score > best[0] || (score === best[0] && k > best[1])) best = [score, k];
        }
      }
      j = best[1];
    }
    groups.push(tokens.slice(i, j));
    i = j;
  }
  return groups;
}

function finalCues(final) {
  const out = [];
  for (const run of runs(final)) {
    const indent = run.voice ? Math.min(len(run.voice) + 2, MAX_INDENT) : 0;
    const tokens = run.tokens.flatMap((t) => pieces(t, MAX_CHARS - indent));
    for (const group of cut(tokens, indent)) {
      out.push({
        start: group[0].start,
        end: group[0].end !== null ? Math.max(...group.map((t) => t.end)) : null,
        voice: run.voice,
        lines: lines(group.map((t) => t.text), indent) || [group.map((t) => t.text).join(" ")],
        source: final.session ?? null,
      });
    }
  }
  if (out.length && out[0].start === null) {
    // No word times: the final's own span, shared out in proportion to characters.
    const start = ms(final.start);
    const end = Math.max(start, ms(final.end));
    const weights = out.map((c) => sum(c.lines.map((line) => len(line) + 1)));
    const total = sum(weights);
    let acc = 0;
    const at = [start];
    for (const w of weights) {
      acc += w;
      at.push(start + Math.floor(((end - start) * acc) / total));
    }
    out.forEach((c, i) => {
      c.start = at[i];
      c.end = at[i + 1];
    });
  }
  return out;
}

/** All the finals' cues ({start, end, voice, lines}, ms), settled: readable, never ending before they start, never
 * overlapping the next cue of their stream. */
export function cues(finals) {
  const out = [];
  const previous = new Map();
  for (const final of finals) {
    const timed = (final.words || []).some((w) => clean(w.word));
    for (const cue of finalCues(final)) {
      if (timed) {
        const count = sum(cue.lines.map(len));
        cue.end = Math.max(cue.end, cue.start + pyRound(1000 * Math.max(MIN_SECONDS, count / READING_CPS)));
      }
      cue.end = Math.max(cue.end, cue.start + 1);
      const before = previous.get(cue.source);
      if (before && before.start <= cue.start && cue.start < before.end) {
        before.end = Math.max(cue.start, before.start + 1);
        cue.start = Math.max(cue.start, before.end);
        cue.end = Math.max(cue.end, cue.start + 1);
      }
      previous.set(cue.source, cue);
      out.push(cue);
    }
  }
  return out;
}

/** Milliseconds -> "hh:mm:ss<sep>mmm" (SRT uses ",", WebVTT "."). */
export function clockMs(total, sep) {
  const h = Math.floor(total / 3600000);
  const m = Math.floor((total % 3600000) / 60000);
  const s = Math.floor((total % 60000) / 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(h)}:${pad(m)}:${pad(s)}${sep}${pad(total % 1000, 3)}`;
}

// WebVTT cue text is markup: "<" opens a tag, "&" a character reference; a voice span's annotation ends at ">".
const escapeVtt = (text) => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/** A cue's text as SRT or WebVTT writes it. */
export function cueBody(cue, format) {
  if (format === "srt") return (cue.voice ? `${cue.voice}: ` : "") + cue.lines.join("\n");
  const text = escapeVtt(cue.lines.join("\n"));
  return cue.voice ? `<v ${escapeVtt(cue.voice)}>${text}</v>` : text;
}

/** Cues {start, end, body} (ms; body as cueBody writes it) as an SRT or WebVTT file. */
export function writeCues(items, format) {
  if (format === "srt") {
    return items.map((c, i) => `${i + 1}\n${clockMs(c.start, ",")} --> ${clockMs(c.end, ",")}\n${c.body}\n`)
      .join("\n");
  }
  return "WEBVTT\n\n" + items.map((c) => `${clockMs(c.start, ".")} --> ${clockMs(c.end, ".")}\n${c.body}\n`).join("\n");
}

/** The text file's lines: one per final, a new line where the voice changes, "Name: " before a voiced one. */
export function txtLines(finals) {
  return finals.flatMap((f) => runs(f).map((run) => (run.voice ? `${run.voice}: ` : "") + runText(run)));
}

const bodies = (finals, format) => cues(finals).map((c) => ({ start: c.start, end: c.end, body: cueBody(c, format) }));

export const toSrt = (finals) => writeCues(bodies(finals, "srt"), "srt");
export const toVtt = (finals) => writeCues(bodies(finals, "vtt"), "vtt");
export const toTxt = (finals) => txtLines(finals).map((line) => `${line}\n`).join("");
