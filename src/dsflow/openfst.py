"""OpenFst's binary format of a `ConstFst<StdArc>` (type "const", arc type "standard"), and the minimal acyclic
acceptor that DeepSpeech stores in it: the vocabulary trie of a `.scorer` package (see dsflow.scorer).

Owns: writing and reading that format. Facts from OpenFst 1.6.7 (DeepSpeech 0.9.3's copy; fst.cc, const-fst.h,
util.cc, test-properties.h, minimize.h, partition.h), all little-endian:
  header  int32 magic 2125659606, string fst type "const", string arc type "standard" (a string is an int32
          length + bytes), int32 version (1: aligned, 2: unaligned), int32 flags (1 input / 2 output symbol
          table follows, 4 aligned), uint64 properties, int64 start, int64 number of states, int64 number of arcs
  states  per state: float32 final weight (tropical: +inf = not final, 0 = final), uint32 position of its
          first arc, uint32 number of arcs, uint32 input and uint32 output epsilon arcs (20 bytes)
  arcs    per arc: int32 input label, int32 output label, float32 weight, int32 next state (16 bytes)
With alignment (DeepSpeech writes it: FstWriteOptions.align) zero bytes pad the stream to a multiple of 16
(counted from the start of the FILE, since DeepSpeech appends the FST to the scorer package) before the states
and before the arcs.

DeepSpeech's Scorer::fill_dictionary adds each word as a chain from the start state, then RmEpsilon,
Determinize and Minimize. For such a set of label sequences that is the prefix trie numbered breadth-first with
arcs in label order (DeterminizeFst discovers states that way), merged by AcyclicMinimizer: states of equal
height (longest path to a dead end) and equal (final, arcs to merged classes) form a class; the surviving state
of a class is the one its partition list starts with: the highest-numbered state of its height for the class
holding that state, the lowest-numbered one for every other class; MergeStates + Connect keep the survivors in
their old order, and ArcUniqueMapper sorts each state's arcs by label. `minimal_acceptor` reproduces exactly that
numbering, so the bytes equal generate_scorer_package's (tests/test_scorer.py checks a DeepSpeech package).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

MAGIC = 2125659606
FST_TYPE, ARC_TYPE = "const", "standard"
ALIGNED_VERSION, UNALIGNED_VERSION = 1, 2
IS_ALIGNED, HAS_SYMBOLS = 0x4, 0x1 | 0x2
ALIGNMENT = 16
STATE = np.dtype([("weight", "<f4"), ("pos", "<u4"), ("narcs", "<u4"), ("niepsilons", "<u4"), ("noepsilons", "<u4")])
ARC = np.dtype([("ilabel", "<i4"), ("olabel", "<i4"), ("weight", "<f4"), ("nextstate", "<i4")])

# properties.h
EXPANDED = 0x1
ACCEPTOR, NOT_ACCEPTOR = 0x10000, 0x20000
I_DETERMINISTIC, NON_I_DETERMINISTIC = 0x40000, 0x80000
O_DETERMINISTIC, NON_O_DETERMINISTIC = 0x100000, 0x200000
EPSILONS, NO_EPSILONS = 0x400000, 0x800000
I_EPSILONS, NO_I_EPSILONS = 0x1000000, 0x2000000
O_EPSILONS, NO_O_EPSILONS = 0x4000000, 0x8000000
I_LABEL_SORTED, NOT_I_LABEL_SORTED = 0x10000000, 0x20000000
O_LABEL_SORTED, NOT_O_LABEL_SORTED = 0x40000000, 0x80000000
WEIGHTED, UNWEIGHTED = 0x100000000, 0x200000000
CYCLIC, ACYCLIC = 0x400000000, 0x800000000
INITIAL_CYCLIC, INITIAL_ACYCLIC = 0x1000000000, 0x2000000000
TOP_SORTED, NOT_TOP_SORTED = 0x4000000000, 0x8000000000
ACCESSIBLE, NOT_ACCESSIBLE = 0x10000000000, 0x20000000000
CO_ACCESSIBLE, NOT_CO_ACCESSIBLE = 0x40000000000, 0x80000000000
STRING, NOT_STRING = 0x100000000000, 0x200000000000
WEIGHTED_CYCLES, UNWEIGHTED_CYCLES = 0x400000000000, 0x800000000000


class FstError(ValueError):
    """The bytes are not a ConstFst<StdArc> this module reads (the message says why)."""


@dataclass
class Acceptor:
    """An unweighted acceptor: state s is final if final[s]; its arcs are first[s]:first[s+1] of
    labels/nexts (label on both tapes, weight One)."""
    start: int
    final: np.ndarray  # bool [n]
    first: np.ndarray  # int64 [n + 1]
    labels: np.ndarray  # int32 [arcs]
    nexts: np.ndarray  # int32 [arcs]

    @property
    def num_states(self) -> int:
        return len(self.final)

    def paths(self) -> Iterator[list[int]]:
        """The label sequence of every path from the start to a final state (depth first, arcs in order).
        The acceptor must be acyclic (a state on the current path met again raises FstError)."""
        first, labels, nexts = self.first.tolist(), self.labels.tolist(), self.nexts.tolist()
        final = self.final.tolist()
        path: list[int] = []
        on_path = [False] * self.num_states
        stack = [(self.start, first[self.start])]
        on_path[self.start] = True
        if final[self.start]:
            yield []
        while stack:
            state, arc = stack[-1]
            if arc == first[state + 1]:
                stack.pop()
                on_path[state] = False
                if path:
                    path.pop()
                continue
            stack[-1] = (state, arc + 1)
            nxt = nexts[arc]
            if on_path[nxt]:
                raise FstError(f"the FST has a cycle through state {nxt}")
            path.append(labels[arc])
            if final[nxt]:
                yield list(path)
            on_path[nxt] = True
            stack.append((nxt, first[nxt]))


def minimal_acceptor(sequences: Iterable[Iterable[int]]) -> Acceptor:
    """The acceptor of a set of non-empty label sequences (labels >= 1) as DeepSpeech's fill_dictionary makes
    it with OpenFst's Determinize + Minimize, states numbered as they number them (see the module's doc)."""
    seqs = [tuple(s) for s in sequences]
    if not seqs or min(map(len, seqs)) == 0:
        raise ValueError("minimal_acceptor needs non-empty label sequences")
    width = max(map(len, seqs))
    rows = np.zeros((len(seqs), width), np.int32)  # 0-padded, so a prefix sorts before its extensions
    for i, seq in enumerate(seqs):
        rows[i, :len(seq)] = seq
    rows = np.unique(rows, axis=0)
    lengths = np.count_nonzero(rows, axis=1)
    differs = rows[1:] != rows[:-1]
    lcp = np.concatenate([[0], np.argmax(differs, axis=1)])  # common prefix with the previous sequence
    # The prefix trie, breadth first: the nodes of depth d are the prefixes seq[:d] first met at sequence i (the
    # i with lcp[i] < d <= length[i]), in the order of i, which is the order of the prefixes.
    index = np.arange(len(rows))
    parent, label, final = [np.array([-1])], [np.array([0], np.int32)], [np.array([False])]
    node_of = np.zeros(len(rows), np.int64)  # node of depth d - 1 first met at each sequence (the root for d=1)
    owner = np.zeros(len(rows), np.int64)  # for every sequence: which sequence first met its prefix of depth d - 1
    count = 1
    for d in range(1, width + 1):
        new = np.nonzero((lcp < d) & (lengths >= d))[0]
        parent.append(node_of[owner[new]])
        label.append(rows[new, d - 1])
        final.append(lengths[new] == d)
        node_of = np.zeros(len(rows), np.int64)
        node_of[new] = count + np.arange(len(new))
        count += len(new)
        owner = np.maximum.accumulate(np.where(lcp < d, index, -1))
    parent_b, label_b, final_b = np.concatenate(parent), np.concatenate(label), np.concatenate(final)
    n = count
    # the children of s are states first[s] + 1 ... first[s + 1], in label order
    first = np.concatenate([[0], np.cumsum(np.bincount(parent_b[1:], minlength=n))])
    height = np.zeros(n, np.int64)
    depth_start = np.cumsum([0] + [len(p) for p in parent])
    for d in range(width, 0, -1):
        nodes = np.arange(depth_start[d], depth_start[d + 1])
        np.maximum.at(height, parent_b[nodes], height[nodes] + 1)
    # AcyclicMinimizer, lower heights first: states of a height with equal (final, arcs' labels and classes)
    # form a class; a class is named by its surviving state
    survivor = np.full(n, -1, np.int64)
    degree = np.diff(first)
    for h in range(int(height.max()) + 1):
        states = np.nonzero(height == h)[0]
        highest = states[-1]
        for k in np.unique(degree[states]):
            group = states[degree[states] == k]
            kids = first[group][:, None] + 1 + np.arange(k)  # [states, k]
            key = np.concatenate([final_b[group, None], label_b[kids], survivor[kids]], axis=1)
            _, klass = np.unique(key, axis=0, return_inverse=True)
            klass = klass.reshape(-1)
            lowest = np.full(klass.max() + 1, n, np.int64)
            np.minimum.at(lowest, klass, group)
            rep = lowest[klass]
            if highest in group:  # its class is the height's first class: the highest state survives
                own = klass[np.searchsorted(group, highest)]
                rep[klass == own] = highest
            survivor[group] = rep
    reps = np.unique(survivor)
    new_id = np.full(n, -1, np.int64)
    new_id[reps] = np.arange(len(reps))
    out_first = np.concatenate([[0], np.cumsum(degree[reps])])
    kids = np.concatenate([np.arange(first[r] + 1, first[r + 1] + 1) for r in reps])
    return Acceptor(start=int(new_id[survivor[0]]), final=final_b[reps], first=out_first,
                    labels=label_b[kids].astype(np.int32), nexts=new_id[survivor[kids]].astype(np.int32))


def properties(fst: Acceptor) -> int:
    """The property bits OpenFst computes (ComputeProperties over kCopyProperties) plus kExpanded, for an
    acyclic acceptor whose states are all accessible and co-accessible (what minimal_acceptor returns)."""
    props = (EXPANDED | ACCEPTOR | NO_EPSILONS | NO_I_EPSILONS | NO_O_EPSILONS | UNWEIGHTED | ACYCLIC
             | INITIAL_ACYCLIC | ACCESSIBLE | CO_ACCESSIBLE | UNWEIGHTED_CYCLES)
    src = np.repeat(np.arange(fst.num_states), np.diff(fst.first))
    same_state = src[1:] == src[:-1]
    sorted_ok = not np.any(same_state & (fst.labels[1:] < fst.labels[:-1]))
    props |= (I_LABEL_SORTED | O_LABEL_SORTED) if sorted_ok else (NOT_I_LABEL_SORTED | NOT_O_LABEL_SORTED)
    deterministic = len(set(zip(src.tolist(), fst.labels.tolist()))) == len(src)
    props |= (I_DETERMINISTIC | O_DETERMINISTIC) if deterministic else (NON_I_DETERMINISTIC | NON_O_DETERMINISTIC)
    props |= TOP_SORTED if np.all(fst.nexts > src) else NOT_TOP_SORTED
    # a string: state s's only arc goes to s + 1, the start is 0 and the one final state is the last
    narcs = np.diff(fst.first)
    nonfinal = ~fst.final
    is_string = (fst.start == 0 and np.all(fst.nexts == src + 1) and np.all(narcs[nonfinal] == 1)
                 and fst.final.sum() == 1 and bool(fst.final[-1]))
    return props | (STRING if is_string else NOT_STRING)


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<i", len(raw)) + raw


def _pad(position: int) -> bytes:
    return b"\0" * (-position % ALIGNMENT)


def write(fst: Acceptor, position: int = 0) -> bytes:
    """The aligned ConstFst bytes of `fst` as OpenFst writes them starting at file offset `position`."""
    n, m = fst.num_states, len(fst.labels)
    header = (struct.pack("<i", MAGIC) + _string(FST_TYPE) + _string(ARC_TYPE)
              + struct.pack("<iiQqqq", ALIGNED_VERSION, IS_ALIGNED, properties(fst), fst.start, n, m))
    states = np.zeros(n, STATE)
    states["weight"] = np.where(fst.final, 0.0, np.inf)
    states["pos"] = fst.first[:-1]
    states["narcs"] = np.diff(fst.first)
    arcs = np.zeros(m, ARC)
    arcs["ilabel"] = arcs["olabel"] = fst.labels
    arcs["nextstate"] = fst.nexts
    out = header + _pad(position + len(header))
    out += states.tobytes()
    out += _pad(position + len(out))
    return out + arcs.tobytes()


def read(data: bytes | memoryview, position: int = 0, offset: int = 0) -> tuple[Acceptor, int]:
    """Parse a ConstFst<StdArc> that starts at data[position:] (at file offset `offset + position`, which
    alignment counts from). Returns the acceptor and the position after it; FstError says what is wrong."""
    data = memoryview(data)

    def take(fmt: str):
        nonlocal position
        size = struct.calcsize(fmt)
        if position + size > len(data):
            raise FstError("the FST ends early (truncated file)")
        values = struct.unpack_from(fmt, data, position)
        position += size
        return values

    def text() -> str:
        (length,) = take("<i")
        if not 0 <= length <= 64:
            raise FstError(f"bad FST header (a type name of {length} bytes)")
        return bytes(take(f"<{length}s")[0]).decode("latin-1")

    (magic,) = take("<i")
    if magic != MAGIC:
        raise FstError(f"no OpenFst header (magic {magic}, expected {MAGIC})")
    fst_type, arc_type = text(), text()
    if (fst_type, arc_type) != (FST_TYPE, ARC_TYPE):
        raise FstError(f"an FST of type {fst_type!r} with {arc_type!r} arcs, expected {FST_TYPE!r}/{ARC_TYPE!r}")
    version, flags, _props, start, n, m = take("<iiQqqq")
    if version not in (ALIGNED_VERSION, UNALIGNED_VERSION):
        raise FstError(f"ConstFst version {version}, expected 1 or 2")
    if flags & HAS_SYMBOLS:
        raise FstError("the FST carries symbol tables, which DeepSpeech's trie never has")
    aligned = version == ALIGNED_VERSION or bool(flags & IS_ALIGNED)
    if n < 1 or m < 0 or not 0 <= start < n:
        raise FstError(f"bad FST header ({n} states, {m} arcs, start {start})")

    def table(dtype, count):
        nonlocal position
        if aligned:
            position += -(offset + position) % ALIGNMENT
        end = position + count * dtype.itemsize
        if end > len(data):
            raise FstError("the FST ends early (truncated file)")
        array = np.frombuffer(data[position:end], dtype)
        position = end
        return array

    states, arcs = table(STATE, n), table(ARC, m)
    first = np.append(states["pos"].astype(np.int64), m)
    if np.any(states["pos"].astype(np.int64) + states["narcs"] > m) or np.any(np.diff(first)[:-1] < 0) \
            or np.any(first[:-1] + states["narcs"] != first[1:]):
        raise FstError("bad FST: the states' arc ranges are not consecutive")
    if m and (arcs["nextstate"].min() < 0 or arcs["nextstate"].max() >= n):
        raise FstError("bad FST: an arc leads to a state that does not exist")
    if np.any(arcs["ilabel"] != arcs["olabel"]):
        raise FstError("the FST is a transducer, not an acceptor")
    fst = Acceptor(int(start), np.isfinite(states["weight"]), first, arcs["ilabel"].copy(),
                   arcs["nextstate"].copy())
    return fst, position
