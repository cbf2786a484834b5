"""The eval and baseline stages: the protocol that makes the numbers trustworthy.

``training`` trains K fresh students at once (vmapped over seeds) on any set and scores them;
``evaluate`` runs that on every distilled set of a run; ``baselines`` on random real subsets,
coresets, the full data and the majority class under the same budget and seeds; ``protocol``
holds what both share (seeds, split checks, result records and the results file), ``subsets`` which
real rows a subset arm takes (random draws, herding and k-center coresets). At the token
level, ``finetuning`` fine-tunes K copies of the pretrained student and ``token_arms`` builds the
same arms from it (``distilled``, ``distilled-init``, real-text subsets, full-data references). Validation
is carved from train; the test split is only scored, never used to choose.
"""
