"""`python -m bench.stream`: streaming accuracy, latency and stability of the caption server, as numbers.

    python -m bench.stream --manifest FILE.tsv [--url URL | --backend whisper|salm --model M] [--streams N]
                           [--speed 1.0] [--noise-snr DB] [--meeting SECONDS] [--json OUT.json] [--plot OUT.png]

N streams run at once, each sending its share of the manifest's clips back to back (clip i goes to stream
i mod N), one websocket per clip, paced like a microphone. Every message is timestamped on arrival and every
audio frame on sending, so latencies are measured against the moment the audio left the client. Without --url
the benchmark starts its own server on a free loopback port. After streaming (and after that server has stopped,
so that the two do not share the CPU) the same backend transcribes each whole clip in this process:
`offline_wer`. What each number means, and the measured tables: docs/benchmarks.md.
"""
# One module a job: clients (the streams, every frame and message timestamped), offline (the whole clips through
# the backend here), numbers (what one run's timestamps say), report (the report, its table and its plot),
# __main__ (the flags, the server started here, the order of it all). bench.ask streams through stream_clip and
# measures with final_latencies, as bench.stream does.
from .clients import stream_clip
from .numbers import final_latencies

__all__ = ["final_latencies", "stream_clip"]
