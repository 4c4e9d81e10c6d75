"""A key file as GLib's own parser reads it (DeepStream reads its nvinfer configs with GLib): through Debian's
python3-gi in a Python that has it (the venv's has not); skips the test without one."""
import json
import shutil
import subprocess

import pytest

READ = """
import json, sys
from gi.repository import GLib
keys = GLib.KeyFile()
try:
    keys.load_from_file(sys.argv[1], GLib.KeyFileFlags.NONE)
except GLib.Error as error:
    print(json.dumps({"error": error.message}))
    sys.exit()
print(json.dumps({g: {k: keys.get_value(g, k) for k in keys.get_keys(g)[0]} for g in keys.get_groups()[0]}))
"""


def read_with_glib(path) -> dict:
    """{group: {key: value}} as GLib reads ``path``, or {"error": GLib's message} when it refuses the file."""
    for python in ("/usr/bin/python3", shutil.which("python3")):
        if python and subprocess.run([python, "-c", "import gi"], capture_output=True).returncode == 0:
            done = subprocess.run([python, "-c", READ, str(path)], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)
    pytest.skip("no Python with python3-gi (GLib's key-file parser): apt-get install python3-gi")
