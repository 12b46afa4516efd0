"""Entry points: `python -m experiments.<name>`; one README per experiment."""
