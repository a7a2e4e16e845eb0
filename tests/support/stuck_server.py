"""`python -m tests.support.stuck_server --backend stuck ...`: the real server with one more backend registered,
`stuck`: Whisper whose close() never returns, as a backend that hangs at shutdown would. For the shutdown tests."""
import sys
import threading

from server import backends
from server.backends import whisper


class StuckOnClose(whisper.WhisperBackend):
    name = "stuck"

    def close(self) -> None:
        # into the server's log: the shutdown tests wait for this line before their second signal
        print("stuck backend: in close(), which never returns", file=sys.stderr, flush=True)
        threading.Event().wait()  # forever


# Registered before server.config is imported: the config's backend sections come from the registry.
backends.BACKENDS["stuck"] = backends.Entry(
    whisper.WhisperOptions, lambda options, model, device, tps, cap: StuckOnClose(model, device, options, tps, cap),
    "test only: Whisper that hangs in close()")

if __name__ == "__main__":
    from server.__main__ import main

    main()
