"""``make test`` runs every test exactly once: pytest skips exactly the files colcon's test step runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_make_test_runs_each_test_file_once() -> None:
    proc = subprocess.run(["make", "-n", "--no-print-directory", "test"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    commands = proc.stdout.replace("\\\n", " ").splitlines()
    pytest_runs = [c for c in commands if " -m pytest " in c]
    colcon_tests = [c for c in commands if re.search(r"colcon .* test ", c)]
    assert len(pytest_runs) == 1 and len(colcon_tests) == 1, proc.stdout
    ignored = set(re.findall(r"--ignore=(\S+)", pytest_runs[0]))
    by_colcon = set(colcon_tests[0].split("--pytest-args", 1)[1].split())
    assert ignored and ignored == by_colcon
    assert all((REPO / f).is_file() and re.fullmatch(r"test/(\w+/)?test_\w+\.py", f) for f in by_colcon)
    assert " test " in f"{pytest_runs[0]} "  # the rest of the suite still runs under pytest
    assert "COLCON_EXTENSION_BLOCKLIST=colcon_core.prefix_path.ament" in colcon_tests[0]
