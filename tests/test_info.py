"""python -m scsa_kernels.info reports versions and every backend's status."""
import subprocess
import sys

from scsa_kernels import BACKENDS


def test_info_reports_versions_and_backends():
    out = subprocess.run([sys.executable, "-m", "scsa_kernels.info"], capture_output=True, text=True, check=True).stdout
    assert "torch" in out and "triton" in out and "python" in out
    for name in BACKENDS:
        assert f"  {name} " in out
    assert "reference  available" in out
