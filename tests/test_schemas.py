"""The JSON Schemas in schemas/ are the ones the code produces, and payloads validate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from terminal_gw.models import PAYLOAD_MODELS, Fix, Satellite, Sky, make_event, payload_schemas

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


@pytest.mark.parametrize("name", sorted(PAYLOAD_MODELS))
def test_schema_file_matches_code(name: str) -> None:
    path = SCHEMAS / f"{name}.schema.json"
    assert path.exists(), f"run: terminal-gw schema --out schemas  ({path} is missing)"
    assert json.loads(path.read_text()) == payload_schemas()[name], (
        f"{path} is stale: run terminal-gw schema --out schemas"
    )


def test_no_stray_schema_files() -> None:
    names = {p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json")}
    assert names == set(PAYLOAD_MODELS)


def test_schema_cli_prints_one() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "terminal_gw", "schema", "fix"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    schema = json.loads(res.stdout)
    assert "altHAE" in schema["properties"]
    assert schema["properties"]["class"]["const"] == "TPV"


def test_payloads_have_id_v_class_and_leave_out_absent_fields() -> None:
    fix = Fix(time="2020-07-11T22:37:45.000Z", mode=3, lat=38.1, lon=-122.6)
    data = fix.to_json_dict()
    assert data["class"] == "TPV"
    assert data["v"] == 1
    assert len(data["id"]) == 36
    assert "altHAE" not in data  # not sent by the receiver: absent, never zero
    sky = Sky(satellites=[Satellite(PRN=401, gnssid=3, svid=1, used=True)], nSat=1, uSat=1)
    assert sky.to_json_dict()["satellites"][0]["PRN"] == 401
    event = make_event("antenna", "antenna open", now=0.0, state="OPEN")
    assert json.loads(event.to_json())["data"] == {"state": "OPEN"}
