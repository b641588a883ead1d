"""Every bad input in the catalogue (tests/bad_inputs.py, docs/errors.md): exit status 2, one
line naming the value, no traceback, nothing in the scratch folder changed."""
import pathlib

import pytest

from tests.bad_inputs import CASES, run_case

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "errors.md"


def snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".lock" not in p.name}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_line_and_status_2(case, tmp_path):
    if case.setup:
        case.setup(tmp_path)
    before = snapshot(tmp_path)
    code, err = run_case(case.__class__(**{**case.__dict__, "setup": None}), tmp_path)
    assert code == 2, err
    assert err.startswith("jaxlab: error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert case.expect in err, err
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, "a file it found changed"
    assert not any(k.startswith("w/") for k in after.keys() - before.keys()), \
        f"a failed start wrote into the new workdir: {sorted(after.keys() - before.keys())}"


def test_catalogue_is_documented():
    text = DOC.read_text()
    assert len(CASES) >= 25
    for i, case in enumerate(CASES, 1):
        assert f"| {i} | {case.name} |" in text, f"docs/errors.md lacks row {i}: {case.name}"
