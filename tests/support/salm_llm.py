"""LLM mode on the tiny SALM as its tests build and drive it: the backend with captions of a fixed length, and one
ask."""

# Captions: a fixed cap of 12 tokens (rate 0), so each clip decodes the same whatever it is batched with.
FIXED = dict(device="cpu", max_tokens_per_second=0.0, min_new_tokens_cap=12)
ASK = [{"role": "system", "content": "You answer questions about a meeting."},
       {"role": "user", "content": "Transcript:\n[1.0s S1#0] ask not what your country can do for you\n\n"
                                   "Question: what should you ask?"}]


def salm_backend(checkpoint, **options):
    """A fixture's body: the SalmBackend of `checkpoint` with FIXED captions and `options`, closed after its tests."""
    from server.backends.salm import SalmBackend

    backend = SalmBackend(str(checkpoint), **options, **FIXED)
    yield backend
    backend.close()
