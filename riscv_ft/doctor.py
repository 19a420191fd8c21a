"""`python -m riscv_ft.doctor [--json]`: what this machine offers the project, measured.

Reports the MLX version and device, memory, which BLAS runs and how fast a float32 matmul
is, whether the default model and dataset are cached or reachable (no download), which
RISC-V assembler and emulator the evaluation will use, and where MLflow writes. Every
check is independent: one that fails is reported, never fatal. `--json` prints the same as
one JSON object (the key `problems` lists what needs attention).
"""

from riscv_ft.runtime import use_fast_blas

use_fast_blas()  # before MLX is imported: the matmul figure is the one training will see

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

from riscv_ft import runtime  # noqa: E402
from riscv_ft.memory import machine_memory_gb  # noqa: E402

DEFAULT_MODEL = "mlx-community/Mistral-7B-Instruct-v0.3-4bit"
DEFAULT_DATASET = "davidpirkl/riscv-instruction-specification"
HEAD_TIMEOUT_S = 3.0
# Below this a 7B model cannot train usefully; the bundled reference BLAS gives about 5.
SLOW_GFLOPS = 50.0


# ---------------------------------------------------------------- compute


def mlx_info() -> dict:
    import mlx.core as mx

    info = {"mlx_version": mx.__version__, "device": str(mx.default_device()),
            "metal": bool(mx.metal.is_available()), "cuda": bool(getattr(mx, "cuda", None) and mx.cuda.is_available())}
    try:
        import mlx_lm

        info["mlx_lm_version"] = mlx_lm.__version__
    except ImportError:
        info["mlx_lm_version"] = None
    return info


def matmul_gflops(size: int = 1024, seconds: float = 0.5) -> float:
    """float32 size x size matmul throughput on the default device, best of repeated timings
    (the best run is the least disturbed by other processes)."""
    import mlx.core as mx

    a = mx.random.normal((size, size), dtype=mx.float32)
    b = mx.random.normal((size, size), dtype=mx.float32)
    mx.eval(a, b)
    mx.eval(a @ b)  # warm-up: threads, kernels
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        start = time.perf_counter()
        mx.eval(a @ b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


# ---------------------------------------------------------------- model and data


def _hub_cache_folder(repo_id: str, repo_type: str) -> Path | None:
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshots = folder / "snapshots"
    return folder if snapshots.is_dir() and any(snapshots.iterdir()) else None


def _head(url: str) -> str:
    """'reachable', 'needs a token (gated)', or why not: one quick HEAD, never a download."""
    import requests

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return "not checked (HF_HUB_OFFLINE is set)"
    try:
        response = requests.head(url, timeout=HEAD_TIMEOUT_S, allow_redirects=False)
    except requests.RequestException as err:
        return f"unreachable ({type(err).__name__})"
    if response.status_code < 400:
        return "reachable"
    if response.status_code in (401, 403):
        return f"reachable, needs a Hugging Face token (HTTP {response.status_code}: gated; run `huggingface-cli login`)"
    return f"HTTP {response.status_code}"


def model_status(repo_id: str) -> dict:
    from huggingface_hub import constants, try_to_load_from_cache

    local = Path(repo_id).expanduser()
    if local.is_dir():
        return {"id": repo_id, "cached": (local / "config.json").exists(), "where": str(local.resolve()), "hub": "local folder"}
    config = try_to_load_from_cache(repo_id, "config.json")
    folder = _hub_cache_folder(repo_id, "model")
    weights = bool(folder and any(folder.glob("snapshots/*/*.safetensors")))
    return {
        "id": repo_id,
        "cached": isinstance(config, str) and weights,
        "where": str(folder) if folder else None,
        "hub": _head(f"{constants.ENDPOINT}/{repo_id}/resolve/main/config.json"),
    }


def dataset_status(dataset_id: str) -> dict:
    from huggingface_hub import constants

    folder = _hub_cache_folder(dataset_id, "dataset")
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", Path(constants.HF_HOME) / "datasets"))
    prepared = datasets_cache / dataset_id.replace("/", "___")
    return {
        "id": dataset_id,
        "cached": bool(folder) or prepared.is_dir(),
        "where": str(folder or (prepared if prepared.is_dir() else "")) or None,
        "hub": _head(f"{constants.ENDPOINT}/datasets/{dataset_id}/resolve/main/README.md"),
    }


# ---------------------------------------------------------------- RISC-V tools and tracking


def riscv_tools() -> dict:
    out: dict = {"assembler": None, "assembler_path": None, "assemblers_available": [], "emulator": None}
    try:
        from riscv_ft.rv.assembler import available_assemblers, find_assembler
    except ImportError as err:
        out["assembler_error"] = f"riscv_ft.rv.assembler not importable ({err})"
    else:
        try:
            asm = find_assembler()
            out["assembler"], out["assembler_path"] = asm.name, asm.executable
            out["assemblers_available"] = available_assemblers()
        except Exception as err:  # noqa: BLE001 - AssemblerNotFound carries the install hint
            out["assembler_error"] = str(err)
    try:
        import unicorn

        from riscv_ft.rv.emulator import Emulator  # noqa: F401 - importable is what matters

        out["emulator"] = f"unicorn {unicorn.__version__} (in-process)"
    except ImportError as err:
        out["emulator_error"] = f"{err}; install it with `pip install unicorn`"
    out["qemu_riscv64"] = shutil.which("qemu-riscv64")
    return out


def tracking() -> dict:
    from riscv_ft.tracking.store import artifact_location, tracking_uri

    return {"tracking_uri": tracking_uri(None), "artifact_location": artifact_location()}


# ---------------------------------------------------------------- report


def diagnose(network: bool = True) -> dict:
    report: dict = {"python": platform.python_version(), "platform": platform.platform()}
    report.update(mlx_info())
    report["memory"] = machine_memory_gb()
    report["blas"] = runtime.blas_in_use()
    report["matmul_gflops"] = round(matmul_gflops(), 1)
    if network:
        with ThreadPoolExecutor(2) as pool:  # the two HEADs wait in parallel
            model = pool.submit(model_status, DEFAULT_MODEL)
            data = pool.submit(dataset_status, DEFAULT_DATASET)
            report["model"], report["dataset"] = model.result(), data.result()
    report["riscv"] = riscv_tools()
    report.update(tracking())
    report["problems"] = problems(report)
    return report


def problems(report: dict) -> list[str]:
    found = []
    if sys.platform == "linux" and report["blas"].startswith("bundled") and not report["metal"] and not report["cuda"]:
        found.append(f"MLX runs its bundled reference BLAS (slow); install OpenBLAS: {runtime.INSTALL_HINT}")
    elif report["matmul_gflops"] < SLOW_GFLOPS:
        found.append(f"float32 matmul runs at {report['matmul_gflops']} GFLOP/s (< {SLOW_GFLOPS:g}); training will be slow")
    for key in ("model", "dataset"):
        status = report.get(key)
        if status and not status["cached"] and not status["hub"].startswith("reachable"):
            found.append(f"{key} {status['id']} is neither cached nor reachable ({status['hub']}); "
                         "train offline with experiment=smoke, or data.path=FILE")
    if report["riscv"]["assembler"] is None:
        found.append(report["riscv"].get("assembler_error", "no RISC-V assembler"))
    if report["riscv"]["emulator"] is None:
        found.append(report["riscv"].get("emulator_error", "no RISC-V emulator"))
    return found


def print_report(r: dict) -> None:
    mem = r["memory"]
    lines = [
        f"MLX          {r['mlx_version']} (mlx-lm {r['mlx_lm_version']}), device {r['device']}"
        f"{', Metal' if r['metal'] else ''}{', CUDA' if r['cuda'] else ''}",
        f"memory       {mem['total_gb']} GB total, {mem['available_gb']} GB available"
        + (f", GPU working set {mem['gpu_working_set_gb']} GB" if mem.get("gpu_working_set_gb") else ""),
        f"BLAS         {r['blas']}",
        f"matmul       {r['matmul_gflops']} GFLOP/s (float32 1024x1024 on {r['device']})",
    ]
    for key in ("model", "dataset"):
        if key in r:
            s = r[key]
            lines.append(f"{key:12} {s['id']}: {'cached' if s['cached'] else 'not cached'}"
                         f"{' in ' + s['where'] if s['where'] else ''}; hub {s['hub']}")
    tools = r["riscv"]
    asm = f"{tools['assembler']} ({tools['assembler_path']}); working: {', '.join(tools['assemblers_available'])}" \
        if tools["assembler"] else f"none: {tools.get('assembler_error')}"
    lines += [
        f"assembler    {asm}",
        f"emulator     {tools['emulator'] or 'none: ' + str(tools.get('emulator_error'))}"
        + (f"; qemu-riscv64 at {tools['qemu_riscv64']}" if tools["qemu_riscv64"] else ""),
        f"MLflow       {r['tracking_uri']} (artifacts {r['artifact_location']})",
    ]
    lines += [f"PROBLEM      {p}" for p in r["problems"]] or ["no problems found"]
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m riscv_ft.doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--offline", action="store_true", help="skip the Hugging Face checks (cache and HEAD)")
    args = parser.parse_args(argv)
    report = diagnose(network=not args.offline)
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
