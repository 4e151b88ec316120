"""``requirements.py PYPROJECT [EXTRA...]``: the project's dependencies, and those of the named
extras, one a line, from pyproject.toml.

The images install these before copying the source, and scripts/compose_smoke.sh downloads them
into its wheelhouse. Needs Python 3.11+ (tomllib).
"""

import sys
import tomllib

with open(sys.argv[1], "rb") as handle:
    pyproject = tomllib.load(handle)
wanted = list(pyproject["project"]["dependencies"])
for extra in sys.argv[2:]:
    wanted += pyproject["project"]["optional-dependencies"][extra]
# The project itself is installed with --no-build-isolation, so its build backend goes in too.
wanted += pyproject["build-system"]["requires"]
print("\n".join(wanted))
