// The speaker page's transcript files (TXT, SRT, WebVTT), as the server writes them: for each session the page's
// transcript holds, the server's own export (GET /v1/transcripts/ID.FORMAT, with the page's token), so that the
// page's file never disagrees with the server's (cues cut at word times, with voices: caption_formats). The page's
// transcript may span sessions (each Start, or a refused resume, begins one) on one clock, and may have been cleared
// in part, so each session's cues are moved onto the page's clock and kept to the page's lines. Only a session
// whose export the server cannot give (unreachable, or not kept there) is written here, by the port in cues.js.
import { pageToken } from "./common.js";
import { cueBody, cues, txtLines, writeCues } from "./cues.js";

const TIMING = /^(\d+):(\d\d):(\d\d)[.,](\d{3}) --> (\d+):(\d\d):(\d\d)[.,](\d{3})$/;
const ms = (seconds) => Math.round(seconds * 1000);

/**
 * The file's text. `finals`: the page's, in order, {start, end, text, words, speaker, session, offset} with times on
 * the page's clock (`offset`: the page's clock minus the session's); `cleared`: session -> how many text lines of
 * that session's finals the page has cleared (they come first in the server's text export).
 */
export async function transcriptFile(format, finals, cleared) {
  const parts = [];
  for (const block of sessions(finals)) {
    parts.push(await fromServer(format, block, cleared.get(block.session) || 0) ?? local(format, block.finals));
  }
  if (format === "txt") return parts.flat().map((line) => `${line}\n`).join("");
  return writeCues(parts.flat(), format);
}

// Runs of consecutive finals of one session.
function sessions(finals) {
  const blocks = [];
  for (const f of finals) {
    const last = blocks[blocks.length - 1];
    if (last && last.session === f.session) last.finals.push(f);
    else blocks.push({ session: f.session, offset: f.offset || 0, finals: [f] });
  }
  return blocks;
}

// Written here: text lines, or cues {start, end, body} in ms on the page's clock.
function local(format, finals) {
  if (format === "txt") return txtLines(finals);
  return cues(finals).map((c) => ({ start: c.start, end: c.end, body: cueBody(c, format) }));
}

// The server's export of one session, kept to the block's finals and moved onto the page's clock; null if the
// server cannot give it.
async function fromServer(format, block, skipLines) {
  if (!block.session) return null;
  const headers = pageToken() ? { Authorization: `Bearer ${pageToken()}` } : {};
  let text;
  try {
    const response = await fetch(`/v1/transcripts/${encodeURIComponent(block.session)}.${format}`,
      { headers, cache: "no-store" });
    if (!response.ok) return null;
    text = await response.text();
  } catch {
    return null; // unreachable: written here instead
  }
  if (format === "txt") {
    // One line per final and voice, in order: skip the cleared ones, keep as many as the page's finals make.
    const lines = text.split("\n").filter((line, i, all) => i < all.length - 1 || line);
    const take = txtLines(block.finals).length;
    return lines.length >= skipLines + take ? lines.slice(skipLines, skipLines + take) : null;
  }
  // The cues that start within the block's finals (a final's cues start within its window), moved by the offset.
  const first = block.finals[0];
  const last = block.finals[block.finals.length - 1];
  const from = ms(Math.min(first.start, ...(first.words || []).map((w) => w.start)) - block.offset);
  const to = Math.max(ms(last.end - block.offset), from + 1);
  const shift = ms(block.offset);
  const kept = parseCues(text).filter((c) => c.start >= from && c.start < to)
    .map((c) => ({ start: c.start + shift, end: c.end + shift, body: c.body }));
  return kept.length ? kept : null;
}

// An SRT or WebVTT file's cues: {start, end, body} (ms; body: the cue's text lines).
function parseCues(text) {
  const out = [];
  for (const block of text.split("\n\n")) {
    const lines = block.split("\n");
    const at = lines.findIndex((line) => TIMING.test(line));
    if (at < 0) continue; // the WEBVTT header
    const t = TIMING.exec(lines[at]).slice(1).map(Number);
    out.push({
      start: ((t[0] * 60 + t[1]) * 60 + t[2]) * 1000 + t[3],
      end: ((t[4] * 60 + t[5]) * 60 + t[6]) * 1000 + t[7],
      body: lines.slice(at + 1).join("\n").replace(/\n+$/, ""),
    });
  }
  return out;
}
