"""The client is strictly black-box: importing it pulls in no torch, open_clip or server code.

pyarrow (the ``data`` extra) is only needed to read the groceries dataset, so a plain client
install must import without it too.
"""

from __future__ import annotations

import subprocess
import sys


def test_client_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "import sharpzo.client, sharpzo.client.api, sharpzo.client.optim, sharpzo.client.cli, sharpzo.client.tune\n"
        "import sharpzo.data.catalog, sharpzo.client.plot\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'torchvision', 'pyarrow')"
        " or m.startswith('sharpzo.server'))\n"
        "print(bad)\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
