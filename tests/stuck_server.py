"""`python -m tests.stuck_server --backend stuck ...`: the real server with one more backend registered, `stuck`:
Whisper whose close() never returns, as a backend that hangs at shutdown would. For the shutdown tests."""
import threading

from server import backends
from server.backends import whisper


class StuckOnClose(whisper.WhisperBackend):
    name = "stuck"

    def close(self) -> None:
        threading.Event().wait()  # forever


# Registered before server.config is imported: the config's backend sections come from the registry.
backends.BACKENDS["stuck"] = backends.Entry(
    whisper.WhisperOptions, lambda options, model, device, tps, cap: StuckOnClose(model, device, options, tps, cap),
    "test only: Whisper that hangs in close()")

if __name__ == "__main__":
    from server.__main__ import main

    main()
