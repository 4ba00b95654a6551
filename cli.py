"""The scripts' entry point: a data or config error ends the run with one line on stderr and exit status 2.

    if __name__ == "__main__":
        cli.run(main)

Input errors are the exceptions that name what the user must fix (a bad data line ``file:line: ...``, a bad config
field, a missing file or package, a file that is not UTF-8); anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from configs.base_config import ConfigError
from sandbox import SandboxUnavailable
from utils_data import DataFormatError

# SandboxUnavailable: the machine cannot isolate generated code; its message says how to opt in to weaker isolation.
INPUT_ERRORS = (DataFormatError, ConfigError, FileNotFoundError, UnicodeDecodeError, SandboxUnavailable)


def run(main: Callable[[], object], *also: type[BaseException]) -> None:
    """Call ``main()``; an input error (INPUT_ERRORS, plus the script's own ``also``) prints
    ``<script>: error: <message>`` on stderr and exits with status 2 instead of raising."""
    try:
        main()
    except (*INPUT_ERRORS, *also) as err:
        message = " ".join(str(err).split()) or type(err).__name__  # one line, whatever the message held
        print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
