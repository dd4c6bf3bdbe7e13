"""Nothing in the engine may reach for the network: the hub's offline switches, set once.

``engine/__init__`` imports this before anything else, so the switches are in place before
any submodule (or anyone else) imports diffusers, transformers or huggingface_hub, which read
them at import time.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
