"""Runs aiostratum-proxy 1.1 (a Python package) on a current Python and PyYAML.

aiostratum-proxy 1.1 pins PyYAML==3.12, which no longer builds on Python 3.11, and calls
`yaml.load(text)` without a Loader, which PyYAML 6 refuses. scripts/interop.sh therefore
installs it with --no-deps next to a current PyYAML, and this launcher passes SafeLoader.
Nothing else of the package is changed. Arguments are aiostratum-proxy's own (-c CONFIG, -l).
"""

import functools
import sys

import yaml

yaml.load = functools.partial(yaml.load, Loader=yaml.SafeLoader)

from aiostratum_proxy.application import main  # noqa: E402

sys.exit(main())
