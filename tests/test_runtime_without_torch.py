"""The runtime ships to devices without torch: it must import and work with torch blocked."""
import subprocess
import sys
import textwrap


def test_runtime_imports_and_runs_with_torch_blocked():
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        import runtime, runtime.preprocess, runtime.palettes, runtime.postprocess, runtime.sinks, runtime.sources
        import runtime.console
        x = runtime.preprocess.normalize_bgr(np.zeros((64, 32, 3), np.uint8))
        assert x.shape == (1, 3, 64, 32) and x.dtype == np.float32
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
