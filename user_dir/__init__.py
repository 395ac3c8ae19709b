"""bart_ext's fairseq plugin (``--user-dir user_dir``): registration only."""
from . import bart_preln  # noqa: F401
