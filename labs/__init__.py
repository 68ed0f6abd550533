"""The labs: labs.py (the lab table and main) plans a grid of train.py runs, runner.py runs them,
aggregate.py gathers their numbers, stats.py compares the arms, report.py writes the tables and
pictures, shares.py writes a student's share and pools a class. The handouts: README.md here."""
