"""bart_ext's fairseq plugin (``--user-dir user_dir``): registration only."""
import bart_ext.adapters.fairseq_patches  # noqa: F401  (what the plugin fixes in fairseq: see that module)

from . import bart_adam  # noqa: F401
from . import bart_cross_entropy  # noqa: F401
from . import bart_denoising  # noqa: F401
from . import bart_gpt2  # noqa: F401
from . import bart_label_smoothed_cross_entropy  # noqa: F401
from . import bart_preln  # noqa: F401
from . import bart_rouge  # noqa: F401
from . import bart_summarization  # noqa: F401
from . import nvlamb  # noqa: F401
