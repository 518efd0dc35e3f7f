"""The test suite (CONTRIBUTING.md).

It caches bytecode even where the shell asks Python not to (PYTHONDONTWRITEBYTECODE): its six workers and the
bot processes it starts would otherwise compile every module again, about 12 s of CPU a run on two cores."""

import os
import sys

sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
