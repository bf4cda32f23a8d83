"""Callbacks that record a framework's training run with `agent.sdk`, unchanged loops.

    from agent.sdk.integrations.lightning import TraintrailCallback      # Lightning
    from agent.sdk.integrations.transformers import TraintrailCallback   # HF Trainer

Each submodule imports its framework (and so torch) when it is imported, and
only then: `import agent.sdk` and this package stay stdlib-only, because the
agent and collector installs have no torch and must not need one. The
frameworks come with the `traintrail[frameworks]` extra.

What both callbacks share, and why:

* The run is started from the framework's own "training begins" hook, with
  the framework's settings as config (Lightning: the module's hparams and the
  trainer's; Transformers: TrainingArguments minus anything secret-looking,
  and the model config), so an auditor sees what the run used, not what a
  script author remembered to pass.
* Metric values are handed to `Run.log` as they are (tensors included); the
  callback adds no `.item()` or device transfer of its own.
* Metrics and checkpoints are recorded by the global rank-0 process only: it
  is the one that writes checkpoints, and the frameworks already reduce what
  they report; other ranks still call `start_run` (which decides how they
  attach) so their context is recorded.
* A telemetry problem must never stop a training job: every hook catches and
  logs what the SDK may raise (argument errors such as a non-scalar metric or
  a checkpoint path that is not there yet) instead of raising it.
"""
