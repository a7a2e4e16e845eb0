import pytest

from .support.salm_llm import salm_backend
from .support.servers import run_server


@pytest.fixture(scope="session")
def cpu_url(tmp_path_factory):
    """One real server on a loopback port with the CPU default: Whisper tiny.en (bundled), int8."""
    log = tmp_path_factory.mktemp("logs") / "whisper-server.log"
    data = tmp_path_factory.mktemp("whisper-data")  # transcripts of this run only, not the repository's data/
    with run_server("--backend", "whisper", "--set", f"server.data_dir={data}", log_path=log) as url:
        yield url


@pytest.fixture(scope="session")
def tiny_salm_dir(tmp_path_factory):
    from server.backends.tiny_model import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-salm"))


@pytest.fixture(scope="session")
def salm_url(tmp_path_factory, tiny_salm_dir):
    """One real server loading a tiny random-weight SALM checkpoint from a local directory."""
    log = tmp_path_factory.mktemp("logs") / "salm-server.log"
    data = tmp_path_factory.mktemp("salm-data")
    with run_server("--backend", "salm", "--model", str(tiny_salm_dir), "--device", "cpu",
                    "--set", f"server.data_dir={data}", log_path=log) as url:
        yield url


# LLM mode's backends, built once for test_salm_llm.py and test_salm_llm_job.py (seconds each): the tiny SALM with its
# LoRA merged into the weights (the pre-merge ones kept for llm_mode()), and with peft's adapter left in place.
@pytest.fixture(scope="session")
def merged(tiny_salm_dir):
    yield from salm_backend(tiny_salm_dir, merge_lora=True)


@pytest.fixture(scope="session")
def plain(tiny_salm_dir):
    yield from salm_backend(tiny_salm_dir, merge_lora=False)
