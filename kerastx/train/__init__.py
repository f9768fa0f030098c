"""Training: the `Trainer` (loop.py) and what it is made of.

Modules: strategy (tf.distribute from `distribution:`), step (the compiled step), loop
(the Trainer: checkpoints, resume, NaN policy, SIGTERM, evaluation), checkpoints,
warm_start (`training.init_from`), schedules, optimizers, summaries, flops, memory,
launch (local multi-worker). The whole train -> average -> evaluate -> export workflow
is `kerastx.workflow.train`.
"""
