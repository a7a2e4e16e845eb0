// "Ask the meeting" on the room page and the speaker page (docs/protocol.md, "Ask the meeting"): the room's rolling
// summary (GET /v1/rooms/NAME/summary, every ~10 s and soon after a new final) and a question box (POST
// /v1/rooms/NAME/ask, answered as Server-Sent Events: `token` pieces of a generative answer, then `answer` or
// `error`). Citations link to the caption lines they cite: each page gives every final line the id
// lineId(session, segment); a cited line that is not on the page (older than its backlog, or cleared) shows the
// cited text instead. The page's `?token=T` (pageToken) is sent as a Bearer token.
// The summary is only asked for once the page knows the room has a transcript (a final shown, or a question
// answered): before that the API answers 404, which the browser would log as an error on every poll.
import { el, pageToken, wallClock } from "./common.js";

const SUMMARY_EVERY_MS = 10000; // the server recomputes at most every intelligence.summary_interval_s anyway
const SOON_MS = 2000; // after a live final: one refresh this much later, however many finals come meanwhile
const UNAVAILABLE_RETRY_MS = 60000; // after a 503 (asking switched off, or the model failed)
const FLASH_MS = 2500; // how long a cited line stays highlighted
const MAX_QUESTION = 1000; // intelligence.max_question_chars by default; the server says so if it is less
// A generative answer's citation tags, e.g. [S1#4] or [12.3s S1#4] (server/intelligence/prompt.py).
const TAG = /\[(?:(\d+(?:\.\d+)?)s )?([^\s#[\]]*)#(\d+)\]/g;

/** The id of the caption line of final `segment` of `session`: "line-SESSION-SEGMENT". */
export function lineId(session, segment) {
  return `line-${session}-${segment}`;
}

/** Builds the summary panel and the ask box in `container` for `room`; returns {finalAdded(delayMs)}, to call when
 * the page shows a final (the summary is then refreshed after delayMs: SOON_MS for a live final, less for the
 * backlog). */
export function mountMeeting(container, { room }) {
  const base = `/v1/rooms/${encodeURIComponent(room)}`;
  const ui = {
    summaryTitle: el("h3", { id: "summary-title", text: "Summary" }),
    summaryText: el("p", { className: "summary-text", id: "summary-text" }),
    summaryCites: el("p", { className: "cites inline", id: "summary-cites", hidden: true }),
    summaryNote: el("p", { className: "note", id: "summary-note", text: "Loading the summary…" }),
    input: el("input", { id: "ask-input", name: "question", type: "text", maxlength: MAX_QUESTION, required: true,
      autocomplete: "off", placeholder: "e.g. What was decided?" }),
    button: el("button", { type: "submit", className: "primary", text: "Ask" }),
    answer: el("div", { className: "answer", id: "answer", "aria-live": "polite" }),
  };
  const form = el("form", { className: "ask-form", id: "ask-form" },
    el("label", { for: "ask-input", text: "Ask about this meeting" }),
    el("div", { className: "ask-row" }, ui.input, ui.button));
  container.replaceChildren(
    el("h2", { id: "meeting-title", text: "This meeting" }),
    el("section", { className: "summary", id: "summary", "aria-labelledby": "summary-title" },
      ui.summaryTitle, ui.summaryText, ui.summaryCites, ui.summaryNote),
    form, ui.answer);
  container.hidden = false;

  // --- the rolling summary ------------------------------------------------------------------------------------
  let timer = null;
  let soon = null;
  let soonAt = 0;
  let said = false; // the room is known to have a transcript
  let refused = false; // the token was refused: no more polling (a new token means reloading the page)
  let fetching = false;
  let again = false; // a final came while a refresh was in flight
  let shown = ""; // the summary on show (its text and citations), so an unchanged one is not rebuilt

  async function refreshSummary() {
    clearTimeout(timer);
    if (fetching) {
      again = true;
      return;
    }
    if (refused) return;
    if (!said) {
      ui.summaryNote.textContent = "Nothing said yet: the summary starts with the first captions.";
      return; // finalAdded() or an answer starts the polling
    }
    let wait = SUMMARY_EVERY_MS;
    let floor = 0; // a 429's Retry-After
    if (!document.hidden) {
      fetching = true;
      again = false;
      try {
        const r = await request(`${base}/summary`);
        if (r.ok) {
          showSummary(await r.json());
        } else {
          const fail = await failure(r);
          ui.summaryNote.textContent = fail.text;
          if (r.status === 404) {
            said = false; // (the room's transcript is gone): wait for a final again
            showSummary(null);
          }
          refused = r.status === 401 || r.status === 403; // the same token would be refused again
          floor = r.status === 503 ? UNAVAILABLE_RETRY_MS : fail.retry * 1000;
        }
      } catch {
        ui.summaryNote.textContent = "Could not reach the server for the summary; retrying.";
      } finally {
        fetching = false;
      }
      if (again) wait = SOON_MS;
    }
    if (said && !refused) timer = setTimeout(refreshSummary, Math.max(wait, floor));
  }

  function showSummary(data) {
    const key = data ? JSON.stringify([data.mode, data.summary, data.citations]) : "";
    container.dataset.mode = data ? data.mode : "";
    ui.summaryTitle.textContent = !data ? "Summary" : data.mode === "generative" ? "Summary (LLM)"
      : "Extractive summary: the meeting's most central lines";
    if (key !== shown) {
      shown = key;
      const cites = data ? data.citations || [] : [];
      if (data && data.mode === "generative") withTags(ui.summaryText, data.summary || "", cites);
      else ui.summaryText.textContent = data ? data.summary || "" : "";
      ui.summaryCites.replaceChildren();
      if (cites.length) {
        ui.summaryCites.append("Lines: ");
        cites.forEach((c, i) => ui.summaryCites.append(i ? ", " : "", citeLink(c)));
      }
      ui.summaryCites.hidden = !cites.length;
    }
    if (data) {
      const when = data.updated_at ? wallClock(new Date(data.updated_at * 1000)) : "?";
      ui.summaryNote.textContent = `Covers ${data.finals} line${data.finals === 1 ? "" : "s"}, updated ${when}` +
        (data.model ? ` · ${data.mode === "generative" ? "model" : "ranked by"} ${data.model}` : "");
    }
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refreshSummary();
  });
  refreshSummary();

  // --- questions ----------------------------------------------------------------------------------------------
  let asking = false;

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ask(ui.input.value);
  });

  async function ask(raw) {
    const question = raw.trim().replace(/\s+/g, " ");
    if (!question || asking) return;
    asking = true;
    ui.button.textContent = "Asking…";
    const view = answerView(question);
    try {
      const r = await request(`${base}/ask`, {
        method: "POST", body: JSON.stringify({ question, stream: true }),
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      });
      if (!r.ok) {
        view.fail((await failure(r)).text);
      } else if (!(r.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
        answered(view, await r.json());
      } else {
        let over = false;
        await readEvents(r, (name, data) => {
          if (name === "token") view.token(String(data.text ?? ""));
          else if (name === "answer") answered(view, data);
          else if (name === "error") view.fail(errorText(data.error === "too_many_requests" ? 429 : 503, data,
            data.retry_after));
          over ||= name === "answer" || name === "error";
        });
        if (!over) view.fail("The answer was cut off (the connection closed): ask again.");
      }
    } catch {
      view.fail("Could not reach the server: check the connection and ask again.");
    } finally {
      asking = false;
      ui.button.textContent = "Ask";
      ui.answer.removeAttribute("aria-busy");
    }
  }

  function answered(view, data) {
    view.done(data);
    if (!said) {
      said = true; // so there is a transcript: its summary too
      refreshSummary();
    }
  }

  // The answer area for one question: the mode, the (streamed) answer, its citations, or what went wrong.
  function answerView(question) {
    const mode = el("p", { className: "mode", id: "answer-mode", text: "Asking…" });
    const text = el("p", { className: "answer-text", id: "answer-text" });
    const cites = el("ol", { className: "cites", id: "answer-cites" });
    ui.answer.dataset.state = "asking";
    ui.answer.setAttribute("aria-busy", "true"); // read out once it is whole, not token by token
    ui.answer.replaceChildren(el("p", { className: "question", text: `Q: ${question}` }), mode, text, cites);
    return {
      token(piece) {
        ui.answer.dataset.state = "streaming";
        mode.textContent = "Answer (LLM), writing…";
        text.append(piece);
      },
      done(data) {
        const generative = data.mode === "generative";
        ui.answer.dataset.state = "done";
        ui.answer.dataset.mode = data.mode || "";
        mode.textContent = (generative ? `Answer (LLM${data.model ? `: ${data.model}` : ""})`
          : "Extractive answer: the transcript line that best matches your question (no language model)") +
          (typeof data.seconds === "number" ? ` · over ${data.lines} lines, in ${data.seconds.toFixed(1)} s` : "");
        const list = data.citations || [];
        if (generative) withTags(text, data.answer || "", list);
        else text.textContent = data.answer || "";
        if (!text.textContent.trim()) text.textContent = "No answer: the meeting has not covered this.";
        cites.replaceChildren(...list.map((c) => el("li", {}, citeLink(c), " ",
          c.speaker ? el("span", { className: "who", text: `${c.speaker}:` }) : "", c.speaker ? " " : "",
          el("q", { className: "cite-text", text: c.text || "" }),
          typeof c.score === "number" ? el("span", { className: "score", title: "similarity to the question",
            text: ` match ${c.score.toFixed(2)}` }) : "")));
        if (list.length) cites.before(el("p", { className: "note", text: "Cited lines (click to show):" }));
      },
      fail(message) {
        ui.answer.dataset.state = "error";
        mode.textContent = "No answer";
        text.textContent = message;
        text.classList.add("error");
      },
    };
  }

  // --- citations ----------------------------------------------------------------------------------------------
  container.addEventListener("click", (event) => {
    const link = event.target.closest("a.cite");
    if (!link || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
    event.preventDefault();
    showLine(link);
  });

  return {
    finalAdded(delayMs = SOON_MS) {
      said = true;
      const at = Date.now() + delayMs;
      if (soon !== null && soonAt <= at) return;
      clearTimeout(soon);
      soonAt = at;
      soon = setTimeout(() => {
        soon = null;
        refreshSummary();
      }, delayMs);
    },
  };
}

// A link to the cited line: its time ("12.3 s") with the cited text as the tooltip.
function citeLink(c, label) {
  const time = typeof c.start === "number" ? `${c.start.toFixed(1)} s` : `#${c.segment}`;
  return el("a", { className: "cite", href: `#${lineId(c.session, c.segment)}`, text: label ? `[${time}]` : time,
    title: c.text ? `${c.speaker ? c.speaker + ": " : ""}${c.text}` : null });
}

// A generative text with its citation tags as links (the rest stays text, never HTML).
function withTags(node, text, citations) {
  node.replaceChildren();
  let last = 0;
  for (const m of text.matchAll(TAG)) {
    node.append(text.slice(last, m.index));
    const segment = Number(m[3]);
    const c = citations.find((x) => x.session === m[2] && x.segment === segment);
    node.append(citeLink(c || { session: m[2], segment, start: m[1] === undefined ? undefined : Number(m[1]) }, true));
    last = m.index + m[0].length;
  }
  node.append(text.slice(last));
}

const flashes = new WeakMap(); // line -> its highlight's timer

// Scrolls to the cited line and highlights it for a moment; one not on the page says so, with the cited text.
function showLine(link) {
  const line = document.getElementById(link.getAttribute("href").slice(1));
  if (!line) {
    if (!link.nextElementSibling?.classList.contains("missing")) {
      const text = link.title ? `: “${link.title}”` : "";
      link.after(el("span", { className: "missing", role: "status",
        text: ` (not on this page: said before its transcript begins${text})` }));
    }
    return;
  }
  const smooth = !matchMedia("(prefers-reduced-motion: reduce)").matches;
  line.scrollIntoView({ block: "center", behavior: smooth ? "smooth" : "auto" });
  if (!line.hasAttribute("tabindex")) line.tabIndex = -1;
  line.focus({ preventScroll: true });
  line.classList.add("cited");
  clearTimeout(flashes.get(line));
  flashes.set(line, setTimeout(() => line.classList.remove("cited"), FLASH_MS));
}

// --- HTTP -------------------------------------------------------------------------------------------------
function request(path, options = {}) {
  const token = pageToken();
  const headers = { ...(options.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  return fetch(path, { ...options, headers, cache: "no-store" });
}

// {text, retry}: what went wrong with a refused request, in plain words.
async function failure(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    // not JSON: the status says enough
  }
  const retry = Number(response.headers.get("Retry-After")) || body.retry_after || 0;
  return { text: errorText(response.status, body, retry), retry };
}

function errorText(status, body, retry) {
  const why = body && body.message ? body.message : "";
  switch (status) {
    case 401: return "Needs a viewer token: open this page with ?token=YOUR_TOKEN on its address.";
    case 403: return "This page's token may not read this meeting (403): open it with a viewer token.";
    case 404: return "Nothing said yet: there is no transcript to summarise or ask about.";
    case 429: return `The server is busy: try again in ${retry || "a few"} s.`;
    case 400: case 413: return `The question was refused: ${why || "bad request"}`;
    case 503: return `Not available on this server: ${why || "try again later"}`;
    default: return `The server answered ${status}${why ? `: ${why}` : ""}`;
  }
}

// Calls onEvent(name, data) for each Server-Sent Event of a streamed response (data parsed as JSON).
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (!data.length) continue;
      let parsed;
      try {
        parsed = JSON.parse(data.join("\n"));
      } catch {
        continue;
      }
      onEvent(name, parsed ?? {});
    }
  }
}
