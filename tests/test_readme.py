"""README.md's commands, in order, on a fresh copy of the repository: each must exit 0.

Every line of a ```bash or ```sh block is a command. The test runs them from the copy's root on tiny
settings (appended overrides, so a command keeps its own meaning), with TIKTOKEN_CACHE_DIR unset the
way a student's shell has it. It skips only what cannot run here, and SKIPPED lists each such
command with the reason, so a new command is never skipped silently. The first command of each
script runs in a fresh process; later train.py and sample.py commands run inside this one
(SAME_PROCESS), which saves importing torch again, about 3 s a command.

The README links to docs/ for what a newcomer need not read first (the walkthrough's printout,
timings, troubleshooting): the links must resolve, and docs/walkthrough.md must show the README's
walkthrough command and a printout with the steps walkthrough.py prints today."""
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from helpers import ROOT

SHARED_DATA = os.path.join(ROOT, '..', 'shared', 'data')
WALKTHROUGH = 'python walkthrough.py --ckpt=out/ckpt.pt --plot=docs/figures/passes.png'

SKIPPED = {
    'pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu':
        'installs packages (needs the internet)',
    'pip install -r requirements.txt': 'installs packages (needs the internet)',
    'python data/dialogsum/prepare.py':
        'downloads DialogSum (needs the internet); the --src line after it runs',
    'python train.py config/dialogsum_gpt2.py --method=bitune':
        'downloads GPT-2 (internet) and is sized for a GPU',
    'python sample.py --ckpt=out-dialogsum-gpt2-bitune/ckpt.pt --start=FILE:dialogue.txt':
        "samples the GPT-2 run above, which is skipped",
    ('python sample.py --init_from=gpt2 --start="The meaning of life is" --temperature=0.8 '
     '--top_k=40 --num_samples=3'):
        'downloads GPT-2 (needs the internet)',
    'torchrun --standalone --nproc_per_node=4 train.py config/dialogsum_gpt2.py --method=bitune':
        'needs 4 GPUs and downloads GPT-2',
    ('torchrun --nnodes=2 --node_rank=0 --nproc_per_node=4 --rdzv_endpoint=HOST0:29500 '
     'train.py config/dialogsum_gpt2.py'):
        'needs two machines with 4 GPUs each',
    'python3 -m pytest -q tests': 'is this test suite',
}

# appended to a script's own arguments (later overrides win), so every run takes a second or two
TINY = {
    'train.py': ['--max_iters=2', '--eval_interval=2', '--eval_iters=1', '--eval_examples=4',
                 '--eval_max_new_tokens=8', '--n_layer=2', '--n_head=2', '--n_embd=16',
                 '--batch_size=4', '--warmup_iters=1', '--toy_n_train=64', '--toy_n_val=16',
                 '--device=cpu'],
    'sample.py': ['--max_new_tokens=8'],
    'prepare.py': ['--limit=8'],
}


def readme_commands():
    """Every command line of README.md's bash/sh blocks, comments removed, in order."""
    with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
        blocks = re.findall(r'^```(?:bash|sh)\n(.*?)^```', f.read(), flags=re.S | re.M)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(argv)
    return commands


def read(path):
    with open(os.path.join(ROOT, path), encoding='utf-8') as f:
        return f.read()


def printout_steps(text):
    """The walkthrough's step lines ('2. Pass A: ...') and method headers, with every number
    replaced by '#': the same on a tiny model as on the default run's, so they compare a printout
    with a fresh run."""
    lines = [line.strip() for line in text.splitlines()]
    return [re.sub(r'[\d.]+', '#', line) for line in lines
            if re.match(r'(\d\. |Bitune |BAI )', line)]


def as_text(argv):
    """The command as the README writes it: --key="a value" for a value with spaces."""
    def word(a):
        if ' ' not in a:
            return a
        key, eq, value = a.partition('=')
        return f'{key}="{value}"' if eq and a.startswith('--') else f'"{a}"'
    return ' '.join(word(a) for a in argv)


def fresh_copy(dest):
    """The repository's files (tracked and not ignored) under dest/repo, and ../shared beside it as
    here."""
    r = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                       cwd=ROOT, capture_output=True)
    if r.returncode != 0:
        pytest.skip("not a git checkout: the test copies the repository's tracked files")
    listed = r.stdout.decode().split('\0')
    repo = os.path.join(dest, 'repo')
    for path in filter(None, listed):
        if os.path.isfile(os.path.join(ROOT, path)):
            os.makedirs(os.path.join(repo, os.path.dirname(path)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, path), os.path.join(repo, path))
    os.symlink(os.path.abspath(os.path.join(ROOT, '..', 'shared')), os.path.join(dest, 'shared'))
    return repo


# scripts that write only under the cwd, so they can run in here
SAME_PROCESS = ('train.py', 'sample.py')


def run_here(cmd, repo):
    """`python SCRIPT ARGS` inside this process, from repo's root, as __main__; returns (exit code,
    output). What a script may change for the whole process (cwd, argv, torch's threads and RNG) is
    put back."""
    import contextlib
    import io
    import runpy

    import torch
    saved = (os.getcwd(), sys.argv, torch.get_num_threads(), torch.get_rng_state())
    out = io.StringIO()
    code = 0
    try:
        os.chdir(repo)
        sys.argv = cmd[1:]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            runpy.run_path(cmd[1], run_name='__main__')
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(saved[0])
        sys.argv = saved[1]
        torch.set_num_threads(saved[2])
        torch.set_rng_state(saved[3])
    return code, out.getvalue()


def runnable(argv):
    """The command as it runs here: python -> this interpreter, tiny overrides appended."""
    script = (os.path.basename(argv[1]) if len(argv) > 1 and argv[0] in ('python', 'python3')
              else None)
    if script is None:
        raise AssertionError(f"README command {as_text(argv)!r} is neither `python SCRIPT ...` nor "
                             f"in SKIPPED; teach tests/test_readme.py how to run it, or skip it "
                             f"with a reason")
    return [sys.executable] + argv[1:] + TINY.get(script, [])


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, 'dialogsum'))
                    or shutil.which('git') is None,
                    reason="needs git and the offline data in ../shared/data "
                           "(the README's --src commands read it)")
def test_readme_commands_run_in_order(tmp_path):
    commands = readme_commands()
    texts = [as_text(a) for a in commands]
    skipped = [(t, SKIPPED[t]) for t in texts if t in SKIPPED]
    assert sorted(t for t, _ in skipped) == sorted(SKIPPED), \
        f"SKIPPED names commands the README no longer has: {sorted(set(SKIPPED) - set(texts))}"
    print("skipped:\n" + '\n'.join(f"  {t}  ({why})" for t, why in skipped))
    repo = fresh_copy(str(tmp_path))
    env = {k: v for k, v in os.environ.items()
           if k not in ('TIKTOKEN_CACHE_DIR', 'DATA_GYM_CACHE_DIR')}
    # TMPDIR: no tokenizer files in tiktoken's own cache
    env.update(OMP_NUM_THREADS='1', TMPDIR=str(tmp_path))
    ran, started = [], set()
    for argv, text in zip(commands, texts):
        if text in SKIPPED:
            continue
        t0, cmd = time.time(), runnable(argv)
        if argv[1] in SAME_PROCESS and argv[1] in started:
            code, out = run_here(cmd, repo)
        else:
            r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
            code, out = r.returncode, r.stdout + r.stderr
            started.add(argv[1])
        assert code == 0, f"README command failed: {text}\n{out[-3000:]}"
        ran.append((text, out))
        print(f"{time.time() - t0:5.1f}s  {text}")
    outputs = dict(ran)
    # what the tutorial promises: the trace, the figures, the samples
    trace = outputs[WALKTHROUGH]
    assert '6. loss:' in trace and '5. total = CE' in trace
    shown = re.search(r'^```text\n(.*?)^```', read('docs/walkthrough.md'),
                      flags=re.S | re.M).group(1)
    assert printout_steps(shown) == printout_steps(trace), \
        (f"docs/walkthrough.md's printout no longer has walkthrough.py's steps: "
         f"run `{WALKTHROUGH}` and paste its output")
    assert os.path.isfile(os.path.join(repo, 'out', 'attention.png'))
    assert ' -> ' in outputs['python sample.py --ckpt=out/ckpt.pt --start="31415 R"']
    assert 'method causal, peft none' in outputs[
        'python train.py --method=causal --out_dir=out-causal']
    summary = outputs['python sample.py --ckpt=out-dialogsum-tiny/ckpt.pt '
                      '--start="#Person1#: Is the bus late? #Person2#: Yes."']
    # the template around the prompt
    assert 'Summarize the dialogue.' in summary and 'Is the bus late?' in summary
    assert len(ran) + len(skipped) == len(commands)


def test_tokenizer_cache_beside_the_repository_is_found(tmp_path):
    """With TIKTOKEN_CACHE_DIR unset, GPT-2's BPE files come from ../shared/data/tiktoken_cache."""
    if not os.path.isdir(os.path.join(SHARED_DATA, 'tiktoken_cache')):
        pytest.skip("no ../shared/data/tiktoken_cache beside the repository")
    env = {k: v for k, v in os.environ.items()
           if k not in ('TIKTOKEN_CACHE_DIR', 'DATA_GYM_CACHE_DIR')}
    # tiktoken's default cache lives under the temp dir: keep it empty
    env['TMPDIR'] = str(tmp_path)
    code = ("from data.tasks import gpt2_encoding; e = gpt2_encoding(); "
            "print(e.encode('Summary:'), e.n_vocab)")
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ['[22093,', '25]', '50257']


def test_walkthrough_page_shows_the_readme_command_and_its_printout():
    """README keeps the walkthrough's command; docs/walkthrough.md shows that command and what it
    printed."""
    assert WALKTHROUGH in [as_text(a) for a in readme_commands()]
    page = read('docs/walkthrough.md')
    assert f'```bash\n{WALKTHROUGH}\n```' in page
    shown = re.search(r'^```text\n(.*?)^```', page, flags=re.S | re.M)
    assert shown and '6. loss:' in shown.group(1) and '5. total = CE' in shown.group(1)


def github_anchors(markdown):
    """The anchors GitHub gives a file's headings: lowercase, punctuation dropped, spaces to '-',
    and '-1', '-2', ... after a repeated one. Code blocks hold no headings."""
    anchors, seen = set(), {}
    for line in re.sub(r'^```.*?^```', '', markdown, flags=re.S | re.M).splitlines():
        m = re.match(r'#{1,6} (.*)', line)
        if m:
            slug = re.sub(r'[^\w\- ]', '', m.group(1).strip().lower()).replace(' ', '-')
            anchors.add(slug if slug not in seen else f'{slug}-{seen[slug]}')
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize('name', ['README.md', 'docs/walkthrough.md', 'docs/timings.md',
                                  'docs/troubleshooting.md'])
def test_links_resolve(name):
    """Every relative link and picture of the README and of docs/ names a file that exists, and a
    #section that file has (the lab table links each lab's handout section in labs/README.md)."""
    text = read(name)
    bad = []
    for target in re.findall(r'\]\(([^)\s]+)\)',
                             re.sub(r'^```.*?^```', '', text, flags=re.S | re.M)):
        if re.match(r'[a-z]+:', target):
            continue  # https://...
        path, _, anchor = target.partition('#')
        path = os.path.normpath(os.path.join(os.path.dirname(name), path)) if path else name
        if not os.path.exists(os.path.join(ROOT, path)):
            bad.append(target)
        elif anchor and anchor not in github_anchors(read(path)):
            bad.append(target)
    assert bad == []
