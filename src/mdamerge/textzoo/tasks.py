"""Offline text tasks with real labels, read from Debian data packages.

Sources (installed by ``make data`` when missing and root):

* ``wordnet-base``: ``/usr/share/wordnet/data.{noun,verb,adj,adv}``: synsets with their
  lexicographer file (supersense), words, pointers and gloss;
* ``fortunes`` and the language packs ``fortunes-{de,es,it,br,cs,pl,eo}``: quotes in topic files;
* ``bible-kjv`` + ``bible-kjv-text``: the King James Bible, read through its ``bible`` program.

Every task is a list of examples ``(texts, label)`` where ``texts`` is one string or a
pair (sentence-pair tasks, encoded as BERT's ``[CLS] a [SEP] b [SEP]``).

Splits are decided per *text segment*, not per task: a seeded hash of each normalised
segment puts it in test (20%), val (10%) or train (70%); a pair goes to the split of its
two segments when they agree and is dropped when they do not. The same text therefore
lands in the same split in every task, so no test or validation text of any task (not
even one half of a pair) appears in any task's training data (checked by
:func:`leaked_segments`). Each split is then
sampled class-balanced (round robin over the classes while they have examples left).
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ConfigError

WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNE_DIR = Path("/usr/share/games/fortunes")
DEBIAN_PACKAGES = ("wordnet-base", "fortunes", "fortunes-de", "fortunes-es", "fortunes-it", "fortunes-br",
                   "fortunes-cs", "fortunes-pl", "fortunes-eo", "bible-kjv", "bible-kjv-text")

Texts = tuple[str, ...]  # one segment, or two for a sentence-pair task
Example = tuple[Texts, int]

SPLIT_SHARES = (("test", 0.2), ("val", 0.1), ("train", 0.7))


@dataclass(frozen=True)
class TextSizes:
    """Examples per split and task (class-balanced as far as the pools allow)."""

    train: int = 1280
    val: int = 160
    test: int = 320


# ---------------------------------------------------------------------------
# Splitting
# ---------------------------------------------------------------------------
def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def segment_split(text: str, seed: int) -> str:
    """The split of one text segment: a seeded hash of its normalised form."""
    digest = hashlib.blake2b(f"{seed}\x00{normalise(text)}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    edge = 0.0
    for name, share in SPLIT_SHARES:
        edge += share
        if u < edge:
            return name
    return "train"


def example_split(texts: Texts, seed: int) -> str | None:
    """The split shared by all of an example's segments; None when they disagree (the example is dropped)."""
    splits = {segment_split(t, seed) for t in texts}
    return splits.pop() if len(splits) == 1 else None


def dedupe(examples: Sequence[Example]) -> list[Example]:
    """Drop repeated examples; drop texts that occur with more than one label altogether."""
    labels: dict[tuple, set[int]] = {}
    for texts, label in examples:
        labels.setdefault(tuple(normalise(t) for t in texts), set()).add(label)
    seen, out = set(), []
    for texts, label in examples:
        key = tuple(normalise(t) for t in texts)
        if len(labels[key]) == 1 and key not in seen:
            seen.add(key)
            out.append((texts, label))
    return out


def balanced_sample(examples: Sequence[Example], num_classes: int, n: int, rng: random.Random) -> list[Example]:
    """Up to ``n`` examples, drawn round robin over the classes (balanced while classes last), shuffled."""
    by_class: list[list[Example]] = [[] for _ in range(num_classes)]
    for ex in examples:
        by_class[ex[1]].append(ex)
    for members in by_class:
        rng.shuffle(members)
    out: list[Example] = []
    depth = 0
    while len(out) < n and any(depth < len(m) for m in by_class):
        for members in by_class:
            if depth < len(members) and len(out) < n:
                out.append(members[depth])
        depth += 1
    rng.shuffle(out)
    return out


def make_splits(examples: Sequence[Example], num_classes: int, seed: int, sizes: TextSizes, task: str
                ) -> dict[str, list[Example]]:
    """Seeded, segment-consistent, class-balanced train / val / test splits of one task."""
    pools: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    for ex in dedupe(examples):
        split = example_split(ex[0], seed)
        if split is not None:
            pools[split].append(ex)
    out = {}
    for split, pool in pools.items():
        rng = random.Random(f"{seed}:{task}:{split}")
        out[split] = balanced_sample(pool, num_classes, getattr(sizes, split), rng)
    return out


def leaked_segments(splits_by_task: dict[str, dict[str, list[Example]]]) -> set[str]:
    """Normalised segments that occur in some task's test or val split and in some task's train split."""
    held_out, train = set(), set()
    for splits in splits_by_task.values():
        for split, examples in splits.items():
            target = train if split == "train" else held_out
            target.update(normalise(t) for texts, _ in examples for t in texts)
    return held_out & train


# ---------------------------------------------------------------------------
# WordNet
# ---------------------------------------------------------------------------
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object "
    "noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl"
).split()
NOUN_SENSES = tuple(n for n in LEXNAMES if n.startswith("noun."))
VERB_SENSES = tuple(n for n in LEXNAMES if n.startswith("verb."))
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}
POS_NAMES = ("noun", "verb", "adjective", "adverb")


@dataclass(frozen=True)
class Synset:
    key: str  # "<pos><offset>"
    pos: str  # n, v, a, r (satellites as a)
    lexname: str
    words: tuple[str, ...]
    definition: str
    pointers: tuple[tuple[str, str, int, int], ...]  # (symbol, target key, source word, target word)


def _clean_word(word: str) -> str:
    return re.sub(r"\([a-z]+\)$", "", word).replace("_", " ")


def _parse_synset(line: str) -> Synset:
    data, _, gloss = line.partition(" | ")
    f = data.split()
    offset, lexnum, pos = f[0], int(f[1]), ("a" if f[2] == "s" else f[2])
    w_cnt = int(f[3], 16)
    words = tuple(_clean_word(f[4 + 2 * i]) for i in range(w_cnt))
    i = 4 + 2 * w_cnt
    p_cnt = int(f[i])
    pointers = []
    for j in range(p_cnt):
        sym, target, tpos, st = f[i + 1 + 4 * j: i + 5 + 4 * j]
        tpos = "a" if tpos == "s" else tpos
        pointers.append((sym, f"{tpos}{target}", int(st[:2], 16), int(st[2:], 16)))
    definition = gloss.split('; "')[0].strip().rstrip(";").strip()
    return Synset(f"{pos}{offset}", pos, LEXNAMES[lexnum], words, definition, tuple(pointers))


@functools.lru_cache(maxsize=1)
def wordnet() -> dict[str, Synset]:
    """Every synset of WordNet 3.0, by ``<pos><offset>`` key."""
    _require(WORDNET_DIR / "data.noun", "wordnet-base")
    out: dict[str, Synset] = {}
    for name in ("noun", "verb", "adj", "adv"):
        with open(WORDNET_DIR / f"data.{name}", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.startswith("  "):
                    s = _parse_synset(line)
                    out[s.key] = s
    return out


def _gloss_supersense(prefix: str, classes: tuple[str, ...]) -> list[Example]:
    index = {c: i for i, c in enumerate(classes)}
    return [((s.definition,), index[s.lexname]) for s in wordnet().values() if s.lexname.startswith(prefix) and s.definition]


def wn_noun_sense() -> list[Example]:
    return _gloss_supersense("noun.", NOUN_SENSES)


def wn_verb_sense() -> list[Example]:
    return _gloss_supersense("verb.", VERB_SENSES)


def wn_gloss_pos() -> list[Example]:
    label = {"n": 0, "v": 1, "a": 2, "r": 3}
    return [((s.definition,), label[s.pos]) for s in wordnet().values() if s.definition]


RELATIONS = ("synonym", "hypernym", "antonym", "unrelated")


def wn_relation() -> list[Example]:
    """Word pairs: two words of one synset / a word and its hypernym / a direct antonym / two unlinked words."""
    wn = wordnet()
    rng = random.Random("wn_relation")
    out: list[Example] = []
    for s in wn.values():
        if len(s.words) >= 2:
            a, b = rng.sample(s.words, 2)
            out.append(((a, b), 0))
        for sym, target, src, dst in s.pointers:
            if sym == "@" and target in wn:
                out.append(((rng.choice(s.words), rng.choice(wn[target].words)), 1))
            elif sym == "!" and target in wn and src and dst:
                out.append(((s.words[src - 1], wn[target].words[dst - 1]), 2))
    linked = {frozenset(p) for p, _ in out}
    keys = sorted(wn)
    n_unrelated = max(len([e for e in out if e[1] == c]) for c in range(3))
    while n_unrelated > 0:
        a, b = wn[rng.choice(keys)], wn[rng.choice(keys)]
        pair = (rng.choice(a.words), rng.choice(b.words))
        if a.key != b.key and frozenset(pair) not in linked and pair[0] != pair[1]:
            out.append((pair, 3))
            n_unrelated -= 1
    return [e for e in out if e[0][0].lower() != e[0][1].lower()]


def wn_gloss_match() -> list[Example]:
    """(word, gloss): does the gloss define a sense of the word? Negatives: a gloss of the same supersense."""
    wn = wordnet()
    rng = random.Random("wn_gloss_match")
    by_lex: dict[str, list[Synset]] = {}
    for s in wn.values():
        if s.definition:
            by_lex.setdefault(s.lexname, []).append(s)
    out: list[Example] = []
    for s in wn.values():
        if not s.definition:
            continue
        word = rng.choice(s.words)
        if rng.random() < 0.5:
            out.append(((word, s.definition), 1))
        else:
            other = rng.choice(by_lex[s.lexname])
            if other.key != s.key and word not in other.words:
                out.append(((word, other.definition), 0))
    return out


# ---------------------------------------------------------------------------
# Fortunes
# ---------------------------------------------------------------------------
FORTUNE_TOPICS = ("computers", "definitions", "law", "men-women", "politics", "science", "songs-poems", "work")
# language -> fortune files (relative to FORTUNE_DIR); the English ones are the fortunes package's topic files
FORTUNE_LANGUAGES = {
    "english": [*FORTUNE_TOPICS, "people", "education", "food", "literature", "miscellaneous", "wisdom"],
    "german": ["de/*"], "spanish": ["es/*"], "italian": ["it/*"], "portuguese": ["brasil"],
    "czech": ["cs/*"], "polish": ["pl/*"], "esperanto": ["eo/*"],
}
_ATTRIBUTION = re.compile(r"^\s*(--|—)")


def read_fortunes(path: Path) -> list[str]:
    """Quotes of a fortune file (separated by lines holding ``%``), attribution lines dropped, whitespace collapsed."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    out = []
    for chunk in re.split(r"^%\s*$", text, flags=re.M):
        lines = [ln for ln in chunk.splitlines() if not _ATTRIBUTION.match(ln)]
        quote = " ".join(" ".join(lines).split())
        quote = re.sub(r".\x08", "", quote)  # overstriking (bold / underline) in old fortune files
        if len(quote) >= 12:
            out.append(quote)
    return out


def _fortune_files(pattern: str) -> list[Path]:
    if pattern.endswith("/*"):
        folder = FORTUNE_DIR / pattern[:-2]
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix not in (".dat", ".u8")) if folder.is_dir() else []
    path = FORTUNE_DIR / pattern
    return [path] if path.is_file() else []


def fortune_topic() -> list[Example]:
    _require(FORTUNE_DIR / "computers", "fortunes")
    return [((q,), i) for i, topic in enumerate(FORTUNE_TOPICS) for q in read_fortunes(FORTUNE_DIR / topic)]


def fortune_lang() -> list[Example]:
    out = []
    for i, (lang, patterns) in enumerate(FORTUNE_LANGUAGES.items()):
        files = [f for p in patterns for f in _fortune_files(p)]
        if not files:
            raise ConfigError(f"no {lang} fortunes under {FORTUNE_DIR}; run: make data (or apt-get install {' '.join(DEBIAN_PACKAGES)})")
        out += [((q,), i) for f in files for q in read_fortunes(f)]
    return out


# ---------------------------------------------------------------------------
# The King James Bible
# ---------------------------------------------------------------------------
BIBLE_GROUPS = {
    "law": ["Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy"],
    "history": ["Joshua", "Judges", "Ruth", "1 Samuel", "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles",
                "2 Chronicles", "Ezra", "Nehemiah", "Esther"],
    "wisdom": ["Job", "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon"],
    "prophets": ["Isaiah", "Jeremiah", "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel", "Amos", "Obadiah",
                 "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai", "Zechariah", "Malachi", "Revelation"],
    "gospels and acts": ["Matthew", "Mark", "Luke", "John", "Acts"],
    "epistles": ["Romans", "1 Corinthians", "2 Corinthians", "Galatians", "Ephesians", "Philippians", "Colossians",
                 "1 Thessalonians", "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews",
                 "James", "1 Peter", "2 Peter", "1 John", "2 John", "3 John", "Jude"],
}
_CHAPTER = re.compile(r"^(.+?) (\d+)$")
_VERSE = re.compile(r"^\s+(\d+) (.*)$")


@functools.lru_cache(maxsize=1)
def bible_verses() -> list[tuple[str, str]]:
    """``(book, verse text)`` of all 31,102 verses, read through the ``bible`` program."""
    program = shutil.which("bible")
    if program is None:
        raise ConfigError("the 'bible' program is missing; run: make data (or apt-get install bible-kjv bible-kjv-text)")
    text = subprocess.run([program, "-l10000", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True,
                          timeout=120).stdout
    book, out = None, []
    for line in text.splitlines():
        if m := _VERSE.match(line):
            if book is not None:
                out.append((book, m.group(2).strip()))
        elif m := _CHAPTER.match(line.strip()):
            book = m.group(1)
    return out


def bible_group() -> list[Example]:
    group_of = {book: i for i, books in enumerate(BIBLE_GROUPS.values()) for book in books}
    verses = bible_verses()
    unknown = sorted({b for b, _ in verses} - set(group_of))
    if unknown:
        raise ConfigError(f"bible: book '{unknown[0]}' is in no group")
    return [((v,), group_of[b]) for b, v in verses]


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TextTaskSpec:
    name: str
    class_names: tuple[str, ...]
    description: str
    examples: Callable[[], list[Example]]
    kind: str  # what the task tests, for the docs
    pair: bool = False


TEXT_TASKS: dict[str, TextTaskSpec] = {
    spec.name: spec for spec in [
        TextTaskSpec("wn_noun_sense", tuple(n[5:] for n in NOUN_SENSES),
                     "WordNet noun gloss -> its supersense (lexicographer file, 26 classes)", wn_noun_sense, "semantics"),
        TextTaskSpec("wn_verb_sense", tuple(n[5:] for n in VERB_SENSES),
                     "WordNet verb gloss -> its supersense (15 classes)", wn_verb_sense, "semantics"),
        TextTaskSpec("wn_gloss_pos", POS_NAMES, "WordNet gloss -> part of speech of the defined word", wn_gloss_pos,
                     "syntax"),
        TextTaskSpec("fortune_topic", FORTUNE_TOPICS, "English fortune quote -> its fortune file (topic)",
                     fortune_topic, "topic"),
        TextTaskSpec("fortune_lang", tuple(FORTUNE_LANGUAGES), "fortune quote -> language (8 fortune packs)",
                     fortune_lang, "language"),
        TextTaskSpec("bible_group", tuple(BIBLE_GROUPS), "King James Bible verse -> book group", bible_group,
                     "style / source"),
        TextTaskSpec("wn_relation", RELATIONS, "word pair -> synonym / hypernym / antonym / unrelated (WordNet)",
                     wn_relation, "pair: lexical relation", pair=True),
        TextTaskSpec("wn_gloss_match", ("no", "yes"), "(word, gloss) -> does the gloss define the word (WordNet)",
                     wn_gloss_match, "pair: definition match", pair=True),
    ]
}
# text2: the CI suite (the two tasks that read fastest)
TEXT_SUITES = {"text8": list(TEXT_TASKS), "text2": ["fortune_topic", "bible_group"]}


@functools.lru_cache(maxsize=32)
def text_splits(name: str, seed: int = 0, sizes: TextSizes = TextSizes()) -> dict[str, list[Example]]:
    """The task's seeded, class-balanced train / val / test examples."""
    if name not in TEXT_TASKS:
        raise ConfigError(f"unknown text task '{name}'; text tasks: {', '.join(TEXT_TASKS)}")
    spec = TEXT_TASKS[name]
    return make_splits(spec.examples(), len(spec.class_names), seed, sizes, name)


def class_counts(examples: Sequence[Example], num_classes: int) -> list[int]:
    counts = [0] * num_classes
    for _, label in examples:
        counts[label] += 1
    return counts


def _require(path: Path, package: str) -> None:
    if not path.exists():
        raise ConfigError(f"{path} is missing; run: make data (or apt-get install {package})")
