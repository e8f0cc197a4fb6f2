"""The experiment configs: `default.py` (every hyperparameter) and one file per paper setting.

Installed with the package (`pip install -e .`), so a setting's `from configs import default`
works from any working directory and from `--config=path/to/configs/case1.py`.
"""
