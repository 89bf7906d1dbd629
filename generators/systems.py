"""Whole systems: programs sharing a prog array and maps, ctx, and a script.

``build_system(draw, config)`` is the one builder; ``systems(config)`` runs
it under Hypothesis (which records the choices and shrinks them) and
``generate(seed, config)`` runs it from a seeded ``random.Random`` (fast and
deterministic per seed). Swarm testing: the enabled features are drawn first,
each simplest off, so a shrunk case keeps only the features it needs.
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context, event

from generators import functions, tail_calls
from generators.config import FEATURES, Config
from generators.draw import Draw, HypothesisDraw, RandomDraw
from generators.edges import edge_bytes
from generators.emit import link
from generators.plan import FnPlan, SystemPlan
from harness.system import Case, MapDef, Program

__all__ = [
    "build_system",
    "draw_features",
    "generate",
    "systems",
    "programs",
    "subprograms",
    "tail_call_graphs",
    "helper_calls",
    "throws",
    "features",
]

#: the default config (frozen, so one shared instance is safe).
DEFAULT = Config()

#: map names in the order they get indices (only the maps a system uses exist).
MAP_ORDER = ("progs", "counts", "data", "bufs")

#: features that only mean something together with another one.
_NEEDS = {
    "tail_calls_in_subprograms": ("tail_calls", "subprograms"),
    "indirect_tail_calls": ("tail_calls",),
    "big_index": ("tail_calls",),
    "out_of_range": ("tail_calls",),
    "empty_slots": ("tail_calls",),
    "nondeterministic_helpers": ("helpers",),
    "stack_buffers": ("helpers",),
    "exception_callbacks": ("throws",),
}


#: the plain-code features (generators.insns): on more often, each covers
#: dozens of instruction forms.
_PLAIN_CODE = ("alu_ops", "branches", "memory_ops", "atomics")



#: ethertype -> the header BPF_PROG_TEST_RUN wants whole after the 14-byte
#: Ethernet header, or it refuses the packet with EINVAL (net/bpf/test_run.c)
_L3_HEADERS = {b"\x08\x00": 20, b"\x86\xdd": 40}


def _packet(data: bytes) -> bytes:
    """sched_cls test data: an IPv4 or IPv6 ethertype on a packet too short
    for its header becomes another (the bytes are never read: only raw_tp
    programs read their ctx)."""
    need = _L3_HEADERS.get(data[12:14])
    if need is not None and len(data) < 14 + need:
        data = data[:12] + b"\x00" + data[13:]
    return data


def draw_features(draw: Draw, config: Config) -> frozenset[str]:
    """Swarm testing: each feature the config allows is on or off for the
    whole system (off is simplest). The big three are on more often."""
    on = set()
    for f in FEATURES:
        if not getattr(config, f):
            continue
        if any(n not in on for n in _NEEDS.get(f, ())):
            continue
        p = 0.75 if f in ("subprograms", "tail_calls", "helpers", *_PLAIN_CODE) else 0.5
        if f == "nondeterministic_helpers":
            p = 0.2
        if draw.boolean(p):
            on.add(f)
    return frozenset(on)


def build_system(draw: Draw, config: Config = DEFAULT) -> Case:
    feats = draw_features(draw, config)
    types = list(config.prog_types)
    if "throws" in feats and "sched_cls" in types:
        types = ["sched_cls"]
    ptype = draw.choice(types)
    if ptype != "sched_cls":
        feats = feats - {"throws", "exception_callbacks"}
    tail = "tail_calls" in feats
    n_progs = draw.integer(1, config.max_programs) if tail else 1
    slots = tail_calls.draw_slots(draw, config, feats, n_progs) if tail else None
    if slots is not None:
        n_progs = 1 + max((v for v in slots if v is not None), default=0)
    if ptype == "raw_tp":
        ctx = edge_bytes(draw, 8 * draw.integer(1, config.max_ctx // 8))
    else:
        ctx = _packet(edge_bytes(draw, 8 * draw.integer(2, 8)))
    data_size = 4 * draw.integer(2, 16)
    sp = SystemPlan(
        draw=draw,
        config=config,
        features=feats,
        ptype=ptype,
        n_progs=n_progs,
        slots=slots,
        ctx=ctx,
        data_size=data_size,
        data_init=edge_bytes(draw, data_size),
        bufs_size=4 * draw.integer(1, 16),
        bufs_entries=draw.integer(1, 4),
    )
    parts = [functions.build_program(sp, p) for p in range(n_progs)]
    used = [m for m in MAP_ORDER if m in sp.used_maps]
    index = {m: i for i, m in enumerate(used)}
    maps: dict[str, MapDef] = {}
    for m in used:
        if m == "progs":
            init = {k: f"p{v}" for k, v in enumerate(slots) if v is not None}
            maps[m] = MapDef("progs", "prog_array", len(slots), 4, init)
        elif m == "counts":
            maps[m] = MapDef("counts", "array", 1, 8 * n_progs)
        elif m == "data":
            maps[m] = MapDef("data", "array", 1, data_size, {0: sp.data_init})
        else:
            maps[m] = MapDef("bufs", "array", sp.bufs_entries, sp.bufs_size)
    programs: dict[str, Program] = {}
    for part in parts:
        insns, labels = link(part.layout(), index)
        cb = part.callback.name if part.callback is not None else None
        programs[part.name] = Program(part.name, ptype, insns, labels, exception_callback=cb)
    steps = tail_calls.draw_script(sp)
    comment = f"generated {ptype} system; features: {', '.join(sorted(feats)) or 'none'}"
    if currently_in_test_context():
        for f in sorted(feats):
            event(f"feature: {f}")
        event(f"type: {ptype}")
    return Case(programs, maps, ctx, steps, comment)


def generate(seed: int, config: Config = DEFAULT) -> Case:
    """The fast path: the same builder driven by ``random.Random(seed)``.
    Deterministic: the same seed and config give the same case."""
    return build_system(RandomDraw(seed), config)


@st.composite
def _systems(draw, config: Config) -> Case:
    return build_system(HypothesisDraw(draw), config)


def systems(config: Config = DEFAULT) -> st.SearchStrategy[Case]:
    """Systems of programs valid for the 6.18 verifier by construction."""
    return _systems(config)


def features(config: Config = DEFAULT) -> st.SearchStrategy[frozenset[str]]:
    """The swarm draw alone: which features a system enables."""
    return st.composite(lambda draw: draw_features(HypothesisDraw(draw), config))()


def programs(config: Config = DEFAULT) -> st.SearchStrategy[Case]:
    """Single-program systems (no prog array): subprograms, helpers, stack."""
    return systems(config.but(tail_calls=False, pokes=False))


def subprograms(config: Config = DEFAULT) -> st.SearchStrategy[list[FnPlan]]:
    """The call DAG of one program: its subprograms' plans (name, arguments,
    stack, height, chain stack, callees), main last."""

    @st.composite
    def plans(draw) -> list[FnPlan]:
        d = HypothesisDraw(draw)
        cfg = config.but(tail_calls=False, pokes=False)
        feats = draw_features(d, cfg) | {"subprograms"}
        sp = SystemPlan(
            d, cfg, feats, d.choice(cfg.prog_types), 1, None, bytes(8), 8, bytes(8), 8, 1
        )
        part = functions.build_program(sp, 0)
        return part.subs + [part.main]

    return plans()


def tail_call_graphs(config: Config = DEFAULT) -> st.SearchStrategy[Case]:
    """Systems with a prog array and at least one tail call site."""
    cfg = config.but(tail_calls=True)
    return systems(cfg).filter(lambda c: "progs" in c.maps)


def helper_calls(config: Config = DEFAULT) -> st.SearchStrategy[Case]:
    """Systems with helper calls enabled (filtered to ones that made one)."""
    from harness.formats import isa

    def has_helper(c: Case) -> bool:
        return any(
            i.opcode == isa.JMP | isa.CALL and i.src == 0 and i.imm != 12
            for p in c.programs.values()
            for i in p.insns
        )

    return systems(config.but(helpers=True)).filter(has_helper)


def throws(config: Config = DEFAULT) -> st.SearchStrategy[Case]:
    """sched_cls systems that contain bpf_throw."""
    from harness.formats import isa

    def has_throw(c: Case) -> bool:
        return any(
            i.opcode == isa.JMP | isa.CALL and i.src == isa.PSEUDO_KFUNC_CALL
            for p in c.programs.values()
            for i in p.insns
        )

    return systems(config.but(throws=True, prog_types=("sched_cls",))).filter(has_throw)
