"""The data stage: from a dataset plugin's text rows to a verified cache a run reads.

``embed`` runs a dataset plugin and an encoder plugin once and writes the sentence vectors as
verified shards keyed by the dataset, encoder and options fingerprints; ``cache`` says where
caches live (``DISTILLCTL_CACHE``); ``hub`` decides whether the Hugging Face hub is reachable
before any model is loaded. The contracts a dataset or encoder author implements are public and
live at the top of the package: ``distillctl.textdata`` (``DatasetSource``) and
``distillctl.encoding`` (``Encoder``). At ``embed.level: tokens`` the same cache holds token ids and
masks instead, from the student model's own tokenizer (``tokens``: the tokenizer in the encoder's place).
"""
