"""`stalwart memory add|search|list|forget|erase` in subprocesses, with the real local embedder:
files become chunks, a search finds them by meaning and only in the caller's tenant, bad input is
one line on stderr and stores nothing, and a tenant's erase leaves zero rows of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("local_embedder")  # skips, or fails with CI=true


def stalwart(db: str, *args: str, embedder: str = "local") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALWART_")}
    env["STALWART_EMBEDDER"] = embedder
    return subprocess.run(
        [sys.executable, "-m", "stalwart.cli.main", "--database-url", db, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_add_search_list_forget_erase(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    refunds = tmp_path / "refunds.md"
    refunds.write_text(
        "# Refunds\n\nCustomers get their money back within 14 days after we receive the "
        "returned item. Shipping costs are not refunded."
    )
    laptop = tmp_path / "laptop.html"
    laptop.write_text(
        "<html><head><title>Lost laptop</title><script>evil()</script></head><body>"
        "<p>If your company laptop is lost or stolen, call the IT service desk at once so "
        "that it can be locked remotely.</p></body></html>"
    )
    added = json.loads(
        ok(
            stalwart(
                db,
                "--tenant",
                "acme",
                "--json",
                "memory",
                "add",
                "kb",
                str(refunds),
                str(laptop),
                "--retention-days",
                "30",
            )
        )
    )
    assert [(d["source"], d["chunks"]) for d in added] == [("refunds.md", 1), ("laptop.html", 1)]
    ok(stalwart(db, "--tenant", "globex", "memory", "add", "kb", str(refunds)))

    found = json.loads(
        ok(
            stalwart(
                db,
                "--tenant",
                "acme",
                "--json",
                "memory",
                "search",
                "I left my notebook computer on the train",
                "--min-similarity",
                "0.3",
            )
        )
    )
    assert found["method"] == "vector" and found["notes"] == []
    assert found["hits"][0]["meta"]["source"] == "laptop.html"
    assert "evil" not in found["hits"][0]["text"]

    listed = json.loads(ok(stalwart(db, "--tenant", "acme", "--json", "memory", "list")))
    assert [(c["name"], c["documents"], c["chunks"], c["dimension"]) for c in listed] == [
        ("kb", 2, 2, 384)
    ]
    assert "refunds.md" in ok(stalwart(db, "--tenant", "acme", "memory", "list", "kb"))

    removed = json.loads(
        ok(
            stalwart(
                db, "--tenant", "acme", "--json", "memory", "forget", "kb", "--source", "refunds.md"
            )
        )
    )
    assert removed == {"memory_chunks": 1, "memory_documents": 1}

    refused = stalwart(db, "--tenant", "acme", "memory", "erase")
    assert refused.returncode != 0 and "--yes" in refused.stderr
    erased = json.loads(ok(stalwart(db, "--tenant", "acme", "--json", "memory", "erase", "--yes")))
    assert erased["memory_chunks"] == 1 and erased["memory_collections"] == 1
    assert json.loads(ok(stalwart(db, "--tenant", "acme", "--json", "memory", "list"))) == []
    # globex kept everything.
    theirs = json.loads(ok(stalwart(db, "--tenant", "globex", "--json", "memory", "list")))
    assert [c["chunks"] for c in theirs] == [1]


def test_bad_input_is_one_line_and_stores_nothing(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'bad.db'}"
    good = tmp_path / "good.txt"
    good.write_text("something worth remembering")
    pdf = tmp_path / "scan.pdf"
    pdf.write_bytes(b"%PDF-1.4")
    done = stalwart(db, "memory", "add", "kb", str(good), str(pdf))
    assert done.returncode != 0
    assert "scan.pdf" in done.stderr and ".md" in done.stderr
    assert json.loads(ok(stalwart(db, "--json", "memory", "list"))) == []
    done = stalwart(db, "memory", "add", "Not A Name", str(good))
    assert done.returncode != 0 and "collection" in done.stderr
    done = stalwart(db, "memory", "forget", "nothing")
    assert done.returncode != 0 and "nothing" in done.stderr
    # A lexical collection refuses vectors later, naming the fix.
    ok(stalwart(db, "memory", "add", "plain", str(good), embedder="none"))
    done = stalwart(db, "memory", "add", "plain", str(good))
    assert done.returncode != 0 and "forget the collection" in done.stderr
    searched = stalwart(db, "memory", "search", "remembering", embedder="none")
    assert "BM25" in searched.stderr and "good.txt" in searched.stdout
