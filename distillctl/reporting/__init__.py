"""Reading results back: reports, sweep comparisons, scores and exports.

``report`` writes a run's (or a submission's) Markdown + JSON report against the strongest
full-data reference; ``compare`` the table across the points of a sweep; both use the shared
section renderers. ``scores`` computes the DD-Ranking style scores (HLR, IOR, LRS),
``report_plots`` the figures, ``export`` a distilled set as a table with its recipe and
fingerprints.
"""
