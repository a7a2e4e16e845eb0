"""The soak's verdict (pass: nothing lost, clipped or doubled, no final ahead of its audio, no error, every resume
taken) and its report as a markdown table."""
from __future__ import annotations


def passed(report: dict) -> bool:
    """Nothing said lost (or clipped), nothing doubled, no final ahead of its audio, no error, every resume taken.
    Split finals (a window's speech in more finals than an uninterrupted stream gives, all of it there once) are
    reported, not failed."""
    return not (report["lost_finals"] or report["clipped_finals"] or report["missing_segments"]
                or report["doubled_finals"] or report["finals_ahead_of_audio"] or report["errors"]
                or report["resume_failures"]
                or report["unended_streams"] or report["crashed_clients"])


def markdown(r: dict) -> str:
    servers = list(r["server"].values()) if "replicas" in r else [r["server"]]  # a cluster's: one per replica
    rows = [("clients", r["clients"]), ("seconds of audio per client", r["seconds"]), ("wall time (s)", r["wall_s"]),
            ("clients dropped / resumed / resume failures",
             f"{r['drops']} / {r['resumes']} / {len(r['resume_failures'])}"),
            ("utterances sent", r["utterances"]),
            ("finals expected (1 per window of the undropped stream, +1 per window a drop cut)", r["finals_expected"]),
            ("finals received (distinct segments; resent after resume)", f"{r['finals']} ({r['resent_finals']})"),
            ("lost finals (an expected final's speech, none of it in any final)",
             f"{r['lost_finals']} ({r['lost_speech_s']} s of speech)"),
            ("clipped finals (speech partly outside every final, by more than a VAD frame)",
             f"{r['clipped_finals']} ({r['clipped_speech_s']} s of speech"
             + (f"; {r['jitter_speech_s']} s more within a frame" if r["jitter_speech_s"] else "") + ")"),
            ("split finals (more finals than expected for one window, none of its speech lost)", r["split_finals"]),
            ("segment numbers never received", r["missing_segments"]),
            ("doubled finals (a segment twice, different; spans overlapping)", r["doubled_finals"]),
            *([("finals that arrived before the audio they end on was sent", r["finals_ahead_of_audio"])]
              if r["finals_ahead_of_audio"] else []),
            ("errors", f"{r['errors']}" + (f" ({', '.join(map(str, r['error_codes']))})" if r["errors"] else "")),
            ("final latency p50 / p95 (s)", f"{r['final_latency_p50']} / {r['final_latency_p95']}"),
            ("ping round trip p50 / p95 / max (ms)",
             f"{r['ping_rtt_ms_p50']} / {r['ping_rtt_ms_p95']} / {r['ping_rtt_ms_max']}"),
            ("server event-loop lag max / times over 250 ms" + (" (worst replica / all)" if "replicas" in r else ""),
             f"{max(s['loop_lag']['max_ms'] for s in servers)} ms / "
             f"{sum(s['loop_lag']['over_250ms'] for s in servers)}"),
            ("server RSS after warm-up / at end (MB)" + (", all replicas" if "replicas" in r else ""),
             f"{r['rss_mb_warm']} / {r['rss_mb_end']}"),
            ("backend", servers[0]["backend"])]
    if "replicas" in r:
        rows += cluster_rows(r)
    return "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def cluster_rows(r: dict) -> list[tuple[str, object]]:
    rows = [("replicas", r["replicas"]),
            ("sessions per replica: opened + resumed (share; windows)",
             ", ".join(f"{name} {s['opened']} + {s['resumed']} ({s['share']}; {s['windows']})"
                       for name, s in r["replica_sessions"].items()))]
    if "redis_ops" in r:
        top = sorted(r["redis_ops_per_final_by_command"].items(), key=lambda kv: -kv[1])
        rows += [("Redis commands per final (heartbeats included)", f"{r['redis_ops_per_final']} "
                  f"({r['redis_ops']} in all" + "".join(f"; {k} {v}" for k, v in top) + ")")]
    return rows

