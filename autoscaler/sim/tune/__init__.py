"""`pd-autoscaler tune`: fit a policy's parameters to a trace with Optuna, judged out of sample.

* `space`: each policy kind's search space (which fields, which ranges, why) and how a trial's
  values are written into the policy YAML.
* `windows`: the cross-validation split of a trace into time windows (training / held-out).
* `study`: the objective (GPU-hours subject to attainment and reversal limits, over the training
  windows' backtests), the Optuna storage and the worker processes.
* `main`: the command (reports, tuned YAML with its measured header, the trials plot).

docs/tune.md is the user's guide.
"""
