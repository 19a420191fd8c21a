"""Read snippets back out of a RISC-V ELF64 object and resolve their relocations.

A batch of snippets is assembled into one object file with one section per snippet. This
module finds each section's bytes and symbols and applies the relocations whose symbol is
defined in the same section, the way a linker would for code loaded at a known address.

Why resolve relocations ourselves: GNU as keeps relocations (and, for `la`/`call`, leaves
zero fields) even for labels in the same section, while llvm-mc fills them in. Applying them
here makes the bytes identical whichever assembler ran, and makes `la`, `call` and branches to
the snippet's own labels runnable. A relocation against a symbol the snippet does not define
(an undefined label, another snippet's section) cannot be resolved: the snippet is reported as
not assembling, naming the symbol.

A small hand-written parser rather than pyelftools: it only needs section headers, the symbol
table and RELA entries, and it is several times faster on objects with thousands of sections.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SHT_SYMTAB, SHT_RELA = 2, 4

# RISC-V relocation types (RISC-V ELF psABI).
R_RISCV_32, R_RISCV_64 = 1, 2
R_RISCV_BRANCH, R_RISCV_JAL, R_RISCV_CALL, R_RISCV_CALL_PLT = 16, 17, 18, 19
R_RISCV_PCREL_HI20, R_RISCV_PCREL_LO12_I, R_RISCV_PCREL_LO12_S = 23, 24, 25
R_RISCV_HI20, R_RISCV_LO12_I, R_RISCV_LO12_S = 26, 27, 28
R_RISCV_ADD8, R_RISCV_ADD16, R_RISCV_ADD32, R_RISCV_ADD64 = 33, 34, 35, 36
R_RISCV_SUB8, R_RISCV_SUB16, R_RISCV_SUB32, R_RISCV_SUB64 = 37, 38, 39, 40
R_RISCV_ALIGN, R_RISCV_RVC_BRANCH, R_RISCV_RVC_JUMP, R_RISCV_RELAX = 43, 44, 45, 51
R_RISCV_32_PCREL = 57
_ADD_SUB = {R_RISCV_ADD8: (1, 1), R_RISCV_ADD16: (2, 1), R_RISCV_ADD32: (4, 1), R_RISCV_ADD64: (8, 1),
            R_RISCV_SUB8: (1, -1), R_RISCV_SUB16: (2, -1), R_RISCV_SUB32: (4, -1), R_RISCV_SUB64: (8, -1)}


class ElfError(ValueError):
    pass


@dataclass
class Section:
    index: int
    name: str
    data: bytes
    symbols: dict[str, int] = field(default_factory=dict)  # name -> offset, defined here
    relocations: list[tuple[int, int, int, int]] = field(default_factory=list)  # offset, type, symbol, addend


@dataclass
class ElfObject:
    sections: dict[str, Section]
    symtab: list[tuple[str, int, int]]  # (name, section index, value) by symbol index


def read_object(blob: bytes, section_prefix: str) -> ElfObject:
    """Sections whose name starts with `section_prefix`, with their symbols and relocations."""
    if blob[:4] != b"\x7fELF" or blob[4] != 2 or blob[5] != 1:
        raise ElfError("not a little-endian ELF64 object")
    shoff, = struct.unpack_from("<Q", blob, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", blob, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", blob, shoff + i * shentsize) for i in range(shnum)]
    str_off, str_size = headers[shstrndx][4], headers[shstrndx][5]
    shstr = blob[str_off:str_off + str_size]

    def name_at(table: bytes, off: int) -> str:
        return table[off:table.index(b"\0", off)].decode("ascii", "replace")

    sections: dict[str, Section] = {}
    by_index: dict[int, Section] = {}
    for i, (sh_name, sh_type, _fl, _addr, off, size, *_rest) in enumerate(headers):
        name = name_at(shstr, sh_name)
        if name.startswith(section_prefix):
            sec = Section(i, name, blob[off:off + size])
            sections[name] = sec
            by_index[i] = sec

    symtab: list[tuple[str, int, int]] = []
    for sh_name, sh_type, _fl, _addr, off, size, link, _info, _al, entsize in headers:
        if sh_type != SHT_SYMTAB:
            continue
        strtab = blob[headers[link][4]:headers[link][4] + headers[link][5]]
        for st_name, _info, _other, shndx, value, _size in struct.iter_unpack("<IBBHQQ", blob[off:off + size]):
            name = name_at(strtab, st_name) if st_name else ""
            symtab.append((name, shndx, value))
            if shndx in by_index and name:
                by_index[shndx].symbols[name] = value

    for sh_name, sh_type, _fl, _addr, off, size, _link, info, _al, _es in headers:
        if sh_type == SHT_RELA and info in by_index:
            relocs = by_index[info].relocations
            for r_offset, r_info, r_addend in struct.iter_unpack("<QQq", blob[off:off + size]):
                relocs.append((r_offset, r_info & 0xFFFFFFFF, r_info >> 32, r_addend))
    return ElfObject(sections, symtab)


class UnresolvedSymbol(ElfError):
    """A relocation against a symbol outside the section ("" for an absolute address)."""

    def __init__(self, symbol: str):
        super().__init__(f"undefined symbol {symbol!r}" if symbol else "reference to an absolute address")
        self.symbol = symbol


def relocate(section: Section, symtab: list[tuple[str, int, int]], load_address: int) -> bytes:
    """The section's bytes with every relocation applied, as if loaded at `load_address`.

    Raises UnresolvedSymbol for a symbol not defined in this section and ElfError for a
    relocation type or value this code does not handle.
    """
    code = bytearray(section.data)
    relocs = section.relocations
    if not relocs:
        return bytes(code)

    def target(sym: int, addend: int) -> int:
        name, shndx, value = symtab[sym]
        if shndx != section.index:
            raise UnresolvedSymbol(name if sym else "")
        return value + addend

    # PCREL_LO12 relocations point at the label of their AUIPC; they need the HI20 value there.
    hi20_at = {off: (sym, add) for off, typ, sym, add in relocs if typ == R_RISCV_PCREL_HI20}
    for off, typ, sym, addend in relocs:
        if typ in (R_RISCV_RELAX, R_RISCV_ALIGN):
            continue  # linker-relaxation hints; we assemble with relaxation off
        if off + 2 > len(code):
            raise ElfError(f"relocation outside the snippet at {off:#x}")
        if typ == R_RISCV_BRANCH:
            _patch32(code, off, _b_imm(target(sym, addend) - off))
        elif typ == R_RISCV_JAL:
            _patch32(code, off, _j_imm(target(sym, addend) - off))
        elif typ in (R_RISCV_CALL, R_RISCV_CALL_PLT):
            value = target(sym, addend) - off
            _patch32(code, off, _u_imm(value))
            _patch32(code, off + 4, _i_imm(_lo12(value)))
        elif typ == R_RISCV_PCREL_HI20:
            _patch32(code, off, _u_imm(target(sym, addend) - off))
        elif typ in (R_RISCV_PCREL_LO12_I, R_RISCV_PCREL_LO12_S):
            auipc_at = target(sym, addend)
            if auipc_at not in hi20_at:
                raise ElfError(f"%pcrel_lo at {off:#x} has no matching %pcrel_hi")
            value = _lo12(target(*hi20_at[auipc_at]) - auipc_at)
            _patch32(code, off, _i_imm(value) if typ == R_RISCV_PCREL_LO12_I else _s_imm(value))
        elif typ == R_RISCV_HI20:
            _patch32(code, off, _u_imm(load_address + target(sym, addend)))
        elif typ in (R_RISCV_LO12_I, R_RISCV_LO12_S):
            value = _lo12(load_address + target(sym, addend))
            _patch32(code, off, _i_imm(value) if typ == R_RISCV_LO12_I else _s_imm(value))
        elif typ == R_RISCV_RVC_BRANCH:
            _patch16(code, off, _cb_imm(target(sym, addend) - off))
        elif typ == R_RISCV_RVC_JUMP:
            _patch16(code, off, _cj_imm(target(sym, addend) - off))
        elif typ in (R_RISCV_32, R_RISCV_64):
            size = 4 if typ == R_RISCV_32 else 8
            value = (load_address + target(sym, addend)) & ((1 << (8 * size)) - 1)
            code[off:off + size] = value.to_bytes(size, "little")
        elif typ == R_RISCV_32_PCREL:
            code[off:off + 4] = ((target(sym, addend) - off) & 0xFFFFFFFF).to_bytes(4, "little")
        elif typ in _ADD_SUB:
            size, sign = _ADD_SUB[typ]
            mask = (1 << (8 * size)) - 1
            old = int.from_bytes(code[off:off + size], "little")
            code[off:off + size] = ((old + sign * target(sym, addend)) & mask).to_bytes(size, "little")
        else:
            raise ElfError(f"unsupported relocation type {typ} at {off:#x}")
    return bytes(code)


# ---- instruction immediate fields (RISC-V unprivileged spec, chapter 2 and 16) ----

def _lo12(value: int) -> int:
    return ((value & 0xFFF) ^ 0x800) - 0x800


def _check(value: int, bits: int, align: int, what: str) -> None:
    if value % align or not -(1 << (bits - 1)) <= value < (1 << (bits - 1)):
        raise ElfError(f"{what} offset {value} out of range")


def _patch32(code: bytearray, off: int, fields: tuple[int, int]) -> None:
    mask, bits = fields
    word = int.from_bytes(code[off:off + 4], "little")
    code[off:off + 4] = ((word & ~mask) | bits).to_bytes(4, "little")


def _patch16(code: bytearray, off: int, fields: tuple[int, int]) -> None:
    mask, bits = fields
    half = int.from_bytes(code[off:off + 2], "little")
    code[off:off + 2] = ((half & ~mask & 0xFFFF) | bits).to_bytes(2, "little")


def _bit(v: int, hi: int, lo: int | None = None) -> int:
    lo = hi if lo is None else lo
    return (v >> lo) & ((1 << (hi - lo + 1)) - 1)


def _i_imm(v: int) -> tuple[int, int]:
    return 0xFFF00000, (v & 0xFFF) << 20


def _s_imm(v: int) -> tuple[int, int]:
    return 0xFE000F80, (_bit(v, 11, 5) << 25) | (_bit(v, 4, 0) << 7)


def _u_imm(v: int) -> tuple[int, int]:
    _check(v, 32, 1, "%hi/%pcrel_hi")
    return 0xFFFFF000, (((v + 0x800) >> 12) & 0xFFFFF) << 12


def _b_imm(v: int) -> tuple[int, int]:
    _check(v, 13, 2, "branch")
    return 0xFE000F80, (_bit(v, 12) << 31) | (_bit(v, 10, 5) << 25) | (_bit(v, 4, 1) << 8) | (_bit(v, 11) << 7)


def _j_imm(v: int) -> tuple[int, int]:
    _check(v, 21, 2, "jump")
    return 0xFFFFF000, (_bit(v, 20) << 31) | (_bit(v, 10, 1) << 21) | (_bit(v, 11) << 20) | (_bit(v, 19, 12) << 12)


def _cb_imm(v: int) -> tuple[int, int]:
    _check(v, 9, 2, "compressed branch")
    bits = (_bit(v, 8) << 12) | (_bit(v, 4, 3) << 10) | (_bit(v, 7, 6) << 5) | (_bit(v, 2, 1) << 3) | (_bit(v, 5) << 2)
    return 0x1C7C, bits


def _cj_imm(v: int) -> tuple[int, int]:
    _check(v, 12, 2, "compressed jump")
    bits = ((_bit(v, 11) << 12) | (_bit(v, 4) << 11) | (_bit(v, 9, 8) << 9) | (_bit(v, 10) << 8)
            | (_bit(v, 6) << 7) | (_bit(v, 7) << 6) | (_bit(v, 3, 1) << 3) | (_bit(v, 5) << 2))
    return 0x1FFC, bits
