"""What a client and every worker machine share: settings, registry, artifact store, queue, CLI.

Nothing here imports torch at module import time: `rodin status` must start fast on a machine
that only submits work.
"""

__version__ = "0.1.0"
