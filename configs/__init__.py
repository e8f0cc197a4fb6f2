"""ml_collections configs: default.py holds every hyperparameter; one file per paper setting."""
