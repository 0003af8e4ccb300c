# Paths for the Python tests: the build tree's package (PYTHONPATH=build/python, set by
# scripts/run_tests.sh) and the kvlab command beside it.
import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED = pathlib.Path(os.environ.get("KVLAB_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT / "examples" / "python"))


@pytest.fixture(scope="session")
def kvlab_bin():
    return pathlib.Path(os.environ.get("KVLAB_BIN_DIR", ROOT / "build" / "bin")) / "kvlab"


@pytest.fixture(scope="session")
def stories():
    import kvlab
    return kvlab.load_model("stories260k")


@pytest.fixture(scope="session")
def tiny_text():
    return SHARED / "data" / "tinystories_valid_subset.txt"
