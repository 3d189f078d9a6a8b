"""atlas_core: AtlasNet and everything around it, usable alone from a notebook.

Submodules import torch where they need it; importing the package itself is cheap, so that
mesh ingestion and dataset generation run without loading torch.
"""

__version__ = "0.1.0"
