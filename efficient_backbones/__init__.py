"""A timm-style zoo of efficient vision backbones (GhostNet family, TinyNet, TNT, ViG, ParameterNet, ...)."""
