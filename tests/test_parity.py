"""Parity with the reference SAN: the golden-data check script must pass on the shipped golden folder.

The golden folder is test data (tests/fixtures/san_tiny); this test fails, never skips, when it is missing.
"""

from safetensors import safe_open

from conversion_scripts import check_san_parity

from conftest import GOLDEN


def test_golden_fixtures_are_present():
    for name in ("config.json", "reference_state_dict.safetensors", "inference_io.safetensors", "training_io.safetensors"):
        assert (GOLDEN / name).is_file(), f"missing golden fixture {name}: copy the golden folder into {GOLDEN}"


def test_check_script_passes_and_compares_every_golden_tensor(capsys):
    assert check_san_parity.main([str(GOLDEN)]) == 0
    printed = capsys.readouterr().out
    rows = {line.split()[1] for line in printed.splitlines() if line.startswith(("ok ", "FAIL"))}
    for file_name in ("inference_io.safetensors", "training_io.safetensors"):
        with safe_open(str(GOLDEN / file_name), "pt") as golden:
            assert set(golden.keys()) <= rows, f"tensors of {file_name} left uncompared"
    assert "FAIL" not in printed
