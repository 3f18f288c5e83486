"""Pure rules of launches: the roll-up, data rows and their problems, environment secrets as
templates see them, and environment validation."""

from __future__ import annotations

import pytest

from launches.rows import CSV, JSON_LINES, RowProblem, check_rows, file_kind, read_rows
from launches.selectors import record_outcome
from launches.states import rollup_status
from runs.redaction import redact
from runs.secrets import RunSecrets
from targets.environments import RunEnvironment, environment_problems

SECRET = "sk-env-secret-1234"


@pytest.mark.parametrize(
    ("outcomes", "status"),
    [
        ([], "RUNNING"),
        (["PASSED"], "PASSED"),
        (["PASSED", "PASSED"], "PASSED"),
        (["PASSED", "CANCELLED"], "CANCELLED"),
        (["CANCELLED", "FAILED"], "FAILED"),
        (["PASSED", "FAILED", "ERROR"], "ERROR"),
        (["ERROR", "PASSED"], "ERROR"),
        (["PASSED", "QUEUED"], "RUNNING"),
        (["FAILED", "IN_PROGRESS"], "RUNNING"),
    ],
)
def test_the_roll_up_is_the_worst_settled_outcome_or_running(outcomes, status):
    assert rollup_status(outcomes) == status


@pytest.mark.parametrize(
    ("record", "run", "outcome"),
    [
        ("DONE", "PASSED", "PASSED"),
        ("ERROR", "FAILED", "FAILED"),
        ("ERROR", "ERROR", "ERROR"),
        ("ERROR", None, "ERROR"),
        ("CANCELLED", "PASSED", "CANCELLED"),
        ("RUNNING", "IN_PROGRESS", "IN_PROGRESS"),
        ("SCHEDULED", "FAILED", "QUEUED"),  # waiting to run again: not settled
    ],
)
def test_a_queue_records_outcome_speaks_the_runs_words(record, run, outcome):
    assert record_outcome(record, run) == outcome


@pytest.mark.parametrize(
    ("rows", "problems"),
    [
        ([{}], []),
        (
            [{"a": 1}, 2, {"b": []}, None],
            [
                "row 2: must be a JSON object, not a number",
                "row 4: must be a JSON object, not null",
            ],
        ),
        ([{}, "x"], ["row 2: must be a JSON object, not a text"]),
        ([{"k": "\ud800"}], ["row 1: text must not hold NUL or unpaired surrogates"]),
        ([{"k": "x" * 100}], ["row 1: is larger than 50 bytes as JSON"]),
        ([], ["holds no rows"]),
        ({"a": 1}, ["must be a list of JSON objects"]),
        ([{}] * 11, ["holds 11 rows; at most 10 may start at once"]),
    ],
)
def test_rows_are_checked_each_problem_naming_its_row(rows, problems):
    found = check_rows(rows, max_bytes=50, max_rows=10)
    assert [str(problem) for problem in found] == problems


def test_csv_rows_are_objects_keyed_by_the_header_and_json_lines_keep_their_types():
    assert read_rows(b'\xef\xbb\xbfa,b\r\n1,2\r\n\r\n3,"x,y"\r\n', CSV) == [
        {"a": "1", "b": "2"},
        {"a": "3", "b": "x,y"},
    ]
    assert read_rows(b'{"a": 1}\n\n  \n[1]\n', JSON_LINES) == [{"a": 1}, [1]]
    with pytest.raises(RowProblem, match="row 2: has 3 fields, the header 2"):
        read_rows(b"a,b\n1,2\n1,2,3\n", CSV)
    with pytest.raises(RowProblem, match="row 1: not JSON"):
        read_rows(b"{nope\n", JSON_LINES)


@pytest.mark.parametrize(
    ("name", "content_type", "kind"),
    [
        ("rows.CSV", "", CSV),
        ("rows.jsonl", "", JSON_LINES),
        ("rows.ndjson", "application/octet-stream", JSON_LINES),
        ("blob", "text/csv; charset=utf-8", CSV),
        ("blob", "application/x-ndjson", JSON_LINES),
    ],
)
def test_a_data_files_kind_comes_from_its_name_then_its_type(name, content_type, kind):
    assert file_kind(name, content_type) == kind


def test_a_data_file_of_unknown_kind_is_refused():
    with pytest.raises(RowProblem, match=r"\.csv, \.jsonl or \.ndjson"):
        file_kind("rows.xlsx", "application/vnd.ms-excel")


def env_secrets() -> RunSecrets:
    return RunSecrets({}, env_secrets={"api_key": SECRET})


SCOPE = {"env": {"api_key": SECRET, "region": "eu-1"}}


@pytest.mark.parametrize(
    "template",
    [
        "{{ env.api_key }}",
        "{{ env['api_key'] }}",
        "{{ env.api_key | reverse }}",
        "{{ env.api_key | upper }}",
        "Bearer {{ env.api_key[2:] }}",
        "{{ env[name] }}",  # a computed key may read any key
        "{{ env | tojson }}",  # the whole mapping
    ],
)
def test_whatever_a_template_makes_from_an_env_secret_is_redacted(template):
    secrets = env_secrets()
    rendered, _ = secrets.render({"h": template}, {**SCOPE, "name": "api_key"})
    stored = str(redact(rendered, secrets.values))
    assert "[REDACTED]" in stored
    for fragment in ("env-secret", "env-secret"[::-1], "ENV-SECRET", "-secret-1234"):
        assert fragment not in stored


def test_public_env_variables_beside_a_secret_stay_readable():
    secrets = env_secrets()
    value = {"url": "https://{{ env.region }}.example", "key": "{{ env.api_key }}"}
    rendered, _ = secrets.render(value, SCOPE)
    assert redact(rendered, secrets.values) == {
        "url": "https://eu-1.example",
        "key": "[REDACTED]",
    }


def test_a_capture_holding_an_env_secret_is_tainted():
    secrets = env_secrets()
    secrets.captured({"echoed": SECRET})
    rendered, _ = secrets.render("{{ echoed | lower }}", {"echoed": SECRET})
    assert redact(rendered, secrets.values) == "[REDACTED]"


def test_an_environment_limits_the_credentials_and_no_environment_keeps_them_all():
    configured = {"A": "1", "B": "2"}
    assert RunEnvironment().credentials(configured) == configured
    assert RunEnvironment(credential_names=frozenset({"B"})).credentials(configured) == {"B": "2"}
    assert RunEnvironment(credential_names=frozenset()).credentials(configured) == {}


def test_environment_problems_name_the_field(settings):
    settings.ORCHESTRA_CREDENTIALS = {"TOKEN": "t"}
    assert (
        environment_problems(variables={"a": 1}, secret_variables={"b": "x"}, credentials=["TOKEN"])
        == {}
    )
    problems = environment_problems(
        variables={"a": 1, "bad-name": 2},
        secret_variables={"a": "x", "empty": "", "number": 5},
        credentials=["TOKEN", "MISSING"],
    )
    assert problems == {
        "variables": ["'bad-name' is not a variable name (letters, digits, _)"],
        "secret_variables": [
            "'empty' must be a non-empty text",
            "'number' must be a non-empty text",
            "'a' is also a public variable",
        ],
        "credentials": ["'MISSING' is not configured (ORCHESTRA_CREDENTIAL_MISSING)"],
    }
    assert environment_problems(variables=[], secret_variables="x", credentials="T") == {
        "variables": ["must be a JSON object"],
        "secret_variables": ["must be a JSON object"],
        "credentials": ["must be a list of credential names"],
    }
