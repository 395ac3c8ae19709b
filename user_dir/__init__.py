"""bart_ext's fairseq plugin (``--user-dir user_dir``): registration only."""
import bart_ext.adapters.checkpoint  # noqa: F401  (safe checkpoint loading for torch >= 2.6)
import bart_ext.adapters.distributed  # noqa: F401  (torchrun on CPU and one-GPU nodes: one job, not copies)
import bart_ext.adapters.generation  # noqa: F401  (n-gram blocking without per-step host copies)

from . import bart_denoising  # noqa: F401
from . import bart_preln  # noqa: F401
from . import bart_summarization  # noqa: F401
from . import nvlamb  # noqa: F401
