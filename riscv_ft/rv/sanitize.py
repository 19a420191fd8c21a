"""Turn untrusted assembly text (a model's answer) into source that is safe to assemble.

Model output is hostile input. Assemblers can read host files (`.incbin`, `.include`),
expand macros without bound (`.rept`, `.macro`, `.irp`), emit huge outputs (`.fill`,
`.space`), switch sections or define symbols that leak into other snippets of the same
batch. So nothing reaches the assembler unless it passes an allow-list:

* printable ASCII only, no quotes or backslashes (so no strings and hence no file names),
  at most MAX_CHARS characters and MAX_STATEMENTS statements;
* each statement is labels followed by an instruction (mnemonic + plain operand
  expression) or one of a few harmless directives (`.option rvc|norvc`, small alignments,
  a handful of data values, `.insn`);
* labels are renamed to names private to the snippet (named labels and numeric `1:`/`1b`/`1f`
  alike), and the harness's own names (the __rv prefix, its sections .text.rv<N>) are
  refused, so snippets assembled together in one file cannot see each other's labels and a
  snippet's verdict does not depend on its position in the batch.

The output has one statement per line, so an assembler's error line number points back to a
statement of the answer. Names carry the marker SNIPPET_MARKER, which the batch assembler
replaces by a per-snippet prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_CHARS = 4000  # a 1-3 instruction answer is ~15-60 characters; this leaves ample room
MAX_STATEMENTS = 200
MAX_DATA_ITEMS = 16  # values per .byte/.word/... directive

SNIPPET_MARKER = "__rvS_"  # replaced by "__rv<index>_" when snippets are batched
# The one reserved name an answer (or a bound reference) may use: the branch target the
# harness places right after the snippet (see assembler.py). Placeholder binding maps
# `label`, `symbol`, branch `offset`s ... to it.
TARGET_LABEL = "__rv_target"
# The batch assembler puts snippet p in section SECTION_PREFIX + str(p). A section's name is a
# symbol, so `beq a0, a1, .text.rv2` would reach the third snippet's section in a batch and be
# undefined alone: names with this prefix are refused, like the __rv prefix.
SECTION_PREFIX = ".text.rv"

INT_ABI = ["zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1"] + [f"a{i}" for i in range(8)] + [
    f"s{i}" for i in range(2, 12)] + ["t3", "t4", "t5", "t6"]
FP_ABI = [f"ft{i}" for i in range(8)] + ["fs0", "fs1"] + [f"fa{i}" for i in range(8)] + [
    f"fs{i}" for i in range(2, 12)] + [f"ft{i}" for i in range(8, 12)]
# register name -> ("x"|"f", number)
REGISTERS: dict[str, tuple[str, int]] = {name: ("x", i) for i, name in enumerate(INT_ABI)}
REGISTERS.update({f"x{i}": ("x", i) for i in range(32)})
REGISTERS["fp"] = ("x", 8)
REGISTERS.update({name: ("f", i) for i, name in enumerate(FP_ABI)})
REGISTERS.update({f"f{i}": ("f", i) for i in range(32)})

# Executing these (or raw bytes from data directives / .insn, which may encode anything) can
# change machine state that a register snapshot does not cover (privilege, trap vectors, PMP),
# so the emulator starts a fresh machine after running such a snippet.
_PRIVILEGED_MNEMONICS = {"mret", "sret", "uret", "dret", "wfi", "sfence.vma", "sfence.vm",
                         "hfence.vvma", "hfence.gvma", "sinval.vma"}

_DATA_DIRECTIVES = {".byte", ".half", ".short", ".hword", ".2byte", ".word", ".long", ".4byte",
                    ".dword", ".quad", ".8byte"}
_ALIGN_LIMITS = {".align": 6, ".p2align": 6, ".balign": 64}  # at most 64 bytes of padding

_MNEMONIC = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z0-9]+)*")
_LABEL_DEF = re.compile(r"\s*([A-Za-z_.$][A-Za-z0-9_.$]*|\d+)\s*:(?!:)")
# Operand text: registers, numbers, symbols, %hi()-style modifiers and arithmetic. No quotes,
# no '=', no '@', no ':' - nothing that names a file or assigns a symbol.
_OPERAND_CHARS = re.compile(r"[A-Za-z0-9_.$,()%+\-*/<>&|^~! \t]*")
_TOKEN = re.compile(
    r"0[xX][0-9A-Fa-f]+|0[bB][01]+(?![0-9A-Za-z_.$])|(\d+)([bfBF])(?![0-9A-Za-z_.$])|\d+"
    r"|[A-Za-z_.$][A-Za-z0-9_.$]*|[^A-Za-z0-9_.$]+"
)


class Refused(ValueError):
    """The text is not something we are willing to hand to an assembler."""


@dataclass(frozen=True)
class Sanitized:
    """Safe assembler source for one snippet."""

    statements: tuple[str, ...]  # one per output line; private names carry SNIPPET_MARKER
    originals: tuple[str, ...]  # the answer's statement each line came from (for messages)
    names: tuple[tuple[str, str], ...]  # (private name without marker, original label)
    privileged: bool  # see _PRIVILEGED_MNEMONICS


def _split_statements(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]  # '#' starts a comment anywhere on a RISC-V line
        out.extend(part.strip() for part in line.split(";"))  # ';' separates statements
    return [s for s in out if s]


def sanitize(text: str) -> Sanitized:
    """Check `text` against the allow-list and return source safe to assemble.

    Raises Refused with a one-line reason for anything not clearly harmless.
    """
    if not isinstance(text, str):
        raise Refused(f"answer is {type(text).__name__}, not text")
    if len(text) > MAX_CHARS:
        raise Refused(f"answer too long: {len(text)} characters (limit {MAX_CHARS})")
    for i, ch in enumerate(text):
        if not (" " <= ch <= "~" or ch in "\t\n\r"):
            raise Refused(f"non-ASCII or control character {ch!r} at offset {i}")
    for bad in ('"', "'", "\\", "`", "/*", "*/"):
        if bad in text:
            raise Refused(f"character {bad!r} is not allowed (no strings, escapes or C comments)")
    statements = _split_statements(text)
    if not statements:
        raise Refused("empty answer")
    if len(statements) > MAX_STATEMENTS:
        raise Refused(f"answer too long: {len(statements)} statements (limit {MAX_STATEMENTS})")

    # Pass 1: split off label definitions, so references can be resolved in pass 2.
    parsed: list[tuple[list[str], str]] = []
    for stmt in statements:
        labels = []
        while m := _LABEL_DEF.match(stmt):
            labels.append(m.group(1))
            stmt = stmt[m.end():].strip()
        parsed.append((labels, stmt))

    named: dict[str, str] = {}  # original -> private
    numeric: dict[str, list[tuple[int, str]]] = {}  # "1" -> [(statement index, private), ...]
    names: list[tuple[str, str]] = []
    for idx, (labels, _) in enumerate(parsed):
        for label in labels:
            private = f"L{len(names)}"
            if label.isdigit():
                numeric.setdefault(str(int(label)), []).append((idx, private))
            else:
                if label.lower() in REGISTERS:
                    raise Refused(f"label {label!r} has the name of a register")
                if label.startswith("__rv"):
                    raise Refused(f"label {label!r} uses the reserved prefix __rv")
                if label in named:
                    raise Refused(f"label {label!r} is defined twice")
                named[label] = private
            names.append((private, label))

    def rename(operands: str, idx: int) -> str:
        """Rewrite label references in an operand string to the snippet's private names."""
        out = []
        for m in _TOKEN.finditer(operands):
            tok = m.group(0)
            if m.group(1) is not None:  # numeric label reference: 1b / 1f
                num, direction = str(int(m.group(1))), m.group(2).lower()
                defs = numeric.get(num, [])
                # GNU as: 'Nb' is the nearest definition before this point (a label on the
                # same statement counts), 'Nf' the nearest one after it.
                hits = [p for i, p in defs if i <= idx] if direction == "b" else [p for i, p in defs if i > idx]
                if hits:
                    tok = SNIPPET_MARKER + (hits[-1] if direction == "b" else hits[0])
                else:
                    private = f"U{num}{direction}"  # undefined: assembles as an unresolved symbol
                    if (private, m.group(0)) not in names:
                        names.append((private, m.group(0)))
                    tok = SNIPPET_MARKER + private
            elif tok in named:
                tok = SNIPPET_MARKER + named[tok]
            elif tok == TARGET_LABEL:
                tok = SNIPPET_MARKER + "target"
            elif tok.startswith("__rv"):
                raise Refused(f"symbol {tok!r} uses the reserved prefix __rv")
            elif tok.startswith(SECTION_PREFIX):
                raise Refused(f"symbol {tok!r} uses the reserved prefix {SECTION_PREFIX} (the harness's sections)")
            out.append(tok)
        return "".join(out)

    lines: list[str] = []
    originals: list[str] = []
    privileged = False
    for idx, ((labels, stmt), original) in enumerate(zip(parsed, statements)):
        prefix = "".join(f"{SNIPPET_MARKER}{named.get(label) or _numeric_private(numeric, label, idx)}: "
                         for label in labels)
        body = ""
        if stmt:
            head, _, operands = stmt.replace("\t", " ").partition(" ")
            operands = operands.strip()
            if not _OPERAND_CHARS.fullmatch(operands):
                bad = next(ch for ch in operands if not _OPERAND_CHARS.fullmatch(ch))
                raise Refused(f"character {bad!r} is not allowed in operands: {original!r}")
            if head.startswith("."):
                directive = head.lower()
                body = _directive(directive, operands, original)
                if directive in _DATA_DIRECTIVES or directive == ".insn":
                    privileged = True  # raw bytes may encode any instruction
                    body = f"{directive} {rename(operands, idx)}"
            elif _MNEMONIC.fullmatch(head):
                low = head.lower()
                privileged |= low.startswith("csr") or low in _PRIVILEGED_MNEMONICS
                body = f"{head} {rename(operands, idx)}".rstrip()
            else:
                raise Refused(f"not an instruction or label: {original!r}")
        lines.append((prefix + body).strip())
        originals.append(original)
    return Sanitized(tuple(lines), tuple(originals), tuple(names), privileged)


def _numeric_private(numeric: dict[str, list[tuple[int, str]]], label: str, idx: int) -> str:
    """Private name of the numeric label `label` defined at statement `idx`."""
    for i, private in numeric[str(int(label))]:
        if i == idx:
            return private
    raise AssertionError("numeric label not recorded")  # pass 1 recorded every definition


def _directive(name: str, operands: str, original: str) -> str:
    """Validate one directive; return it normalized, or raise Refused."""
    if name == ".option":
        if operands.strip().lower() not in ("rvc", "norvc"):
            raise Refused(f"only '.option rvc' and '.option norvc' are allowed: {original!r}")
        return f".option {operands.strip().lower()}"
    if name in _ALIGN_LIMITS:
        if not re.fullmatch(r"\d{1,3}", operands.strip()):
            raise Refused(f"{name} takes one small integer here: {original!r}")
        value = int(operands)
        limit = _ALIGN_LIMITS[name]
        if value > limit or (name == ".balign" and value & (value - 1)):
            raise Refused(f"{name} {value} is too large or not a power of two (limit {limit})")
        return f"{name} {value}"
    if name in _DATA_DIRECTIVES:
        items = [x for x in operands.split(",")]
        if not operands.strip() or len(items) > MAX_DATA_ITEMS:
            raise Refused(f"{name} takes 1 to {MAX_DATA_ITEMS} values: {original!r}")
        return name  # operands are appended (with label renaming) by the caller
    if name == ".insn":
        if not operands.strip():
            raise Refused(f".insn needs operands: {original!r}")
        return name
    raise Refused(f"directive {name} is not allowed")
