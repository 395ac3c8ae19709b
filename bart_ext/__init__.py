"""bart_ext: NVIDIA's BART pretraining recipe as fairseq plugins (README.md).

``bart_ext.load(CHECKPOINT)`` returns a model with ``summarize``, ``sample``, ``fill_mask``, ``encode``,
``decode`` and ``predict`` (``bart_ext/hub.py``); importing the package imports nothing else.
"""


def load(checkpoint, data=None, device=None, bf16=None, prefix_space=None):
    """A trained ``bart_*_preln`` checkpoint as a ``bart_ext.hub.BartHub`` (see ``bart_ext/hub.py``)."""
    from bart_ext.hub import load as _load

    return _load(checkpoint, data, device, bf16, prefix_space)
