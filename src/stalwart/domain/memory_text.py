"""Text for semantic memory: what a file says, cut into overlapping chunks, ranked by BM25.

Pure functions over strings and bytes, no I/O. `extract_text` turns a text, Markdown or HTML file
into plain text with paragraph breaks; `chunk_text` cuts it into pieces of about `max_tokens` words
that overlap, so a passage that straddles a cut is whole in one of them; `Bm25Index` ranks texts
lexically, the fallback when no embedder is installed. `tokenize` is the one notion of a word that
all three share.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import PurePath
from typing import Any, Literal

from stalwart.errors import UsageError

Format = Literal["text", "markdown", "html"]

FORMATS: dict[str, Format] = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
}

CHUNK_MAX_TOKENS = 200
CHUNK_OVERLAP_TOKENS = 40
CHUNK_MIN_MAX_TOKENS = 16

# A word: a run of letters, digits and underscores holding at least one letter or digit.
_WORD = re.compile(r"\w*[^\W_]\w*")


def tokenize(text: str) -> list[str]:
    """The lowercase words of `text`: runs of Unicode letters, digits and `_`; punctuation and
    lone underscores are not words. Shared by chunking, BM25 and token estimates."""
    return [match.group().lower() for match in _WORD.finditer(text)]


# -- extraction ----------------------------------------------------------------------------------


def extract_text(name: str, data: bytes) -> str:
    """The plain text of the file `name` holding `data`, by its extension: `.txt`/`.text` as is,
    `.md`/`.markdown` without the syntax, `.html`/`.htm` without tags, scripts and styles (the
    `<title>` first). Paragraphs are separated by a blank line; spaces are collapsed.

    Raises `UsageError` (field `files`) for an unsupported extension or bytes that are not UTF-8.
    """
    fmt = _format_of(name)
    text = _decode(name, data).replace("\r\n", "\n").replace("\r", "\n")
    if fmt == "html":
        text = _html_text(text)
    elif fmt == "markdown":
        text = _markdown_text(text)
    return _tidy(text)


def _format_of(name: str) -> Format:
    suffix = PurePath(name).suffix.lower()
    if suffix not in FORMATS:
        supported = ", ".join(FORMATS)
        raise UsageError(
            f"{name}: files of type {suffix or '(no extension)'!r} cannot be added; "
            f"use a text, Markdown or HTML file ({supported})",
            field="files",
        )
    return FORMATS[suffix]


def _decode(name: str, data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{name}: byte {exc.start} is not UTF-8; save the file as UTF-8 and add it again",
            field="files",
        ) from exc
    if "\x00" in text:
        raise UsageError(
            f"{name}: holds NUL bytes, so it is not a text file; add text, Markdown or HTML",
            field="files",
        )
    return text


_BLANK_LINES = re.compile(r"\n{3,}")


def _tidy(text: str) -> str:
    """Each line's whitespace collapsed to single spaces, at most one blank line in a row, and
    no blank lines at either end."""
    lines = [" ".join(line.split()) for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


# Elements whose content is not text a reader sees.
_HIDDEN = frozenset({"script", "style", "noscript", "template", "head", "svg", "iframe"})
# Elements that start a paragraph, and elements that start a line.
_PARAGRAPH = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "header", "footer", "main"}
    | {"aside", "nav", "blockquote", "pre", "table", "ul", "ol", "dl", "figure", "hr", "form"}
    | {"details", "address", "fieldset"}
)
_LINE = frozenset(
    {"br", "div", "li", "tr", "dt", "dd", "caption", "figcaption", "summary", "option", "legend"}
)
_CELL = frozenset({"td", "th"})
_SPACES = re.compile(r"\s+")


class _HtmlText(HTMLParser):
    """Collects the visible text of a page, with line and paragraph breaks for block elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title: list[str] = []
        self.body: list[str] = []
        self._hidden: list[str] = []  # open hidden elements, innermost last
        self._in_title = False
        self._pre = 0
        self._line_open = False  # text since the last line break

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body" and "head" in self._hidden:
            self._hidden.remove("head")  # `</head>` may be left out: the body ends it
        if tag == "title" and set(self._hidden) <= {"head"}:
            self._in_title = True  # the page's title, not an <svg>'s
        elif tag in _HIDDEN:
            self._hidden.append(tag)
        self._break(tag)
        if tag == "pre":
            self._pre += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._break(tag)  # `<br/>`, `<hr/>`: no content, and no end tag to wait for

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self._hidden:
            del self._hidden[len(self._hidden) - 1 - self._hidden[::-1].index(tag) :]
        if tag == "pre":
            self._pre = max(0, self._pre - 1)
        self._break(tag)

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._hidden:
            # Outside <pre>, source line breaks are only spaces; inside, they are lines.
            self.body.append(data if self._pre else _SPACES.sub(" ", data))
            self._line_open = self._line_open or not data.isspace()

    def _break(self, tag: str) -> None:
        if self._hidden or self._in_title:
            return
        if tag in _PARAGRAPH:
            self.body.append("\n\n")
            self._line_open = False
        elif tag == "br" or (tag in _LINE and self._line_open):
            self.body.append("\n")  # `<li>..</li><li>` is one line break, `<br><br>` two
            self._line_open = False
        elif tag in _CELL:
            self.body.append(" ")


def _html_text(source: str) -> str:
    parser = _HtmlText()
    parser.feed(source)
    parser.close()
    title = " ".join("".join(parser.title).split())
    body = "".join(parser.body)
    return f"{title}\n\n{body}" if title else body


# Markdown: the prose without the syntax, fenced code kept as text. Escaped characters and the
# characters of inline code stand in as private-use code points meanwhile, so that no rule below
# mistakes them for syntax.
_PROTECT_BASE = 0xE000
_PUNCTUATION = "".join(chr(c) for c in range(33, 127) if not chr(c).isalnum())
_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"<!--.*?-->", re.DOTALL), ""),  # comments
    (re.compile(r"^ {0,3}\[[^\]]+\]:\s*\S+.*$", re.M), ""),  # link reference definitions
    # the rule under a table's header row, with its line break
    (re.compile(r"^[ \t]*\|?([ \t]*:?-+:?[ \t]*\|)+[ \t]*(:?-+:?)?[ \t]*$\n?", re.M), ""),
    (re.compile(r"^ {0,3}(=+|-{2,}|(?:[-*_]\s*){3,})\s*$", re.M), ""),  # underlines, rules
    # headings, as paragraphs of their own
    (re.compile(r"^ {0,3}#{1,6}(?:[ \t]+|$)(.*?)(?:[ \t]+#+)?[ \t]*$", re.M), "\n\\1\n"),
    (re.compile(r"^ {0,3}(?:>[ \t]?)+", re.M), ""),  # block quotes
    (re.compile(r"^[ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+(?:\[[ xX]\][ \t]+)?", re.M), ""),  # list items
    (re.compile(r"!\[([^\]]*)\](?:\([^)]*\)|\[[^\]]*\])"), r"\1"),  # images: their alt text
    (re.compile(r"\[([^\]]*)\]\((?:[^()]|\([^)]*\))*\)"), r"\1"),  # links: their text
    (re.compile(r"\[([^\]]+)\]\[[^\]]*\]"), r"\1"),  # reference links
    (re.compile(r"<((?:https?|ftp|mailto):[^>\s]+|[^@>\s]+@[^>\s]+)>"), r"\1"),  # autolinks
    (re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>"), ""),  # inline HTML tags
    (re.compile(r"(\*{1,3})(?=\S)(.+?)(?<=\S)\1"), r"\2"),  # *emphasis*, **strong**
    (re.compile(r"(\*{1,3})(?=\S)(.+?)(?<=\S)\1"), r"\2"),  # ... nested once
    (re.compile(r"(?<!\w)(_{1,3})(?=\S)(.+?)(?<=\S)\1(?!\w)"), r"\2"),  # _emphasis_
    (re.compile(r"~~(?=\S)(.+?)(?<=\S)~~"), r"\1"),  # ~~strikethrough~~
    (re.compile(r"[ \t]*\|[ \t]*"), " "),  # table cells
)


def _markdown_text(source: str) -> str:
    """Markdown as plain text: prose blocks cleaned by `_RULES`, fenced code kept line by line
    without its fences."""
    blocks: list[str] = []
    lines: list[str] = []
    fence = ""
    for line in source.split("\n"):
        opening = _FENCE_OPEN.match(line)
        if not fence and opening:
            blocks.append(_markdown_prose("\n".join(lines)))
            lines, fence = [], opening.group(1)
        elif fence and _closes(line, fence):
            blocks.append("\n".join(lines))
            lines, fence = [], ""
        else:
            lines.append(line)
    blocks.append("\n".join(lines) if fence else _markdown_prose("\n".join(lines)))
    return "\n\n".join(blocks)


def _closes(line: str, fence: str) -> bool:
    marker = line.strip()
    return len(marker) >= len(fence) and set(marker) == {fence[0]} and not line.startswith("    ")


def _markdown_prose(text: str) -> str:
    text = _ESCAPED.sub(lambda m: _protect(m.group(1)), text)
    text = _CODE_SPAN.sub(lambda m: _protect(m.group(2).strip()), text)
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return "".join(
        chr(ord(c) - _PROTECT_BASE) if _PROTECT_BASE <= ord(c) < _PROTECT_BASE + 128 else c
        for c in text
    )


def _protect(text: str) -> str:
    return "".join(chr(_PROTECT_BASE + ord(c)) if c in _PUNCTUATION else c for c in text)


# -- chunking ------------------------------------------------------------------------------------

# How strongly the gap before a word separates it from the word before: higher is a better cut.
_NONE, _LINE_BREAK, _SENTENCE, _PARAGRAPH_BREAK = 0, 1, 2, 3
_SENTENCE_END = re.compile(r"[.!?\u2026][\"')\]\u2019\u201d]*\s")
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")


def chunk_text(
    text: str,
    *,
    max_tokens: int = CHUNK_MAX_TOKENS,
    overlap_tokens: int = CHUNK_OVERLAP_TOKENS,
) -> list[str]:
    """`text` cut into chunks of at most `max_tokens` words (as `tokenize` counts them).

    A chunk ends at the last paragraph break in the second half of its window, else at the last
    sentence end, else at the last line break, else after `max_tokens` words (a sentence longer
    than a chunk is split by words). The next chunk starts `overlap_tokens` words before that end,
    so those words appear in both. Every word of `text` is in some chunk, in order; a text of at
    most `max_tokens` words is one chunk; a blank text is none.
    """
    _check_chunk_sizes(max_tokens, overlap_tokens)
    words = list(_WORD.finditer(text))
    if len(words) <= max_tokens:
        return [text.strip()] if text.strip() else []
    cuts = _cut_offsets(text, words)
    strength = _gap_strengths(text, words)
    chunks: list[str] = []
    start = 0
    while True:
        end = _chunk_end(strength, start, len(words), max_tokens, overlap_tokens)
        chunks.append(text[cuts[start] : cuts[end] if end < len(words) else len(text)].strip())
        if end >= len(words):
            return chunks
        start = end - overlap_tokens


def _check_chunk_sizes(max_tokens: int, overlap_tokens: int) -> None:
    if max_tokens < CHUNK_MIN_MAX_TOKENS:
        raise UsageError(
            f"max_tokens is {max_tokens}: use at least {CHUNK_MIN_MAX_TOKENS} words per chunk",
            field="max_tokens",
        )
    if not 0 <= overlap_tokens < max_tokens:
        raise UsageError(
            f"overlap_tokens is {overlap_tokens}: use 0 or more and less than max_tokens "
            f"({max_tokens})",
            field="overlap_tokens",
        )


def _cut_offsets(text: str, words: Sequence[re.Match[str]]) -> list[int]:
    """Where a chunk that starts at word i starts in `text`: at the start of the whitespace-
    delimited piece holding it (so an opening bracket or quote comes along), but never before
    the end of the word before."""
    cuts = [0]
    for prev, word in itertools.pairwise(words):
        piece = word.start()
        while piece > prev.end() and not text[piece - 1].isspace():
            piece -= 1
        cuts.append(piece)
    return cuts


def _gap_strengths(text: str, words: Sequence[re.Match[str]]) -> list[int]:
    """For each word, how strong a boundary the gap before it is (the first word: none)."""
    strengths = [_NONE]
    for prev, word in itertools.pairwise(words):
        gap = text[prev.end() : word.start()]
        if _BLANK_LINE.search(gap):
            strengths.append(_PARAGRAPH_BREAK)
        elif _SENTENCE_END.search(gap):
            strengths.append(_SENTENCE)
        elif "\n" in gap:
            strengths.append(_LINE_BREAK)
        else:
            strengths.append(_NONE)
    return strengths


def _chunk_end(strength: Sequence[int], start: int, total: int, size: int, overlap: int) -> int:
    """The index of the first word after the chunk that starts at word `start`."""
    limit = start + size
    if limit >= total:
        return total
    # Cut no earlier than half a chunk in, and late enough that the next chunk moves forward.
    earliest = start + max(overlap + 1, size // 2)
    best, best_strength = limit, _NONE
    for index in range(limit, earliest - 1, -1):
        if strength[index] > best_strength:
            best, best_strength = index, strength[index]
            if best_strength == _PARAGRAPH_BREAK:
                break
    return best


# -- BM25 ------------------------------------------------------------------------------------------

# Lucene's English stop words: too common to tell documents apart, noise in a question.
# fmt: off
STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with",
})
# fmt: on


def bm25_terms(text: str) -> list[str]:
    """The terms BM25 indexes and looks up: `tokenize`'s words without stop words, plurals made
    singular by the S-stemmer of Harman (1991) so that `refunds` finds `refund`."""
    return [_s_stem(word) for word in tokenize(text) if word not in STOPWORDS]


def _s_stem(word: str) -> str:
    if len(word) <= 3 or not word.endswith("s"):
        return word
    if word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if not word.endswith(("us", "ss")):
        return word[:-1]
    return word


BM25_K1 = 1.5  # how fast repeating a term stops adding to a text's score
BM25_B = 0.75  # how much a long text is discounted


class Bm25Index:
    """Lexical ranking of a fixed list of texts with BM25 (Lucene's variant, `BM25_K1`,
    `BM25_B`), by the `bm25s` library over our own terms (`bm25_terms`), which it takes as lists
    of strings: its own tokenizer is not used.

    `search` gives `(position, score)` pairs. Raw BM25 scores have no upper end, so by default
    (`normalized=True`) each score is divided by the best score any text could have for the query:
    the sum, over the query's distinct known terms, of the highest score that term gives any one
    text. A text scores 1.0 only when it is the best match for every term of the query, and a
    text that matches one rare term of several scores that term's share; the result lies in 0..1
    like a cosine similarity and can be weighed against one.
    """

    def __init__(self, texts: Sequence[str]) -> None:
        self._size = len(texts)
        self._retriever: Any = None
        corpus = [bm25_terms(text) for text in texts]
        if any(corpus):
            import bm25s  # type: ignore[import-untyped]  # no type hints shipped

            self._retriever = bm25s.BM25(method="lucene", k1=BM25_K1, b=BM25_B)
            self._retriever.index(corpus, show_progress=False)

    def __len__(self) -> int:
        return self._size

    def search(self, query: str, k: int, *, normalized: bool = True) -> list[tuple[int, float]]:
        """The positions of the `k` texts that best match `query`, best first (ties by
        position), with their scores in 0..1 (raw BM25 scores with `normalized=False`); only
        texts that share a term with the query."""
        if k < 1:
            raise UsageError(f"k is {k}: ask for at least 1 result", field="k")
        per_term = self._term_scores(query)
        if not per_term:
            return []
        scores = sum(per_term[1:], per_term[0])
        matches = (scores > 0).nonzero()[0]  # positions, ascending
        best = matches[(-scores[matches]).argsort(kind="stable")[:k]]  # ties stay by position
        if not normalized:
            return [(int(i), float(scores[i])) for i in best]
        bound = sum(float(term.max()) for term in per_term)
        return [(int(i), min(1.0, float(scores[i]) / bound)) for i in best]  # min: rounding

    def _term_scores(self, query: str) -> list[Any]:
        """One array of per-text scores for each distinct query term the texts hold."""
        if self._retriever is None:
            return []
        vocabulary = self._retriever.vocab_dict
        terms = [term for term in dict.fromkeys(bm25_terms(query)) if term in vocabulary]
        return [self._retriever.get_scores([term]).astype("float64") for term in terms]
