"""The house rules that tools check: the import contract (import-linter, configured in pyproject.toml) and the
type checker (mypy over server/). Both read the source tree as it is, so a change that breaks either fails here."""
from __future__ import annotations

import subprocess
import sys

from importlinter.cli import lint_imports

from .support.audio import ROOT


def test_the_import_contract_is_kept(capsys, monkeypatch):
    """The server's packages import only those below them in the flow, nothing of client/, bench/ or tests/, and
    no package has an import cycle among its modules ([tool.importlinter])."""
    monkeypatch.chdir(ROOT)
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert code == 0 and "0 broken" in report, report[-4000:]


def test_the_server_type_checks():
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert result.stdout.startswith("Success"), result.stdout[-2000:]
