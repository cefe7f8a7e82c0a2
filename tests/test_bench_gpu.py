"""bench/gpu.py waits for a lent GPU; its --small mode runs here so the script cannot rot in the meantime."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))


@pytest.mark.filterwarnings("ignore")
def test_the_gpu_benchmark_runs_end_to_end_in_its_small_mode(capsys):
    import gpu

    table = gpu.main(["--small", "--device", "cpu"])
    rows = [line for line in table.splitlines() if line.startswith("| ") and "measure" not in line]
    assert table.startswith("device: CPU")
    measures = [row.split("|")[1].strip() for row in rows]
    assert measures == ["transfer run end to end (tailor.fit, default settings)", "feature pass, Lite0",
                        "bare forward, Lite0", "feature pass, Lite0+1+2 ensemble", "bare forward, Lite0+1+2 ensemble",
                        "fine-tuning Lite0 (LP-FT, batch 32)"]
    assert "top-1" in rows[0]
    rates = [row.split("|")[4].strip() for row in rows[1:5]]
    assert all(float(rate) > 0 for rate in rates), rows  # every pass measured something
