"""Reading results back: reports, sweep comparisons, scores and exports.

``report`` writes a run's Markdown + JSON report against the strongest full-data reference (on a
sweep's submission folder it hands over to ``compare``: decided there, once); ``compare`` the table
across the points of a sweep; both build on ``sections``, the numbers and Markdown sections they
share (each section takes its heading level). ``scores`` computes the DD-Ranking style scores (HLR, IOR, LRS),
``report_plots`` the figures, ``export`` a distilled set as a table with its recipe and
fingerprints; ``readable`` says what a token-level set's sequences stand for (nearest vocabulary tokens
per position, nearest real texts) for both.
"""
