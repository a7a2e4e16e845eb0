"""The house rules that tools check: the import contract (import-linter, configured in pyproject.toml) and the
type checker (mypy over server/). Both read the source tree as it is, so a change that breaks either fails here.

Each runs in a process of its own: import-linter configures logging (dictConfig), which in this process would
silence the loggers other tests read."""
from __future__ import annotations

import subprocess
import sys

from .support.audio import ROOT

LINT_IMPORTS = ("import sys; from importlinter.cli import lint_imports; "
                "sys.exit(lint_imports(no_cache=True, no_logo=True))")


def test_the_import_contract_is_kept():
    """The server's packages import only those below them in the flow, nothing of client/, bench/ or tests/, and
    no package has an import cycle among its modules ([tool.importlinter])."""
    result = subprocess.run([sys.executable, "-c", LINT_IMPORTS], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "0 broken" in result.stdout, result.stdout[-4000:] + result.stderr[-2000:]


def test_the_server_type_checks():
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.startswith("Success"), result.stdout[-4000:] + result.stderr
