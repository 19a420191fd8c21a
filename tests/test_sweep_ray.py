"""sweep=ray (conf/sweep/ray.yaml): a multirun's jobs as Ray tasks through hydra-ray-launcher,
each a child MLflow run of the sweep's parent, and the one-line refusal of a cluster sweep that
would track into this machine's SQLite file."""

from __future__ import annotations

import pytest

from riscv_ft.cli import check_cluster_store, compose
from riscv_ft.config import ConfigError
from tests.conftest import run_train
from tests.test_tracking import run_sweep

pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="the ray extra is not installed (pip install -e '.[ray]')")

CLUSTER = "hydra.launcher.ray.init.address=ray://127.0.0.1:1"  # loopback, nothing listens: never reached


@pytest.mark.slow
def test_a_ray_sweep_runs_each_job_as_a_child_run(tmp_path):
    sweep = run_sweep(tmp_path, "sweep=ray", "lora.rank=4,8")
    assert sweep.result.returncode == 0, sweep.result.stderr[-3000:]
    parent, children = sweep.parent(), sweep.children()
    assert parent.data.params["sweep.launcher"] == "RayLauncher" and parent.info.status == "FINISHED"
    assert sorted(c.data.params["lora.rank"] for c in children) == ["4", "8"]
    assert all(c.info.status == "FINISHED" and c.data.metrics["final_val_loss"] > 0 for c in children)
    assert parent.data.metrics["jobs"] == 2


@pytest.mark.parametrize(
    "overrides, refused",
    [
        ([CLUSTER], True),                                            # jobs on other hosts, local SQLite store
        ([CLUSTER, "tracking.uri=sqlite:////tmp/x.db"], True),
        ([CLUSTER, "tracking.uri=http://127.0.0.1:1"], False),        # a server every host can reach
        ([CLUSTER, "tracking.offline=true"], False),                  # each run keeps its calls, pushed later
        ([], False),                                                  # a local Ray: the local store is fine
    ],
)
def test_a_cluster_sweep_needs_a_tracking_server(overrides, refused):
    cfg = compose(["experiment=smoke", "sweep=ray", *overrides], hydra_config=True)
    if refused:
        with pytest.raises(ConfigError, match="tracking.uri=http://HOST:5000"):
            check_cluster_store(cfg)
    else:
        check_cluster_store(cfg)


def test_a_cluster_sweep_with_a_local_store_stops_in_one_line_before_any_job(tmp_path):
    result = run_train("-m", "experiment=smoke", "sweep=ray", CLUSTER, f"hydra.sweep.dir={tmp_path / 'sweep'}",
                       cwd=tmp_path, env={"RISCV_FT_MLRUNS": str(tmp_path / "mlruns")}, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: hydra.launcher.ray.init.address=ray://127.0.0.1:1 runs the jobs on a cluster")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "mlruns").exists()
