"""Evaluation without a model: score predicted RISC-V assembly against references.

    from riscv_ft.evaluate.scorer import score_rows, summarize
    scored = score_rows([{"reference": "add rd, rs1, rs2", "prediction": "add rd, rs2, rs1"}])
    summarize(scored)["functional_rate"]   # 1.0

The RISC-V tools it builds on (assembler, emulator, ELF reader, sanitizer, statement
classification) live in riscv_ft.rv. Modules:

* scorer.py     score_rows() and summarize(): the public API; `python -m riscv_ft.score` is
                its command line
* verified.py   verified decoding: pick, among sampled answers, the one whose behaviour in the
                emulator most of them share (pick_by_behaviour)
* model_eval.py answer rows with a model (greedy, or verified) and score them
"""
