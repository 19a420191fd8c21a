"""The one place that talks to MLflow, in layers (each module imports only those above it):

    store.py       where runs are kept: URI, store creation, experiments, a client, RunRecord queries
    calls.py       one tracking call made with an MlflowClient (what the outbox replays)
    outbox.py      RUN/tracking_outbox.jsonl: the journal of a run's calls and the thread that sends them
    run.py         Tracker and tracked_run: a training run's lifecycle and tags
    push.py        `python -m riscv_ft.tracking push RUN...`: send what a run kept
    sweep_runs.py  a sweep's parent run and the registry (`models:/riscv-asm@best`)

Nothing here imports the model code: the experiment and the sweep log the MLflow model
(riscv_ft/mlflow_model.py) and hand it to the tracker like any other call.
"""
