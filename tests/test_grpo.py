"""GRPO (riscv_ft.grpo): the objective against a hand computation, the reference policy with the
adapters off, the scorer's rewards, learning on a toy task, prompts kept apart from evaluation
sets, and an interrupted run that resumes exactly."""

import json
import signal
import subprocess
import sys
import time

import mlx.core as mx
import numpy as np
import pytest

from riscv_ft.checkpoint import latest_checkpoint
from riscv_ft.cli import compose
from riscv_ft.config import ConfigError
from riscv_ft.data.batch import Sample, make_batch
from riscv_ft.data.pipeline import prompt_text
from riscv_ft.grpo import (ADVANTAGE_EPSILON, GrpoTrainer, RewardWeights, adapters_off, group_advantages, grpo_loss,
                           grpo_prompts, grpo_token_losses, scorer_rewards, token_logprobs)
from riscv_ft.model import apply_adapters, load_base
from riscv_ft.trainer import loss_positions
from tests.conftest import REPO, run_train


def test_advantages_and_loss_match_a_hand_computation():
    rewards = np.array([[1.0, 0.1, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    mean, std = 0.275, np.sqrt(((np.array([1.0, 0.1, 0.0, 0.0]) - 0.275) ** 2).mean())  # population std
    expected = np.array([[(r - mean) / (std + ADVANTAGE_EPSILON) for r in rewards[0]], [0.0] * 4])
    np.testing.assert_allclose(group_advantages(rewards), expected, rtol=1e-6)
    assert abs(expected[0, 0] - 1.7234) < 1e-3  # 0.725 / sqrt(0.7075 / 4) = 0.725 / 0.42057

    # Four answer tokens: ratio inside the clip, above it with A > 0 (clipped), below it with
    # A < 0 (clipped), below it with A > 0 (not clipped: min keeps the smaller unclipped term).
    logp = np.array([-1.0, -0.5, -2.0, -0.2], dtype=np.float32)
    old = np.array([-1.1, -0.9, -1.5, 0.1], dtype=np.float32)
    ref = np.array([-1.2, -0.4, -2.5, -0.3], dtype=np.float32)
    adv = np.array([0.7, 1.5, -0.8, 1.1], dtype=np.float32)
    eps, beta = 0.2, 0.05
    ratio = np.exp(logp - old)  # 1.105, 1.492, 0.607, 0.741
    objective = np.minimum(ratio * adv, np.clip(ratio, 1 - eps, 1 + eps) * adv)
    kl = np.exp(ref - logp) - (ref - logp) - 1
    hand = -(objective - beta * kl)
    losses, got_kl, clipped = grpo_token_losses(*(mx.array(a) for a in (logp, old, ref, adv)), eps, beta)
    np.testing.assert_allclose(np.array(losses), hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(got_kl), kl, rtol=1e-5, atol=1e-6)
    assert np.array(clipped).tolist() == [0.0, 1.0, 1.0, 0.0]
    assert hand[1] == pytest.approx(-(1.2 * 1.5) + beta * kl[1], rel=1e-5)  # clipped at 1 + eps

    # The gradient per token: -A * ratio where the unclipped term is the one kept, 0 where the
    # clip acts; the KL term adds beta * (1 - exp(ref - logp)).
    grad = mx.grad(lambda lp: grpo_token_losses(lp, mx.array(old), mx.array(ref), mx.array(adv), eps, beta)[0].sum())(mx.array(logp))
    hand_grad = np.where([1, 0, 0, 1], -adv * ratio, 0.0) + beta * (1 - np.exp(ref - logp))
    np.testing.assert_allclose(np.array(grad), hand_grad, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def tiny():
    cfg = compose(["experiment=smoke", "lora.rank=8", "trainer.compile=false"])
    loaded = load_base(cfg.model)
    mx.random.seed(0)
    lora_meta = apply_adapters(loaded.model, cfg.lora)
    return cfg, loaded.model, loaded.tokenizer, lora_meta


def _answer_batch(model, tokenizer, cfg):
    prompts = ["Put the sum of a1 and a2 into a0.", "Clear t0."]
    samples = []
    for text, answer in zip(prompts, ["add a0, a1, a2", "li t0, 0"]):
        ids = tokenizer.encode(prompt_text(text, tokenizer, "chat"), add_special_tokens=False)
        samples.append(Sample(ids + tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.eos_token_id], len(ids)))
    batch = make_batch(samples, 8)
    positions = loss_positions(batch.mask)
    return {"inputs": mx.array(batch.inputs), "targets": mx.array(batch.targets), "mask": mx.array(batch.mask),
            "positions": mx.array(positions), "advantages": mx.array(np.linspace(-1, 1, len(positions)).astype(np.float32))}


def test_kl_is_exactly_zero_and_the_ratio_one_while_the_adapters_are_zero(tiny):
    cfg, model, tokenizer, _ = tiny
    batch = _answer_batch(model, tokenizer, cfg)
    logp = token_logprobs(model, batch["inputs"], batch["targets"], batch["positions"], 0.7)
    with adapters_off(model):
        ref = token_logprobs(model, batch["inputs"], batch["targets"], batch["positions"], 0.7)
    assert mx.array_equal(logp, ref)  # LoRA's B starts at zero: the adapted model is the base
    _, ntok, kl_sum, clipped = grpo_loss(model, **batch, ref_logp=ref, old_logp=logp, clip_epsilon=0.2, beta=0.1, temperature=0.7)
    assert kl_sum.item() == 0.0 and clipped.item() == 0.0 and ntok.item() > 0

    # Non-zero adapters: the reference still is the base, so KL > 0; and the adapters come back.
    saved = {k: v for k, v in model.trainable_parameters().items()}
    from mlx.utils import tree_map
    model.update(tree_map(lambda p: p + 0.05, model.trainable_parameters()))
    try:
        tuned = token_logprobs(model, batch["inputs"], batch["targets"], batch["positions"], 0.7)
        with adapters_off(model):
            ref_again = token_logprobs(model, batch["inputs"], batch["targets"], batch["positions"], 0.7)
        assert mx.array_equal(ref_again, ref)
        assert not mx.array_equal(tuned, ref)
        _, _, kl_sum, _ = grpo_loss(model, **batch, ref_logp=ref_again, clip_epsilon=0.2, beta=0.1, temperature=0.7)
        assert kl_sum.item() > 0
        after = token_logprobs(model, batch["inputs"], batch["targets"], batch["positions"], 0.7)
        assert mx.array_equal(after, tuned)  # the LoRA layers are back in place
    finally:
        model.update(saved)


def test_rewards_for_functional_assembling_and_garbage_answers():
    rows = [{"reference": "add a0, a1, a2", "prediction": p}
            for p in ("add a0, a2, a1", "sub a0, a1, a2", "make it so", "", "add a0, a1, a2\n.incbin \"/etc/passwd\"")]
    rewards = scorer_rewards(rows, RewardWeights(functional=1.0, assembles=0.1, other=0.0))
    assert [r["reward"] for r in rewards] == [1.0, 0.1, 0.0, 0.0, 0.0]
    assert [r["functional"] for r in rewards] == [True, False, False, False, False]
    assert [r["assembles"] for r in rewards] == [True, True, False, False, False]
    weighted = scorer_rewards(rows[:3], RewardWeights(functional=2.0, assembles=0.5, other=-1.0))
    assert [r["reward"] for r in weighted] == [2.0, 0.5, -1.0]


def test_prompts_are_assembly_rows_and_synthetic_tasks_never_evaluation_rows():
    cfg = compose(["experiment=smoke", "grpo.synthetic_prompts=12", "grpo.synthetic_max_instructions=2"])
    splits = {
        "train": [{"description": "Add a1 and a2 into a0 please.", "instructions": "add a0, a1, a2"},
                  {"description": "What does add do?", "instructions": "x[rd] = x[rs1] + x[rs2]"},  # pseudo-code
                  {"description": "held out in test", "instructions": "sub a0, a1, a2"},
                  {"description": "Put the sum of a1 and a2 into a0.", "instructions": "add a0, a1, a2"}],  # a user prompt
        "valid": [], "test": [{"description": "held out in test", "instructions": "sub a0, a1, a2"}],
    }
    prompts = grpo_prompts(splits, cfg)
    descriptions = [p["description"] for p in prompts]
    assert descriptions[0] == "Add a1 and a2 into a0 please." and prompts[0]["reference"] == "add a0, a1, a2"
    assert "What does add do?" not in descriptions and "held out in test" not in descriptions
    assert "Put the sum of a1 and a2 into a0." not in descriptions
    assert len(prompts) == 1 + 12  # the synthetic tasks (verified by the assembler and emulator)
    cfg.grpo.split_prompts = False  # the generated tasks alone
    assert [p["description"] for p in grpo_prompts(splits, cfg)] == descriptions[1:]
    cfg.grpo.synthetic_prompts = 0
    with pytest.raises(ConfigError, match="no prompts .*grpo.split_prompts=false"):
        grpo_prompts(splits, cfg)


def test_task_prompts_are_multi_instruction_tasks_whose_scratch_registers_the_reward_honours():
    cfg = compose(["experiment=smoke", "grpo.synthetic_prompts=0", "grpo.task_prompts=30"])
    prompts = grpo_prompts({"train": [], "valid": [], "test": []}, cfg)
    from riscv_ft.data.tasks import task_rows

    tasks = task_rows(30, seed=cfg.trainer.seed + 7927)
    assert [p["description"] for p in prompts] == [t["description"] for t in tasks]
    assert [p.get("scratch", []) for p in prompts] == [list(t["scratch"]) for t in tasks]
    assert sum(len(p["reference"].splitlines()) > 1 for p in prompts) >= 25  # most need several instructions
    with_scratch = [p for p in prompts if p.get("scratch")]
    assert with_scratch, "no generated task declared a scratch register"
    # The reward scores like the evaluation: a scratch register may hold anything at the end,
    # any other register must end as the reference leaves it.
    rows = [{"reference": "li t0, 5\nadd a0, a1, t0", "prediction": "addi a0, a1, 5", "scratch": ["t0"]},
            {"reference": "li t0, 5\nadd a0, a1, t0", "prediction": "addi a0, a1, 5"},
            {"reference": "li t0, 5\nadd a0, a1, t0", "prediction": "li t1, 5\nadd a0, a1, t1", "scratch": ["t0"]}]
    assert [r["functional"] for r in scorer_rewards(rows, RewardWeights(1.0, 0.1, 0.0))] == [True, False, False]


def test_sampled_answers_carry_their_prompts_scratch_registers_to_the_reward():
    """GrpoTrainer's rows (what reward_fn scores) keep each prompt's scratch registers."""
    cfg = compose(["experiment=smoke", "trainer.objective=grpo", "grpo.group_size=2", "grpo.prompts_per_step=2",
                   "grpo.max_tokens=2", "lora.rank=4"])
    loaded = load_base(cfg.model)
    apply_adapters(loaded.model, cfg.lora)
    prompts = [{"description": "Add 5 to a1 into a0.", "reference": "li t0, 5\nadd a0, a1, t0", "scratch": ["t0"]},
               {"description": "Copy a1 to a0.", "reference": "mv a0, a1"}]
    seen = []
    trainer = GrpoTrainer(loaded.model, loaded.tokenizer, cfg, prompts,
                          reward_fn=lambda rows: seen.extend(rows) or [{"reward": 0.0} for _ in rows])
    trainer.sample_step(1)
    by_prompt = {r["description"]: r.get("scratch") for r in seen}
    assert by_prompt == {"Add 5 to a1 into a0.": ["t0"], "Copy a1 to a0.": None} and len(seen) == 4


def test_dynamic_sampling_trains_only_on_groups_whose_rewards_differ():
    """grpo.oversample: m x prompts_per_step prompts sampled in one batch; uniform groups are
    sampled (and reported) but not trained on, at most prompts_per_step informative ones are;
    with none found the first prompts_per_step groups are (the KL term alone); oversample=1
    trains every group."""
    def run(oversample: int, varying: set):
        cfg = compose(["experiment=smoke", "trainer.objective=grpo", "grpo.group_size=2", "grpo.prompts_per_step=2",
                       "grpo.max_tokens=2", "lora.rank=4", f"grpo.oversample={oversample}"])
        loaded = load_base(cfg.model)
        apply_adapters(loaded.model, cfg.lora)
        prompts = [{"description": f"Prompt {k}.", "reference": "nop"} for k in range(6)]
        calls = []

        def reward(rows):
            calls.append(len(rows))
            return [{"reward": float(i % 2) if r["description"] in varying else 0.5} for i, r in enumerate(rows)]
        trainer = GrpoTrainer(loaded.model, loaded.tokenizer, cfg, prompts, reward_fn=reward)
        return calls, *trainer.sample_step(1)

    every = {f"Prompt {k}." for k in range(6)}
    calls, sampled, trained, ids = run(3, varying={"Prompt 1.", "Prompt 3.", "Prompt 4."})
    assert calls == [12] and len(sampled) == 12 and len(trained) == 4 == len(ids)  # one batch; two groups trained
    assert all(len({r["reward"] for r in trained if r["group"] == g}) == 2 for g in {r["group"] for r in trained})
    assert sum(r["trained"] for r in sampled) == 4
    calls, sampled, trained, _ = run(3, varying=set())
    assert trained == sampled[:4]
    calls, sampled, trained, _ = run(1, varying=every)
    assert calls == [4] and trained == sampled and all(r["trained"] for r in sampled)


@pytest.mark.parametrize("overrides, message", [
    (["trainer.objective=ppo"], "trainer.objective='ppo' is not allowed: expected sft or grpo"),
    (["trainer.objective=grpo", "grpo.group_size=1"], "grpo.group_size=1 is not allowed"),
    (["trainer.objective=grpo", "grpo.clip_epsilon=1.5"], "grpo.clip_epsilon=1.5 is not allowed"),
    (["trainer.objective=grpo", "grpo.kl_reference=sft"], "grpo.kl_reference='sft' is not allowed: expected base"),
    (["trainer.objective=grpo", "grpo.kl_reference=init"], "grpo.kl_reference=init needs grpo.init_adapters"),
    (["trainer.objective=grpo", "lora.fine_tune_type=full"], "trainer.objective=grpo needs adapters"),
])
def test_bad_grpo_settings_fail_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compose(["experiment=smoke", *overrides])


@pytest.mark.slow
def test_grpo_raises_the_mean_reward_of_a_toy_task_on_the_tiny_model():
    """The tiny random model cannot write RISC-V, so the reward here is a toy one it can learn:
    the share of answer tokens in a fixed half of the vocabulary (the tokens whose output-layer
    row points along a random direction u, so moving the hidden state along u raises all of
    them). Starts near 0.5. The product reward (the scorer) is tested above."""
    cfg = compose(["experiment=smoke", "trainer.iters=30", "trainer.learning_rate=2e-2", "trainer.warmup_steps=0",
                   "trainer.min_lr_ratio=1.0", "trainer.report_every=1", "trainer.eval_every=0", "trainer.save_every=0",
                   "trainer.batch_size=16", "grpo.group_size=8", "grpo.prompts_per_step=2", "grpo.max_tokens=6",
                   "grpo.beta=0.0", "lora.rank=8"])
    loaded = load_base(cfg.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    head = np.array(model.lm_head.weight)
    good = head @ np.random.default_rng(0).standard_normal(head.shape[1]) > 0
    mx.random.seed(0)
    apply_adapters(model, cfg.lora)
    prompts = [{"description": f"Task {i}", "reference": "nop"} for i in range(4)]

    def good_mass() -> float:  # the expected reward of the first answer token, over the prompts
        ids = [tokenizer.encode(prompt_text(p["description"], tokenizer, "chat"), add_special_tokens=False) for p in prompts]
        probs = [mx.softmax(model(mx.array([i]))[0, -1].astype(mx.float32)) for i in ids]
        return float(np.mean([np.array(p)[good].sum() for p in probs]))

    trainer = GrpoTrainer(model, tokenizer, cfg, prompts,
                          reward_fn=lambda rows: [{"reward": float(good[r["answer_tokens"]].mean())} for r in rows])
    before = good_mass()
    history = []
    trainer.fit([], [], lambda step, m: history.append(m["reward_mean"]), lambda step: None)
    after = good_mass()
    first, last = np.mean(history[:10]), np.mean(history[-10:])
    print(f"toy reward: first 10 steps {first:.3f}, last 10 {last:.3f}; expected first-token reward {before:.3f} -> {after:.3f}")
    assert len(history) == 30
    assert last > first + 0.04
    assert after > before + 0.05


def _largest_difference(a_dir, b_dir) -> float:
    a = mx.load(str(a_dir / "adapters" / "adapters.safetensors"))
    b = mx.load(str(b_dir / "adapters" / "adapters.safetensors"))
    assert a.keys() == b.keys()
    return max(float(mx.abs(a[k] - b[k]).max()) for k in a)


@pytest.mark.slow
def test_grpo_from_sft_adapters_stopped_with_ctrl_c_resumes_exactly(tmp_path, smoke_run):
    # From the SFT smoke run's adapters (rank 8): the KL term moves them even though the tiny
    # model earns no reward, and the sampled answers depend on them, so only an exact resume
    # (same prompts, same samples, same optimizer state) ends with the same adapters.
    run = ["experiment=smoke", "trainer.objective=grpo", "lora.rank=8", f"grpo.init_adapters={smoke_run / 'adapters'}",
           "trainer.iters=8", "trainer.save_every=0", "trainer.eval_every=0", "trainer.report_every=1",
           "grpo.group_size=4", "grpo.prompts_per_step=2", "grpo.max_tokens=6", "grpo.beta=0.5", "grpo.synthetic_prompts=16",
           "grpo.samples_every=2", "eval.num_rows=1", "eval.max_tokens=2", "eval.print_samples=0", "tracking.enabled=false"]
    left_alone = tmp_path / "left_alone"
    result = run_train(*run, f"hydra.run.dir={left_alone}")
    assert result.returncode == 0, result.stderr[-2000:]
    start = mx.load(str(smoke_run / "adapters" / "adapters.safetensors"))
    end = mx.load(str(left_alone / "adapters" / "adapters.safetensors"))
    assert max(float(mx.abs(start[k] - end[k]).max()) for k in start) > 0  # GRPO did change the adapters
    history = [json.loads(line) for line in (left_alone / "history.jsonl").read_text().splitlines()]
    assert {"reward_mean", "functional_fraction", "kl", "answer_length", "train_loss", "informative_groups"} <= set(history[0])
    assert history[0]["kl"] > 0

    def refuse(constant):  # strict JSON: GRPO has no best validation loss, and Infinity is no JSON
        raise AssertionError(f"metrics.json holds {constant}")

    assert json.loads((left_alone / "metrics.json").read_text(), parse_constant=refuse)["best_val_loss"] is None

    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "riscv_ft.train", *run, f"hydra.run.dir={stopped}"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while "step 3/8" not in ((stopped / "train.log").read_text() if (stopped / "train.log").exists() else ""):
        assert proc.poll() is None and time.time() < deadline, "the run ended before step 3"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, proc.stderr.read()[-2000:]
    step = latest_checkpoint(stopped / "checkpoints").step
    assert 3 <= step < 8

    resumed = run_train(f"resume={stopped}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    largest = _largest_difference(left_alone, stopped)
    print(f"stopped at step {step}, resumed: largest adapter difference {largest}")
    assert largest == 0.0
    # The samples file holds each sampled step once, as the run left alone wrote it.
    assert (stopped / "grpo_samples.jsonl").read_text() == (left_alone / "grpo_samples.jsonl").read_text()


def test_kl_reference_init_measures_kl_from_the_adapters_grpo_started_from(smoke_run):
    """grpo.kl_reference=init: before the first update the policy is its reference, so the first
    step's KL is zero (with the base as reference it is not: the SFT adapters moved the model);
    once the toy reward (as above) has moved the policy it is above zero, so the reference is not
    simply the current weights."""
    from riscv_ft.grpo import load_init_adapters

    kl = {}
    for reference in ("base", "init"):
        cfg = compose(["experiment=smoke", "trainer.iters=3", "trainer.learning_rate=2e-2", "trainer.warmup_steps=0",
                       "trainer.report_every=1", "trainer.eval_every=0", "trainer.save_every=0", "trainer.batch_size=16",
                       "grpo.group_size=8", "grpo.prompts_per_step=2", "grpo.max_tokens=6", "grpo.beta=0.5",
                       f"grpo.kl_reference={reference}", f"grpo.init_adapters={smoke_run / 'adapters'}",
                       "trainer.objective=grpo", "lora.rank=8"])
        loaded = load_base(cfg.model)
        model, tokenizer = loaded.model, loaded.tokenizer
        good = np.array(model.lm_head.weight) @ np.random.default_rng(0).standard_normal(model.lm_head.weight.shape[1]) > 0
        mx.random.seed(0)
        load_init_adapters(model, cfg.grpo.init_adapters, apply_adapters(model, cfg.lora))
        prompts = [{"description": f"Task {i}", "reference": "nop"} for i in range(4)]
        trainer = GrpoTrainer(model, tokenizer, cfg, prompts,
                              reward_fn=lambda rows: [{"reward": float(good[r["answer_tokens"]].mean())} for r in rows])
        history = []
        trainer.fit([], [], lambda step, m: history.append(m["kl"]), lambda step: None)
        kl[reference] = history
    print(f"KL per step, reference base: {kl['base']}, reference init: {kl['init']}")
    assert kl["base"][0] > 1e-3
    assert kl["init"][0] < 1e-6 < kl["init"][-1]


def test_a_resumed_run_refuses_reference_adapters_that_changed(tmp_path, smoke_run):
    """With grpo.kl_reference=init the init adapters are the KL term's reference for every step,
    also after a resume: a resume over the same file goes on, one over a changed file stops in one
    line before anything is written."""
    import shutil

    init = tmp_path / "init"
    shutil.copytree(smoke_run / "adapters", init)
    run_dir = tmp_path / "run"
    result = run_train("experiment=smoke", "trainer.objective=grpo", "lora.rank=8", f"grpo.init_adapters={init}",
                       "grpo.kl_reference=init", "trainer.iters=1", "trainer.eval_every=0", "grpo.group_size=2",
                       "grpo.prompts_per_step=1", "grpo.max_tokens=2", "grpo.synthetic_prompts=4", "grpo.samples_every=0",
                       "eval.num_rows=1", "eval.user_prompts=0", "eval.max_tokens=2", "eval.print_samples=0",
                       "tracking.enabled=false", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert run_train(f"resume={run_dir}").returncode == 0
    weights = mx.load(str(init / "adapters.safetensors"))
    mx.save_safetensors(str(init / "adapters.safetensors"), {k: v * 1.5 for k, v in weights.items()})
    before = (run_dir / "metrics.json").read_text()
    refused = run_train(f"resume={run_dir}")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: grpo.init_adapters={init}: adapters.safetensors changed since this run started"), line
    assert (run_dir / "metrics.json").read_text() == before


def test_init_adapters_that_do_not_fit_fail_in_one_line(tiny, tmp_path):
    cfg, model, _, lora_meta = tiny
    from riscv_ft.grpo import load_init_adapters
    from riscv_ft.model import save_adapters

    with pytest.raises(ConfigError, match="no adapters.safetensors and adapter_config.json there"):
        load_init_adapters(model, str(tmp_path / "nothing"), lora_meta)
    save_adapters(model, tmp_path / "rank8", "tiny", cfg.lora, lora_meta)
    other = {**lora_meta, "lora_parameters": {**lora_meta["lora_parameters"], "rank": 16}}
    with pytest.raises(ConfigError, match="its lora rank is 8, this run's is 16"):
        load_init_adapters(model, str(tmp_path / "rank8"), other)
    load_init_adapters(model, str(tmp_path / "rank8"), lora_meta)  # the same shape loads


@pytest.mark.slow
def test_two_processes_each_sample_their_share_of_the_prompts(tmp_path):
    import os

    from tests.test_distributed import _launcher

    run_dir = tmp_path / "parallel"
    result = subprocess.run(
        [*_launcher(), "-n", "2", "--backend", "ring", "--", sys.executable, "-m", "riscv_ft.train", "experiment=smoke",
         "trainer.objective=grpo", "trainer.iters=2", "trainer.eval_every=0", "grpo.group_size=4", "grpo.prompts_per_step=4",
         "grpo.max_tokens=4", "grpo.synthetic_prompts=16", "grpo.samples_every=1", "eval.num_rows=1", "eval.max_tokens=2",
         "eval.print_samples=0", "tracking.enabled=false", f"hydra.run.dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ),
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["processes"] == 2
    rows = [json.loads(line) for line in (run_dir / "grpo_samples.jsonl").read_text().splitlines()]
    # Rank 0 wrote its own groups only: 2 of the step's 4 prompts, 4 answers each.
    for step in (1, 2):
        mine = [r for r in rows if r["step"] == step]
        assert len(mine) == 8 and len({r["description"] for r in mine}) == 2
