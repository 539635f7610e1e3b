"""Headless Chromium for the report tests: the rendered DOM of a page and its console messages."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

INSTALL = ("headless Chromium is needed for this test: install Debian's package with `apt-get install -y chromium` "
           "(scripts/setup.sh does it where apt is available), set $CHROMIUM to a Chromium binary, or deselect "
           "the test with -m 'not browser'")


def chromium() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail(INSTALL)
    return found


def render(page: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """The DOM after load, and the page's console messages, from headless Chromium."""
    # Chromium logs each console message (log, warning, error, uncaught exception) to stderr as
    # `...:INFO:CONSOLE:<line>] "<message>", source: <url> (<line>)`.
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         # Nothing may be fetched: any host lookup fails, so a network request would surface as an error.
         "--host-resolver-rules=MAP * ~NOTFOUND", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console
