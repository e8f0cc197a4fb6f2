"""The experiment configs: `default.py` (every hyperparameter and the config tokens) and one
module per paper setting (baseline, segrpn, case1, case2, case3).

They live in the package so that the installed tools (`python -m segrpn_jax.paper.reproduce`)
find them from any folder; the repository's `configs/*.py` are thin files over these.
"""
