"""Experiments: training loops, distributed helpers and the paper's tasks, end to end.

Takes an experiment YAML spec; generates or reads its zoo, trains every model it lists,
evaluates them and writes a report with plots (:mod:`.tasks`). The training loop with
checkpoints (:mod:`.train`) and the DDP helpers (:mod:`.distributed`) serve every task.

May import: the contract, frontend, nn, architectures, declarative, zoo.
"""
