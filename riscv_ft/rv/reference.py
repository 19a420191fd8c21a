"""Understand a reference answer: what kind of text it is, how to compare it as text, and how
to turn its placeholder operands into concrete ones.

Classes (the dataset's targets come in all of these):

* ``assembly``     instructions with operands, possibly placeholders: ``add rd, rs1, rs2``;
                   also operand-less instructions such as ``ecall``, ``ret``, ``fence``, and
                   several lines with labels, alone on a line (``done:``) or numeric (``1:``,
                   ``bnez t0, 1b``)
* ``mnemonic``     a bare mnemonic: ``fmax.d``, ``slt``
* ``pseudo-code``  semantics, not assembly: ``x[rd] = x[rs1] + x[rs2]``, ``RaiseException(...)``
* ``directive``    an assembler directive: ``.dword value``
* ``other``        register names (``x16``), text damaged by PDF extraction (``sdrs2, offset( rs1)``),
                   anything else

Placeholder binding: the same concrete operands go into reference and prediction, so a
prediction that follows the template (``add rd, rs1, rs2``) assembles to the same code. Registers
come from x8-x15/f8-f15 so compressed forms (``c.lw rd', uimm(rs1')``) accept them; immediates
are 16 (valid for every immediate field of RV64GC, including the scaled compressed ones); shift
amounts 3; ``csr`` is mscratch; branch and jump targets (``label``, ``symbol``, and ``offset``/
``imm`` of a branch) become the harness's branch target. A register the answer also names
concretely is never used for a placeholder, so a prediction with concrete registers does not
match a template by coincidence.
"""

from __future__ import annotations

import re

from riscv_ft.rv.sanitize import REGISTERS, TARGET_LABEL

CLASSES = ("assembly", "mnemonic", "pseudo-code", "directive", "other")

# Instructions complete without operands (a reference `ecall` is assembly, not a bare mnemonic).
ZERO_OPERAND = {"nop", "ret", "ecall", "ebreak", "fence", "fence.i", "fence.tso", "mret", "sret", "uret",
                "wfi", "c.nop", "c.ebreak", "sfence.vma", "unimp", "c.unimp", "pause"}

# Marks of pseudo-code: assignments and arrows, register-file indexing (x[rd], X(rs1), M[...]),
# pc arithmetic, Sail keywords, sext(/zext( calls, braces and maths symbols, Name(...) calls.
_PSEUDO = re.compile(
    r"=|←|→|<-|->|\b[xfM]\s*\[|\b[XF]\s*\(|\bpc\s*\+"
    r"|\b(?:let|if|then|else|foreach|function|val|return)\b|\b[sz]ext\s*\("
    r"|[{};×÷≠≥≤]|^[A-Z][A-Za-z]*\(",
)
_MNEMONIC = re.compile(r"[a-z][a-z0-9]*(?:\.[a-z0-9]+)*")
_LABEL = r"(?:[A-Za-z_.$][\w.$]*|\d+):\s*"  # `done:` or a numeric local label `1:`
_ASM_LINE = re.compile(f"(?:{_LABEL})*" + r"[A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z0-9]+)*(?:\s+[\w\s,()%+\-'.$]*)?")
_LABEL_LINE = re.compile(f"(?:{_LABEL})+")  # a line with labels only: `done:`


def classify(reference: str) -> str:
    """One of CLASSES for a reference answer."""
    # a trailing comment (`xori rd, rs1, -1 # [-1 = 0xFFFFFFFF ]`) does not make pseudo-code
    lines = [ln.split("#", 1)[0].strip() or ln.strip() for ln in reference.splitlines() if ln.strip()]
    if not lines:
        return "other"
    if re.sub(f"^(?:{_LABEL})*", "", lines[0]).startswith("."):
        return "directive"
    joined = " ".join(lines)
    if _PSEUDO.search(joined):
        return "pseudo-code"
    if len(lines) == 1 and len(joined.split()) == 1:
        token = joined.lower()
        if token in ZERO_OPERAND:
            return "assembly"
        if token in REGISTERS or "/" in token:  # `x16`, `s0/fp`
            return "other"
        return "mnemonic" if _MNEMONIC.fullmatch(token) else "other"
    # labels may stand alone on a line (`done:`), but some line must be an instruction
    if all(_ASM_LINE.fullmatch(ln) or _LABEL_LINE.fullmatch(ln) for ln in lines) and any(
            _ASM_LINE.fullmatch(ln) for ln in lines):
        return "assembly"
    return "other"


def normalize(text: str) -> str:
    """Text for exact_match: case, commas and whitespace do not count.

    `ADD rd,rs1 , rs2` == `add rd, rs1, rs2`; `lw a0, 8( a1 )` == `lw a0, 8(a1)`; blank lines
    and `;` vs newline between statements do not count either.
    """
    out = []
    for stmt in re.split(r"[\n;]", text.lower()):
        stmt = re.sub(r"[\s,]+", " ", stmt).strip()
        stmt = re.sub(r"\s*([()])\s*", r"\1", stmt)
        if stmt:
            out.append(stmt)
    return "\n".join(out)


def mnemonics(text: str) -> list[str]:
    """The mnemonic (or directive) of each statement, lower case, labels skipped."""
    out = []
    for stmt in re.split(r"[\n;]", text):
        stmt = re.sub(r"^\s*(?:[A-Za-z_.$][\w.$]*\s*:\s*|\d+\s*:\s*)*", "", stmt.split("#", 1)[0]).strip()
        if stmt:
            out.append(re.split(r"[\s,]", stmt, 1)[0].lower())
    return out


def instruction_count(text: str) -> int:
    """How many statements of `text` are instructions (labels and directives do not count).

    A pseudo-instruction counts once (`li a0, 0x12345678` is one statement, two machine
    instructions): this counts what a person wrote. More than one makes a prompt "multi".
    """
    return sum(1 for m in mnemonics(text) if not m.startswith("."))


# --------------------------------------------------------------- placeholder binding

# placeholder -> (kind, preferred concrete operand). Kinds "x"/"f" are registers; the rest fixed text.
_INT_PLACEHOLDERS = {"rd": "a0", "rs": "a1", "rs1": "a1", "rs2": "a2", "rs3": "a3", "rt": "a2",
                     "rd'": "a0", "rs'": "a1", "rs1'": "a1", "rs2'": "a2"}
_FP_PLACEHOLDERS = {"fd": "fa0", "frd": "fa0", "fs": "fa1", "frs": "fa1", "frs1": "fa1", "frs2": "fa2", "frt": "fa2",
                    "frs3": "fa3", "fs1": "fa1", "fs2": "fa2", "fs3": "fa3"}
_AMBIGUOUS = {"fs1", "fs2", "fs3"}  # also real ABI names (f9, f18, f19): placeholders only in templates
_IMMEDIATES = {"imm": "16", "immediate": "16", "simm": "16", "uimm": "16", "nzimm": "16", "nzuimm": "16",
               "zimm": "16", "imm12": "16", "imm20": "16", "uimm5": "16", "offset": "16", "shamt": "3",
               "constant": "16", "CONSTANT": "16", "csr": "mscratch", "pred": "iorw", "succ": "iorw", "rm": "rne"}
_TARGETS = {"label", "symbol", "SYMBOL", "target", "dest"}
_INT_POOL = ["a0", "a1", "a2", "a3", "a4", "a5", "s0", "s1", "t0", "t1", "t2", "a6", "a7", "t3", "t4", "t5", "t6"]
_FP_POOL = ["fa0", "fa1", "fa2", "fa3", "fa4", "fa5", "fs0", "fs1", "ft0", "ft1", "ft2", "ft3", "fa6", "fa7"]
# mnemonics whose offset/imm operand is a branch target rather than a number
_CONTROL = re.compile(r"(?:c\.)?(?:b[a-z]*|j|jal|call|tail|la|lla|lga)")
_OPERAND_TOKEN = re.compile(r"(?<![\w.$])[A-Za-z_][A-Za-z0-9_]*'?")  # not inside 0x1f or 1b


def _split_mnemonic(stmt: str) -> tuple[str, str]:
    m = re.match(f"(\\s*(?:{_LABEL})*)(\\S*)(.*)", stmt, re.S)
    return m.group(1) + m.group(2), m.group(3)


def _placeholders_in(text: str, ambiguous_are_placeholders: bool) -> set[str]:
    found = set()
    for stmt in text.splitlines():
        _, operands = _split_mnemonic(stmt)
        for tok in _OPERAND_TOKEN.findall(operands):
            if tok in _INT_PLACEHOLDERS or tok in _IMMEDIATES or tok in _TARGETS:
                found.add(tok)
            elif tok in _FP_PLACEHOLDERS and (tok not in _AMBIGUOUS or ambiguous_are_placeholders):
                found.add(tok)
    return found


def _concrete_registers(text: str, placeholders: set[str]) -> set[tuple[str, int]]:
    used = set()
    for stmt in text.splitlines():
        _, operands = _split_mnemonic(stmt)
        for tok in _OPERAND_TOKEN.findall(operands):
            if tok not in placeholders and tok.lower() in REGISTERS:
                used.add(REGISTERS[tok.lower()])
    return used


def bind_placeholders(reference: str, prediction: str) -> tuple[str, str, dict[str, str]]:
    """(reference, prediction, binding) with the same concrete operand for each placeholder."""
    unambiguous = _placeholders_in(reference, ambiguous_are_placeholders=False)
    # `fs1` is a template placeholder only when the reference is a template at all
    templated = bool(unambiguous)
    placeholders = _placeholders_in(reference, templated) | _placeholders_in(prediction, templated)
    if not placeholders:
        return reference, prediction, {}
    used = _concrete_registers(reference, placeholders) | _concrete_registers(prediction, placeholders)
    binding: dict[str, str] = {}
    taken: dict[str, str] = {}  # preferred register -> concrete, so rs and rs1 share a register
    for name in sorted(placeholders, key=_placeholder_order):
        if name in _INT_PLACEHOLDERS or name in _FP_PLACEHOLDERS:
            preferred = _INT_PLACEHOLDERS.get(name) or _FP_PLACEHOLDERS[name]
            if preferred not in taken:
                pool = _INT_POOL if name in _INT_PLACEHOLDERS else _FP_POOL
                candidates = [preferred] + pool
                taken[preferred] = next(r for r in candidates
                                        if REGISTERS[r] not in used and r not in taken.values())
            binding[name] = taken[preferred]
        elif name in _TARGETS:
            binding[name] = TARGET_LABEL
        else:
            binding[name] = _IMMEDIATES[name]
    return _apply(reference, binding), _apply(prediction, binding), binding


def _placeholder_order(name: str) -> tuple[int, str]:
    order = ["rd", "rd'", "rs", "rs1", "rs'", "rs1'", "rs2", "rs2'", "rs3", "rt",
             "fd", "frd", "fs", "frs", "fs1", "frs1", "fs2", "frs2", "frt", "fs3", "frs3"]
    return (order.index(name) if name in order else len(order), name)


def _apply(text: str, binding: dict[str, str]) -> str:
    out = []
    for stmt in text.split("\n"):
        head, operands = _split_mnemonic(stmt)
        control = bool(_CONTROL.fullmatch(head.split(":")[-1].strip().lower()))

        def sub(m: re.Match) -> str:
            tok = m.group(0)
            if tok in ("offset", "imm", "immediate") and control:
                return TARGET_LABEL
            return binding.get(tok, tok)

        out.append(head + _OPERAND_TOKEN.sub(sub, operands))
    return "\n".join(out)
