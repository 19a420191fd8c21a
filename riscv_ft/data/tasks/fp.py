"""Floating-point task families (F and D)."""

from __future__ import annotations

import math
import random

from riscv_ft.data.tasks.base import MASK, _Draw, f32, f32_bits, f64_bits, s32, s64, sext, State, Task


# ------------------------------------------------------------------ floating point

def _fp_value(rng: random.Random) -> float:
    return round(rng.uniform(-500, 500), rng.choice([0, 1, 2, 3])) or 1.5


def _fp(d: _Draw) -> Task:
    rng = d.rng
    double = rng.random() < 0.5
    sfx, name, ctype, size = ("d", "double", "double", 8) if double else ("s", "single", "float", 4)
    ld_, st_ = ("fld", "fsd") if double else ("flw", "fsw")
    rnd = (lambda v: v) if double else f32
    ops = {"add": ("fadd", "+", lambda x, y: x + y), "sub": ("fsub", "-", lambda x, y: x - y),
           "mul": ("fmul", "*", lambda x, y: x * y), "div": ("fdiv", "/", lambda x, y: x / y)}
    word, (mn, sym, fn) = rng.choice(sorted(ops.items()))
    kind = rng.randrange(10)
    if kind == 0:  # load two values, operate, store
        p = d.reg()
        o1, o2, o3 = (size * k for k in rng.sample(range(0, 8), 3))
        t1, t2 = d.ftemp(), d.ftemp()
        text = d.say(imperative=[f"load the {ctype}s at {o1}({p}) and {o2}({p}), {word} them, and store the result at {o3}({p})"],
                     question=[f"How do I compute {p}[{o3 // size}] = {p}[{o1 // size}] {sym} {p}[{o2 // size}] for {ctype}s?"],
                     c=[f"(({ctype} *){p})[{o3 // size}] = (({ctype} *){p})[{o1 // size}] {sym} (({ctype} *){p})[{o2 // size}];"],
                     terse=[f"{ctype}: mem[{p}+{o3}] = mem[{p}+{o1}] {sym} mem[{p}+{o2}]"])

        def prepare(r: random.Random, s: State) -> None:
            s.store_f(s[p] + o1, _fp_value(r), double)
            s.store_f(s[p] + o2, _fp_value(r), double)

        def model(s: State) -> None:
            s.store_f(s[p] + o3, rnd(fn(s.load_f(s[p] + o1, double), s.load_f(s[p] + o2, double))), double)
        return Task("fp", text, [f"{ld_} {t1}, {o1}({p})", f"{ld_} {t2}, {o2}({p})", f"{mn}.{sfx} {t1}, {t1}, {t2}",
                                 f"{st_} {t1}, {o3}({p})"], model, {p}, [t1, t2], prepare)
    if kind == 1:  # register expression x*y + z with two roundings
        dst, x, y, z = d.freg(), d.freg(), d.freg(), d.freg()
        t = d.ftemp()
        text = d.say(c=[f"{dst} = {x} * {y} + {z};  // {ctype}, not fused"],
                     imperative=[f"multiply the {ctype}s {x} and {y}, then add {z}, result in {dst} (separate mul and add)"],
                     question=[f"How do I compute {dst} = {x}*{y} + {z} in {ctype} precision with fmul and fadd?"],
                     terse=[f"{dst} = {x}*{y}+{z} ({name} precision, two roundings)"])
        get, put = (State.fd, State.set_fd) if double else (State.fs, State.set_fs)

        def prepare(r: random.Random, s: State) -> None:
            for reg in (x, y, z):
                put(s, reg, rnd(_fp_value(r)))

        def model(s: State) -> None:
            put(s, dst, rnd(rnd(get(s, x) * get(s, y)) + get(s, z)))
        return Task("fp", text, [f"fmul.{sfx} {t}, {x}, {y}", f"fadd.{sfx} {dst}, {t}, {z}"], model, set(), [t], prepare)
    if kind == 2:  # int -> float, operate, float -> int (truncating)
        dst, a, b = d.regs(3)
        t1, t2 = d.ftemp(), d.ftemp()
        text = d.say(c=[f"{dst} = (int)(({ctype}){a} {sym} ({ctype}){b});"],
                     imperative=[f"convert {a} and {b} to {ctype}, {word} them, and truncate the result back to an int in {dst}"],
                     question=[f"How do I do {a} {sym} {b} in {name} precision and get the truncated int in {dst}?"],
                     terse=[f"{dst} = int({ctype}({a}) {sym} {ctype}({b}))"])

        def prepare(r: random.Random, s: State) -> None:
            s[a] = r.randint(-1000, 1000)
            s[b] = r.choice([-1, 1]) * r.randint(1, 1000)

        def model(s: State) -> None:
            v = rnd(fn(rnd(float(s32(s[a]))), rnd(float(s32(s[b])))))
            s[dst] = int(v)  # toward zero, as the rtz rounding mode
        return Task("fp", text, [f"fcvt.{sfx}.w {t1}, {a}", f"fcvt.{sfx}.w {t2}, {b}", f"{mn}.{sfx} {t1}, {t1}, {t2}",
                                 f"fcvt.w.{sfx} {dst}, {t1}, rtz"], model, set(), [t1, t2], prepare)
    if kind == 3:  # load a single, widen to double (or narrow a double), store
        p = d.reg()
        dst = d.freg()
        widen = rng.random() < 0.5
        t = d.ftemp()
        if widen:
            off = 4 * rng.randint(0, 10)
            text = d.say(imperative=[f"load the float at {off}({p}) and convert it to double in {dst}"],
                         question=[f"How do I read a float from {p}+{off} into {dst} as a double?"],
                         c=[f"{dst} = (double)*(float *)({p} + {off});"], terse=[f"{dst} = (double) float@{off}({p})"])

            def prepare(r: random.Random, s: State) -> None:
                s.store_f(s[p] + off, _fp_value(r), False)
            return Task("fp", text, [f"flw {t}, {off}({p})", f"fcvt.d.s {dst}, {t}"],
                        lambda s: s.set_fd(dst, s.load_f(s[p] + off, False)), {p}, [t], prepare)
        off = 8 * rng.randint(0, 10)
        text = d.say(imperative=[f"load the double at {off}({p}), round it to float, and store it back at {off}({p}) as a float"],
                     question=[f"How do I narrow the double at {p}+{off} to a float stored at the same address?"],
                     c=[f"*(float *)({p} + {off}) = (float)*(double *)({p} + {off});"],
                     terse=[f"double@{off}({p}) -> float, stored in place"])

        def prepare(r: random.Random, s: State) -> None:
            s.store_f(s[p] + off, r.uniform(-1e4, 1e4), True)
        return Task("fp", text, [f"fld {t}, {off}({p})", f"fcvt.s.d {t}, {t}", f"fsw {t}, {off}({p})"],
                    lambda s: s.store_f(s[p] + off, f32(s.load_f(s[p] + off, True)), False), {p}, [t], prepare)
    if kind == 5:  # an FP register and a small integer constant: RV64GC has no FP immediates
        dst, x = d.freg(), d.freg()
        t, ft = d.temp(), d.ftemp()
        k = rng.randint(2, 12)
        get, put = (State.fd, State.set_fd) if double else (State.fs, State.set_fs)
        verb = {"add": f"add {k} to", "sub": f"subtract {k} from", "mul": f"scale by {k}", "div": f"divide by {k}"}[word]
        text = d.say(c=[f"{dst} = {x} {sym} {k};  // {ctype}"], imperative=[f"{verb} the {ctype} {x}, result in {dst}"],
                     question=[f"How do I {verb} the {ctype} in {x} and put it in {dst}?"],
                     terse=[f"{dst} = {x} {sym} {k}.0 ({name})"])

        def prepare(r: random.Random, s: State) -> None:
            put(s, x, rnd(_fp_value(r)))
        return Task("fp", text, [f"li {t}, {k}", f"fcvt.{sfx}.w {ft}, {t}", f"{mn}.{sfx} {dst}, {x}, {ft}"],
                    lambda s: put(s, dst, rnd(fn(get(s, x), float(k)))), set(), [t, ft], prepare)
    if kind == 6:  # integer arithmetic, then to FP
        dst = d.freg()
        a, b = d.regs(2)
        t = d.temp()
        isym, iop, iword = rng.choice([("+", "addw", "sum"), ("-", "subw", "difference")])
        put = State.set_fd if double else State.set_fs
        text = d.say(c=[f"{dst} = ({ctype})(int)({a} {isym} {b});"],
                     imperative=[f"take the 32-bit {iword} {a} {isym} {b} and convert it to a {ctype} in {dst}"],
                     question=[f"How do I get the int {iword} of {a} and {b} as a {ctype} in {dst}?"],
                     terse=[f"{dst} <- {ctype}({a} {isym} {b}), ints"])

        def model(s: State) -> None:
            v = s32((s[a] + s[b]) if isym == "+" else (s[a] - s[b]))
            put(s, dst, rnd(float(v)))
        return Task("fp", text, [f"{iop} {t}, {a}, {b}", f"fcvt.{sfx}.w {dst}, {t}"], model, set(), [t])
    if kind == 7:  # round to the nearest integer (ties to even), store it as a 64-bit integer
        x = d.freg()
        p = d.reg()
        t = d.temp()
        off = 8 * rng.randint(0, 8)
        get, put = (State.fd, State.set_fd) if double else (State.fs, State.set_fs)
        text = d.say(c=[f"*(long *)({p} + {off}) = lrint({x});  // {ctype}, round half to even"],
                     imperative=[f"round the {ctype} {x} to a whole number (halves to even) and write it as a 64-bit int at {off}({p})"],
                     question=[f"How do I store {x} rounded to the nearest long (ties to even) at {p}+{off}?"],
                     terse=[f"mem64[{p}+{off}] = round_even({x}) ({name})"])

        def prepare(r: random.Random, s: State) -> None:
            put(s, x, rnd(r.choice([_fp_value(r), r.randint(-300, 300) + 0.5])))
        return Task("fp", text, [f"fcvt.l.{sfx} {t}, {x}, rne", f"sd {t}, {off}({p})"],
                    lambda s: s.store(s[p] + off, 8, round(get(s, x)) & MASK), {p}, [t], prepare)
    if kind == 8:  # compare an FP register with a value in memory
        x = d.freg()
        a, p = d.regs(2)
        ft = d.ftemp()
        off = size * rng.randint(0, 8)
        get, put = (State.fd, State.set_fd) if double else (State.fs, State.set_fs)
        bigger = rng.random() < 0.5
        rel = ">" if bigger else "<"
        text = d.say(c=[f"{a} = ((({ctype} *){p})[{off // size}] {rel} {x});"],
                     imperative=[f"set {a} to 1 when the {ctype} stored {off} bytes past {p} is {'above' if bigger else 'below'} "
                                 f"{x}, else 0"],
                     question=[f"How can I test whether the {ctype} at {off}({p}) is {'more' if bigger else 'less'} than {x}, "
                               f"0/1 in {a}?"],
                     terse=[f"{a} = mem{ctype}[{p}+{off}] {rel} {x}"])

        def prepare(r: random.Random, s: State) -> None:
            put(s, x, rnd(_fp_value(r)))
            s.store_f(s[p] + off, r.choice([_fp_value(r), get(s, x)]), double)

        def model(s: State) -> None:
            m = s.load_f(s[p] + off, double)
            s[a] = int(m > get(s, x)) if bigger else int(m < get(s, x))
        compare = f"flt.{sfx} {a}, {x}, {ft}" if bigger else f"flt.{sfx} {a}, {ft}, {x}"
        return Task("fp", text, [f"{ld_} {ft}, {off}({p})", compare], model, {p}, [ft], prepare)
    if kind == 9:  # one instruction asked for by what it does (NOTES 17: answers wrote shifts on fa0, fsgnj chains)
        return _fp_one(d, double)
    # kind 4: max / abs / compare on FP registers
    dst, x, y = d.freg(), d.freg(), d.freg()
    get, put = (State.fd, State.set_fd) if double else (State.fs, State.set_fs)

    def prepare(r: random.Random, s: State) -> None:
        for reg in (x, y):
            put(s, reg, rnd(_fp_value(r)))
    which = rng.choice(["max", "min", "absdiff", "less"])
    if which in ("max", "min"):
        text = d.say(c=[f"{dst} = f{which}({x}, {y});  // {ctype}"], imperative=[f"put the {which} of the {ctype}s {x} and {y} in {dst}"],
                     question=[f"How do I take the {which}imum of two {ctype}s {x}, {y} into {dst}?"])
        return Task("fp", text, [f"f{which}.{sfx} {dst}, {x}, {y}"],
                    lambda s: put(s, dst, (max if which == "max" else min)(get(s, x), get(s, y))), set(), [], prepare)
    if which == "absdiff":
        text = d.say(c=[f"{dst} = fabs({x} - {y});  // {ctype}"],
                     imperative=[f"put the absolute difference of the {ctype}s {x} and {y} in {dst}"],
                     question=[f"How do I compute |{x} - {y}| for {ctype}s into {dst}?"])
        return Task("fp", text, [f"fsub.{sfx} {dst}, {x}, {y}", f"fabs.{sfx} {dst}, {dst}"],
                    lambda s: put(s, dst, abs(rnd(get(s, x) - get(s, y)))), set(), [], prepare)
    a = d.reg()
    text = d.say(c=[f"{a} = ({x} < {y}) ? 0 : 1;  // {ctype}s"],
                 imperative=[f"{a} should be 0 when the {ctype} {x} < {y}, and 1 otherwise"],
                 question=[f"How do I get 1 in {a} when {x} >= {y} (not less), for {ctype}s?"])
    return Task("fp", text, [f"flt.{sfx} {a}, {x}, {y}", f"xori {a}, {a}, 1"],
                lambda s: s.__setitem__(a, int(not get(s, x) < get(s, y))), set(), [], prepare)


def _fp_one(d: _Draw, double: bool) -> Task:
    """One F/D instruction named by its effect: square root, negation, absolute value, copy, an
    integer conversion either way (truncating toward zero back), or the raw bits into an integer
    register. Values keep conversions exact (integers below 2^24 for a single)."""
    rng = d.rng
    sfx, ctype = ("d", "double") if double else ("s", "float")
    rnd = (lambda v: v) if double else f32
    get, put = (State.fd, State.set_fd) if double else (State.fs, State.set_fs)
    which = rng.choice(["sqrt", "neg", "abs", "copy", "from_long", "from_unsigned", "truncate", "bits"])
    if which in ("sqrt", "neg", "abs", "copy"):
        dst, x = d.freg(), d.freg()
        if rng.random() < 0.3:  # in place, except a copy (to a third register then)
            dst = x if which != "copy" else d.freg()
        into = "" if dst == x else f" into {dst}"
        phrase = {"sqrt": (f"take the square root of the {ctype} in {x}{into}", f"{dst} = sqrt({x});  // {ctype}s",
                           f"How do I compute the square root of the {ctype} {x}{into}?"),
                  "neg": (f"negate the {ctype} in {x}{into}", f"{dst} = -{x};  // {ctype}",
                          f"How do I flip the sign of the {ctype} {x}{into}?"),
                  "abs": (f"make the {ctype} in {x} non-negative{into}", f"{dst} = fabs({x});  // {ctype}",
                          f"How do I get the absolute value of the {ctype} {x}{into}?"),
                  "copy": (f"copy the {ctype} in {x} to {dst}", f"{dst} = {x};  // {ctype} registers",
                           f"Which instruction copies the {ctype} {x} to {dst}?")}[which]
        text = d.say(imperative=[phrase[0]], c=[phrase[1]], question=[phrase[2]])
        fn = {"sqrt": math.sqrt, "neg": lambda v: -v, "abs": abs, "copy": lambda v: v}[which]
        mnemonic = {"sqrt": "fsqrt", "neg": "fneg", "abs": "fabs", "copy": "fmv"}[which]

        def prepare(r: random.Random, s: State) -> None:
            value = rnd(_fp_value(r))
            put(s, x, abs(value) if which == "sqrt" else value)
        return Task("fp", text, [f"{mnemonic}.{sfx} {dst}, {x}"], lambda s: put(s, dst, rnd(fn(get(s, x)))), set(), [], prepare)
    if which in ("from_long", "from_unsigned"):
        dst, a = d.freg(), d.reg()
        integer, ctype_int, op = (("64-bit integer", "long", "l") if which == "from_long"
                                  else ("unsigned 32-bit integer", "unsigned int", "wu"))
        text = d.say(imperative=[f"{dst} should hold the {integer} from {a} as a {ctype}",
                                 f"make a {ctype} in {dst} from the {integer} that {a} holds"],
                     c=[f"{dst} = ({ctype})({ctype_int}){a};"], question=[f"What gives {dst} the {ctype} value of the {integer} {a}?"])
        limit = 1 << 24

        def prepare(r: random.Random, s: State) -> None:
            s[a] = r.randint(-limit, limit) if which == "from_long" else r.randint(0, limit)

        def model(s: State) -> None:
            put(s, dst, rnd(float(s64(s[a]) if which == "from_long" else s[a] & 0xFFFFFFFF)))
        return Task("fp", text, [f"fcvt.{sfx}.{op} {dst}, {a}"], model, set(), [], prepare)
    if which == "truncate":
        a, x = d.reg(), d.freg()
        text = d.say(imperative=[f"convert the {ctype} in {x} to a 32-bit int in {a}, dropping the fraction (toward zero)"],
                     c=[f"{a} = (int){x};  // {ctype}, C truncates"], question=[f"How do I truncate the {ctype} {x} to an int in {a}?"])

        def prepare(r: random.Random, s: State) -> None:
            put(s, x, rnd(_fp_value(r)))
        return Task("fp", text, [f"fcvt.w.{sfx} {a}, {x}, rtz"], lambda s: s.__setitem__(a, int(get(s, x))), set(), [], prepare)
    # the raw bits of an FP register in an integer register (a single's 32 bits sign-extended, as fmv.x.w does)
    a, x = d.reg(), d.freg()
    width = 64 if double else 32
    text = d.say(imperative=[f"move the raw bits of the {ctype} in {x} into {a}, unchanged"],
                 c=[f"memcpy(&{a}, &{x}, {width // 8});  // the {ctype}'s bit pattern"],
                 question=[f"How do I get the bit pattern of the {ctype} {x} into the integer register {a}?"])

    def prepare(r: random.Random, s: State) -> None:
        put(s, x, rnd(_fp_value(r)))

    def model(s: State) -> None:
        s[a] = f64_bits(get(s, x)) if double else sext(f32_bits(get(s, x)), 32)
    return Task("fp", text, [f"fmv.x.{'d' if double else 'w'} {a}, {x}"], model, set(), [], prepare)
