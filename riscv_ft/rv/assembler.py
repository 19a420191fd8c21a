"""Assemble many untrusted RISC-V snippets quickly with a real assembler.

Supported tools (found automatically, or chosen by name):

* ``gnu``     GNU as for RISC-V (``riscv64-unknown-elf-as``, ``riscv64-linux-gnu-as``, ...)
* ``llvm-mc`` LLVM's machine-code tool (``llvm-mc``, ``llvm-mc-14`` ...)
* ``clang``   clang's integrated assembler (``--target=riscv64-unknown-elf``)
* ``zig``     the ``ziglang`` PyPI package (``zig cc -target riscv64-freestanding``), an
              assembler that installs with pip alone

All assemble for RV64GC (``-march=rv64gc`` or the equivalent) with linker relaxation off.

Why one RV64GC pass for `assembles` and `same_encoding` alike: with C enabled an assembler
compresses every instruction that has a compressed form, so each instruction still has exactly
one encoding whichever way it is spelled - `mv a0,a1`, `addi a0,a1,0` and `c.mv a0,a1` all
become c.mv, `x10` and `a0` are the same register - and reference and prediction always go
through the same options. Assembling without C would instead make `c.mv a0,a1` unassemblable.
(Spellings that are different instructions, like `add a0,zero,a1` vs `addi a0,a1,0` under
rv64g, may share a compressed form; they are also functionally identical.)

Speed: starting a process per snippet manages ~100 snippets/s. Instead every snippet goes into
its own section of one file, one process assembles the whole batch, and elf.py cuts the object
back into snippets. A batched assembler writes no object at all if any line fails, so on failure
the error line numbers name the bad snippets, which get their error message, and the rest is
assembled again; an error without a usable line number splits the batch in halves.

Safety: every snippet passes sanitize.sanitize() (an allow-list) first; the assembler runs in an
empty temporary directory with CPU-time, file-size and (where it works) memory limits and a
wall-clock timeout.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from riscv_ft.rv.elf import ElfError, UnresolvedSymbol, read_object, relocate
from riscv_ft.rv.sanitize import SECTION_PREFIX, SNIPPET_MARKER, TARGET_LABEL, Refused, Sanitized, sanitize

# Every snippet is linked for, and run at, this address (emulator.py maps it).
CODE_BASE = 0x10000
MAX_CODE_BYTES = 16 * 1024  # machine code per snippet; the emulator maps 64 KiB for code
CHUNK = 1000  # snippets per assembler process
WORKERS = 2  # assembler processes at once (this project's machines have 2 cores)

INSTALL_HINT = (
    "no RISC-V assembler found; install one of: GNU as (`apt-get install binutils-riscv64-unknown-elf`), "
    "LLVM (`apt-get install llvm` for llvm-mc), or zig (`pip install ziglang`)"
)


class AssemblerNotFound(RuntimeError):
    """No usable RISC-V assembler (message says how to install one)."""


@dataclass(frozen=True)
class Program:
    """One snippet's machine code, ready to run at CODE_BASE.

    The code ends at len(code); the harness's branch target (TARGET_LABEL) is at `target`.
    """

    code: bytes
    target: int
    privileged: bool  # may touch machine state beyond registers/memory; see sanitize.py


@dataclass(frozen=True)
class AsmResult:
    program: Program | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.program is not None


# GNU: "x.s:12: Error: msg"; LLVM/clang/zig: "x.s:12:5: error: msg"
_ERROR_LINE = re.compile(r"^[^\n:]*\.s:(\d+):(?:\d+:)?\s*(?:Error|error|fatal error):\s*(.*)$", re.M)


class Assembler:
    """One RISC-V assembler tool; `assemble_many` is the fast, batched entry point."""

    def __init__(self, name: str, argv: list[str], limit_memory: bool = True, timeout: float = 30.0):
        self.name = name
        self._argv = argv  # command with {src} and {obj} placeholders
        self._limit_memory = limit_memory
        self.timeout = timeout  # seconds per process, scaled up for big batches (~20 ms is typical)

    def __repr__(self) -> str:
        return f"Assembler({self.name!r}, {self._argv[0]!r})"

    @property
    def executable(self) -> str:
        return self._argv[0]

    # ---------------------------------------------------------------- public

    def assemble(self, text: str) -> AsmResult:
        return self.assemble_many([text])[0]

    def assemble_many(self, texts: Sequence[str]) -> list[AsmResult]:
        """Assemble each text on its own; a failure is a per-text result, never an exception."""
        unique: dict[str, int] = {}
        for text in texts:
            unique.setdefault(text, len(unique))
        results: list[AsmResult | None] = [None] * len(unique)
        todo: list[tuple[int, Sanitized]] = []
        for text, i in unique.items():
            try:
                todo.append((i, sanitize(text)))
            except Refused as err:
                results[i] = AsmResult(None, f"refused: {err}")
        chunks = [todo[k:k + CHUNK] for k in range(0, len(todo), CHUNK)]
        if len(chunks) > 1:
            with ThreadPoolExecutor(WORKERS) as pool:  # the assembler runs outside the GIL
                done = list(pool.map(self._assemble_chunk, chunks))
        else:
            done = [self._assemble_chunk(c) for c in chunks]
        for part in done:
            for i, res in part.items():
                results[i] = res
        return [results[unique[t]] for t in texts]  # type: ignore[misc]

    # ---------------------------------------------------------------- batching

    def _assemble_chunk(self, items: list[tuple[int, Sanitized]]) -> dict[int, AsmResult]:
        results: dict[int, AsmResult] = {}
        queue = [items]
        while queue:
            group = queue.pop()
            if not group:
                continue
            source, line_owner = _batch_source(group)
            blob, stderr = self._run(source)
            if blob is not None:
                results.update(_extract(blob, group))
                continue
            blamed: dict[int, list[str]] = {}
            for m in _ERROR_LINE.finditer(stderr):
                line = int(m.group(1))
                if 0 < line < len(line_owner) and line_owner[line] is not None:
                    pos, stmt = line_owner[line]
                    blamed.setdefault(pos, []).append(_describe(m.group(2), group[pos], stmt))
            if blamed:
                for pos, messages in blamed.items():
                    results[group[pos][0]] = AsmResult(None, "; ".join(dict.fromkeys(messages)))
                queue.append([g for pos, g in enumerate(group) if pos not in blamed])
            elif len(group) == 1:
                first = next((ln.strip() for ln in stderr.splitlines() if "rror" in ln), stderr.strip())
                results[group[0][0]] = AsmResult(None, _unmangle(first, group[0]) or "assembler failed")
            else:  # no line number to go by: split the batch and try the halves
                half = len(group) // 2
                queue += [group[:half], group[half:]]
        return results

    def _run(self, source: str) -> tuple[bytes | None, str]:
        """Run the tool on `source`; (object bytes, "") on success or (None, stderr)."""
        with tempfile.TemporaryDirectory(prefix="riscv_ft_as_") as tmp:
            src, obj = os.path.join(tmp, "batch.s"), os.path.join(tmp, "batch.o")
            Path(src).write_text(source)
            argv = [a.replace("{src}", src).replace("{obj}", obj) for a in self._argv]
            timeout = self.timeout * (1 + source.count("\n") / 30_000)  # default: 30 s + 1 s per 1000 lines
            try:
                proc = subprocess.run(_with_limits(argv, self._limit_memory), cwd=tmp, capture_output=True,
                                      timeout=timeout, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                return None, f"{self.name}: timed out after {timeout:g} s"
            except OSError as err:
                return None, f"{self.name}: cannot run {argv[0]}: {err}"
            stderr = proc.stderr.decode("utf-8", "replace")
            if proc.returncode != 0 or not os.path.exists(obj):
                return None, stderr or f"{self.name} exited with status {proc.returncode}"
            return Path(obj).read_bytes(), ""


def _with_limits(argv: list[str], limit_memory: bool) -> list[str]:
    """Run argv under CPU-time, file-size (and address-space) limits.

    Set by the shell, not by a preexec_fn: forking a process that runs MLX and OpenBLAS
    threads and then running Python in the child can deadlock (seen here: the evaluation
    after training hung in subprocess start-up).
    """
    limits = "ulimit -t 60; ulimit -f 524288; "  # 60 s of CPU; 256-512 MB files (block size varies)
    if limit_memory:
        limits += "ulimit -v 2097152 2>/dev/null; "  # 2 GB of address space
    return ["/bin/sh", "-c", limits + 'exec "$@"', "sh", *argv]


def _batch_source(group: list[tuple[int, Sanitized]]) -> tuple[str, list]:
    """One assembly file for the group, and for each line which (snippet, statement) wrote it.

    Layout of snippet at position p (unique per batch):
        .section .text.rv<p>      one section each: no interaction, relocations show outside refs
        .option push              so `.option norvc` stays inside the snippet
        <statements>
        .option pop
      __rv<p>_end:    .4byte 0    fall-through exit (an illegal instruction, never executed)
      __rv<p>_target: .4byte 0    the branch target placeholder labels are bound to
    """
    lines = [""]  # line numbers are 1-based
    owner: list = [None]
    for pos, (_, san) in enumerate(group):
        prefix = f"__rv{pos}_"
        lines += [f'.section {SECTION_PREFIX}{pos},"ax",@progbits', ".option push"]
        owner += [None, None]
        for k, stmt in enumerate(san.statements):
            lines.append(stmt.replace(SNIPPET_MARKER, prefix))
            owner.append((pos, k))
        lines += [".option pop", f"{prefix}end:", ".4byte 0", f"{prefix}target:", ".4byte 0"]
        owner += [(pos, None)] * 5
    return "\n".join(lines[1:]) + "\n", owner


def _extract(blob: bytes, group: list[tuple[int, Sanitized]]) -> dict[int, AsmResult]:
    results: dict[int, AsmResult] = {}
    try:
        obj = read_object(blob, SECTION_PREFIX)
    except (ElfError, struct.error, IndexError, ValueError) as err:  # a damaged object
        return {i: AsmResult(None, f"unreadable object file: {err}") for i, _ in group}
    for pos, (i, san) in enumerate(group):
        sec = obj.sections.get(f"{SECTION_PREFIX}{pos}")
        prefix = f"__rv{pos}_"
        if sec is None or f"{prefix}end" not in sec.symbols:
            results[i] = AsmResult(None, "snippet missing from the object file")
            continue
        try:
            code = relocate(sec, obj.symtab, CODE_BASE)
        except UnresolvedSymbol as err:
            if err.symbol:
                results[i] = AsmResult(None, f"undefined symbol {_original_name(err.symbol, prefix, san)!r}")
            else:  # GNU as reads `j -4` as a jump to address -4, which only a linker could place
                results[i] = AsmResult(None, "branch or jump to an absolute address; use a label")
            continue
        except ElfError as err:
            results[i] = AsmResult(None, _unmangle(str(err), (i, san), prefix))
            continue
        end, target = sec.symbols[f"{prefix}end"], sec.symbols[f"{prefix}target"]
        if end == 0:
            results[i] = AsmResult(None, "no machine code (the answer has no instruction)")
        elif end > MAX_CODE_BYTES:
            results[i] = AsmResult(None, f"machine code too large: {end} bytes (limit {MAX_CODE_BYTES})")
        else:
            results[i] = AsmResult(Program(code[:end], target, san.privileged))
    return results


def _original_name(symbol: str, prefix: str, san: Sanitized) -> str:
    if symbol.startswith(prefix):
        private = symbol[len(prefix):]
        if private == "target":
            return TARGET_LABEL
        return dict(san.names).get(private, symbol)
    return symbol


def _unmangle(message: str, item: tuple[int, Sanitized], prefix: str | None = None) -> str:
    """Replace private label names in an assembler message by the answer's own names."""
    san = item[1]
    pattern = r"__rv\d+_(\w+)" if prefix is None else re.escape(prefix) + r"(\w+)"
    names = dict(san.names)
    names["target"] = TARGET_LABEL
    return re.sub(pattern, lambda m: names.get(m.group(1), m.group(0)), message)


def _describe(message: str, item: tuple[int, Sanitized], stmt: int | None) -> str:
    """An assembler error in the answer's own terms, naming the statement it is about."""
    text = _unmangle(message.strip(), item)
    if stmt is not None:
        original = item[1].originals[stmt]
        where = f"statement {stmt + 1}: " if len(item[1].statements) > 1 else ""
        if where or original not in text:
            text += f" ({where}{original!r})" if where else f" in {original!r}"
    return text


# -------------------------------------------------------------------- discovery

_GNU = ("riscv64-unknown-elf-as", "riscv64-linux-gnu-as", "riscv64-elf-as", "riscv64-unknown-linux-gnu-as")
_VERSIONS = ("", "-20", "-19", "-18", "-17", "-16", "-15", "-14", "-13")
_ALIASES = {"auto": "auto", "gnu": "gnu", "as": "gnu", "gas": "gnu", "llvm-mc": "llvm-mc", "llvm": "llvm-mc",
            "clang": "clang", "zig": "zig", "ziglang": "zig"}
KINDS = ("gnu", "llvm-mc", "clang", "zig")  # the order `auto` tries them in: fastest first


def _candidates(kind: str) -> list[Assembler]:
    out = []
    if kind == "gnu":
        for exe in filter(None, map(shutil.which, _GNU)):
            out.append(Assembler("gnu", [exe, "-march=rv64gc", "-mabi=lp64d", "-mno-relax", "-o", "{obj}", "{src}"]))
    elif kind == "llvm-mc":
        for exe in filter(None, (shutil.which("llvm-mc" + v) for v in _VERSIONS)):
            out.append(Assembler("llvm-mc", [exe, "-triple=riscv64", "-mattr=+m,+a,+f,+d,+c,-relax",
                                             "-filetype=obj", "-o", "{obj}", "{src}"]))
    elif kind == "clang":
        for exe in filter(None, (shutil.which("clang" + v) for v in _VERSIONS)):
            # `-x assembler` (not assembler-with-cpp): no C preprocessor, so no #include
            out.append(Assembler("clang", [exe, "--target=riscv64-unknown-elf", "-march=rv64gc", "-mabi=lp64d",
                                           "-mno-relax", "-c", "-x", "assembler", "{src}", "-o", "{obj}"]))
    elif kind == "zig":
        spec = importlib.util.find_spec("ziglang")
        if spec is not None and spec.origin:
            exe = Path(spec.origin).parent / ("zig.exe" if os.name == "nt" else "zig")
            prefix = [str(exe)] if exe.exists() else [sys.executable, "-m", "ziglang"]
            # zig reserves a lot of address space up front, so no RLIMIT_AS for it
            out.append(Assembler("zig", prefix + ["cc", "-target", "riscv64-freestanding",
                                                  "-mcpu=generic_rv64+m+a+f+d+c-relax", "-c", "{src}", "-o", "{obj}"],
                                 limit_memory=False))
    return out


_PROBE = "addi a0, a1, 1\nmv a0, a1"
_PROBE_CODE = bytes.fromhex("13851500") + bytes.fromhex("2e85")  # addi; c.mv (RVC is on)


@functools.lru_cache(maxsize=None)
def _working(kind: str) -> Assembler | None:
    for asm in _candidates(kind):
        res = asm.assemble(_PROBE)
        if res.ok and res.program.code == _PROBE_CODE:
            return asm
    return None


def available_assemblers() -> list[str]:
    """Names of the assembler kinds that work on this machine."""
    return [k for k in KINDS if _working(k) is not None]


def find_assembler(preferred: str = "auto") -> Assembler:
    """A working assembler: `preferred` is auto, gnu, llvm-mc, clang or zig.

    Raises AssemblerNotFound (saying how to install one) if none works, ValueError for an
    unknown name.
    """
    if isinstance(preferred, Assembler):
        return preferred
    kind = _ALIASES.get(str(preferred).lower())
    if kind is None:
        raise ValueError(f"unknown assembler {preferred!r}; choose one of auto, {', '.join(KINDS)}")
    for k in (KINDS if kind == "auto" else (kind,)):
        asm = _working(k)
        if asm is not None:
            return asm
    if kind == "auto":
        raise AssemblerNotFound(INSTALL_HINT)
    raise AssemblerNotFound(f"assembler {kind!r} not found or not working; {INSTALL_HINT}")
