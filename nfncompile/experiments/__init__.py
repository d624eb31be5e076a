"""Experiments: training loops, distributed helpers and the paper's tasks, end to end.

Takes an experiment YAML spec; generates or reads its zoo, trains every model it lists,
evaluates them and writes a report with plots.

- :mod:`.runner`: :func:`~.runner.run_experiment` and :func:`~.runner.load_experiment`
- :mod:`.registry`: the tasks a spec can name (:func:`~.registry.get_task`, ...)
- :mod:`.tasks`: the paper's tasks, one module each, and what they share
- :mod:`.train`: the training loop with checkpoints (:func:`~.train.fit`, ...)
- :mod:`.distributed`: the DDP helpers :func:`~.train.fit` runs under ``torchrun``

May import: the contract, frontend, nn, architectures, declarative, zoo.
"""
