"""`python scripts/quiet_pip.py ARGS...` = `python -m pip ARGS...` without the known noise.

The Makefile installs through this. pyproject.toml already fixes the setuptools warnings that
had a cause in the project (license format, trainer/assets); what remains is setuptools'
"Editable installation" notice, which every flat-layout editable install prints, and pip's
"Location ... is ignored" lines for index folders a machine's pip.conf names but lacks. When pip
fails, its whole output is printed, unfiltered, and its exit status is returned.
"""

from __future__ import annotations

import re
import subprocess
import sys

IGNORED_LOCATION = re.compile(r"^WARNING: Location '[^']*' is ignored: it is neither a file nor a directory\.$")
EDITABLE_NOTICE = "BuildBackendWarning: Editable installation."
BANG = "!!"


def without_noise(text: str) -> str:
    """pip's output minus the ignored-location lines and the editable-install notice block.

    The notice is a setuptools warning block: its header line, a body between two "!!" lines,
    then the line of source that emitted it.
    """
    kept, lines, i = [], text.splitlines(keepends=True), 0
    while i < len(lines):
        line = lines[i]
        if IGNORED_LOCATION.match(line.rstrip("\r\n")):
            i += 1
        elif line.rstrip().endswith(EDITABLE_NOTICE):
            bangs, i = 0, i + 1
            while i < len(lines) and bangs < 2:
                bangs += lines[i].strip() == BANG
                i += 1
            i += 1  # the source line ("with strategy, WheelFile(...)")
        else:
            kept.append(line)
            i += 1
    return "".join(kept)


def main(argv: list[str]) -> int:
    proc = subprocess.run([sys.executable, "-m", "pip", *argv], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace")
    if proc.returncode:
        sys.stderr.write(proc.stdout)
        sys.stderr.write(f"error: pip {' '.join(argv)} failed (exit {proc.returncode})\n")
        return proc.returncode
    sys.stdout.write(without_noise(proc.stdout))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
