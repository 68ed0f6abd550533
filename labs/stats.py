"""
The statistics of a lab, on plain lists of numbers (no files, no torch), used by labs/labs.py:

- summary(values): mean, std, min, max over seeds
- paired(arm, baseline): the mean difference over seeds both ran, with a 95% t-interval, and a
  verdict
- mean_curve / first_crossing: a learning curve averaged over seeds, and where it first reaches a
  target

Why paired: two arms run with the same seed start from the same weights (where their parameters
coincide) and see the same batches in the same order, so much of the seed-to-seed spread is shared.
The differences arm - baseline, one per seed, vary less than the scores themselves, and a
t-interval on them (the paired t-test's interval) uses that.
"""
import math
import statistics

def t_quantile(p, df):
    """The p-quantile of Student's t with df degrees of freedom (p > 0.5), exact to far more than
    the 4 decimals a table gives, for any df: found by bisection on the t distribution's CDF."""
    low, high = 0.0, 1e6
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


def t_cdf(t, df):
    """P(T <= t) for t >= 0: 1 - I_x(df/2, 1/2) / 2 with x = df / (df + t^2), where I is the
    regularized incomplete beta function."""
    return 1 - 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t))


def incomplete_beta(a, b, x):
    """I_x(a, b), by its continued fraction (evaluated with Lentz's method), which converges fast
    for x < (a + 1) / (a + b + 2); above that, by the symmetry I_x(a, b) = 1 - I_(1-x)(b, a).
    The fraction's terms: d_(2m+1) = -(a+m)(a+b+m)x / ((a+2m)(a+2m+1)),
    d_(2m) = m(b-m)x / ((a+2m-1)(a+2m))."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    if x > (a + 1) / (a + b + 2):
        return 1 - incomplete_beta(b, a, 1 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x)) / a
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(1, 1000):
        m = i // 2
        if i % 2:  # the odd terms of the fraction
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1 / (d * num + 1 if abs(d * num + 1) > tiny else tiny)
        c = num / c + 1 if abs(num / c + 1) > tiny else tiny
        f *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return front / f  # I_x = front / (1 + d_1 / (1 + d_2 / (1 + ...)))


def summary(values):
    """Mean, sample std (n - 1; 0 for one value), min, max and the values themselves."""
    v = list(values)
    return {'mean': statistics.mean(v), 'std': statistics.stdev(v) if len(v) > 1 else 0.0,
            'min': min(v), 'max': max(v), 'values': v}


def t_interval(diffs):
    """(mean, low, high): the 95% t-interval for the mean of the differences; needs two or more."""
    n = len(diffs)
    mean = statistics.mean(diffs)
    half = t_quantile(0.975, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return mean, mean - half, mean + half


def verdict(low, high):
    """In words, for a difference arm - baseline where higher is better."""
    if low > 0:
        return 'helps'
    if high < 0:
        return 'hurts'
    return 'no evidence'


def paired(arm, baseline):
    """arm, baseline: {seed: score}. The differences on the seeds both have, their mean, 95%
    interval and verdict; with fewer than two shared seeds there is no interval and the verdict says
    so."""
    seeds = sorted(set(arm) & set(baseline))
    diffs = [arm[s] - baseline[s] for s in seeds]
    out = {'seeds': seeds, 'diffs': diffs, 'wins': sum(d > 0 for d in diffs)}
    if len(diffs) < 2:
        return {**out, 'mean': diffs[0] if diffs else None, 'low': None, 'high': None,
                'verdict': 'too few seeds'}
    mean, low, high = t_interval(diffs)
    return {**out, 'mean': mean, 'low': low, 'high': high, 'verdict': verdict(low, high)}


def mean_curve(curves):
    """curves: one list of (x, y) per seed, at the same evaluations (same iterations, so the same x
    for token counts; wall times differ a little per seed and are averaged). Returns x, mean, min
    and max of y at the evaluations every seed reached."""
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
