"""ESDH connector: case systems speak MeMo to DP2."""
