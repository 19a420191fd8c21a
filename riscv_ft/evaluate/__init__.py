"""Evaluation without a model: score predicted RISC-V assembly against references.

    from riscv_ft.evaluate.scorer import score_rows, summarize
    scored = score_rows([{"reference": "add rd, rs1, rs2", "prediction": "add rd, rs2, rs1"}])
    summarize(scored)["functional_rate"]   # 1.0

Modules, in the order data flows through them:

* reference.py  classify a reference (assembly, mnemonic, pseudo-code, directive, other),
                normalize text for exact match, bind placeholder operands (rd, imm, label...)
* sanitize.py   allow-list for untrusted answers: no file access, no macros, bounded size
* assembler.py  find a real assembler (GNU as, llvm-mc, clang, zig) and assemble thousands of
                snippets per process, isolating the ones that fail
* elf.py        cut the batch object back into snippets and resolve their relocations
* emulator.py   run machine code in unicorn (RV64GC) from fixed random states, bounded
* scorer.py     score_rows() and summarize(): the public API; `python -m riscv_ft.score` is
                its command line
* verified.py   verified decoding: pick, among sampled answers, the one whose behaviour in the
                emulator most of them share (pick_by_behaviour)
* model_eval.py answer rows with a model (greedy, or verified) and score them
"""
