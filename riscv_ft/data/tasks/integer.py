# One module on purpose: the integer task families (arithmetic, bit fields, extension, min/max, compare, constants, moves, logic) are a few dozen lines each over the same drawing helpers; apart they would be ten small files read together.
"""Integer task families: arithmetic expressions, bit fields, extension, min/max/abs/clamp,
compare-and-set, large constants, moves and logic."""

from __future__ import annotations

from riscv_ft.data.tasks.base import _Draw, _hex, _imm, MASK, s32, s64, sext, State, Task


# ------------------------------------------------------------------ arithmetic expressions

def _arith(d: _Draw) -> Task:
    rng = d.rng
    dst, a, b, c = d.regs(4)
    kind = rng.randrange(10)
    if kind == 0:  # a * K
        k = rng.choice([3, 5, 6, 7, 9, 10, 12, 24, 100, 1000, rng.randint(11, 99)])
        t = d.temp()
        text = d.say(c=[f"{dst} = {a} * {k}", f"{dst} = {a}*{k};"],
                     imperative=[f"multiply {a} by {k} and put the result in {dst}", f"set {dst} to {k} times {a}"],
                     question=[f"How do I multiply {a} by the constant {k} into {dst}?"],
                     terse=[f"{dst} <- {a} * {k}", f"{a}*{k} -> {dst}"])
        return Task("arith", text, [f"li {t}, {k}", f"mul {dst}, {a}, {t}"],
                    lambda s: s.__setitem__(dst, s[a] * k), scratch=[t])
    if kind == 1:  # a + b - c
        text = d.say(c=[f"{dst} = {b} - {c} + {a};"], imperative=[f"add {a} and {b}, subtract {c}, result in {dst}"],
                     question=[f"How can I compute {a} + {b} - {c} into {dst}?"], terse=[f"{a}+{b}-{c} -> {dst}"])
        return Task("arith", text, [f"add {dst}, {a}, {b}", f"sub {dst}, {dst}, {c}"],
                    lambda s: s.__setitem__(dst, s[a] + s[b] - s[c]))
    if kind == 2:  # (a + b) * c
        text = d.say(c=[f"{dst} = {c} * ({a} + {b})"], imperative=[f"multiply {a} + {b} by {c}, result in {dst}"],
                     question=[f"What is the RISC-V for {dst} = ({a}+{b})*{c}?"], terse=[f"({a}+{b})*{c} -> {dst}"])
        return Task("arith", text, [f"add {dst}, {a}, {b}", f"mul {dst}, {dst}, {c}"],
                    lambda s: s.__setitem__(dst, (s[a] + s[b]) * s[c]))
    if kind == 3:  # a * b + c
        t = d.temp()
        text = d.say(c=[f"{dst} = {a} * {b} + {c}"], imperative=[f"multiply {a} by {b}, add {c}, leave it in {dst}"],
                     question=[f"How do I do a multiply-add {dst} = {a}*{b} + {c}?"], terse=[f"mac: {dst} = {a}*{b}+{c}"])
        return Task("arith", text, [f"mul {t}, {a}, {b}", f"add {dst}, {t}, {c}"],
                    lambda s: s.__setitem__(dst, s[a] * s[b] + s[c]), scratch=[t])
    if kind == 4:  # 2a + b, 4a - b ...
        sh = rng.choice([1, 2, 3])
        op, sym = rng.choice([("add", "+"), ("sub", "-")])
        t = d.temp()
        text = d.say(c=[f"{dst} = {1 << sh}*{a} {sym} {b}", f"{dst} = ({a} << {sh}) {sym} {b}"],
                     imperative=[f"compute {1 << sh} times {a} {'plus' if sym == '+' else 'minus'} {b} into {dst}"],
                     question=[f"How do I get {1 << sh}*{a} {sym} {b} in {dst} without a mul?"],
                     terse=[f"{dst} <- {a}*{1 << sh} {sym} {b}"])
        return Task("arith", text, [f"slli {t}, {a}, {sh}", f"{op} {dst}, {t}, {b}"],
                    lambda s: s.__setitem__(dst, (s[a] << sh) + (s[b] if sym == "+" else -s[b])), scratch=[t])
    if kind == 5:  # sum of squares
        t1, t2 = d.temp(), d.temp()
        text = d.say(c=[f"{dst} = {a}*{a} + {b}*{b}"], imperative=[f"put the sum of the squares of {a} and {b} in {dst}"],
                     question=[f"How do I compute {a} squared plus {b} squared into {dst}?"],
                     terse=[f"{dst} = {a}^2 + {b}^2"])
        return Task("arith", text, [f"mul {t1}, {a}, {a}", f"mul {t2}, {b}, {b}", f"add {dst}, {t1}, {t2}"],
                    lambda s: s.__setitem__(dst, s[a] * s[a] + s[b] * s[b]), scratch=[t1, t2])
    if kind == 6:  # polynomial a*a + k*a + m
        k, m = _imm(rng, -20, 20), _imm(rng, -500, 500)
        t1, t2 = d.temp(), d.temp()
        ks = f"+ {k}" if k >= 0 else f"- {-k}"
        ms = f"+ {m}" if m >= 0 else f"- {-m}"
        text = d.say(c=[f"{dst} = {a}*{a} {ks}*{a} {ms}"],
                     imperative=[f"evaluate x*x {ks}*x {ms} for x in {a}, result in {dst}"],
                     question=[f"How do I evaluate the polynomial x^2 {ks}x {ms} at x = {a} into {dst}?"],
                     terse=[f"poly: {dst} = {a}^2 {ks}*{a} {ms}"])
        return Task("arith", text, [f"mul {t1}, {a}, {a}", f"li {t2}, {k}", f"mul {t2}, {t2}, {a}",
                                    f"add {dst}, {t1}, {t2}", f"addi {dst}, {dst}, {m}"],
                    lambda s: s.__setitem__(dst, s[a] * s[a] + k * s[a] + m), scratch=[t1, t2])
    if kind == 7:  # division / remainder by a constant
        k = rng.choice([3, 5, 7, 10, 12, 60, 100, 1000])
        op, word, fn = rng.choice([
            ("divu", "unsigned quotient", lambda v: (v & MASK) // k),
            ("remu", "unsigned remainder", lambda v: (v & MASK) % k),
            ("div", "signed quotient", lambda v: abs(s64(v)) // k * (1 if s64(v) >= 0 else -1)),
            ("rem", "signed remainder", lambda v: s64(v) - k * (abs(s64(v)) // k * (1 if s64(v) >= 0 else -1)))])
        t = d.temp()
        sym = "/" if "quotient" in word else "%"
        sign = "unsigned" if op.endswith("u") else "signed"
        text = d.say(c=[f"{dst} = {a} {sym} {k}; // {sign}"],
                     imperative=[f"put the {word} of {a} divided by {k} in {dst}"],
                     question=[f"How do I get the {word} of {a} / {k} into {dst}?"],
                     terse=[f"{dst} = {a} {sym} {k} ({sign})"])
        return Task("arith", text, [f"li {t}, {k}", f"{op} {dst}, {a}, {t}"],
                    lambda s: s.__setitem__(dst, fn(s[a])), scratch=[t])
    if kind == 8:  # average (a + b) >> 1
        text = d.say(c=[f"{dst} = ({a} + {b}) >> 1  // arithmetic shift"],
                     imperative=[f"average {a} and {b} (signed, rounding down, overflow wraps) into {dst}"],
                     question=[f"How do I halve the sum of {a} and {b} with an arithmetic shift into {dst}?"],
                     terse=[f"{dst} = ({a}+{b})/2 via add + srai"])
        return Task("arith", text, [f"add {dst}, {a}, {b}", f"srai {dst}, {dst}, 1"],
                    lambda s: s.__setitem__(dst, s64((s[a] + s[b]) & MASK) >> 1))
    # kind 9: 32-bit expression a*b - c as int
    text = d.say(c=[f"int {dst} = {a} * {b} - {c};  // 32-bit"],
                 imperative=[f"with 32-bit arithmetic, compute {a} times {b} minus {c} into {dst}"],
                 question=[f"How do I compute the 32-bit {a}*{b} - {c} in {dst}?"],
                 terse=[f"{dst} = (int32)({a}*{b} - {c})"])
    return Task("arith", text, [f"mulw {dst}, {a}, {b}", f"subw {dst}, {dst}, {c}"],
                lambda s: s.__setitem__(dst, sext(s[a] * s[b] - s[c], 32)))


# ------------------------------------------------------------------ bit fields and extension

def _bitfield(d: _Draw) -> Task:
    rng = d.rng
    dst, a = d.regs(2)
    kind = rng.randrange(8)
    if kind == 0:  # extract unsigned field [hi:lo]
        lo = rng.randint(0, 40)
        width = rng.randint(2, 20)
        hi = lo + width - 1
        text = d.say(c=[f"{dst} = ({a} >> {lo}) & {_hex((1 << width) - 1)}"],
                     imperative=[f"extract bits {hi}..{lo} of {a} into {dst}, zero-extended",
                                 f"get the {width}-bit field at bit {lo} of {a} into {dst}"],
                     question=[f"How do I pull out bits {lo} to {hi} of {a} as an unsigned number in {dst}?"],
                     terse=[f"{dst} = {a}[{hi}:{lo}] (unsigned)"])
        if width <= 11 and rng.random() < 0.5:
            lines = [f"srli {dst}, {a}, {lo}", f"andi {dst}, {dst}, {(1 << width) - 1}"]
        else:
            lines = [f"slli {dst}, {a}, {63 - hi}", f"srli {dst}, {dst}, {64 - width}"]
        return Task("bitfield", text, lines, lambda s: s.__setitem__(dst, (s[a] >> lo) & ((1 << width) - 1)))
    if kind == 1:  # extract signed field
        lo = rng.randint(0, 40)
        width = rng.randint(2, 20)
        hi = lo + width - 1
        text = d.say(imperative=[f"extract the signed field in bits {hi}:{lo} of {a} into {dst}",
                                 f"sign-extend the {width}-bit field starting at bit {lo} of {a} into {dst}"],
                     question=[f"How do I read bits {hi}..{lo} of {a} as a signed value into {dst}?"],
                     terse=[f"{dst} = sext({a}[{hi}:{lo}])"])
        return Task("bitfield", text, [f"slli {dst}, {a}, {63 - hi}", f"srai {dst}, {dst}, {64 - width}"],
                    lambda s: s.__setitem__(dst, sext(s[a] >> lo, width)))
    if kind == 2:  # insert the low bits of b into a field of a
        b = d.reg()
        t1, t2 = d.temp(), d.temp()
        lo = rng.randint(0, 40)
        width = rng.randint(2, 16)
        hi = lo + width - 1
        mask = ((1 << width) - 1) << lo
        text = d.say(imperative=[f"insert the low {width} bits of {b} into bits {hi}:{lo} of {a}, result in {dst}",
                                 f"replace bits {lo}-{hi} of {a} with the low bits of {b}; put it in {dst}"],
                     question=[f"How do I write {b} into the bit field {hi}:{lo} of {a} (answer in {dst})?"],
                     c=[f"{dst} = ({a} & ~{_hex(mask)}) | (({b} << {lo}) & {_hex(mask)})"])
        lines = [f"li {t1}, {_hex(mask)}", f"slli {t2}, {b}, {lo}", f"and {t2}, {t2}, {t1}", f"not {t1}, {t1}",
                 f"and {dst}, {a}, {t1}", f"or {dst}, {dst}, {t2}"]
        return Task("bitfield", text, lines,
                    lambda s: s.__setitem__(dst, (s[a] & ~mask) | ((s[b] << lo) & mask)), scratch=[t1, t2])
    if kind in (3, 4, 5):  # set / clear / toggle bit n
        n = rng.randint(0, 63)
        what = ["set", "clear", "toggle"][kind - 3]
        same = rng.random() < 0.5
        if same:
            dst = a
        where = "" if same else f", result in {dst}"
        text = d.say(imperative=[f"{what} bit {n} of {a}{where}", f"{what} bit number {n} in {a}{where}"],
                     question=[f"How do I {what} bit {n} of {a}{where}?"],
                     c=[f"{dst} = {a} {'|' if what == 'set' else '&' if what == 'clear' else '^'} "
                        f"{'~' if what == 'clear' else ''}(1UL << {n})"],
                     terse=[f"{what} bit {n}: {a}" + ("" if same else f" -> {dst}")])
        op = {"set": "or", "clear": "and", "toggle": "xor"}[what]
        fn = {"set": lambda v: v | (1 << n), "clear": lambda v: v & ~(1 << n), "toggle": lambda v: v ^ (1 << n)}[what]
        if n <= 10 and rng.random() < 0.6:  # the mask fits an immediate: one instruction
            imm = ~(1 << n) if what == "clear" else 1 << n
            return Task("bitfield", text, [f"{op}i {dst}, {a}, {imm}"], lambda s: s.__setitem__(dst, fn(s[a])))
        t = d.temp()
        lines = [f"li {t}, 1", f"slli {t}, {t}, {n}"] + ([f"not {t}, {t}"] if what == "clear" else []) + \
            [f"{op} {dst}, {a}, {t}"]
        return Task("bitfield", text, lines, lambda s: s.__setitem__(dst, fn(s[a])), scratch=[t])
    if kind == 7:  # keep the low k bits, or clear them (round down to a multiple of 2^k): one andi when it fits
        k = rng.randint(1, 16)
        same = rng.random() < 0.5
        if same:
            dst = a
        where = "" if same else f" into {dst}"
        if rng.random() < 0.5:
            low = (1 << k) - 1
            text = d.say(imperative=[f"keep only the low {k} bits of {a}{where}", f"mask {a} down to its lowest {k} bits{where}"],
                         question=[f"How do I zero every bit of {a} above bit {k - 1}{where}?"],
                         c=[f"{dst} = {a} & {_hex(low)};", f"{dst} = {a} % {1 << k};  // unsigned"],
                         terse=[f"{dst} = low {k} bits of {a}"])
            lines = [f"andi {dst}, {a}, {low}"] if k <= 11 else [f"slli {dst}, {a}, {64 - k}", f"srli {dst}, {dst}, {64 - k}"]
            return Task("bitfield", text, lines, lambda s: s.__setitem__(dst, s[a] & low))
        text = d.say(imperative=[f"clear the low {k} bits of {a}{where}", f"round {a} down to a multiple of {1 << k}{where}",
                                 f"align {a} down to a {1 << k}-byte boundary{where}"],
                     question=[f"How do I round {a} down to a multiple of {1 << k}{where}?"],
                     c=[f"{dst} = {a} & ~{_hex((1 << k) - 1)};", f"{dst} = {a} & -{1 << k};"],
                     terse=[f"{dst} = {a} rounded down to {1 << k}"])
        lines = [f"andi {dst}, {a}, {-(1 << k)}"] if k <= 11 else [f"srli {dst}, {a}, {k}", f"slli {dst}, {dst}, {k}"]
        return Task("bitfield", text, lines, lambda s: s.__setitem__(dst, s[a] & ~((1 << k) - 1)))
    # kind 6: test bit n
    n = rng.randint(0, 63)
    text = d.say(imperative=[f"set {dst} to bit {n} of {a} (0 or 1)"],
                 question=[f"How do I check whether bit {n} of {a} is set, leaving 0 or 1 in {dst}?"],
                 c=[f"{dst} = ({a} >> {n}) & 1"], terse=[f"{dst} = bit {n} of {a}"])
    return Task("bitfield", text, [f"srli {dst}, {a}, {n}", f"andi {dst}, {dst}, 1"],
                lambda s: s.__setitem__(dst, (s[a] >> n) & 1))


def _extend(d: _Draw) -> Task:
    rng = d.rng
    dst, a = d.regs(2)
    bits = rng.choice([8, 16, 32])
    name = {8: "byte", 16: "halfword", 32: "word"}[bits]
    ctype = {8: "char", 16: "short", 32: "int"}[bits]
    if rng.random() < 0.5:  # sign extension
        text = d.say(imperative=[f"sign-extend the low {name} of {a} into {dst}",
                                 f"sign extend {a} from {bits} bits into {dst}"],
                     question=[f"How do I sign-extend the {bits}-bit value in {a} to 64 bits in {dst}?"],
                     c=[f"{dst} = (long)({ctype}){a};"], terse=[f"{dst} = sext{bits}({a})"])
        if bits == 32 and rng.random() < 0.6:  # one instruction does it
            lines = [rng.choice([f"sext.w {dst}, {a}", f"addiw {dst}, {a}, 0"])]
        else:
            lines = [f"slli {dst}, {a}, {64 - bits}", f"srai {dst}, {dst}, {64 - bits}"]
        return Task("extend", text, lines, lambda s: s.__setitem__(dst, sext(s[a], bits)))
    uctype = {8: "unsigned char", 16: "unsigned short", 32: "unsigned int"}[bits]
    text = d.say(imperative=[f"zero-extend the {name} in {a} to 64 bits, giving {dst}", f"zero extend {a} from {bits} bits into {dst}"],
                 question=[f"How do I zero-extend the {bits}-bit value in {a} to 64 bits in {dst}?"],
                 c=[f"{dst} = ({uctype}){a};"], terse=[f"{dst} = zext{bits}({a})"])
    if bits == 8 and rng.random() < 0.5:
        lines = [f"andi {dst}, {a}, 255"]
    else:
        lines = [f"slli {dst}, {a}, {64 - bits}", f"srli {dst}, {dst}, {64 - bits}"]
    return Task("extend", text, lines, lambda s: s.__setitem__(dst, s[a] & ((1 << bits) - 1)))


# ------------------------------------------------------------------ min, max, abs, clamp

def _minmax(d: _Draw) -> Task:
    rng = d.rng
    kind = rng.randrange(4)
    if kind in (0, 1):  # min / max, signed or unsigned, branch or branchless
        dst, a, b = d.regs(3)
        which = "max" if kind == 0 else "min"
        unsigned = rng.random() < 0.3
        key = (lambda v: v & MASK) if unsigned else s64
        sign = "unsigned " if unsigned else ""
        u = "u" if unsigned else ""
        text = d.say(c=[f"{dst} = {which}({a}, {b}){'  // unsigned' if unsigned else ''}",
                        f"{dst} = {a} {'>' if which == 'max' else '<'} {b} ? {a} : {b};{' (unsigned)' if unsigned else ''}"],
                     imperative=[f"put the {sign}{'larger' if which == 'max' else 'smaller'} of {a} and {b} in {dst}",
                                 f"compute the {sign}{which}imum of {a} and {b} into {dst}"],
                     question=[f"How do I get the {sign}{which} of {a} and {b} into {dst} on RV64 (no Zbb)?"],
                     terse=[f"{dst} <- {sign}{which}({a},{b})"])
        pick_a = (lambda x, y: key(x) >= key(y)) if which == "max" else (lambda x, y: key(x) <= key(y))
        model = lambda s: s.__setitem__(dst, s[a] if pick_a(s[a], s[b]) else s[b])  # noqa: E731
        if rng.random() < 0.6:  # with a branch
            (lab, fwd, _), = d.labels(1)
            br = f"bge{u}" if which == "max" else f"ble{u}"
            lines = [f"mv {dst}, {a}", f"{br} {a}, {b}, {fwd}", f"mv {dst}, {b}"] + d.label_line(lab)
            return Task("minmax", text, lines, model)
        t1, t2 = d.temp(), d.temp()
        # branchless: mask = -(b < a) for min (-(a < b) for max); dst = a ^ ((a ^ b) & mask)
        cmp = f"slt{u} {t1}, {a}, {b}" if which == "max" else f"slt{u} {t1}, {b}, {a}"
        lines = [cmp, f"neg {t1}, {t1}", f"xor {t2}, {a}, {b}", f"and {t2}, {t2}, {t1}", f"xor {dst}, {a}, {t2}"]
        return Task("minmax", text, lines, model, scratch=[t1, t2])
    if kind == 2:  # abs
        dst, a = d.regs(2)
        text = d.say(c=[f"{dst} = abs({a})", f"{dst} = {a} < 0 ? -{a} : {a};"],
                     imperative=[f"put the absolute value of {a} in {dst}"],
                     question=[f"How do I compute |{a}| into {dst}? There is no abs instruction."],
                     terse=[f"{dst} = |{a}|"])
        model = lambda s: s.__setitem__(dst, abs(s64(s[a])))  # noqa: E731
        if rng.random() < 0.5:
            (lab, fwd, _), = d.labels(1)
            lines = [f"mv {dst}, {a}", f"bgez {a}, {fwd}", f"neg {dst}, {a}"] + d.label_line(lab)
            return Task("minmax", text, lines, model)
        t = d.temp()
        return Task("minmax", text, [f"srai {t}, {a}, 63", f"xor {dst}, {a}, {t}", f"sub {dst}, {dst}, {t}"], model,
                    scratch=[t])
    # clamp to constants
    dst, a = d.regs(2)
    t = d.temp()
    lo, hi = sorted(rng.sample([rng.randint(-1000, 1000) for _ in range(3)] + [0, 255, 100], 2))
    text = d.say(c=[f"{dst} = {a} < {lo} ? {lo} : ({a} > {hi} ? {hi} : {a});",
                    f"{dst} = clamp({a}, {lo}, {hi})"],
                 imperative=[f"clamp {a} to the range {lo}..{hi} (signed) and put it in {dst}",
                             f"limit {a} to between {lo} and {hi}, result in {dst}"],
                 question=[f"How do I saturate {a} to [{lo}, {hi}] into {dst}?"],
                 terse=[f"{dst} = clamp {a} to [{lo},{hi}]"])
    (l1, f1, _), (l2, f2, _) = d.labels(2)
    lines = [f"mv {dst}, {a}", f"li {t}, {lo}", f"bge {dst}, {t}, {f1}", f"mv {dst}, {t}"]
    lines += d.label_line(l1, f"li {t}, {hi}") + [f"ble {dst}, {t}, {f2}", f"mv {dst}, {t}"] + d.label_line(l2)
    return Task("minmax", text, lines, lambda s: s.__setitem__(dst, max(lo, min(hi, s64(s[a])))), scratch=[t])


# ------------------------------------------------------------------ compare and set

def _compare(d: _Draw) -> Task:
    rng = d.rng
    dst, a, b = d.regs(3)
    kind = rng.randrange(6)
    if kind == 0:  # equal / not equal
        eq = rng.random() < 0.5
        text = d.say(c=[f"{dst} = ({a} {'==' if eq else '!='} {b});"],
                     imperative=[f"make {dst} 1 when {a} and {b} are {'the same' if eq else 'different'}, 0 if not"],
                     question=[f"How do I test whether {a} {'and' if eq else 'and'} {b} are {'equal' if eq else 'different'}, 0/1 in {dst}?"],
                     terse=[f"{dst} = {a} {'==' if eq else '!='} {b} ? 1 : 0"])
        return Task("compare", text, [f"xor {dst}, {a}, {b}", f"{'seqz' if eq else 'snez'} {dst}, {dst}"],
                    lambda s: s.__setitem__(dst, int((s[a] == s[b]) == eq)))
    if kind == 1:  # >= or <=, signed or unsigned
        ge = rng.random() < 0.5
        unsigned = rng.random() < 0.3
        key = (lambda v: v) if unsigned else s64
        u = "u" if unsigned else ""
        sym = ">=" if ge else "<="
        text = d.say(c=[f"{dst} = {a} {sym} {b};{'  // unsigned' if unsigned else ''}"],
                     imperative=[f"set {dst} to 1 when {a} {sym} {b} ({'unsigned' if unsigned else 'signed'}), otherwise 0"],
                     question=[f"How do I compute {a} {sym} {b} as a 0/1 flag in {dst}{', unsigned' if unsigned else ''}?"],
                     terse=[f"{dst} = ({a} {sym} {b}){' unsigned' if unsigned else ''}"])
        first = f"slt{u} {dst}, {a}, {b}" if ge else f"slt{u} {dst}, {b}, {a}"
        return Task("compare", text, [first, f"xori {dst}, {dst}, 1"],
                    lambda s: s.__setitem__(dst, int(key(s[a]) >= key(s[b]) if ge else key(s[a]) <= key(s[b]))))
    if kind == 2:  # equal to a constant
        k = _imm(rng, -2000, 2000)
        text = d.say(c=[f"{dst} = ({a} == {k});"], imperative=[f"set {dst} to 1 if {a} is {k}, else 0"],
                     question=[f"How do I check if {a} equals {k} (flag in {dst})?"], terse=[f"{dst} = {a}=={k}"])
        return Task("compare", text, [f"addi {dst}, {a}, {-k}", f"seqz {dst}, {dst}"],
                    lambda s: s.__setitem__(dst, int(s64(s[a]) == k)))
    if kind == 3:  # in range [lo, hi)
        lo = rng.randint(-100, 500)
        hi = lo + rng.randint(2, 1000)
        text = d.say(c=[f"{dst} = ({a} >= {lo} && {a} < {hi});"],
                     imperative=[f"set {dst} to 1 if {lo} <= {a} < {hi} (signed), else 0"],
                     question=[f"How do I test {lo} <= {a} < {hi} with one compare, result in {dst}?"],
                     terse=[f"{dst} = {a} in [{lo}, {hi})"])
        return Task("compare", text, [f"addi {dst}, {a}, {-lo}", f"sltiu {dst}, {dst}, {hi - lo}"],
                    lambda s: s.__setitem__(dst, int(lo <= s64(s[a]) < hi)))
    if kind == 4:  # select with a branch
        c, e = d.regs(2)
        text = d.say(c=[f"{dst} = ({a} < {b}) ? {c} : {e};"],
                     imperative=[f"if {a} < {b} (signed) put {c} in {dst}, otherwise {e}"],
                     question=[f"How do I pick {c} when {a} is less than {b} and {e} otherwise, into {dst}?"],
                     terse=[f"{dst} = {a}<{b} ? {c} : {e}"])
        (lab, fwd, _), = d.labels(1)
        lines = [f"mv {dst}, {c}", f"blt {a}, {b}, {fwd}", f"mv {dst}, {e}"] + d.label_line(lab)
        return Task("compare", text, lines, lambda s: s.__setitem__(dst, s[c] if s64(s[a]) < s64(s[b]) else s[e]))
    # kind 5: sign of a: -1, 0, 1
    t = d.temp()
    text = d.say(c=[f"{dst} = ({a} > 0) - ({a} < 0);"], imperative=[f"set {dst} to the sign of {a}: -1, 0 or 1"],
                 question=[f"How do I compute signum({a}) into {dst}?"], terse=[f"{dst} = sgn({a})"])
    return Task("compare", text, [f"sgtz {dst}, {a}", f"sltz {t}, {a}", f"sub {dst}, {dst}, {t}"],
                lambda s: s.__setitem__(dst, (s64(s[a]) > 0) - (s64(s[a]) < 0)), scratch=[t])


# ------------------------------------------------------------------ large constants

def _constant(d: _Draw) -> Task:
    rng = d.rng
    kind = rng.randrange(4)
    v = rng.choice([rng.randint(2048, (1 << 31) - 1), -rng.randint(2049, 1 << 31), rng.randint(0x1000, 0xFFFFF) << 12])
    if kind == 0:  # explicit lui + addiw
        v = s32(v)
        dst = d.reg()
        hi = ((v + 0x800) >> 12) & 0xFFFFF
        lo = v - s32(hi << 12)
        text = d.say(imperative=[f"load {_hex(v) if rng.random() < 0.5 else v} into {dst} with lui and addiw"],
                     question=[f"How do I build the 32-bit constant {_hex(v)} in {dst} using lui/addiw?"],
                     terse=[f"{dst} = {_hex(v)} (lui + addiw)"])
        lines = [f"lui {dst}, {_hex(hi)}", f"addiw {dst}, {dst}, {lo}"]
        return Task("constant", text, lines, lambda s: s.__setitem__(dst, v))
    dst, a = d.regs(2)
    t = d.temp()
    shown = _hex(v) if rng.random() < 0.6 else str(v)
    if kind == 1:  # add a big constant
        text = d.say(c=[f"{dst} = {a} + {shown};"], imperative=[f"add the constant {shown} to {a}, result in {dst}"],
                     question=[f"How do I add {shown} to {a}? It does not fit in addi. Result in {dst}."],
                     terse=[f"{dst} = {a} + {shown}"])
        return Task("constant", text, [f"li {t}, {shown}", f"add {dst}, {a}, {t}"],
                    lambda s: s.__setitem__(dst, s[a] + v), scratch=[t])
    if kind == 2:  # AND with a big mask
        m = rng.choice([0xFFFF0000, 0x00FFFF00, 0xFFFF, 0x0F0F0F0F, 0xFFFFFFFF00, rng.getrandbits(32) | 0x1000])
        text = d.say(c=[f"{dst} = {a} & {_hex(m)};"], imperative=[f"mask {a} with {_hex(m)} into {dst}"],
                     question=[f"How do I AND {a} with the mask {_hex(m)} into {dst}?"], terse=[f"{dst} = {a} & {_hex(m)}"])
        return Task("constant", text, [f"li {t}, {_hex(m)}", f"and {dst}, {a}, {t}"],
                    lambda s: s.__setitem__(dst, s[a] & m), scratch=[t])
    # kind 3: compare with a big constant
    text = d.say(c=[f"{dst} = ({a} < {shown});  // signed"],
                 imperative=[f"set {dst} to 1 if {a} is less than {shown} (signed), else 0"],
                 question=[f"How do I compare {a} against {shown}, 0/1 in {dst}?"], terse=[f"{dst} = {a} < {shown}"])
    return Task("constant", text, [f"li {t}, {shown}", f"slt {dst}, {a}, {t}"],
                lambda s: s.__setitem__(dst, int(s64(s[a]) < v)), scratch=[t])


# ------------------------------------------------------------------ moves and logic

def _move(d: _Draw) -> Task:
    rng = d.rng
    kind = rng.randrange(3)
    if kind == 0:  # swap with a temporary
        a, b = d.regs(2)
        t = d.temp()
        text = d.say(imperative=[f"exchange the contents of {a} and {b}"], question=[f"How do I swap {a} and {b}?"],
                     c=[f"tmp = {a}; {a} = {b}; {b} = tmp;"], terse=[f"swap {a} <-> {b}"])

        def model(s: State) -> None:
            s[a], s[b] = s[b], s[a]
        return Task("move", text, [f"mv {t}, {a}", f"mv {a}, {b}", f"mv {b}, {t}"], model, scratch=[t])
    if kind == 1:  # swap without a temporary
        a, b = d.regs(2)
        text = d.say(imperative=[f"swap {a} and {b} using XOR only, no third register"],
                     question=[f"How can I swap {a} and {b} without a temporary register?"],
                     terse=[f"xor-swap {a}, {b}"])

        def model(s: State) -> None:
            s[a], s[b] = s[b], s[a]
        return Task("move", text, [f"xor {a}, {a}, {b}", f"xor {b}, {a}, {b}", f"xor {a}, {a}, {b}"], model,
                    temporaries_free=False)
    # kind 2: rotate three registers
    a, b, c = d.regs(3)
    t = d.temp()
    text = d.say(imperative=[f"rotate the values: {a} takes {b}'s value, {b} takes {c}'s, {c} takes the old {a}"],
                 c=[f"tmp = {a}; {a} = {b}; {b} = {c}; {c} = tmp;"],
                 question=[f"How do I cycle {a} <- {b} <- {c} <- {a} through a temporary?"])

    def model(s: State) -> None:
        s[a], s[b], s[c] = s[b], s[c], s[a]
    return Task("move", text, [f"mv {t}, {a}", f"mv {a}, {b}", f"mv {b}, {c}", f"mv {c}, {t}"], model, scratch=[t])


def _logic(d: _Draw) -> Task:
    rng = d.rng
    kind = rng.randrange(4)
    dst, a, b = d.regs(3)
    if kind == 0:  # nor / nand / xnor
        op, name, fn = rng.choice([("or", "NOR", lambda x, y: ~(x | y)), ("and", "NAND", lambda x, y: ~(x & y)),
                                   ("xor", "XNOR", lambda x, y: ~(x ^ y))])
        sym = {"or": "|", "and": "&", "xor": "^"}[op]
        text = d.say(imperative=[f"compute the {name} of {a} and {b} into {dst}"], c=[f"{dst} = ~({a} {sym} {b});"],
                     question=[f"RV64 has no {name.lower()} instruction; how do I get {a} {name} {b} in {dst}?"],
                     terse=[f"{dst} = {a} {name} {b}"])
        return Task("logic", text, [f"{op} {dst}, {a}, {b}", f"not {dst}, {dst}"], lambda s: s.__setitem__(dst, fn(s[a], s[b])))
    if kind == 1:  # a & ~b, a | ~b
        t = d.temp()
        op, name, fn = rng.choice([("and", "AND NOT", lambda x, y: x & ~y), ("or", "OR NOT", lambda x, y: x | ~y)])
        sym = "&" if op == "and" else "|"
        text = d.say(c=[f"{dst} = {a} {sym} ~{b};"], imperative=[f"compute {a} {name} {b} into {dst} (no Zbb)"],
                     question=[f"How do I do {dst} = {a} {sym} ~{b} with base instructions?"], terse=[f"{dst} = {a} {name} {b}"])
        return Task("logic", text, [f"not {t}, {b}", f"{op} {dst}, {a}, {t}"], lambda s: s.__setitem__(dst, fn(s[a], s[b])),
                    scratch=[t])
    if kind == 2:  # rotate by a constant
        n = rng.randint(1, 63)
        left = rng.random() < 0.5
        t1, t2 = d.temp(), d.temp()
        way = "left" if left else "right"
        text = d.say(imperative=[f"rotate {a} {way} by {n} bits into {dst}"],
                     question=[f"How do I rotate {a} {way} by {n} without the Zbb rol/ror instructions, result in {dst}?"],
                     c=[f"{dst} = ({a} {'<<' if left else '>>'} {n}) | ({a} {'>>' if left else '<<'} {64 - n});"],
                     terse=[f"{dst} = rot{'l' if left else 'r'}({a}, {n})"])
        first, second = ("slli", "srli") if left else ("srli", "slli")
        amount = n if left else 64 - n
        return Task("logic", text, [f"{first} {t1}, {a}, {n}", f"{second} {t2}, {a}, {64 - n}", f"or {dst}, {t1}, {t2}"],
                    lambda s: s.__setitem__(dst, ((s[a] << amount) | (s[a] >> (64 - amount))) & MASK), scratch=[t1, t2])
    # kind 3: a bitwise select: dst = (a & m) | (b & ~m)
    m = d.reg()
    t = d.temp()
    text = d.say(c=[f"{dst} = ({a} & {m}) | ({b} & ~{m});"],
                 imperative=[f"merge {a} and {b} bit by bit: where {m} has a 1 take {a}'s bit, else {b}'s, into {dst}"],
                 question=[f"How do I select bits from {a} where the mask {m} is set and from {b} elsewhere, into {dst}?"])
    return Task("logic", text, [f"xor {t}, {a}, {b}", f"and {t}, {t}, {m}", f"xor {dst}, {b}, {t}"],
                lambda s: s.__setitem__(dst, (s[a] & s[m]) | (s[b] & ~s[m] & MASK)), scratch=[t])
