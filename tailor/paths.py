"""Where the bundled data lives (the repository's ``data/`` folder, next to the package)."""

from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
#: the shipped gin configs (``configs/`` in a checkout links here): inside the package, so an installed
#: tailor has them too
CONFIGS = PACKAGE_ROOT / "configs"
DATA_ROOT = REPO_ROOT / "data"
SAMPLE_ROOT = DATA_ROOT / "sample"
STYLES_CSV = DATA_ROOT / "styles.csv"
