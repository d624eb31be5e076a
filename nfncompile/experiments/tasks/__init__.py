"""The paper's weight-space tasks, one module each, and what they share.

- :mod:`.generalization`, :mod:`.inr_classification`, :mod:`.inr_editing`,
  :mod:`.winning_tickets`: one task each, declared as ``TASK``
  (:mod:`nfncompile.experiments.registry` lists them)
- :mod:`.task`: :class:`~.task.Task`, what a task is
- :mod:`.config`: the experiment spec (:class:`~.config.ExperimentConfig`)
- :mod:`.context`: :class:`~.context.RunContext`, what a task's ``run`` receives
- :mod:`.datasets`: zoo splits, per-parameter scaling, the in-memory feature store
- :mod:`.models`: parameter counts, predictions, batched forward passes
- :mod:`.zoo_access`: what the tasks read from a zoo (its traced spec, columns, features)
- :mod:`.population`: many small networks of one architecture trained at once
- :mod:`.report`: ``results.json``, the markdown table and the plots
"""
