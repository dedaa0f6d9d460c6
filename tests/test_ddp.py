import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_validate.py")


@pytest.mark.slow
def test_ddp_validation_lwlrap_equals_single_process(tiny_cache, tmp_path):
    """Two gloo processes must score the whole validation set once: same lwlrap as one process."""
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"d{devices}.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parent.parent)}
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), str(tiny_cache), str(devices), str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[devices] = json.loads(out.read_text())
    assert results[2]["val_lwlrap"] == pytest.approx(results[1]["val_lwlrap"], abs=1e-6)
    assert 0.0 < results[1]["val_lwlrap"] <= 1.0
