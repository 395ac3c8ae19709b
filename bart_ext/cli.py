"""What the command-line scripts share at their entry point."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

FILE_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


def names_its_input(err: BaseException) -> bool:
    """Whether ``err``'s message alone tells the user what to fix: a missing file or folder, or one
    of bart_ext's own error types (ShardError, PositionFillError, UnreadableCheckpointError, ...),
    which are raised with the file or field they are about. Anything else is a bug until shown
    otherwise and keeps its traceback."""
    return isinstance(err, FILE_ERRORS) or type(err).__module__.split(".")[0] == "bart_ext"


def run(main: Callable[[], object]) -> None:
    """Run a script's ``main``; an error that names its input is printed as one line
    (``script.py: message``, exit status 1) instead of a traceback. ``BART_EXT_TRACEBACK=1`` keeps
    the traceback."""
    try:
        main()
    except Exception as err:
        if not names_its_input(err) or os.environ.get("BART_EXT_TRACEBACK"):
            raise
        sys.exit(f"{Path(sys.argv[0]).name}: {err}")


def check_at_least(parser, args, **minimums) -> None:
    """argparse's own error (usage, exit status 2) for the first option below its minimum, before the script
    does anything: ``check_at_least(ap, args, updates=1)`` checks ``--updates``; an option left at None
    is not checked."""
    for name, low in minimums.items():
        value = getattr(args, name)
        if value is not None and value < low:
            parser.error(f"--{name.replace('_', '-')} {value}: expected at least {low}")


def progress_bar(total: int, batch_size: int, progress: bool | None, what: str):
    """A tqdm bar over ``total`` texts on standard error (the Python API, scripts/classify.py): shown when
    ``progress`` is True, or by default (None) when the work takes more than one batch and standard error is
    a terminal."""
    from tqdm import tqdm

    show = progress if progress is not None else total > batch_size and sys.stderr.isatty()
    return tqdm(total=total, desc=f"bart_ext {what}", unit=" texts", disable=not show, file=sys.stderr,
                leave=False, dynamic_ncols=True)
