"""Concept vocabulary mined from captions and its co-occurrence ("commonsense") graph.

No tagger or lexicon can be downloaded offline, so concepts are picked by a small heuristic:
lower-cased alphabetic tokens of 3+ letters that are not function words or frequent caption
verbs, not gerunds/participles (-ing) or adverbs (-ly); a plural folds into its singular when the
singular also occurs ("dogs" -> "dog"). What survives in captions is mostly nouns and adjectives
("man", "red", "table", "wooden"); the most frequent ones form the vocabulary.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Container, Sequence

import numpy as np

_TOKEN = re.compile(r"[a-z]+")

STOP_WORDS = frozenset(
    """
    a an the and or but nor so yet of in on at to for from by with without into onto upon over
    under above below near next beside behind between among through across along around about
    against toward towards off out up down away back while during before after than then there
    here where when what which who whom whose why how this that these those it its they them
    their theirs he him his she her hers we us our you your i me my mine one ones some any each
    every all both few many much more most other another such own same very too also just only
    not no yes can could will would shall should may might must do does did done doing be is
    am are was were been being has have had having get gets got getting very lot lots kind sort
    something someone anything nothing thing things way ways part parts top bottom side sides
    front middle end area image picture photo photograph view shot scene closeup close very
    sit sits sat stand stands stood hold holds held look looks looked walk walks ride rides
    play plays eat eats wear wears sitting standing make makes made take takes took use uses
    used show shows shown see seen appear appears like near well two three four five six seven
    eight nine ten several various different couple group bunch pair set
    """.split()
)


def tokenize(caption: str) -> list[str]:
    """Lower-cased alphabetic tokens of a caption."""
    return _TOKEN.findall(caption.lower())


def _is_candidate(token: str) -> bool:
    return len(token) >= 3 and token not in STOP_WORDS and not token.endswith(("ing", "ly"))


def _singular(token: str, seen: Container[str]) -> str:
    """The singular form of a plural when that form was seen, else the token itself."""
    for suffix, repl in (("ies", "y"), ("es", ""), ("s", "")):
        if token.endswith(suffix) and not token.endswith("ss"):
            stem = token[: -len(suffix)] + repl
            if stem in seen:
                return stem
    return token


def concept_tokens(caption: str, concepts: dict[str, int]) -> set[int]:
    """Indices of the concepts a caption mentions (plurals count for their singular)."""
    found = set()
    for token in tokenize(caption):
        idx = concepts.get(token)
        if idx is None:
            idx = concepts.get(_singular(token, concepts))
        if idx is not None:
            found.add(idx)
    return found


def mine_concepts(captions: Sequence[str], size: int = 300, min_count: int = 3) -> list[str]:
    """The `size` most frequent concept words of the captions, seen at least `min_count` times.

    Counting is per caption (a word repeated in one caption counts once); ties break
    alphabetically so the vocabulary is deterministic.
    """
    raw: Counter = Counter()
    for caption in captions:
        raw.update({t for t in tokenize(caption) if _is_candidate(t)})
    counts: Counter = Counter()
    for token, n in raw.items():
        counts[_singular(token, raw)] += n
    ranked = sorted(
        ((t, n) for t, n in counts.items() if n >= min_count), key=lambda tn: (-tn[1], tn[0])
    )
    return [t for t, _ in ranked[:size]]


def concept_occurrence(
    captions: Sequence[str], concepts: Sequence[str], caption_image: np.ndarray | None = None
) -> np.ndarray:
    """(G, C) bool: which concepts each group mentions; a group is an image (all its captions)
    when `caption_image` is given, else a caption."""
    index = {c: i for i, c in enumerate(concepts)}
    groups = np.arange(len(captions)) if caption_image is None else np.asarray(caption_image)
    n_groups = int(groups.max()) + 1 if len(captions) else 0
    occ = np.zeros((n_groups, len(concepts)), dtype=bool)
    for caption, g in zip(captions, groups, strict=True):
        for i in concept_tokens(caption, index):
            occ[g, i] = True
    return occ


def cooccurrence_graph(
    captions: Sequence[str], concepts: Sequence[str], caption_image: np.ndarray | None = None
) -> np.ndarray:
    """(C, C) float32 conditional probabilities P[a, b] = P(b present | a present).

    Counted over images when `caption_image` is given (five captions of one scene share its
    context), else over captions. The diagonal is 0: a concept's own weight is the graph
    network's business. A concept never seen has a zero row.
    """
    occ = concept_occurrence(captions, concepts, caption_image).astype(np.float64)
    joint = occ.T @ occ  # (C, C) co-occurrence counts, diagonal = occurrence counts
    counts = np.diag(joint).copy()
    probs = joint / np.maximum(counts, 1.0)[:, None]
    np.fill_diagonal(probs, 0.0)
    return probs.astype(np.float32)
