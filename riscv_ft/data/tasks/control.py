"""Control-flow task families: loops and branches."""

from __future__ import annotations

import random

from riscv_ft.data.tasks.base import _Draw, _imm, s64, State, Task
from riscv_ft.data.tasks.memory import _SIZES


# ------------------------------------------------------------------ loops

def _loop(d: _Draw) -> Task:
    rng = d.rng
    kind = rng.randrange(8)
    n = rng.randint(2, 20)
    if kind == 5:  # length of a NUL-terminated string
        dst, p = d.regs(2)
        t1, t2 = d.temp(), d.temp()
        (lab, _, back), (lab2, fwd2, _) = d.labels(2, loop=True)
        text = d.say(imperative=[f"count the bytes before the terminating zero of the string at {p}; length in {dst}"],
                     question=[f"How do I compute strlen of the C string at {p} into {dst}?"],
                     c=[f"{dst} = strlen((char *){p});"], terse=[f"{dst} = strlen({p})"])
        lines = [f"mv {t1}, {p}"] + d.label_line(lab, f"lbu {t2}, 0({t1})") + \
            [f"beqz {t2}, {fwd2}", f"addi {t1}, {t1}, 1", f"j {back}"] + d.label_line(lab2, f"sub {dst}, {t1}, {p}")

        def prepare(r: random.Random, s: State) -> None:
            length = r.randint(0, 30)
            for k in range(length):
                s.store(s[p] + k, 1, r.randint(1, 255))
            s.store(s[p] + length, 1, 0)

        def model(s: State) -> None:
            length = 0
            while s.load(s[p] + length, 1, signed=False):
                length += 1
            s[dst] = length
        return Task("loop", text, lines, model, {p}, [t1, t2], prepare)
    if kind == 6:  # fill n bytes / words with a value, with a loop
        p, v = d.regs(2)
        t1, t2 = d.temp(), d.temp()
        sfx = rng.choice("bwd")
        size, name = _SIZES[sfx]
        (lab, _, back), = d.labels(1, loop=True)
        text = d.say(imperative=[f"with a loop, store {v} into each of the {n} {name}s at {p}"],
                     question=[f"How do I write a loop that fills {n} {name}s starting at {p} with {v}?"],
                     c=[f"for (i = 0; i < {n}; i++) {p}[i] = {v};  // {name} elements"],
                     terse=[f"loop: {n} x {name} @ {p} := {v}"])
        lines = [f"mv {t1}, {p}", f"li {t2}, {n}"] + d.label_line(lab, f"s{sfx} {v}, 0({t1})") + \
            [f"addi {t1}, {t1}, {size}", f"addi {t2}, {t2}, -1", f"bnez {t2}, {back}"]

        def model(s: State) -> None:
            for k in range(n):
                s.store(s[p] + k * size, size, s[v])
        return Task("loop", text, lines, model, {p}, [t1, t2])
    if kind == 7:  # copy n words with a loop
        dst, src = d.regs(2)
        t1, t2, t3, t4 = d.temp(), d.temp(), d.temp(), d.temp()
        sfx = rng.choice("wd")
        size, name = _SIZES[sfx]
        (lab, _, back), = d.labels(1, loop=True)
        text = d.say(imperative=[f"copy {n} {name}s from {src} to {dst} in a loop (the buffers do not overlap)"],
                     question=[f"How do I loop-copy {n} {name}s from the array at {src} to the one at {dst}?"],
                     c=[f"for (i = 0; i < {n}; i++) {dst}[i] = {src}[i];  // {name}s, loop"],
                     terse=[f"loop copy {n} {name}s {src} -> {dst}"])
        lines = [f"mv {t1}, {src}", f"mv {t2}, {dst}", f"li {t3}, {n}"] + d.label_line(lab, f"l{sfx} {t4}, 0({t1})") + \
            [f"s{sfx} {t4}, 0({t2})", f"addi {t1}, {t1}, {size}", f"addi {t2}, {t2}, {size}", f"addi {t3}, {t3}, -1",
             f"bnez {t3}, {back}"]

        def prepare(r: random.Random, s: State) -> None:
            s[dst] = s[src] + r.choice([-1, 1]) * 8 * r.randint(n, 64)

        def model(s: State) -> None:
            for k in range(n):
                s.store(s[dst] + k * size, size, s.load(s[src] + k * size, size))
        return Task("loop", text, lines, model, {dst, src}, [t1, t2, t3, t4], prepare)
    if kind == 0:  # sum 1..n
        dst = d.reg()
        t = d.temp()
        (lab, _, back), = d.labels(1, loop=True)
        text = d.say(imperative=[f"sum the integers 1 to {n} into {dst} with a loop"],
                     question=[f"How do I add up 1 + 2 + ... + {n} in a loop, result in {dst}?"],
                     c=[f"for ({dst} = 0, i = 1; i <= {n}; i++) {dst} += i;"], terse=[f"{dst} = sum(1..{n}), loop"])
        lines = [f"li {dst}, 0", f"li {t}, {n}"] + d.label_line(lab, f"add {dst}, {dst}, {t}") + \
            [f"addi {t}, {t}, -1", f"bnez {t}, {back}"]
        return Task("loop", text, lines, lambda s: s.__setitem__(dst, n * (n + 1) // 2), scratch=[t])
    if kind == 1:  # factorial
        n = rng.randint(2, 12)
        dst = d.reg()
        t = d.temp()
        (lab, _, back), = d.labels(1, loop=True)
        text = d.say(imperative=[f"compute {n} factorial into {dst} using a loop"],
                     question=[f"How do I compute {n}! with a loop into {dst}?"],
                     c=[f"{dst} = 1; for (i = {n}; i > 0; i--) {dst} *= i;"], terse=[f"{dst} = {n}! (loop)"])
        lines = [f"li {dst}, 1", f"li {t}, {n}"] + d.label_line(lab, f"mul {dst}, {dst}, {t}") + \
            [f"addi {t}, {t}, -1", f"bnez {t}, {back}"]
        fact = 1
        for k in range(2, n + 1):
            fact *= k
        return Task("loop", text, lines, lambda s: s.__setitem__(dst, fact), scratch=[t])
    if kind == 2:  # sum of an array of n words
        dst, p = d.regs(2)
        t1, t2, t3 = d.temp(), d.temp(), d.temp()
        sfx = rng.choice("wd")
        size, name = _SIZES[sfx]
        (lab, _, back), = d.labels(1, loop=True)
        text = d.say(imperative=[f"sum the {n} {name}s of the array at {p} into {dst} with a loop"],
                     question=[f"How do I loop over {n} {'ints' if sfx == 'w' else 'longs'} at {p} and add them into {dst}?"],
                     c=[f"{dst} = 0; for (i = 0; i < {n}; i++) {dst} += {p}[i];  // {name}s"],
                     terse=[f"{dst} = sum of {n} {name}s @ {p}"])
        lines = [f"li {dst}, 0", f"li {t1}, {n}", f"mv {t2}, {p}"] + d.label_line(lab, f"l{sfx} {t3}, 0({t2})") + \
            [f"add {dst}, {dst}, {t3}", f"addi {t2}, {t2}, {size}", f"addi {t1}, {t1}, -1", f"bnez {t1}, {back}"]
        return Task("loop", text, lines,
                    lambda s: s.__setitem__(dst, sum(s.load(s[p] + k * size, size) for k in range(n))), {p},
                    [t1, t2, t3])
    if kind == 3:  # power by repeated multiplication
        n = rng.randint(2, 8)
        dst, a = d.regs(2)
        t = d.temp()
        (lab, _, back), = d.labels(1, loop=True)
        text = d.say(imperative=[f"raise {a} to the power {n} with a multiply loop, result in {dst}"],
                     question=[f"How do I compute {a} to the {n}th power into {dst} with a loop?"],
                     c=[f"{dst} = 1; for (i = 0; i < {n}; i++) {dst} *= {a};"], terse=[f"{dst} = {a}**{n} (loop)"])
        lines = [f"li {dst}, 1", f"li {t}, {n}"] + d.label_line(lab, f"mul {dst}, {dst}, {a}") + \
            [f"addi {t}, {t}, -1", f"bnez {t}, {back}"]
        return Task("loop", text, lines, lambda s: s.__setitem__(dst, pow(s[a], n, 1 << 64)), scratch=[t])
    # kind 4: count set bits
    dst, a = d.regs(2)
    t1, t2 = d.temp(), d.temp()
    (lab, _, back), (lab2, fwd2, _) = d.labels(2, loop=True)
    text = d.say(imperative=[f"count the 1 bits of {a} into {dst} with a loop (keep {a})"],
                 question=[f"How do I compute the population count of {a} into {dst} without Zbb?"],
                 c=[f"{dst} = popcount({a});  // loop, no cpop"], terse=[f"{dst} = number of set bits in {a}"])
    lines = [f"li {dst}, 0", f"mv {t1}, {a}"] + d.label_line(lab, f"beqz {t1}, {fwd2}") + \
        [f"andi {t2}, {t1}, 1", f"add {dst}, {dst}, {t2}", f"srli {t1}, {t1}, 1", f"j {back}"] + d.label_line(lab2)
    return Task("loop", text, lines, lambda s: s.__setitem__(dst, bin(s[a]).count("1")), scratch=[t1, t2])


# ------------------------------------------------------------------ branches

_CONDITIONS = {  # name: (branch taken when the condition is FALSE, symbol, model)
    "eq": ("bne", "==", lambda x, y: x == y), "ne": ("beq", "!=", lambda x, y: x != y),
    "lt": ("bge", "<", lambda x, y: s64(x) < s64(y)), "ge": ("blt", ">=", lambda x, y: s64(x) >= s64(y)),
    "ltu": ("bgeu", "<", lambda x, y: x < y), "gt": ("ble", ">", lambda x, y: s64(x) > s64(y)),
}


def _branch(d: _Draw) -> Task:
    rng = d.rng
    kind = rng.randrange(4)
    cond = rng.choice(sorted(_CONDITIONS))
    skip_op, sym, holds = _CONDITIONS[cond]
    note = " (unsigned)" if cond == "ltu" else ""
    if kind == 0:  # if (a op b) dst += k
        dst, a, b = d.regs(3)
        k = _imm(rng, -50, 50)
        (lab, fwd, _), = d.labels(1)
        text = d.say(c=[f"if ({a} {sym} {b}) {dst} += {k};{'  // unsigned' if note else ''}"],
                     imperative=[f"add {k} to {dst}, but only when {a} {sym} {b}{note}"],
                     question=[f"How do I add {k} to {dst} only if {a} {sym} {b}{note}?"],
                     terse=[f"{a} {sym} {b}{note} ? {dst} += {k}"])
        lines = [f"{skip_op} {a}, {b}, {fwd}", f"addi {dst}, {dst}, {k}"] + d.label_line(lab)
        return Task("branch", text, lines, lambda s: s.__setitem__(dst, s[dst] + k if holds(s[a], s[b]) else s[dst]))
    if kind == 1:  # if (a op b) dst = x else dst = y, with an if/else
        dst, a, b, x, y = d.regs(5)
        (l1, f1, _), (l2, f2, _) = d.labels(2, named=rng.choice([("else", "endif"), (".Lelse", ".Lend"), ("L1", "L2")]))
        text = d.say(c=[f"if ({a} {sym} {b}) {{ {dst} = {x}; }} else {{ {dst} = {y}; }}{'  // unsigned' if note else ''}",
                        f"{dst} = {x} if {a} {sym} {b}{note} else {y}"],
                     imperative=[f"when {a} {sym} {b}{note} copy {x} into {dst}, otherwise copy {y}"],
                     question=[f"How do I write an if/else: {dst} gets {x} if {a} {sym} {b}{note}, else {y}?"],
                     terse=[f"{dst} = ({a} {sym} {b}{note}) ? {x} : {y}, if/else"])
        lines = [f"{skip_op} {a}, {b}, {f1}", f"mv {dst}, {x}", f"j {f2}"] + d.label_line(l1, f"mv {dst}, {y}") + \
            d.label_line(l2)
        return Task("branch", text, lines, lambda s: s.__setitem__(dst, s[x] if holds(s[a], s[b]) else s[y]))
    if kind == 2:  # if a is zero/negative, set it to a constant
        a = d.reg()
        k = rng.randint(-100, 100)
        test, skip, fn = rng.choice([("is zero", "bnez", lambda v: v == 0), ("is negative", "bgez", lambda v: s64(v) < 0),
                                     ("is not zero", "beqz", lambda v: v != 0)])
        (lab, fwd, _), = d.labels(1)
        text = d.say(imperative=[f"if {a} {test}, replace it with {k}"], question=[f"How do I set {a} to {k} when it {test}?"],
                     terse=[f"{a} {test} -> {a} = {k}"])
        lines = [f"{skip} {a}, {fwd}", f"li {a}, {k}"] + d.label_line(lab)
        return Task("branch", text, lines, lambda s: s.__setitem__(a, k if fn(s[a]) else s[a]))
    # kind 3: conditional negate
    dst, a, b = d.regs(3)
    (lab, fwd, _), = d.labels(1)
    text = d.say(c=[f"{dst} = ({b} < 0) ? -{a} : {a};"], imperative=[f"copy {a} to {dst}, negated when {b} is negative"],
                 question=[f"How do I give {dst} the value of {a} with the sign flipped if {b} < 0?"],
                 terse=[f"{dst} = {a}, negated if {b} < 0"])
    lines = [f"mv {dst}, {a}", f"bgez {b}, {fwd}", f"neg {dst}, {a}"] + d.label_line(lab)
    return Task("branch", text, lines, lambda s: s.__setitem__(dst, -s[a] if s64(s[b]) < 0 else s[a]))
