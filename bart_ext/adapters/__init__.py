"""bart_ext's fairseq adapters: what ``user_dir/`` (the plugin) registers with fairseq."""
from __future__ import annotations

from pathlib import Path

USER_DIR = Path(__file__).resolve().parents[2] / "user_dir"


def import_plugin() -> None:
    """Register bart_ext's tasks, models, criteria and optimizer with fairseq, as ``--user-dir user_dir``
    does, from any working directory (``bart_ext.load`` in a user's own script)."""
    import sys

    loaded = sys.modules.get("user_dir")
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == USER_DIR / "__init__.py":
        return  # imported already (``import user_dir`` from the repository, or --user-dir)
    if not (USER_DIR / "__init__.py").is_file():
        raise ImportError(f"bart_ext's fairseq plugin is not at {USER_DIR}: install bart_ext from its repository "
                          "(pip install -e REPO) so that user_dir/ sits beside the bart_ext package")
    from argparse import Namespace

    from fairseq.utils import import_user_module

    import_user_module(Namespace(user_dir=str(USER_DIR)))
