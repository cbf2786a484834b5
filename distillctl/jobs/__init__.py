"""The submit stage: a recipe (or a sweep of it) as a graph of jobs for a scheduler plugin.

``sweeps`` expands ``--sweep`` into points; ``jobgraph`` turns each point into embed → distill →
eval/baseline → report jobs (plus a comparison of the points); ``submission`` is the folder that
records a submitted graph; ``submit`` checks inputs, hands the graph to the scheduler and
returns a handle; ``follow`` waits on it and ``cli_render`` draws its progress. The scheduler
contract is public: ``distillctl.scheduling`` (``Scheduler``, ``JobHandle``).
"""
