"""Models in and out of bart_ext (``scripts/convert.py`` is the command line).

* ``hf``: transformers BART (Post-LN) and mBART-layout (Pre-LN) folders <-> fairseq BART state dicts
  and model fields; config checks that refuse what we cannot represent.
* ``vocab``: the tokenizer files: fairseq's ``dict.txt`` + GPT-2 ``encoder.json`` / ``vocab.bpe`` <->
  transformers' ``vocab.json`` / ``merges.txt`` in the model's own dictionary order.
* ``fairseq_layouts``: fairseq's released BART checkpoints (``bart.base``, ``bart.large``,
  ``bart.large.cnn``, ``bart.large.xsum``): the key and embedding-row upgrades our model applies on load.
* ``fairseq_checkpoint``: writes a converted model as a fairseq checkpoint (imports fairseq).
* ``ct2``: a CTranslate2 model folder from an exported transformers folder (imports ctranslate2).
"""
