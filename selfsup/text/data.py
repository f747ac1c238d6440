"""Offline text with labels, from Debian packages: fortune files (one topic per file) and WordNet (glosses
and example sentences of word senses, and the noun hierarchy for a graded similarity).

Nothing is downloaded: ``fortunes`` (with ``fortunes-min``) installs /usr/share/games/fortunes and
``wordnet-base`` installs /usr/share/wordnet. Splits follow a fixed rule, :func:`split_of`, a hash of the
text (fortunes) or of the synset's key (WordNet), so that they do not depend on order, seed or subset.
"""

from __future__ import annotations

import re
import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DEFAULT_FORTUNES_DIR = "/usr/share/games/fortunes"
DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
# Files of Debian's fortunes named after a subject, with at least ~150 fortunes each. Left out: collections
# named after a person or a form rather than a subject (cookie, fortunes, miscellaneous, knghtbrd, zippy,
# people, humorists, platitudes, wisdom, definitions, disclaimer, riddles, ascii-art), and files too small
# to probe (fewer than 100 fortunes).
DEFAULT_TOPICS = ("art", "computers", "drugs", "education", "food", "kids", "law", "linux", "literature",
                  "love", "men-women", "politics", "science", "songs-poems", "sports", "startrek", "work")
WORDNET_PARTS = ("noun", "verb", "adj", "adv")

Split = Literal["train", "val", "test"]


def split_of(key: str) -> Split:
    """The fixed split of an item: CRC-32 of its key, modulo 10: 0-1 test (20%), 2 val (10%), else train.

    The validation part of the training data is where recipes are chosen; the test split is only reported.
    """
    bucket = zlib.crc32(key.encode("utf-8")) % 10
    return "test" if bucket < 2 else "val" if bucket == 2 else "train"


def clean_text(text: str) -> str:
    """Whitespace collapsed to single spaces, terminal overstriking (``x\\bx``, ``_\\bx``, ``___\\bword``) and
    other control characters removed."""
    text = re.sub(r"_+\x08|.\x08", "", text)
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)
    return " ".join(text.split())


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with integer labels indexing ``classes``."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices: Iterable[int]) -> LabelledTexts:
        indices = list(indices)
        return LabelledTexts(tuple(self.texts[i] for i in indices), tuple(self.labels[i] for i in indices),
                             self.classes)

    def split(self, part: Split) -> LabelledTexts:
        return self.select(i for i, text in enumerate(self.texts) if split_of(text) == part)


def read_fortune_file(path: str | Path) -> list[str]:
    """The fortunes of one strfile source file: entries separated by lines holding only ``%``, cleaned
    with :func:`clean_text`; empty entries dropped. Bytes that are not UTF-8 are replaced."""
    raw = Path(path).read_bytes().decode("utf-8", errors="replace")
    entries = (clean_text(entry) for entry in re.split(r"^%[ \t]*$", raw, flags=re.MULTILINE))
    return [entry for entry in entries if entry]


def fortune_topics(folder: str | Path) -> list[str]:
    """The fortune files of ``folder``: regular files, not the ``.dat`` indexes nor the ``.u8`` links."""
    folder = Path(folder)
    return sorted(p.name for p in folder.iterdir()
                  if p.is_file() and not p.is_symlink() and p.suffix != ".dat" and not p.name.startswith("."))


def read_fortunes(folder: str | Path = DEFAULT_FORTUNES_DIR, topics: Sequence[str] | None = None) -> LabelledTexts:
    """Fortunes labelled by the file they come from (their topic), classes in the order of ``topics``
    (default: every fortune file of ``folder``). A text found in several topics is dropped, since its label
    would be ambiguous; a text repeated within one topic is kept once.

    Raises:
        FileNotFoundError: when ``folder`` is missing (install Debian's ``fortunes``).
        ValueError: when a topic has no file in ``folder``, or ``topics`` is empty.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no fortune files at {folder}: install Debian's 'fortunes' package "
                                "(apt-get install fortunes) or give the folder")
    available = fortune_topics(folder)
    topics = list(available if topics is None else topics)
    if not topics:
        raise ValueError("read_fortunes: no topics given")
    missing = [t for t in topics if t not in available]
    if missing:
        raise ValueError(f"no fortune file for topic(s) {', '.join(missing)} in {folder} "
                         f"(available: {', '.join(available)})")
    label_of: dict[str, int] = {}
    ambiguous: set[str] = set()
    for label, topic in enumerate(topics):
        for text in read_fortune_file(folder / topic):
            if label_of.setdefault(text, label) != label:
                ambiguous.add(text)
    pairs = [(text, label) for text, label in label_of.items() if text not in ambiguous]
    return LabelledTexts(tuple(t for t, _ in pairs), tuple(label for _, label in pairs), tuple(topics))


@dataclass(frozen=True)
class Synset:
    """One WordNet synset (a word sense): its words, definition, example sentences and hypernyms."""

    key: str  # part of speech letter + byte offset, e.g. "n02084071"
    lexicographer_file: int  # 0-44: noun.animal, verb.motion, ... (WordNet's lexnames)
    words: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]
    hypernyms: tuple[str, ...]  # keys of the synsets this one is a kind (@) or an instance (@i) of

    @property
    def headword_definition(self) -> str:
        """The entry without its examples: ``words: definition``."""
        return f"{', '.join(self.words)}: {self.definition}"

    @property
    def entry(self) -> str:
        """The dictionary entry as one text: ``words: definition; "example"; ...``."""
        words = ", ".join(self.words)
        return "; ".join([f"{words}: {self.definition}", *(f'"{e}"' for e in self.examples)])


def parse_synset_line(line: str) -> Synset | None:
    """A synset from one line of a WordNet ``data.*`` file (wndb(5) format); None for the licence header."""
    if not line or line.startswith(" "):
        return None
    fields, _, gloss = line.partition(" | ")
    parts = fields.split()
    offset, lexicographer_file, pos = parts[0], int(parts[1]), parts[2]
    pos = "a" if pos == "s" else pos  # satellite adjectives are adjectives
    word_count = int(parts[3], 16)
    words = tuple(parts[4 + 2 * i].replace("_", " ") for i in range(word_count))
    words = tuple(re.sub(r"\([a-z]+\)$", "", w) for w in words)  # adjective markers such as "(a)"
    at = 4 + 2 * word_count
    pointer_count = int(parts[at])
    hypernyms = []
    for i in range(pointer_count):
        symbol, target, target_pos = parts[at + 1 + 4 * i: at + 4 + 4 * i]
        if symbol in ("@", "@i"):
            hypernyms.append(("a" if target_pos == "s" else target_pos) + target)
    gloss = gloss.strip()
    examples = tuple(clean_text(e) for e in re.findall(r'"([^"]+)"', gloss))
    definition = clean_text(gloss.split('"', 1)[0].strip().rstrip(";").strip())
    return Synset(pos + offset, lexicographer_file, words, definition, examples, tuple(hypernyms))


def read_wordnet(folder: str | Path = DEFAULT_WORDNET_DIR, parts: Sequence[str] = WORDNET_PARTS) -> list[Synset]:
    """Every synset of the ``data.<part>`` files of ``folder`` that has a definition, in file order.

    Raises:
        FileNotFoundError: when a data file is missing (install Debian's ``wordnet-base``).
    """
    folder = Path(folder)
    synsets = []
    for part in parts:
        path = folder / f"data.{part}"
        if not path.is_file():
            raise FileNotFoundError(f"no WordNet data file at {path}: install Debian's 'wordnet-base' package "
                                    "(apt-get install wordnet-base) or give the folder")
        with path.open(encoding="utf-8", errors="replace") as file:
            for line in file:
                synset = parse_synset_line(line.rstrip("\n"))
                if synset is not None and synset.definition:
                    synsets.append(synset)
    return synsets


class Hierarchy:
    """The hypernym graph of a set of synsets, for Wu and Palmer's (1994) similarity of two concepts.

    ``wu_palmer(a, b) = 2 d(c) / (n(a, c) + n(b, c) + 2 d(c))``, with c the lowest common hypernym (the
    common ancestor deepest from the root), d(c) its depth counted in nodes (the root has depth 1) and
    n(x, c) the number of edges from x up to c; 1 for a concept with itself, and small for concepts that
    share only the root. Concepts without a common ancestor (e.g. two verb hierarchies) get 0.
    """

    def __init__(self, synsets: Iterable[Synset]) -> None:
        self.parents = {s.key: s.hypernyms for s in synsets}
        self._ancestors: dict[str, dict[str, int]] = {}
        self._depth: dict[str, int] = {}

    def ancestors(self, key: str) -> dict[str, int]:
        """Every ancestor of ``key`` (itself included) with its distance in edges (the shortest path)."""
        if key not in self._ancestors:
            distance = {key: 0}
            queue = deque([key])
            while queue:
                node = queue.popleft()
                for parent in self.parents.get(node, ()):
                    if parent not in distance:
                        distance[parent] = distance[node] + 1
                        queue.append(parent)
            self._ancestors[key] = distance
        return self._ancestors[key]

    def depth(self, key: str) -> int:
        """Nodes on the shortest path from ``key`` up to a root (a synset without hypernyms): 1 at a root."""
        if key not in self._depth:
            self._depth[key] = 1 + min(d for node, d in self.ancestors(key).items() if not self.parents.get(node))
        return self._depth[key]

    def wu_palmer(self, a: str, b: str) -> float:
        up_a, up_b = self.ancestors(a), self.ancestors(b)
        common = up_a.keys() & up_b.keys()
        if not common:
            return 0.0
        best = max(common, key=lambda c: (self.depth(c), -(up_a[c] + up_b[c])))
        depth = self.depth(best)
        return 2 * depth / (up_a[best] + up_b[best] + 2 * depth)
