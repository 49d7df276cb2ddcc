"""Pruning: channel scorers, how much to prune (chosen on clean data), physical removal with torch-pruning."""
