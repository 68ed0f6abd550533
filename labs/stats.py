"""
The statistics of a lab, on plain lists of numbers (no files, no torch), used by labs/labs.py:

- summary(values): mean, std, min, max over seeds
- paired(arm, baseline): the mean difference over seeds both ran, with a 95% t-interval, and a verdict
- mean_curve / first_crossing: a learning curve averaged over seeds, and where it first reaches a target

Why paired: two arms run with the same seed start from the same weights (where their parameters
coincide) and see the same batches in the same order, so much of the seed-to-seed spread is shared.
The differences arm - baseline, one per seed, vary less than the scores themselves, and a
t-interval on them (the paired t-test's interval) uses that.
"""
import math
import statistics

# 97.5% quantiles of Student's t, by degrees of freedom (n - 1 for n seeds): the half-width of a
# two-sided 95% interval is T975[df] * std / sqrt(n). Values from any t table, to 3 decimals.
# Beyond 30 degrees of freedom we keep 2.042, slightly wider than the true quantile (1.96 at infinity).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101,
        19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052,
        28: 2.048, 29: 2.045, 30: 2.042}


def summary(values):
    """Mean, sample std (n - 1; 0 for one value), min, max and the values themselves."""
    v = list(values)
    return {'mean': statistics.mean(v), 'std': statistics.stdev(v) if len(v) > 1 else 0.0,
            'min': min(v), 'max': max(v), 'values': v}


def t_interval(diffs):
    """(mean, low, high): the 95% t-interval for the mean of the differences; needs two or more."""
    n = len(diffs)
    mean = statistics.mean(diffs)
    half = T975[min(n - 1, 30)] * statistics.stdev(diffs) / math.sqrt(n)
    return mean, mean - half, mean + half


def verdict(low, high):
    """In words, for a difference arm - baseline where higher is better."""
    if low > 0:
        return 'helps'
    if high < 0:
        return 'hurts'
    return 'no evidence'


def paired(arm, baseline):
    """arm, baseline: {seed: score}. The differences on the seeds both have, their mean, 95% interval
    and verdict; with fewer than two shared seeds there is no interval and the verdict says so."""
    seeds = sorted(set(arm) & set(baseline))
    diffs = [arm[s] - baseline[s] for s in seeds]
    out = {'seeds': seeds, 'diffs': diffs, 'wins': sum(d > 0 for d in diffs)}
    if len(diffs) < 2:
        return {**out, 'mean': diffs[0] if diffs else None, 'low': None, 'high': None,
                'verdict': 'too few seeds'}
    mean, low, high = t_interval(diffs)
    return {**out, 'mean': mean, 'low': low, 'high': high, 'verdict': verdict(low, high)}


def mean_curve(curves):
    """curves: one list of (x, y) per seed, at the same evaluations (same iterations, so the same x for
    token counts; wall times differ a little per seed and are averaged). Returns x, mean, min and max
    of y at the evaluations every seed reached."""
    n = min(len(c) for c in curves)
    columns = [[c[i] for c in curves] for i in range(n)]
    return {'x': [statistics.mean(x for x, _ in col) for col in columns],
            'mean': [statistics.mean(y for _, y in col) for col in columns],
            'min': [min(y for _, y in col) for col in columns],
            'max': [max(y for _, y in col) for col in columns]}


def first_crossing(xs, ys, target):
    """The first x where the curve reaches target, linearly interpolated between the two evaluations
    around the crossing; None if it never does. (Between evaluations we do not know the curve, so
    the straight line is a guess, as good as the evaluations are dense.)"""
    for i, (x, y) in enumerate(zip(xs, ys)):
        if y >= target:
            if i == 0:
                return x
            x0, y0 = xs[i - 1], ys[i - 1]
            return x0 + (target - y0) * (x - x0) / (y - y0)
    return None
