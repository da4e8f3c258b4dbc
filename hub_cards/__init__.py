"""Model card templates, shipped inside the package as ``mlrsnet_hf.hub_cards``."""
