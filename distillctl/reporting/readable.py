"""Readable token-level sets: what each synthetic sequence of input embeddings stands for.

A token-level set is (ipc*C, T, d) input embeddings; no text maps to it exactly. Two readouts say what it
is close to: per position, the vocabulary tokens whose word embeddings are nearest by cosine (the table of
the model it was distilled for), and per sequence, the real training texts nearest by cosine between the
initial model's pooled features (of up to ``max_real`` training texts, drawn with a fixed seed: embedding
all of AG News 12k on one CPU thread takes minutes). ``report`` and ``export`` show both.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from distillctl.distillation.synthetic import SyntheticSet
from distillctl.distillation.tokens import (decode_positions, initial_model, nearest_texts, nearest_tokens,
                                            readable_line, tokenizer_for)
from distillctl.evaluation.protocol import split_of

#: vocabulary tokens per position, real texts per sequence, real texts embedded for the text readout
TOKENS_PER_POSITION, TEXTS_PER_SEQUENCE, MAX_REAL = 3, 3, 2000
#: real texts looked up and run through the model at a time (the input embeddings of all 2,000 texts of 64
#: tokens at once held ~200 MB more)
READOUT_CHUNK = 256


def token_readout(files: list[Path], embeddings: Any, *, k_tokens: int = TOKENS_PER_POSITION,
                  k_texts: int = TEXTS_PER_SEQUENCE, max_real: int = MAX_REAL, seed: int = 0) -> list[dict]:
    """For each token-level set in ``files``: per sequence its class, the readable line (nearest token per
    attended position), the k nearest tokens and cosines per position, and its nearest real training texts.

    ``embeddings``: the run's token-level cache (train split with ids, mask, y, and texts), or None to skip
    the nearest texts.
    """
    import torch


    out, models = [], {}
    for f in files:
        syn = SyntheticSet.load(f)
        if syn.level != "tokens":
            continue
        key = (repr(syn.meta.get("distill_students")), syn.meta.get("init_seed"))
        if key not in models:  # one model per distinct student (a chain's sets share it)
            module = initial_model(syn)
            models[key] = (module, tokenizer_for(module, syn), None)
        module, tokenizer, real = models[key]
        table = module.word_embeddings().detach()
        ids, sims = nearest_tokens(syn.x, syn.mask, table, k=k_tokens)  # (n, T, k)
        names = syn.label_names
        classes = syn.hard_labels().tolist()
        neighbours = [[] for _ in range(syn.x.shape[0])]
        if embeddings is not None:
            if real is None:
                t0 = time.perf_counter()
                real = (*_real_features(module, embeddings, max_real, seed), time.perf_counter() - t0)
                models[key] = (module, tokenizer, real)
            rows, feats, texts, ys, _ = real
            with torch.no_grad():
                syn_feats = module.features(syn.x, syn.mask)  # (n, h)
            idx, cos = nearest_texts(syn_feats, feats, k=k_texts)
            for r in range(syn.x.shape[0]):
                neighbours[r] = [{"train_row": int(rows[j]), "similarity": round(float(c), 4),
                                  "label": names[int(ys[j])], "text": texts[j]}
                                 for j, c in zip(idx[r].tolist(), cos[r].tolist())]
        sequences = []
        for r in range(syn.x.shape[0]):
            if tokenizer is not None:
                tokens = decode_positions(tokenizer, ids[r])
            else:
                tokens = [[] if row[0] < 0 else [str(t) for t in row] for row in ids[r].tolist()]
            sequences.append({
                "row": r, "class": names[classes[r]], "text": readable_line(tokens), "tokens": tokens,
                "cosines": [[round(float(v), 3) for v in pos] if tok else [] for pos, tok in zip(sims[r], tokens)],
                "neighbours": neighbours[r]})
        out.append({"ipc": syn.ipc, "set": str(f), "level": "tokens", "tokenizer": tokenizer is not None,
                    "real_rows_searched": None if real is None else len(real[0]),
                    # seconds the real texts took through the model (shared by a chain's sets): what a plan scales
                    "real_seconds": None if real is None else round(real[4], 3), "sequences": sequences})
    return out


def _real_features(module, embeddings, max_real: int, seed: int):
    """(rows, (m, h) pooled features, texts, labels) of up to ``max_real`` training texts (seeded draw)."""
    import torch


    train = split_of(embeddings, "train")
    n = int(train.ids.shape[0])
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_real].sort().values
    types = getattr(train, "type_ids", None)
    feats = []
    with torch.no_grad():
        for part in rows.split(READOUT_CHUNK):
            ids = train.ids[part]  # (c, T)
            x = module.embed_tokens(ids) if types is None else module.embed_tokens(ids, types[part])  # (c, T, d)
            feats.append(module.features(x, train.mask[part]))  # (c, h)
    feats = torch.cat(feats)  # (m, h)
    texts = embeddings.texts("train") if callable(getattr(embeddings, "texts", None)) else None
    return (rows.tolist(), feats, [texts[int(j)] if texts else f"train row {int(j)}" for j in rows],
            train.y[rows].tolist())
