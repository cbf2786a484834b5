"""The distill stage: learning a synthetic set under one outer loop.

``distill`` chains the run (run folder, cached embeddings, students, method, Boost-DD stages)
and runs each stage's outer loop: the method plugin gives the outer loss's gradient, the loop
steps the optimiser, validates on ``val``, keeps the best set and checkpoints. ``checkpoints``
saves and restores that loop's state atomically; ``synthetic`` is the set on disk
(``distilled/ipcN.safetensors`` + a verified JSON sidecar) that ``load_set`` returns; ``tokens`` is
the token level's inner problem (sequences of input embeddings that fine-tune a pretrained transformer
through a few functional steps, attention labels, the readable-set helpers). The method contract and a
method author's tools are public: ``distillctl.methods`` and ``distillctl.toolbox``.
"""
