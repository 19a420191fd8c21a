"""Memory task families: loads and stores (load-modify-store), copies, stack frames."""

from __future__ import annotations

import random

from riscv_ft.data.tasks.base import _Draw, _imm, State, Task, XNUM


# ------------------------------------------------------------------ memory

_SIZES = {"b": (1, "byte"), "h": (2, "halfword"), "w": (4, "word"), "d": (8, "doubleword")}


def _load_store(d: _Draw) -> Task:
    rng = d.rng
    p = d.reg()
    kind = rng.randrange(6)
    if kind == 0:  # add a constant to a memory word/doubleword
        sfx = rng.choice("wd")
        size, name = _SIZES[sfx]
        off = size * rng.randint(0, 12)
        k = _imm(rng, -100, 100)
        t = d.temp()
        where = f"{off}({p})"
        verb = "increment" if k > 0 else "decrement"
        text = d.say(imperative=[f"{verb} the {name} in memory at {where} by {abs(k)}", f"add {k} to the {name} in memory at {where}"],
                     question=[f"How do I add {k} to the {name} stored at {p}+{off}?"],
                     c=[f"*({'int' if sfx == 'w' else 'long'} *)({p} + {off}) += {k};"],
                     terse=[f"mem{size * 8}[{p}+{off}] += {k}"])
        return Task("load_store", text, [f"l{sfx} {t}, {where}", f"addi {t}, {t}, {k}", f"s{sfx} {t}, {where}"],
                    lambda s: s.store(s[p] + off, size, s.load(s[p] + off, size) + k), {p}, [t])
    if kind == 1:  # OR / AND / XOR a register into memory
        sfx = rng.choice("bhwd")
        size, name = _SIZES[sfx]
        off = size * rng.randint(0, 12)
        r = d.reg()
        t = d.temp()
        op, word, fn = rng.choice([("or", "OR", lambda m, v: m | v), ("and", "AND", lambda m, v: m & v),
                                   ("xor", "XOR", lambda m, v: m ^ v), ("add", "add", lambda m, v: m + v)])
        sym = {"or": "|=", "and": "&=", "xor": "^=", "add": "+="}[op]
        load = f"l{sfx}u" if sfx in "bh" and rng.random() < 0.5 else f"l{sfx}"
        text = d.say(imperative=[f"{word} {r} into the {name} at {off}({p})" if op != "add" else
                                 f"add {r} to the {name} at {off}({p})"],
                     question=[f"How do I {word} the {name} at {p}+{off} with {r} in place?" if op != "add" else
                               f"How do I add {r} to the {name} stored at {p}+{off}?"],
                     c=[f"mem[{p} + {off}] {sym} {r};  // {name}"], terse=[f"{name} @ {off}({p}) {sym} {r}"])
        return Task("load_store", text, [f"{load} {t}, {off}({p})", f"{op} {t}, {t}, {r}", f"s{sfx} {t}, {off}({p})"],
                    lambda s: s.store(s[p] + off, size, fn(s.load(s[p] + off, size), s[r])), {p}, [t])
    if kind == 2:  # swap two words in memory
        sfx = rng.choice("wd")
        size, name = _SIZES[sfx]
        o1, o2 = (size * k for k in rng.sample(range(0, 10), 2))
        t1, t2 = d.temp(), d.temp()
        text = d.say(imperative=[f"swap the {name}s at {o1}({p}) and {o2}({p})"],
                     question=[f"How do I exchange the two {name}s at offsets {o1} and {o2} from {p}?"],
                     c=[f"tmp = {p}[{o1 // size}]; {p}[{o1 // size}] = {p}[{o2 // size}]; {p}[{o2 // size}] = tmp;"],
                     terse=[f"swap mem {o1}({p}) <-> {o2}({p}), {name}s"])

        def model(s: State) -> None:
            v1, v2 = s.load(s[p] + o1, size), s.load(s[p] + o2, size)
            s.store(s[p] + o1, size, v2)
            s.store(s[p] + o2, size, v1)
        return Task("load_store", text, [f"l{sfx} {t1}, {o1}({p})", f"l{sfx} {t2}, {o2}({p})",
                                         f"s{sfx} {t2}, {o1}({p})", f"s{sfx} {t1}, {o2}({p})"], model, {p}, [t1, t2])
    if kind == 3:  # arr[i] load with an index register
        dst, i = d.regs(2)
        t = d.temp()
        sfx = rng.choice("wd")
        size, name = _SIZES[sfx]
        ctype = "int" if sfx == "w" else "long"
        text = d.say(c=[f"{dst} = (({ctype} *){p})[{i}];", f"{dst} = {p}[{i}]  // {ctype} array"],
                     imperative=[f"load element {i} of the {ctype} array at {p} into {dst}"],
                     question=[f"How do I index a {size * 8}-bit array: {dst} = {p}[{i}]?"],
                     terse=[f"{dst} <- {name} array {p}, index {i}"])

        def prepare(r: random.Random, s: State) -> None:
            s[i] = r.randint(0, 40)
        return Task("load_store", text, [f"slli {t}, {i}, {size.bit_length() - 1}", f"add {t}, {p}, {t}",
                                         f"l{sfx} {dst}, 0({t})"],
                    lambda s: s.__setitem__(dst, s.load(s[p] + s[i] * size, size)), {p}, [t], prepare)
    if kind == 4:  # arr[i] = v
        v, i = d.regs(2)
        t = d.temp()
        sfx = rng.choice("wd")
        size, name = _SIZES[sfx]
        ctype = "int" if sfx == "w" else "long"
        text = d.say(c=[f"(({ctype} *){p})[{i}] = {v};"], imperative=[f"store {v} into element {i} of the {ctype} array at {p}"],
                     question=[f"How do I write {v} to {p}[{i}] where {p} points to {size * 8}-bit elements?"],
                     terse=[f"{p}[{i}] = {v} ({name}s)"])

        def prepare(r: random.Random, s: State) -> None:
            s[i] = r.randint(0, 40)
        return Task("load_store", text, [f"slli {t}, {i}, {size.bit_length() - 1}", f"add {t}, {p}, {t}",
                                         f"s{sfx} {v}, 0({t})"],
                    lambda s: s.store(s[p] + s[i] * size, size, s[v]), {p}, [t], prepare)
    # kind 5: load two words, store their sum
    o1, o2, o3 = (4 * k for k in rng.sample(range(0, 12), 3))
    t1, t2 = d.temp(), d.temp()
    text = d.say(imperative=[f"add the words at {o1}({p}) and {o2}({p}) and store the sum at {o3}({p})"],
                 question=[f"How do I load two ints from {p}+{o1} and {p}+{o2} and write their sum to {p}+{o3}?"],
                 c=[f"{p}[{o3 // 4}] = {p}[{o1 // 4}] + {p}[{o2 // 4}];  // int *{p}"],
                 terse=[f"word {o3}({p}) = word {o1}({p}) + word {o2}({p})"])
    return Task("load_store", text, [f"lw {t1}, {o1}({p})", f"lw {t2}, {o2}({p})", f"add {t1}, {t1}, {t2}",
                                     f"sw {t1}, {o3}({p})"],
                lambda s: s.store(s[p] + o3, 4, s.load(s[p] + o1, 4) + s.load(s[p] + o2, 4)), {p}, [t1, t2])


def _memory_copy(d: _Draw) -> Task:
    """Copy, clear or fill 1-5 elements of any size. The size and count come as people give them:
    a count of elements, a count of bytes ("32 bytes ... a doubleword at a time"), a width
    ("the 4-byte values") or a C index list; NOTES 17: the SFT model copied 3 doublewords for
    "16 bytes", stored words for an 8-byte value and doublewords for a byte memset."""
    rng = d.rng
    kind = rng.randrange(3)
    sfx = rng.choice("bhwdd" if kind else "wdd")  # byte and halfword copies are rare in requests
    size, name = _SIZES[sfx]
    n = rng.randint(1, 5)
    nbytes = n * size
    names = name if n == 1 else f"{name}s"
    count = f"the {name}" if n == 1 else f"{n} {names}"
    width = f"{size}-byte value" + ("" if n == 1 else "s")
    indices = ", ".join(str(k) for k in range(n))
    if kind == 0:  # copy n elements from src to dst
        dst, src = d.regs(2)
        t = d.temp()
        text = d.say(imperative=[f"copy {count} from the buffer at {src} to the buffer at {dst}",
                                 f"copy {nbytes} bytes from {src} to {dst}, one {name} at a time",
                                 f"duplicate the {width} at {src} into {dst}" if n == 1 else f"duplicate the {n} {width} at {src} into {dst}"],
                     question=[f"How do I copy {count} from {src} to {dst} (no loop)?",
                               f"What copies {nbytes} bytes from address {src} to address {dst} using {name} loads and stores?"],
                     c=[f"for (i = 0; i < {n}; i++) {dst}[i] = {src}[i];  // {names}, unrolled",
                        f"memcpy({dst}, {src}, {nbytes});  // {size}-byte elements"],
                     terse=[f"memcpy({dst}, {src}, {nbytes}) with {name} moves", f"{src} -> {dst}: {nbytes} B via l{sfx}/s{sfx}"])
        lines = [line for k in range(n) for line in (f"l{sfx} {t}, {k * size}({src})", f"s{sfx} {t}, {k * size}({dst})")]

        def prepare(r: random.Random, s: State) -> None:  # the buffers do not overlap
            s[dst] = s[src] + r.choice([-1, 1]) * 8 * r.randint(n, 64)

        def model(s: State) -> None:
            for k in range(n):
                s.store(s[dst] + k * size, size, s.load(s[src] + k * size, size))
        return Task("memory_copy", text, lines, model, {dst, src}, [t], prepare)
    if kind == 1:  # clear n elements
        p = d.reg()
        off = size * rng.randint(0, 4)
        at = f"{p}+{off}" if off else p
        text = d.say(imperative=[f"zero {count} starting at {at}", f"clear {count} of memory at {off}({p})",
                                 f"write zeros over {nbytes} bytes beginning at {at}, {name} by {name}"],
                     question=[f"How do I set {count if n == 1 else f'{n} consecutive {names}'} at {at} to zero?",
                               f"How can I clear the {nbytes} bytes at {at} with {name} stores?"],
                     c=[f"memset({at}, 0, {nbytes});  // {name} stores", f"{p}[{indices}] = 0;  // {size}-byte elements"
                        if not off else f"memset((char *){p} + {off}, 0, {nbytes});"],
                     terse=[f"clear {n}x{name} @ {at}", f"{nbytes} B of zeros @ {at} ({name}s)"])
        lines = [f"s{sfx} zero, {off + k * size}({p})" for k in range(n)]

        def model(s: State) -> None:
            for k in range(n):
                s.store(s[p] + off + k * size, size, 0)
        return Task("memory_copy", text, lines, model, {p})
    # kind 2: fill n elements with a register's value (its low bytes, for bytes and halfwords)
    p, v = d.regs(2)
    low = f"the low {name} of {v}" if size < 8 else v
    text = d.say(imperative=[f"fill {count} at {p} with {low}", f"store {low} into the {names} that cover the {nbytes} bytes at {p}"
                             if size > 1 else f"set each of the {nbytes} bytes at {p} to the byte value in {v}"],
                 question=[f"How do I store {low} into the first {count if n > 1 else name} of the array at {p}?"],
                 c=[f"{p}[0..{n - 1}] = {v};  // {names}" if n > 1 else f"*{p} = {v};  // {name}",
                    f"memset({p}, {v}, {nbytes});" if size == 1 else f"{p}[{indices}] = {v};  // {size}-byte elements"],
                 terse=[f"fill {n} {names} @ {p} = {v}"])
    lines = [f"s{sfx} {v}, {k * size}({p})" for k in range(n)]

    def model(s: State) -> None:
        for k in range(n):
            s.store(s[p] + k * size, size, s[v])
    return Task("memory_copy", text, lines, model, {p})


# ------------------------------------------------------------------ stack frames

def _stack(d: _Draw) -> Task:
    rng = d.rng
    saved = ["ra"] * (rng.random() < 0.8) + sorted(rng.sample(["s0", "s1", "s2", "s3", "s4", "s5"], rng.randint(0, 3)),
                                                  key=lambda r: XNUM[r])
    if not saved:
        saved = ["ra", "s0"]
    frame = 16 * ((8 * len(saved) + 15) // 16)
    slots = {r: frame - 8 * (k + 1) for k, r in enumerate(saved)}
    listed = ", ".join(saved[:-1]) + (" and " if len(saved) > 1 else "") + saved[-1]
    push = [f"addi sp, sp, -{frame}"] + [f"sd {r}, {slots[r]}(sp)" for r in saved]
    pop = [f"ld {r}, {slots[r]}(sp)" for r in saved] + [f"addi sp, sp, {frame}"]
    kind = rng.randrange(3)

    def push_model(s: State) -> None:
        s["sp"] = s["sp"] - frame
        for r in saved:
            s.store(s["sp"] + slots[r], 8, s[r])

    def pop_model(s: State) -> None:
        for r in saved:
            s[r] = s.load(s["sp"] + slots[r], 8)
        s["sp"] = s["sp"] + frame
    if kind == 0:
        text = d.say(imperative=[f"push {listed} onto the stack", f"save {listed} on the stack (keep sp 16-byte aligned)"],
                     question=[f"How do I write a function prologue that saves {listed}?"],
                     terse=[f"prologue: save {listed}", f"push {listed}"])
        return Task("stack", text, push, push_model, {"sp"})
    if kind == 1:
        text = d.say(imperative=[f"pop {listed} from the stack (they were saved by the matching prologue)",
                                 f"restore {listed} from the stack frame and free it"],
                     question=[f"How do I write the epilogue that restores {listed} and releases the {frame}-byte frame?"],
                     terse=[f"epilogue: restore {listed}, sp += {frame}"])
        return Task("stack", text, pop, pop_model, {"sp"})
    # a whole frame around a small body that uses the saved registers
    body_reg = next((r for r in saved if r.startswith("s")), None)
    if body_reg is None:
        text = d.say(imperative=[f"save {listed} on the stack and then restore it (empty function body)"],
                     terse=[f"push {listed}; pop {listed}"])

        def model(s: State) -> None:
            push_model(s)
            pop_model(s)
        return Task("stack", text, push + pop, model, {"sp"})
    a, b = rng.sample([f"a{i}" for i in range(4)], 2)
    text = d.say(imperative=[f"save {listed} on the stack, set a0 = {a} + {b} using {body_reg} as a temporary, "
                             f"then restore them"],
                 question=[f"How do I compute a0 = {a} + {b} in {body_reg} while preserving {listed} on the stack?"],
                 terse=[f"frame saving {listed}; body a0 = {a} + {b} via {body_reg}"])

    def model(s: State) -> None:
        push_model(s)
        s[body_reg] = s[a] + s[b]
        s["a0"] = s[body_reg]
        pop_model(s)
    # The request names its temporary (saved and restored, so not scratch): no other may change.
    return Task("stack", text, push + [f"add {body_reg}, {a}, {b}", f"mv a0, {body_reg}"] + pop, model, {"sp"},
                temporaries_free=False)
