"""The labs: labs.py runs a grid of train.py runs and compares the arms; stats.py holds the statistics,
report.py writes the tables and plots. The handouts are in README.md next to this file."""
