"""The three layers import, and the engine does not pull in Beam."""
import subprocess
import sys


def test_engine_has_no_beam_dependency():
    code = "import sys, attribution; assert 'apache_beam' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
