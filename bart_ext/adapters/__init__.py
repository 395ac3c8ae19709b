"""bart_ext's fairseq adapters: what ``user_dir/`` (the plugin) registers with fairseq."""
from __future__ import annotations

from pathlib import Path

USER_DIR = Path(__file__).resolve().parents[2] / "user_dir"


def import_plugin() -> None:
    """Register bart_ext's tasks, models, criteria and optimizer with fairseq, as ``--user-dir user_dir``
    does, from any working directory (``bart_ext.load`` in a user's own script). Call it before any
    other fairseq import: the root logger is then left as the caller set it (see below)."""
    import sys

    loaded = sys.modules.get("user_dir")
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == USER_DIR / "__init__.py":
        return  # imported already (``import user_dir`` from the repository, or --user-dir)
    if not (USER_DIR / "__init__.py").is_file():
        raise ImportError(f"bart_ext's fairseq plugin is not at {USER_DIR}: install bart_ext from its repository "
                          "(pip install -e REPO) so that user_dir/ sits beside the bart_ext package")
    import logging
    from argparse import Namespace

    # A few of fairseq's modules call logging.basicConfig when first imported (models/wav2vec/
    # wav2vec2_classification.py at DEBUG, tasks/text_to_speech.py at INFO), which would leave a
    # caller's script printing every library's INFO lines. A library call leaves the caller's logging
    # as it found it: while fairseq is imported, a root logger without handlers gets a stand-in that
    # does what logging does without one (warnings and errors to stderr), so basicConfig does nothing.
    root = logging.getLogger()
    stand_in = None
    if not root.handlers:
        stand_in = logging.StreamHandler()
        stand_in.setLevel(logging.WARNING)
        root.addHandler(stand_in)
    try:
        import fairseq.models  # noqa: F401  (every model module, as fairseq's registries import them)
        import fairseq.tasks  # noqa: F401
        from fairseq.utils import import_user_module

        import_user_module(Namespace(user_dir=str(USER_DIR)))
    finally:
        if stand_in is not None:
            root.removeHandler(stand_in)
