"""
Labs: a grid of train.py runs (arms x seeds), each arm compared with its lab's baseline two ways.
The handouts (what each lab asks, how long it takes, what we measured) are in labs/README.md.

    python labs/labs.py --lab=methods --jobs=2           # causal, Bitune, BAI, both; op after data
    python labs/labs.py --lab=op_before --jobs=2         # the same, the operation before the data
    python labs/labs.py --lab=bitune_ablations --jobs=2  # Bitune's variants (arXiv 2405.14862)
    python labs/labs.py --lab=mixing --jobs=2            # Bitune's learned vs fixed mixing
    python labs/labs.py --lab=bai_settings --jobs=2      # BAI's pivot layer, lambda (2408.13959)
    python labs/labs.py --lab=bitune_bai --jobs=2        # Bitune + BAI: where the pivots come from
    python labs/labs.py --lab=finetune --jobs=2          # LoRA/DoRA/IA3 on a pretrained base
    python labs/labs.py --lab=methods --quick --jobs=2   # a small grid (QUICK) that checks a lab
                                                         # runs; not the full lab's lessons
    python labs/labs.py --lab=methods --seeds=1,2 --max_iters=100 --n_layer=2

labs.py's options (LAB_DEFAULTS, read by configurator.configure): --lab --seeds --arms --max_iters
--evals --jobs --quick --baseline --target --out_dir --pool --watch --check; any other --key=value
goes to each run. Linux and macOS; on Windows, WSL (labs.py stops its runs with os.killpg).
--check (with a lab's --arms, --seeds, --jobs) times a few steps on this machine and predicts how
long the command will take, and prints the code hash every share of a class must share.

Two views of every lab:
- equal steps: every arm trains max_iters iterations (config/lab_toy.py: 500 at batch 64).
- equal compute: every arm gets the same budget of token-forwards, the costliest arm's at
  max_iters; an arm that reads fewer tokens per step trains proportionally more iterations. An arm
  as costly as the budget's runs once, and that run serves both views.
Token-forwards are counted, not measured (labs/aggregate.py): iterations x batch_size x
gradient_accumulation_steps x mean (prompt + answer) length x cost, the tokens read per step
relative to causal (Bitune reads the prompt prefix twice); not padding, nor evaluation.

Every arm is compared with its lab's baseline (or --baseline=ARM) on the same seeds: the mean paired
difference with a 95% t-interval and a verdict (labs/stats.py). Each run evaluates at iteration 0
and --evals=5 more times, for the learning curves (time, but no training).

Runs land in out_dir/<arm>/s<seed>/, and s<seed>_equal_compute/ where that view needs a longer run
(default out_dir: labs/runs/<lab>, or labs/runs/<lab>_quick). Results in out_dir: results.md,
results.json and three pictures (labs/report.py; `python labs/report.py FOLDER` redraws them).

Stopping and reusing (labs/runner.py). Ctrl-C (or SIGTERM) stops the running runs, starts no other,
and says how many are kept; the same command continues. A run is reused only if it finished with
the same fingerprint (labs/shares.py): its resolved settings (a config file's values, not its path)
and a hash of the method code, kept in out_dir/<arm>/s<seed>/run.json when the run ends well. Any
other run starts over; train.py is deterministic, so it ends with the numbers it would have had
uninterrupted. One labs.py at a time per out_dir (out_dir/lock).

A class (labs/shares.py): each student runs one seed, perhaps only some arms, and hands in a file:
    python labs/labs.py --lab=methods --seeds=14 --arms=causal,bitune   # the baseline among them
    -> labs/runs/methods/share_s14.json
A share holds every finished run of that seed in out_dir, whatever --arms each command named: its
arm, views, max_iters, tokens_per_step, cost, fingerprint, the setup it ran on (device, dtype,
threads, ...) and every evaluation row of its log; every lab writes one per seed. The runs of --arms
are the whole lab's (the equal-compute budget is still the costliest arm's of the whole lab). The
teacher pools them into the same tables, with the seeds found, in handed_in/ (or --out_dir):
    python labs/labs.py --lab=methods --pool=handed_in/   # every share_*.json or lab folder in it
    python labs/labs.py --lab=methods --pool=handed_in/ --watch   # again as each share lands
Every file handed in is checked (labs/handin.py); one that fails, a share made with other settings
or code, or a seed handed in twice, is refused, naming the file (--watch: left out, with a line).
Other machines, devices and thread counts pool; results.json lists the setups ('setups').
"""
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # as a script
from configurator import configure  # noqa: E402
from model import has_hidden_layer  # noqa: E402
from train import DEFAULTS  # noqa: E402
from utils import lock  # noqa: E402
from utils.runtime import run_main  # noqa: E402
from labs import aggregate, check, report, runner, shares  # noqa: E402
from labs.runner import ROOT  # noqa: E402

# BAI's arms in labs 1 and 2 take their pivots after ln_f (bai_layer=-1), as BAI's summary reads;
# lab 4 compares that with the default, the block before the last.
METHODS = {'causal': {'method': 'causal'}, 'bitune': {'method': 'bitune'},
           'bai': {'method': 'bai', 'bai_layer': -1},
           'bitune_bai': {'method': 'bitune_bai', 'bai_layer': -1}}
# A lab: 'arms' (name -> train.py settings), the 'baseline' arm every other is compared with,
# settings for 'every' arm, and optionally: 'versus' (arm -> the arm it is compared with instead of
# the baseline), 'max_iters' (the arms' equal-steps length, if not the config's), and a 'base' run
# per seed that every arm of that seed fine-tunes from (its checkpoint becomes their init_from; it
# trains the config's max_iters and is the same for all arms, so its compute is not counted).
LABS = {
    # Where does reading the prompt both ways help? With the op after the data a causal model reads
    # the data before it knows what to do with it; with the op before, it knows from the start.
    'methods': {'arms': METHODS, 'baseline': 'causal'},
    'op_before': {'arms': METHODS, 'baseline': 'causal', 'every': {'toy_op_position': 'before'}},
    # Which part of Bitune matters? Each variant against the full method (bitune.VARIANTS: pass A's
    # mask and adapter, pass B, the mixing). The sixth variant, 'fixed', is the mixing lab's
    # 'fixed alpha 0.5' arm: the same command, so the same runs; left out here to save 10 minutes.
    'bitune_ablations': {'arms': {v: {'method': 'bitune', 'bitune_variant': v}
                                  for v in ('full', 'naive', 'no_mixing', 'only_causal', 'shared')},
                         'baseline': 'full'},
    # Learned or fixed mixing? theta_init is both theta's start and the constant in
    # alpha = |t| / (|t| + t0), so it sets how fast alpha can move away from 0.5 (Bitune's paper);
    # every arm costs the same.
    'mixing': {'arms': {'learned, theta_init 0.01': {'method': 'bitune'},
                        'fixed alpha 0.5': {'method': 'bitune', 'bitune_variant': 'fixed'},
                        'learned, theta_init 0.1': {'method': 'bitune', 'bitune_theta_init': 0.1},
                        'learned, theta_init 0.001': {'method': 'bitune',
                                                      'bitune_theta_init': 0.001}},
               'baseline': 'learned, theta_init 0.01'},
    # BAI one factor at a time: the pivot layer at lambda 1, then lambda at the final layer.
    # lambda = 0 is exactly the causal baseline (bai.compute_loss skips the loss), hence that arm.
    'bai_settings': {'arms': {
        'causal (lambda 0)': {'method': 'causal'},
        **{f'layer {layer}, lambda 1': {'method': 'bai', 'bai_layer': layer}
           for layer in (-1, 0, 1, 2)},
        'layer -1, lambda 0.1': {'method': 'bai', 'bai_layer': -1, 'bai_lambda': 0.1},
        'layer -1, lambda 3': {'method': 'bai', 'bai_layer': -1, 'bai_lambda': 3.0}},
        'baseline': 'causal (lambda 0)'},
    # Why does Bitune + BAI lose to Bitune? One change at a time to where its pivots come from
    # (train.py's bai_pivots and bai_layer) and to the loss that compares them with the answer.
    'bitune_bai': {'arms': {'bitune': {'method': 'bitune'},
                            'bitune_bai (A, ln_f, mse)': {'method': 'bitune_bai', 'bai_layer': -1},
                            'cosine': {'method': 'bitune_bai', 'bai_layer': -1,
                                       'bai_loss': 'cosine'},
                            'layer 2': {'method': 'bitune_bai', 'bai_layer': 2},
                            'pass B': {'method': 'bitune_bai', 'bai_layer': -1, 'bai_pivots': 'B'}},
                   'baseline': 'bitune'},
    # The papers' setting in miniature: a base that knows the format (fully trained on copy only,
    # the config's 500 iterations), then 300 iterations of parameter-efficient tuning on new
    # operations, one causal and one Bitune arm per adapter kind (adapters.py). Bitune trains two
    # adapters, so the causal LoRA and DoRA arms get rank 16, as many numbers as Bitune's two of
    # rank 8; IA3 has no rank to double. Each Bitune arm is compared with the causal arm of its own
    # kind ('versus'). LoRA usually wants a higher learning rate than full training; IA3 trains ~20x
    # fewer numbers than LoRA and wants a far higher one, chosen by a sweep of ia3_causal at 500
    # steps on seed 4 (then outside the lab's 3 seeds; now one of its 5, so that seed's ia3 arms are
    # not independent of the choice; the handout has the sweep).
    'finetune': {'base': {'method': 'causal', 'peft': 'none', 'toy_ops': 'C'}, 'max_iters': 300,
                 'every': {'peft': 'lora', 'toy_ops': 'RSD', 'learning_rate': 3e-3},
                 'arms': {'lora_causal_r16': {'method': 'causal', 'lora_r': 16, 'lora_alpha': 16},
                          'lora_bitune': {'method': 'bitune'},
                          'dora_causal_r16': {'method': 'causal', 'peft': 'dora', 'lora_r': 16,
                                              'lora_alpha': 16},
                          'dora_bitune': {'method': 'bitune', 'peft': 'dora'},
                          'ia3_causal': {'method': 'causal', 'peft': 'ia3', 'learning_rate': 0.3},
                          'ia3_bitune': {'method': 'bitune', 'peft': 'ia3', 'learning_rate': 0.3}},
                 'baseline': 'lora_causal_r16',
                 'versus': {'dora_bitune': 'dora_causal_r16', 'ia3_bitune': 'ia3_causal'}},
}
# --quick: for a class to run live. A smaller model on shorter strings (4 to 8 symbols) at a higher
# learning rate, fewer evaluation examples, three seeds (the fewest that give a usable interval, and
# a wide one), and a lower target, since its runs end further from 100%. Options you give win.
QUICK = {'seeds': '1,2,3', 'max_iters': 500, 'target': 50.0,
         'settings': {'n_layer': 2, 'n_embd': 64, 'toy_max_len': 8, 'learning_rate': 3e-3,
                      'warmup_iters': 30, 'eval_examples': 200}}
CONFIG = os.path.join(ROOT, 'config', 'lab_toy.py')

# labs.py's own options, read by configurator.configure (which checks their types), then EXAMPLES:
# a good value of each, for the error lines. '' and max_iters 0: the lab's or the config's value.
LAB_DEFAULTS = {'lab': '', 'seeds': '1,2,3,4,5', 'max_iters': 0, 'out_dir': '', 'jobs': 1,
                'quick': False, 'baseline': '', 'target': 80.0, 'evals': 5, 'arms': '', 'pool': '',
                'watch': False, 'check': False}
EXAMPLES = {'lab': 'methods', 'seeds': '1,2,3', 'max_iters': '500', 'out_dir': 'labs/runs/mine',
            'jobs': '2', 'quick': 'True', 'baseline': 'causal', 'target': '80', 'evals': '5',
            'arms': 'causal,bitune', 'pool': 'handed_in',
            'watch': 'True --pool=handed_in', 'check': 'True'}
WRONG_TYPE = {int: 'not a whole number', float: 'not a number',
              bool: 'write True or False, or the bare flag'}
YES_NO = {'true': 'True', '1': 'True', 'false': 'False', '0': 'False'}  # --quick=1 as --quick=True


def folder(arm):
    """An arm's name as a folder, as --arms takes it: 'layer -1, lambda 1' -> layer_-1_lambda_1"""
    return arm.replace(',', '').replace(' ', '_')


def bad(key, value, why):
    """The error for one option: what was wrong, and an example of a good value."""
    return ValueError(f"--{key}={value}: {why}; write e.g. --{key}={EXAMPLES[key]}")


def read_options(argv):
    """labs.py's own options, each read by configure and checked (one error line that names it),
    and every other argument (passed on to every run, checked by configure in plan())."""
    if '--help' in argv or '-h' in argv:
        print(__doc__.strip())
        sys.exit(0)
    opts, given, passthrough = dict(LAB_DEFAULTS), {}, []
    for arg in argv:
        key, eq, value = arg[2:].partition('=')
        if not (arg.startswith('--') and key in LAB_DEFAULTS):
            if arg.startswith('--') and key in ('seed', 'eval_interval'):
                instead = '--seeds=1,2,3' if key == 'seed' else '--evals=N (evaluations per run)'
                raise ValueError(f"{arg}: labs.py sets each run's {key}; use {instead}")
            passthrough.append(arg)
            continue
        if isinstance(LAB_DEFAULTS[key], bool):  # a bare flag, or a word for yes or no
            value = YES_NO.get(value, value) if eq else 'True'
        if not value:
            raise bad(key, '', 'is empty')
        try:
            opts = configure(opts, [f'--{key}={value}'])
        except ValueError:
            raise bad(key, value, WRONG_TYPE[type(LAB_DEFAULTS[key])]) from None
        given[key] = value  # as written, for the error lines
    if opts['lab'] not in LABS:
        raise bad('lab', opts['lab'], f"choose one of {', '.join(LABS)}")
    lab = LABS[opts['lab']]
    if opts['quick']:
        opts.update({k: QUICK[k] for k in ('seeds', 'max_iters', 'target') if k not in given})
    if opts['pool'] and not os.path.isdir(opts['pool']):
        raise bad('pool', opts['pool'],
                  'not a folder; name the folder that holds the share_s*.json files')
    if opts['watch'] and not opts['pool']:
        raise bad('watch', given['watch'], 'it watches the folder that --pool names: give both')
    if opts['check'] and opts['pool']:
        raise bad('check', given['check'], 'it times this machine for its runs; leave out --pool')
    if opts['pool'] and 'seeds' in given:
        raise bad('seeds', opts['seeds'],
                  'pooling takes the seeds it finds in --pool; leave --seeds out')
    seeds = [int(s) if s.isdigit() else None for s in opts['seeds'].split(',')]
    if None in seeds or len(set(seeds)) != len(seeds):
        raise bad('seeds', opts['seeds'], 'whole numbers >= 0, separated by commas, none repeated')
    for key in ('jobs', 'evals', 'max_iters'):
        if key in given and opts[key] < 1:
            raise bad(key, given[key], 'must be at least 1')
    if not 0 <= opts['target'] <= 100:
        raise bad('target', given['target'], 'a score in percent, 0 to 100')
    named = {folder(a): a for a in lab['arms']}  # 'learned, theta_init 0.1': learned_theta_init_0.1
    arms = ([named.get(folder(a)) for a in opts['arms'].split(',')] if opts['arms']
            else list(lab['arms']))
    if None in arms or len(set(arms)) != len(arms):
        raise bad('arms', opts['arms'],
                  f"name each of lab '{opts['lab']}'s arms once, from {', '.join(named)}")
    baseline = opts['baseline'] or lab['baseline']
    if baseline not in lab['arms']:
        raise bad('baseline', baseline, f"choose one of the lab's arms: {', '.join(lab['arms'])}")
    if baseline not in arms:
        raise bad('arms', opts['arms'],
                  f"the baseline '{baseline}' must be among them: every arm is compared with it")
    default_out = opts['pool'] or os.path.join(ROOT, 'labs', 'runs',
                                               opts['lab'] + ('_quick' if opts['quick'] else ''))
    out_dir = os.path.abspath(opts['out_dir'] or default_out)  # the runs start in ROOT
    opts.update(seeds=seeds, arms=arms, baseline=baseline, out_dir=out_dir)
    return opts, passthrough


def plan(opts, passthrough, which=None):
    """The lab's runs: dicts with arm, seed, stage (0 = bases), views ('steps', 'compute', or both),
    out_dir, argv for train.py, its config (resolved here with train.py's own defaults, so that a
    typo fails before any run starts), tokens_per_step, cost and its fingerprint. Only the arms in
    opts['arms'] (or those `which` names) are planned, but the equal-compute budget is always the
    whole lab's, so a run is the same whichever arms a command asks for."""
    lab = LABS[opts['lab']]
    first = [CONFIG, *[f'--{k}={v}' for k, v in QUICK['settings'].items() if opts['quick']]]

    def make(arm, settings, seed, stage, views, iters, where, base=None):
        out = os.path.join(opts['out_dir'], folder(arm), where)
        # --evals evaluations after the one at iteration 0 (rounding up: none just before the end)
        argv = [*first, *[f'--{k}={v}' for k, v in settings.items()], *passthrough,
                f'--max_iters={iters}', f"--eval_interval={-(-iters // opts['evals'])}",
                f'--seed={seed}', f'--out_dir={out}']
        cfg = configure(DEFAULTS, argv)
        return {'arm': arm, 'seed': seed, 'stage': stage, 'views': views, 'out_dir': out,
                'argv': argv, 'cfg': cfg, 'tokens_per_step': aggregate.tokens_per_step(cfg),
                'cost': aggregate.cost(cfg), 'fingerprint': shares.fingerprint(cfg, base)}

    common = configure(DEFAULTS, [*first, *passthrough])
    base_iters = int(opts['max_iters'] or common['max_iters'])
    max_iters = int(opts['max_iters'] or lab.get('max_iters') or common['max_iters'])
    arms = {arm: {**lab.get('every', {}), **settings} for arm, settings in lab['arms'].items()}
    # each arm's settings as its runs will have them (seed 0 here: the seed changes no cost)
    probe = {arm: make(arm, s, 0, 1, (), max_iters, '') for arm, s in arms.items()}
    for arm, p in probe.items():  # e.g. BAI's pivots from block 2 of the quick 2-block model
        c = p['cfg']
        if 'bai' in c['method'] and not has_hidden_layer(c['bai_layer'], c['n_layer']):
            print(f"leaving out '{arm}': bai_layer={c['bai_layer']} is not a layer of a "
                  f"{c['n_layer']}-block model")
            del arms[arm]
    # the budget: what the costliest arm reads in max_iters iterations
    per_step = {arm: probe[arm]['tokens_per_step'] for arm in arms}
    budget = max_iters * max(per_step.values())
    # the costliest arm's runs serve both views: their length is max_iters, their compute the budget
    opts['budget'] = {'arm': max(per_step, key=per_step.get), 'token_forwards': budget,
                      'max_iters': max_iters}
    runs, base = [], None
    for seed in opts['seeds']:
        if 'base' in lab:
            runs.append(make('base', lab['base'], seed, 0, (), base_iters, f's{seed}'))
            base = runs[-1]['fingerprint']
            base_ckpt = os.path.join(runs[-1]['out_dir'], 'ckpt.pt')
        for arm in [a for a in which or opts['arms'] if a in arms]:
            settings = arms[arm]
            if 'base' in lab:  # fine-tune from the same seed's base
                settings = {**settings, 'init_from': base_ckpt}
            iters = round(budget / per_step[arm])
            if iters == max_iters:
                runs.append(make(arm, settings, seed, 1, ('steps', 'compute'), max_iters,
                                 f's{seed}', base))
            else:
                runs.append(make(arm, settings, seed, 1, ('steps',), max_iters, f's{seed}', base))
                runs.append(make(arm, settings, seed, 1, ('compute',), iters,
                                 f's{seed}_equal_compute', base))
    return runs


def main(argv=None):
    if sys.platform == 'win32':  # no os.killpg to stop a run with whatever it started
        raise ValueError("labs.py does not run on native Windows (it stops its runs with "
                         "os.killpg, which Windows lacks); run it in WSL (Windows Subsystem for "
                         "Linux: `wsl --install`), with the same command")
    argv = sys.argv[1:] if argv is None else argv
    opts, passthrough = read_options(argv)
    lab = LABS[opts['lab']]
    if opts['pool']:  # the seeds handed in make the plan
        plan({**opts, 'seeds': []}, passthrough)  # a typo in a setting fails before anything else
        with lock.held(opts['out_dir'], 'labs.py'):  # one labs.py at a time in a lab's folder
            return shares.pool_command(opts, lambda o: plan(o, passthrough), lab)
    every = plan(opts, passthrough, list(lab['arms']))  # a typo fails before anything else
    runs = [r for r in every if r['arm'] in opts['arms'] or r['arm'] == 'base']
    if opts['check']:  # times a few steps here and predicts the share's time; runs nothing
        return check.check(opts, runs)
    with lock.held(opts['out_dir'], 'labs.py'):
        reused = sum(map(runner.finished, runs))
        again = ' '.join(['python labs/labs.py', *map(shlex.quote, argv)])
        failed = runner.run_all(runs, opts['jobs'], again)
        results = {**aggregate.aggregate(runs, opts, lab), 'runs': len(runs), 'reused': reused}
        note = f"{reused} of {len(runs)} runs reused from earlier (same settings and code)"
        for path, arms in shares.write_shares(runs, opts, every):  # every finished arm of a seed
            note += (f"\nshare: {path} holds {', '.join(arms)} (hand it in; a teacher pools a "
                     f"folder of shares: python labs/labs.py --lab={opts['lab']} --pool=FOLDER)")
        lines = report.write_results(results, opts['out_dir'])
    print('\n'.join(lines) + f"\n{note}\nwrote {opts['out_dir']}/{shares.RESULTS}")
    if failed:
        where = ', '.join(r['out_dir'] for r in failed)
        raise RuntimeError(f"{len(failed)} run(s) failed: {where}; read their train.txt, fix the "
                           f"cause, and run the same command again (finished runs are kept)")
    return runs


if __name__ == '__main__':
    run_main(main, RuntimeError)  # bad options or failed runs: one line `error: ...`, what to do
