"""The built wheel installs our four packages and their entry points (not PyPI's `export`/`runtime`)."""
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_our_packages_in_a_clean_venv(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True)
    wheel = next((tmp_path / "dist").glob("offseg_deploy-*.whl"))
    venv.create(tmp_path / "env", with_pip=True)
    python = tmp_path / "env" / "bin" / "python"
    # Reuse the running environment's torch, onnx... (a venv's system_site_packages would reach the *base*
    # interpreter instead, which has none of them when the tests run inside a venv). A path line in a .pth file
    # does not run that folder's own .pth files, so our editable install there stays invisible.
    inner_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip()
    Path(inner_site, "outer-environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    code = ("import export, runtime, calibration, offseg, chain, sys; "
            "print('\\n'.join(m.__file__ for m in (export, runtime, calibration, offseg, chain)))")
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    for path in result.stdout.split():
        assert str(tmp_path / "env") in path, path
    info = subprocess.run([tmp_path / "env" / "bin" / "offseg-info", "--input-size", "64", "64"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert info.returncode == 0 and "offseg-t" in info.stdout, info.stderr
