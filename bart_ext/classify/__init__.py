"""BART for comprehension: classification heads, the aclsum sentence-role task, predictions.

- ``heads.py``: the head (fairseq ``BARTModel``'s layout and state-dict names) and the sentence
  representation (the decoder's state at the last ``</s>``); the fairseq model registers heads
  in ``bart_ext/adapters/fairseq_model.py``.
- ``roles.py``: aclsum's highlighted sentences as a 4-way task (challenge / approach / outcome /
  none), with aclsum's own paper splits; the preparation CLI is ``scripts/prepare_roles.py``.
- ``predict.py``: labels for raw sentences from a fine-tuned checkpoint (``scripts/classify.py``)
  and the scores the role experiment reports (``scripts/roles_experiment.py``).
"""
