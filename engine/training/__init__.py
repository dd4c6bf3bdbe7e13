"""Training the demo model (tokenizer, VAE, UNet, export) and the attribute probe on the demo
world (``engine.world``); ``python -m engine.training`` runs it end to end."""
