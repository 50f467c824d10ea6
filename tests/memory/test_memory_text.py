"""Text for semantic memory: extraction by format, words, overlapping chunks and BM25 ranking."""

from __future__ import annotations

import bisect
import itertools
import random
import re

import pytest

from stalwart.domain.memory_text import (
    FORMATS,
    STOPWORDS,
    Bm25Index,
    bm25_terms,
    chunk_text,
    extract_text,
    tokenize,
)
from stalwart.errors import UsageError

# -- extraction: plain text ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["notes.txt", "NOTES.TXT", "a.text", "dir/sub/b.Txt"])
def test_plain_text_is_kept_with_its_paragraphs(name: str) -> None:
    data = b"  First   line\r\nsecond\tline  \r\n\r\n\r\n\r\nNext paragraph.\n"
    assert extract_text(name, data) == "First line\nsecond line\n\nNext paragraph."


def test_a_utf8_byte_order_mark_is_dropped() -> None:
    assert extract_text("a.txt", b"\xef\xbb\xbfCaf\xc3\xa9 cr\xc3\xa8me") == "Café crème"


def test_an_empty_file_is_empty_text() -> None:
    assert extract_text("empty.md", b"") == ""


def test_bytes_that_are_not_utf8_name_the_file_and_the_fix() -> None:
    with pytest.raises(UsageError) as caught:
        extract_text("latin1.txt", "Café".encode("latin-1"))
    assert caught.value.fields == {"field": "files"}
    assert "latin1.txt" in caught.value.message
    assert "UTF-8" in caught.value.message and "save" in caught.value.message


def test_a_binary_file_with_nul_bytes_is_refused() -> None:
    with pytest.raises(UsageError, match=r"blob\.txt.*NUL") as caught:
        extract_text("blob.txt", b"PK\x03\x04\x00\x00")
    assert caught.value.fields == {"field": "files"}


@pytest.mark.parametrize("name", ["report.pdf", "data.csv", "README", "archive.tar.gz", "a.md.bak"])
def test_an_unsupported_extension_names_the_file_and_the_supported_ones(name: str) -> None:
    with pytest.raises(UsageError) as caught:
        extract_text(name, b"text")
    assert caught.value.fields == {"field": "files"}
    assert name in caught.value.message
    for suffix in FORMATS:
        assert suffix in caught.value.message


# -- extraction: HTML ------------------------------------------------------------------------------

PAGE = b"""<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  <title>Refunds &amp; Returns</title>
  <style>p { color: red }</style>
  <script>var secret = "<p>not text</p>";</script>
</head>
<body>
  <noscript>Please enable JavaScript</noscript>
  <h1>Refund   policy</h1>
  <p>We refund within
     <b>30</b>&nbsp;days &mdash; no questions.</p>
  <ul><li>Unused items</li><li>Original packaging &lt;required&gt;</li></ul>
  <table><tr><th>Plan</th><th>Fee</th></tr><tr><td>Pro</td><td>&#36;10</td></tr></table>
  <template><p>template text</p></template>
  <svg><title>icon title</title></svg>
  Call us<br>any time<br><br>Thanks.
</body>
</html>"""


def test_html_keeps_the_title_first_then_the_visible_text_in_blocks() -> None:
    assert extract_text("page.html", PAGE) == (
        "Refunds & Returns\n\n"
        "Refund policy\n\n"
        "We refund within 30 days — no questions.\n\n"
        "Unused items\nOriginal packaging <required>\n\n"
        "Plan Fee\nPro $10\n\n"
        "Call us\nany time\n\nThanks."
    )


def test_html_drops_scripts_styles_and_other_hidden_content() -> None:
    text = extract_text("page.htm", PAGE)
    for hidden in ("secret", "color", "JavaScript", "template text", "icon title", "charset"):
        assert hidden not in text


def test_html_without_a_closing_head_still_has_its_body() -> None:
    page = b"<html><head><title>T</title><body><p>Body text</p><div>More</div>"
    assert extract_text("a.HTM", page) == "T\n\nBody text\n\nMore"


def test_html_pre_keeps_its_lines() -> None:
    page = b"<p>Run:</p><pre>make build\nmake   test</pre>"
    assert extract_text("a.html", page) == "Run:\n\nmake build\nmake test"


def test_html_without_tags_or_title_is_its_text() -> None:
    assert extract_text("a.html", b"just &quot;text&quot;") == 'just "text"'


# -- extraction: Markdown --------------------------------------------------------------------------

NOTE = b"""# Shipping policy #

Orders ship *fast*, **free** over $75, and ***always*** insured; see _terms_ or __faq__.
Read [the carrier page](https://example.com/a_(b)) and ![a truck](truck.png "Truck").
Contact <https://help.example.com> about snake_case_ids and `code *stays*`.
Prices like 2 * 3 * 4 and a \\*literal\\* star stay.

<!-- internal: do not publish
     until Q3 -->

Returns
=======

> Quoted advice
> on two lines

- item one
- [x] done item
1. numbered

| Plan | Fee |
|------|----:|
| Pro  | $10 |

```python
def fee(plan):
    return plan.base*plan.seats*2
```

~~old text~~ <span class="x">kept</span> and [a ref][1].

[1]: https://example.com/ref
---
"""


def test_markdown_keeps_the_text_without_the_syntax() -> None:
    assert extract_text("shipping.md", NOTE) == (
        "Shipping policy\n\n"
        "Orders ship fast, free over $75, and always insured; see terms or faq.\n"
        "Read the carrier page and a truck.\n"
        "Contact https://help.example.com about snake_case_ids and code *stays*.\n"
        "Prices like 2 * 3 * 4 and a *literal* star stay.\n\n"
        "Returns\n\n"
        "Quoted advice\non two lines\n\n"
        "item one\ndone item\nnumbered\n\n"
        "Plan Fee\nPro $10\n\n"
        "def fee(plan):\nreturn plan.base*plan.seats*2\n\n"
        "old text kept and a ref."
    )


def test_markdown_drops_comments_link_targets_and_image_sources() -> None:
    text = extract_text("a.markdown", NOTE)
    for noise in ("internal", "Q3", "example.com/a_", "truck.png", "example.com/ref", "# ", "|"):
        assert noise not in text


def test_an_unclosed_code_fence_keeps_the_code() -> None:
    assert extract_text("a.md", b"Intro\n\n~~~\nx = [1](2)\n") == "Intro\n\nx = [1](2)"


# -- words -----------------------------------------------------------------------------------------


def test_tokenize_gives_lowercase_words_without_punctuation() -> None:
    text = "Hello, World! -- __ snake_case naïve ÉTÉ 3.5 don't 東京 — e-mail"
    assert tokenize(text) == [
        "hello",
        "world",
        "snake_case",
        "naïve",
        "été",
        "3",
        "5",
        "don",
        "t",
        "東京",
        "e",
        "mail",
    ]


@pytest.mark.parametrize("text", ["", "   ", "!!! --- ... ___", "\n\n"])
def test_tokenize_of_no_words_is_empty(text: str) -> None:
    assert tokenize(text) == []


def test_bm25_terms_drop_stop_words_and_make_plurals_singular() -> None:
    assert bm25_terms("The refunds for these policies and boxes: his glasses, status") == [
        "refund",
        "policy",
        "boxe",
        "his",
        "glasse",  # the S-stemmer's known slip; the same word always gives the same term
        "status",
    ]
    assert "the" in STOPWORDS and "refund" not in STOPWORDS


# -- chunking --------------------------------------------------------------------------------------


def _words(n: int, prefix: str = "w") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_a_short_text_is_one_chunk_as_it_is() -> None:
    text = "  A short note.\n\nWith two paragraphs.  "
    assert chunk_text(text) == ["A short note.\n\nWith two paragraphs."]


@pytest.mark.parametrize("text", ["", "   \n\n  "])
def test_a_blank_text_has_no_chunks(text: str) -> None:
    assert chunk_text(text) == []


def test_a_text_of_punctuation_only_is_one_chunk() -> None:
    assert chunk_text("--- *** ---") == ["--- *** ---"]


def test_exactly_max_tokens_words_is_one_chunk() -> None:
    text = " ".join(_words(32))
    assert chunk_text(text, max_tokens=32, overlap_tokens=8) == [text]


def test_chunks_stay_within_max_tokens_and_overlap_by_overlap_tokens() -> None:
    text = " ".join(_words(500))  # no sentence or paragraph: cut by words
    chunks = chunk_text(text, max_tokens=100, overlap_tokens=20)
    assert [len(tokenize(c)) for c in chunks] == [100, 100, 100, 100, 100, 100]
    for before, after in itertools.pairwise(chunks):
        assert tokenize(after)[:20] == tokenize(before)[-20:]
    assert tokenize(chunks[-1])[-1] == "w499"


def test_the_overlap_repeats_the_text_itself() -> None:
    sentences = [f"Sentence {i} says {' '.join(_words(8, f's{i}x'))}." for i in range(30)]
    chunks = chunk_text(" ".join(sentences), max_tokens=60, overlap_tokens=15)
    assert len(chunks) > 3
    for before, after in itertools.pairwise(chunks):
        overlap = max(n for n in range(len(after)) if before.endswith(after[:n]))
        assert len(tokenize(after[:overlap])) >= 14  # the tail of one is the head of the next


def test_no_overlap_when_asked_for_none() -> None:
    text = " ".join(_words(300))
    chunks = chunk_text(text, max_tokens=100, overlap_tokens=0)
    assert [tokenize(c) for c in chunks] == [_words(300)[i : i + 100] for i in (0, 100, 200)]


def test_a_chunk_ends_at_a_paragraph_break_rather_than_mid_sentence() -> None:
    first = " ".join(_words(70, "a")) + "."
    second = " ".join(_words(70, "b")) + "."
    chunks = chunk_text(f"{first}\n\n{second}", max_tokens=100, overlap_tokens=10)
    assert chunks[0] == first
    assert chunks[1].endswith(second)
    assert tokenize(chunks[1])[:10] == _words(70, "a")[-10:]


def test_a_chunk_prefers_a_paragraph_break_over_a_later_sentence_end() -> None:
    text = (
        " ".join(_words(60, "a"))
        + ".\n\n"
        + " ".join(_words(20, "b"))
        + ". "
        + " ".join(_words(60, "c"))
        + "."
    )
    chunks = chunk_text(text, max_tokens=100, overlap_tokens=10)
    assert tokenize(chunks[0]) == _words(60, "a")


def test_a_chunk_ends_at_a_sentence_end_when_there_is_no_paragraph_break() -> None:
    sentences = [" ".join(_words(30, f"s{i}x")).capitalize() + "." for i in range(6)]
    chunks = chunk_text(" ".join(sentences), max_tokens=100, overlap_tokens=10)
    assert chunks[0] == " ".join(sentences[:3])
    assert all(c.endswith(".") for c in chunks)


def test_without_sentences_a_chunk_ends_at_a_line_break() -> None:
    lines = [" ".join(_words(9, f"l{i}x")) for i in range(20)]  # a list without punctuation
    chunks = chunk_text("\n".join(lines), max_tokens=40, overlap_tokens=5)
    assert chunks[0] == "\n".join(lines[:4])
    assert all(c.split("\n")[-1] in lines for c in chunks)


def test_a_sentence_longer_than_a_chunk_is_split_by_words() -> None:
    long_sentence = " ".join(_words(250)) + "."
    chunks = chunk_text(f"Intro.\n\n{long_sentence}", max_tokens=100, overlap_tokens=10)
    assert all(len(tokenize(c)) <= 100 for c in chunks)
    assert len(chunks) == 3


def test_brackets_and_quotes_stay_with_their_words_at_a_cut() -> None:
    text = " ".join(f'("q{i}")' for i in range(40))
    chunks = chunk_text(text, max_tokens=16, overlap_tokens=4)
    assert all(c.startswith('("') and c.endswith('")') for c in chunks)


@pytest.mark.parametrize(
    ("max_tokens", "overlap_tokens", "field"),
    [
        (15, 0, "max_tokens"),
        (0, 0, "max_tokens"),
        (100, 100, "overlap_tokens"),
        (100, -1, "overlap_tokens"),
    ],
)
def test_chunk_sizes_are_checked(max_tokens: int, overlap_tokens: int, field: str) -> None:
    with pytest.raises(UsageError) as caught:
        chunk_text("text", max_tokens=max_tokens, overlap_tokens=overlap_tokens)
    assert caught.value.fields == {"field": field}
    assert field in caught.value.message


def _random_text(rng: random.Random) -> str:
    vocabulary = ["invoice", "vendor", "refund", "e-mail", "(note)", "3.5", "naïve", "x_y", "—"]
    paragraphs = []
    for _ in range(rng.randint(1, 12)):
        sentences = []
        for _ in range(rng.randint(1, 8)):
            length = rng.choice([1, 3, 10, 25, 60, 150])
            words = [rng.choice(vocabulary) + str(rng.randint(0, 9)) for _ in range(length)]
            sentences.append(" ".join(words) + rng.choice([".", "!", "?", ";", ""]))
        paragraphs.append(rng.choice([" ", "\n"]).join(sentences))
    return rng.choice(["\n\n", "\n \n\n", " "]).join(paragraphs)


@pytest.mark.parametrize("seed", range(40))
def test_every_word_is_in_some_chunk_in_order(seed: int) -> None:
    rng = random.Random(seed)
    text = _random_text(rng)
    max_tokens = rng.choice([16, 17, 50, 64, 200])
    overlap = rng.randint(0, max_tokens - 1)
    chunks = chunk_text(text, max_tokens=max_tokens, overlap_tokens=overlap)
    words = tokenize(text)
    assert all(c and c == c.strip() for c in chunks)
    assert all(len(tokenize(c)) <= max_tokens for c in chunks)
    # The chunks lie in the text in order, each starting no earlier than the one before, and
    # together with the overlaps removed they give back every word, in order.
    starts = [m.start() for m in re.finditer(r"\w*[^\W_]\w*", text)]  # where words start
    assert len(starts) == len(words)
    position, rebuilt = 0, list[str]()
    for chunk in chunks:
        start = text.find(chunk, position)
        assert start >= position
        rebuilt = rebuilt[: bisect.bisect_left(starts, start)] + tokenize(chunk)
        position = start
    assert rebuilt == words


# -- BM25 ------------------------------------------------------------------------------------------

DOCS = [
    "Refunds are issued to the original payment method within five business days.",
    "Standard shipping takes three to five business days; express takes one.",
    "Every vendor invoice must quote a purchase order number.",
    "",
    "Invoices above 25,000 dollars need approval from the CFO before payment.",
    "Reset your VPN profile and sign in again if the VPN client fails.",
]


def test_bm25_ranks_the_matching_text_first() -> None:
    index = Bm25Index(DOCS)
    assert index.search("vpn fails", 3)[0][0] == 5
    assert index.search("refund", 3)[0][0] == 0  # "Refunds" is found by its singular
    assert [i for i, _ in index.search("invoice approval CFO", 3)][:2] == [4, 2]


def test_bm25_gives_only_texts_that_share_a_term_best_first() -> None:
    hits = Bm25Index(DOCS).search("business days", 10, normalized=False)
    assert {i for i, _ in hits} == {0, 1}
    assert all(score > 0 for _, score in hits)
    assert [score for _, score in hits] == sorted((score for _, score in hits), reverse=True)


def test_bm25_stops_at_k() -> None:
    assert len(Bm25Index(DOCS).search("business days invoice vpn", 2)) == 2


def test_bm25_ties_are_ordered_by_position() -> None:
    hits = Bm25Index(["same words", "other", "same words"]).search("words", 5)
    assert [i for i, _ in hits] == [0, 2]
    assert hits[0][1] == hits[1][1]


def test_bm25_normalized_scores_lie_in_zero_to_one() -> None:
    index = Bm25Index(DOCS)
    for query in ("invoice approval CFO", "business days vpn", "refund", "purchase order vendor"):
        hits = index.search(query, 10)
        assert hits and all(0.0 < score <= 1.0 for _, score in hits)
        raw = index.search(query, 10, normalized=False)
        assert [i for i, _ in hits] == [i for i, _ in raw]  # the same order,
        ratios = {round(r / n, 5) for (_, n), (_, r) in zip(hits, raw, strict=True)}
        assert len(ratios) == 1  # scaled by one factor for the query


def test_bm25_normalized_is_one_for_the_best_match_of_every_term() -> None:
    index = Bm25Index(DOCS)
    assert index.search("purchase order number", 1)[0] == (2, 1.0)
    # A text that matches one of two terms scores that term's share, less than 1.
    partial = dict(index.search("vpn invoice", 10))
    assert 0.0 < partial[5] < 1.0 and 0.0 < partial[2] < 1.0


@pytest.mark.parametrize("query", ["", "the of and", "unknown words only", "!!!"])
def test_bm25_query_without_known_terms_finds_nothing(query: str) -> None:
    assert Bm25Index(DOCS).search(query, 5) == []


@pytest.mark.parametrize("texts", [[], [""], ["", "!!!", "the of"]])
def test_bm25_empty_corpus_finds_nothing(texts: list[str]) -> None:
    index = Bm25Index(texts)
    assert len(index) == len(texts)
    assert index.search("anything at all", 5) == []


def test_bm25_k_must_be_positive() -> None:
    with pytest.raises(UsageError) as caught:
        Bm25Index(DOCS).search("vpn", 0)
    assert caught.value.fields == {"field": "k"}
