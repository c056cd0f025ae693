# Run: python recipes/default_pair/corpus.py [--prompts-out recipes/default_pair/heldout_prompts.txt]
"""English text for the default pair: Jane Austen's six novels, offline, from Debian's ``r-cran-janeaustenr``.

The Debian package (MIT; the novels are public domain) ships the texts as an R lazy-load database,
``usr/lib/R/site-library/janeaustenr/data/Rdata.rdb``: a sequence of blobs, each a 4-byte big-endian
(uncompressed) length followed by a zlib stream holding one R XDR-serialised character vector (one
novel, one element per printed line). :func:`parse_rdata_rdb` reads it in pure Python (no R).

Pipeline: ``apt-get download`` the .deb into a temporary folder -> ``dpkg-deb -x`` -> parse the .rdb
-> split paragraphs into sentences -> clean -> cache ``<cache>/corpus/austen_v1.json``
(``<cache>`` = ``$ENTRGI_CACHE`` or ``~/.cache/entrgi``). Later calls read the cache only.

Without apt (not Debian/Ubuntu, or no network) point ``$ENTRGI_AUSTEN_SOURCE`` (or the ``source``
argument) at a copy of ``Rdata.rdb`` or of the ``.deb``. Run as a script it builds the cache, prints the
corpus sizes and (``--prompts-out``) writes the held-out prompt file the model card's evaluation uses.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

DEBIAN_PACKAGE = "r-cran-janeaustenr"
RDB_PATH = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
CACHE_VERSION = 1
CACHE_NAME = f"austen_v{CACHE_VERSION}.json"
SOURCE_ENV = "ENTRGI_AUSTEN_SOURCE"

#: Words ending in "." that do not end a sentence (Austen's titles and a few abbreviations).
ABBREVIATIONS = frozenset(
    "mr mrs messrs dr st col capt esq rev sir gen lt ld jun sen no vol viz &c etc ch".split())


class CorpusUnavailableError(RuntimeError):
    """The Austen text could not be obtained (no cache, no apt, no local copy)."""


# ---- where things live ---------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$ENTRGI_CACHE`` or ``~/.cache/entrgi`` (created on demand by writers)."""
    env = os.environ.get("ENTRGI_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "entrgi"


def corpus_cache_path(cache: str | os.PathLike | None = None) -> Path:
    return (Path(cache) if cache is not None else cache_dir()) / "corpus" / CACHE_NAME


# ---- the R serialisation -------------------------------------------------------------------------
def read_r_character_vector(blob: bytes) -> list[str | None]:
    """Decode one R XDR serialisation (format 2 or 3) of a character vector (STRSXP)."""
    if blob[:2] != b"X\n":
        raise ValueError("not an R XDR serialisation (expected the 'X\\n' header).")
    off = 2
    version, = struct.unpack_from(">i", blob, off)
    off += 12  # version, writer R version, minimal reader version
    if version == 3:
        n, = struct.unpack_from(">i", blob, off)
        off += 4 + n  # native encoding name
    elif version != 2:
        raise ValueError(f"unsupported R serialisation version {version}.")
    flags, length = struct.unpack_from(">ii", blob, off)
    off += 8
    if flags & 0xFF != 16:  # STRSXP
        raise ValueError(f"expected a character vector (type 16), got type {flags & 0xFF}.")
    out: list[str | None] = []
    for _ in range(length):
        _, n = struct.unpack_from(">ii", blob, off)  # CHARSXP flags, byte length
        off += 8
        if n == -1:
            out.append(None)
            continue
        out.append(blob[off:off + n].decode("utf-8"))
        off += n
    return out


def parse_rdata_rdb(data: bytes) -> list[list[str | None]]:
    """Every character vector in an R lazy-load ``.rdb`` (blobs: 4-byte BE length + zlib stream)."""
    vectors, off = [], 0
    while off + 4 < len(data):
        d = zlib.decompressobj()
        blob = d.decompress(data[off + 4:])
        if not d.eof:
            raise ValueError(f"truncated zlib stream at byte {off} of the .rdb.")
        vectors.append(read_r_character_vector(blob))
        off = len(data) - len(d.unused_data)
    return vectors


# ---- text -> sentences ---------------------------------------------------------------------------
_HEADING = re.compile(r"^(chapter|volume|book|the end|finis)\b|^by jane austen$", re.I)
_BOUNDARY = re.compile(r"([.!?]+)([\"']*)(\s+|\s*--\s*)(?=[\"']*[A-Z])")


def paragraphs(lines: list[str | None]) -> list[str]:
    """Join printed lines into paragraphs (blank lines separate), dropping titles and headings."""
    out, cur = [], []
    for line in [*lines, ""]:
        line = (line or "").strip()
        if line:
            cur.append(line)
            continue
        if cur:
            text = " ".join(cur)
            if not (_HEADING.search(text) or not re.search(r"[a-z]", text)):
                out.append(text)
            cur = []
    return out


def split_sentences(paragraph: str) -> list[str]:
    """Split at . ! ? (plus closing quotes / a dash) before a capital, not after Mr., Mrs., ..."""
    out, start = [], 0
    for m in _BOUNDARY.finditer(paragraph):
        word = re.findall(r"[\w&]+$", paragraph[start:m.start()])
        if m.group(1) == "." and word and word[0].lower() in ABBREVIATIONS:
            continue
        if m.group(1) == "." and word and len(word[0]) == 1 and word[0].isupper():  # an initial: "J. Smith"
            continue
        out.append(paragraph[start:m.end(2)])
        start = m.end()
    out.append(paragraph[start:])
    return [s.strip() for s in out if s.strip()]


def clean_sentence(s: str) -> str:
    """Drop italics marks and double quotes, turn ``--`` dashes into commas, tidy spaces."""
    s = s.replace("_", "").replace('"', " ").replace("\u201c", " ").replace("\u201d", " ")
    s = re.sub(r"\s*--+\s*", ", ", s)
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"^[,;:'\s]+", "", s)
    s = re.sub(r"\s+([,.;:!?])", r"\1", s)
    s = re.sub(r",\s*([,.;:!?])", r"\1", s)
    s = re.sub(r"^'(?=[A-Z])|(?<=[.!?])'$", "", s).strip()  # stray single quotes of nested speech
    return s


def is_good_sentence(s: str, min_words: int, max_words: int) -> bool:
    n = len(s.split())
    return (min_words <= n <= max_words and s[:1].isupper() and s[-1:] in ".!?"
            and not re.search(r"[0-9()\[\]&]", s))


def book_sentences(lines: list[str | None]) -> list[str]:
    """All cleaned sentences of one novel (no length filter)."""
    out = []
    for p in paragraphs(lines):
        out += [c for c in (clean_sentence(s) for s in split_sentences(p)) if c]
    return out


# ---- getting the package -------------------------------------------------------------------------
def _rdb_from_deb(deb: Path, work: Path) -> bytes:
    if shutil.which("dpkg-deb") is None:
        raise CorpusUnavailableError("`dpkg-deb` is not available to unpack the Debian package; extract "
                                     f"{RDB_PATH} from {deb} by hand and set ${SOURCE_ENV} to it.")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "x")], check=True, capture_output=True)
    return (work / "x" / RDB_PATH).read_bytes()


def fetch_rdb(source: str | os.PathLike | None = None) -> bytes:
    """The raw ``Rdata.rdb``: from ``source`` / ``$ENTRGI_AUSTEN_SOURCE`` (.rdb or .deb), else via apt."""
    source = source or os.environ.get(SOURCE_ENV)
    with tempfile.TemporaryDirectory(prefix="entrgi-austen-") as tmp:
        work = Path(tmp)
        if source:
            path = Path(source).expanduser()
            if not path.is_file():
                raise CorpusUnavailableError(f"Austen source {path} (from `source` / ${SOURCE_ENV}) does not exist.")
            return _rdb_from_deb(path, work) if path.suffix == ".deb" else path.read_bytes()
        if shutil.which("apt-get") is None:
            raise CorpusUnavailableError(
                "the Austen corpus needs Debian's `r-cran-janeaustenr` package, fetched with `apt-get download`, "
                "but `apt-get` is not available here. On another Debian/Ubuntu machine run `apt-get download "
                f"{DEBIAN_PACKAGE}` and set ${SOURCE_ENV} to the .deb (or to {RDB_PATH} inside it).")
        proc = subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=work, capture_output=True, text=True)
        debs = sorted(work.glob(f"{DEBIAN_PACKAGE}_*.deb"))
        if proc.returncode != 0 or not debs:
            raise CorpusUnavailableError(
                f"`apt-get download {DEBIAN_PACKAGE}` failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-400:]}\nRun `apt-get update` (needs a Debian mirror), or "
                f"set ${SOURCE_ENV} to a downloaded .deb or to its {RDB_PATH}.")
        return _rdb_from_deb(debs[0], work)


def build_corpus(source: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> Path:
    """Fetch, parse and cache every cleaned sentence of the six novels; returns the cache file."""
    vectors = parse_rdata_rdb(fetch_rdb(source))
    books = {}
    for vec in vectors:
        title = next((x.strip() for x in vec if x and x.strip()), f"book{len(books)}")
        books[title.title()] = book_sentences(vec)
    if not books or sum(map(len, books.values())) < 1000:
        raise CorpusUnavailableError("the parsed Austen package holds almost no text: unexpected package layout.")
    path = corpus_cache_path(cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": CACHE_VERSION, "package": DEBIAN_PACKAGE, "books": books}))
    tmp.replace(path)
    return path


def load_books(source: str | os.PathLike | None = None, cache: str | os.PathLike | None = None
               ) -> dict[str, list[str]]:
    """``{title: [sentences]}`` of the six novels (built and cached on first use)."""
    path = corpus_cache_path(cache)
    if not path.is_file():
        build_corpus(source, cache)
    data = json.loads(path.read_text())
    if data.get("version") != CACHE_VERSION:
        build_corpus(source, cache)
        data = json.loads(path.read_text())
    return data["books"]


def austen_sentences(min_words: int = 5, max_words: int = 30, *, source: str | os.PathLike | None = None,
                     cache: str | os.PathLike | None = None) -> list[str]:
    """Deterministic, de-duplicated list of cleaned Austen sentences of ``min_words``–``max_words`` words,
    in book order (Emma, Mansfield Park, Northanger Abbey, Persuasion, Pride and Prejudice, Sense and
    Sensibility)."""
    seen, out = set(), []
    for sents in load_books(source, cache).values():
        for s in sents:
            if is_good_sentence(s, min_words, max_words) and s.lower() not in seen:
                seen.add(s.lower())
                out.append(s)
    return out


def is_heldout(sentence: str, heldout_fraction: float = 0.05) -> bool:
    """Held-out membership from a hash of the lower-cased sentence (independent of list order)."""
    h = int.from_bytes(hashlib.sha1(sentence.lower().encode()).digest()[:8], "big")
    return h % 10_000 < round(heldout_fraction * 10_000)


def train_heldout_split(sentences: list[str] | None = None, heldout_fraction: float = 0.05
                        ) -> tuple[list[str], list[str]]:
    """(train, held-out) sentences; the held-out set is a stable ~``heldout_fraction`` hash sample."""
    sentences = austen_sentences() if sentences is None else sentences
    train, held = [], []
    for s in sentences:
        (held if is_heldout(s, heldout_fraction) else train).append(s)
    return train, held


def heldout_prompts(n: int = 12, seed: int = 0, sentences: list[str] | None = None) -> list[str]:
    """Beginnings (2–4 words, no punctuation) of ``n`` held-out Austen sentences of 8+ words, lower-cased:
    the prompts of the model card's guidance table (shipped as ``heldout_prompts.txt``)."""
    _, held = train_heldout_split(sentences)
    cands = [s for s in held if len(s.split()) >= 8 and not any(c in " ".join(s.split()[:4]) for c in ",;:!?.'")]
    random.Random(seed).shuffle(cands)
    return [" ".join(s.split()[:2 + i % 3]).lower() for i, s in enumerate(cands[:n])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", help=f"Rdata.rdb or the .deb (default: ${SOURCE_ENV}, else `apt-get download`).")
    p.add_argument("--prompts-out", help="Write the held-out prompt file (one prompt a line) here.")
    args = p.parse_args(argv)
    sentences = austen_sentences(source=args.source)
    train, held = train_heldout_split(sentences)
    print(f"{len(sentences)} sentences of 5-30 words: {len(train)} train, {len(held)} held-out "
          f"(cache: {corpus_cache_path()})")
    if args.prompts_out:
        lines = heldout_prompts(sentences=sentences)
        header = ("# Beginnings of held-out Austen sentences (never trained on): the model card's guidance prompts.\n"
                  "# Written by `python recipes/default_pair/corpus.py --prompts-out FILE` (heldout_prompts()).\n")
        Path(args.prompts_out).write_text(header + "".join(f"{t}\n" for t in lines))
        print(f"{len(lines)} prompts -> {args.prompts_out}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except CorpusUnavailableError as e:
        raise SystemExit(f"corpus.py: error: {e}") from None
