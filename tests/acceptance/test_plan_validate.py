"""`stalwart plan validate` on template files, in a subprocess against the example app: what it
can know without an input (references to fields the output and input models do not have,
unknown step fields) is reported with the step, the reference and the field meant."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

TYPOS = """\
name: invoice_draft
steps:
  - id: fetch
    tool: fetch_invoice
    args:
      invoice_id: ${input.invoce_id}
  - id: extract
    kind: llm
    prompt: "Read this: ${steps.fetch.output.txt}"
    output: InvoiceExtraction
  - id: pay
    tool: pay_invoice
    args:
      invoice_id: ${input.invoice_id}
      amount: ${steps.extract.output.amount}
      vendor: ${steps.extract.output.vendr}
    requires_approval:
      steps.extract.output.amuont: {gt: 1000}
"""


def plan_validate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALWART_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "stalwart.cli.main",
            "--database-url",
            f"sqlite:///{tmp_path / 'unused.db'}",
            "--app",
            "examples.app:app",
            *args,
        ],
        cwd=REPO,
        env={**env, "STALWART_EMBEDDER": "none"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def typos(tmp_path: Path) -> Path:
    file = tmp_path / "draft.yaml"
    file.write_text(TYPOS, encoding="utf-8")
    return file


def test_misspelt_output_and_input_references_are_found_without_an_input(
    tmp_path: Path, typos: Path
) -> None:
    done = plan_validate(tmp_path, "plan", "validate", "--workflow", "invoice", str(typos))

    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"✗ {typos} (invoice_draft): 4 problem(s)"
    assert lines[1:] == [
        "    fetch: reference ${input.invoce_id}: the input (InvoiceInput) has no field "
        "'invoce_id'; did you mean `invoice_id`? (fields: invoice_id)",
        "    extract: reference ${steps.fetch.output.txt}: the output of step fetch (tool "
        "'fetch_invoice' returns InvoiceDocument) has no field 'txt'; did you mean `text`? "
        "(fields: invoice_id, text)",
        "    pay: reference ${steps.extract.output.vendr}: the output of step extract (schema "
        "'InvoiceExtraction') has no field 'vendr'; did you mean `vendor`? (fields: vendor, "
        "amount, currency, due_date, confidence, missing_fields, risk_flags)",
        "    pay: condition on 'steps.extract.output.amuont': the output of step extract (schema "
        "'InvoiceExtraction') has no field 'amuont'; did you mean `amount`? (fields: vendor, "
        "amount, currency, due_date, confidence, missing_fields, risk_flags)",
    ]


def test_the_json_output_carries_the_reference_field_and_suggestion(
    tmp_path: Path, typos: Path
) -> None:
    done = plan_validate(tmp_path, "--json", "plan", "validate", str(typos))

    assert done.returncode == 1, done.stderr
    (result,) = json.loads(done.stdout)
    # Without --workflow the input model of this new file is not known: outputs still are.
    assert [
        (p["step"], p["reference"], p["field"], p["suggestion"]) for p in result["problems"]
    ] == [
        ("extract", "steps.fetch.output.txt", "txt", "text"),
        ("pay", "steps.extract.output.vendr", "vendr", "vendor"),
        ("pay", "steps.extract.output.amuont", "amuont", "amount"),
    ]


def test_with_an_input_a_misspelt_input_reference_is_reported_once(
    tmp_path: Path, typos: Path
) -> None:
    done = plan_validate(
        tmp_path,
        "--json",
        "plan",
        "validate",
        "--workflow",
        "invoice",
        "-i",
        '{"invoice_id": "INV-1"}',
        str(typos),
    )

    (result,) = json.loads(done.stdout)
    about_input = [p for p in result["problems"] if "invoce_id" in p["problem"]]
    assert len(about_input) == 1 and about_input[0]["suggestion"] == "invoice_id"


def test_an_unknown_step_field_names_the_step_and_the_field_meant(tmp_path: Path) -> None:
    file = tmp_path / "timeout.yaml"
    file.write_text(
        "name: t\nsteps:\n  - id: fetch\n    tool: fetch_invoice\n    timeout: 5\n"
        "    args: {invoice_id: x}\n",
        encoding="utf-8",
    )

    done = plan_validate(tmp_path, "plan", "validate", str(file))

    assert done.returncode == 1
    assert "step fetch has no field `timeout`; did you mean `timeout_seconds`?" in done.stderr
    # The step's place in the file is printed as written, not eaten as rich markup.
    assert "steps[fetch].timeout" in done.stderr


def test_the_examples_templates_are_valid(tmp_path: Path) -> None:
    files = sorted(str(f) for f in (REPO / "examples" / "templates").glob("*.yaml"))

    done = plan_validate(tmp_path, "plan", "validate", *files)

    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("✓") == len(files) == 3


AGENT = """\
name: invoice_agent
steps:
  - id: research
    kind: agent
    prompt: "Check invoice ${input.invoice_id} and pay it if it is right."
    tools: [fetch_invoice, validate_invoice, pay_invoice]
    output: InvoiceExtraction
    max_turns: 5
    approve:
      pay_invoice: {args.amuont: {gt: 1000}}
"""


def test_an_agent_step_is_listed_and_its_problems_name_the_field_and_fix(tmp_path: Path) -> None:
    file = tmp_path / "agent.yaml"
    file.write_text(AGENT, encoding="utf-8")

    done = plan_validate(tmp_path, "plan", "validate", "--workflow", "invoice", str(file))

    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        f"✗ {file} (invoice_agent): 1 problem(s)",
        "    research: condition on 'args.amuont': the argument schema of tool 'pay_invoice' "
        "(PaymentArgs) has no field 'amuont'; did you mean `amount`? (fields: invoice_id, "
        "amount, vendor): write args.amount",
        "    research: agent: fetch_invoice, validate_invoice, pay_invoice (max 5 turns, 32 "
        "calls) -> InvoiceExtraction",
    ]
    file.write_text(AGENT.replace("amuont", "amount"), encoding="utf-8")
    done = plan_validate(tmp_path, "--json", "plan", "validate", "--workflow", "invoice", str(file))
    assert done.returncode == 0, done.stdout + done.stderr
    (result,) = json.loads(done.stdout)
    assert result["problems"] == []
    assert result["agents"] == [
        {
            "step": "research",
            "tools": ["fetch_invoice", "validate_invoice", "pay_invoice"],
            "max_turns": 5,
            "max_tool_calls": 32,
            "output": "InvoiceExtraction",
            "approve": ["pay_invoice"],
        }
    ]
