"""What every benchmark script shares: the bundled sample's splits, and publishing a result table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPLITS = REPO / "experiments" / "splits"


def ensure_splits() -> None:
    """Make the seed's splits of the bundled sample unless they exist."""
    if not (SPLITS / "test.csv").is_file():
        subprocess.run([sys.executable, "-m", "tailor", "splits", "data/styles.csv", str(SPLITS),
                        "--images", "data/sample/images"], cwd=REPO, check=True, capture_output=True)


def publish(name: str, text: str) -> None:
    """Print ``text`` and keep it as ``bench/results/<name>.md``."""
    print(text)
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text)


def markdown(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of ``rows``' ``columns``: rates to four decimals, other numbers to one."""
    def cell(v):
        if v is None:
            return "–"
        return f"{v:.4f}" if isinstance(v, float) and v <= 1.0 else (f"{v:.1f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
