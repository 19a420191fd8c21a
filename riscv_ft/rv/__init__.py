"""RISC-V itself: facts about the instruction set and real tools to assemble and run it.

Nothing here knows about models, data sets or scores; `data/` (synthetic and task
verification, oversampling) and `evaluate/` (scoring) both build on it.

* reference.py  classify a statement (assembly, mnemonic, pseudo-code, directive, other),
                normalize text for exact match, bind placeholder operands (rd, imm, label...)
* sanitize.py   allow-list for untrusted assembly: no file access, no macros, bounded size
* assembler.py  find a real assembler (GNU as, llvm-mc, clang, zig) and assemble thousands of
                snippets per process, isolating the ones that fail
* elf.py        cut the batch object back into snippets and resolve their relocations
* emulator.py   run machine code in unicorn (RV64GC) from fixed random states, bounded
"""
