"""Where the bundled data lives (the repository's ``data/`` folder, next to the package)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT = REPO_ROOT / "data"
SAMPLE_ROOT = DATA_ROOT / "sample"
STYLES_CSV = DATA_ROOT / "styles.csv"
