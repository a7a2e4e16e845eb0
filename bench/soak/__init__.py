"""`python -m bench.soak --clients 200 --seconds 60 [--drop-share 0.1]`: many clients stream speech at real time.

Each client's audio is short utterances and pauses. Checks what users judge us on over a long run: all speech gets
its final (none lost, none doubled), no client sees an error, and the server's memory stays flat after warm-up.
Without `--url` it starts its own server (tiny random-weight SALM by default, or the Whisper CPU backend) on a free
loopback port.

With `--replicas N` it starts a cluster instead (bench.cluster: Redis, N replicas of that server, nginx in front
balancing by least connections) and every client goes through nginx: a client that drops reconnects through nginx
and may land on another replica, so its resume must work across replicas. The report adds each replica's share of
the sessions, Redis commands per final (in all and per command), and the server block per replica.

With `--drop-share S`, that share of the clients drops its TCP connection abruptly (no close handshake) once, at a
random moment while it is sending speech (a window is open), reconnects after a short outage with `resume` from
the end of the last final it received, resends its audio from there (the backlog at once, then real time) and goes
on to the end.

Every client's finals (resent ones merged by segment) are checked against its own audio:
- the finals expected are the windows the server's segmenter cuts that audio into when nothing drops (computed
  here with the same VAD and settings: configs/default.yaml plus --set; with --url, the defaults), the window a drop
  cut counted as two: its part up to the drop (flushed then, resent on resume) and the rest;
- an expected final whose speech (the clips' 10 ms speech frames) no final covers is a lost final; one whose speech
  the finals miss in part, by more than one VAD frame, is a clipped final (the seconds missed are reported; less is
  frame jitter, summed apart: a resumed stream's VAD frames start at the resume point); finals beyond one for the
  same expected final, all its speech covered, are split finals (reported, not a failure). Speech that no window
  holds even without a drop is the VAD's own allowance, not a loss (reported apart: 0 for these clips);
- segment numbers must run 0..n-1 with none missing; the same segment twice with another text or span, or two
  finals whose spans overlap, are doubled finals; the same final twice (identical) is counted apart, as
  redelivered.

Final latency: a final's arrival less the moment this client first sent the last sample it covers (the earliest
the server could have had it); finals resent after a resume and the one the stop flushes are not counted. A final
that arrives before the audio it ends on was sent is counted apart, as a defect.

Modules: audio (what each client says, and the windows the server must cut it into), accounting (one client's
finals against those windows), clients (a client at real time, dropping and resuming; the bystander's pings),
run (all the clients at once, and what the servers report meanwhile), report (pass or fail, the table), and
__main__ (the flags; the server or cluster it starts).
"""
