"""The test doubles, in one place (fixtures stay in ``tests/conftest.py``).

- ``fakes.distill``: a Gaussian-mixture "embedding cache" and fake dataset / encoder / scheduler plugins,
  so distill, submit and the stages after it run without encoding text.
- ``fakes.evaluation``: the same Gaussians with texts, plus helpers that make a run directory of sets
  (eval, baseline, report, export tests).
- ``fakes.embed``: a hash "encoder" and a tiny dataset, for cache behaviour without a neural network.
- ``fakes.submit``: a small recipe over the fakes and the ``env`` fixture of the job-graph tests.
- ``fakes.cli``: ``python -m fakes.cli ARGS``, the real CLI with those fakes installed (scheduler jobs
  run it; needs ``tests/`` on PYTHONPATH).
- ``fakes.toyplugins``: minimal plugins of every kind, for recipe and run-directory tests.
- ``fakes.distributions``: an "installed" plugin package (a module plus a dist-info) made in a folder.
"""
