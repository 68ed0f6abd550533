"""
The summarization path end to end, on a few DialogSum- and SciTLDR-shaped records
written here: prepare.py -> train.py (ROUGE at evaluation) -> checkpoint -> sample.py
on a dialogue in a file. Also the GPT-2 lab configs (config/*_gpt2.py), run on a
tiny random model saved in GPT-2's file layout, since the tests never download GPT-2.
Run: python -m pytest -q tests/test_summarization_e2e.py
"""
import json
import os

import pytest
import torch

from utils import checkpoint
import sample
import train
from utils import weights
from configurator import check_train_config, configure
from utils.evaluate import generate_answers
from helpers import load_script, write_jsonl, write_safetensors
from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK, MAX_ANSWER = 160, 24  # a short context keeps the 50257-way output layer cheap
# a tiny model; every run also writes its log, plots and checkpoint
TINY = ['--n_layer=1', '--n_head=2', '--n_embd=16', f'--block_size={BLOCK}', '--batch_size=4',
        '--eval_iters=1', '--eval_examples=4', '--warmup_iters=1', '--learning_rate=3e-3',
        '--device=cpu', '--dtype=float32']

DIALOGUES = [
    ("#Person1#: Hi, is this seat taken?\n#Person2#: No, please sit down.\n"
     "#Person1#: Thanks, it is crowded today.",
     "#Person1# asks #Person2# for a seat on a crowded day."),
    ("#Person1#: What time does the bank open?\n"
     "#Person2#: At nine, but it closes early on Fridays.",
     "#Person2# tells #Person1# when the bank opens."),
    ("#Person1#: I lost my keys again.\n#Person2#: Did you check your coat?\n"
     "#Person1#: Yes, they are there!",
     "#Person1# finds the lost keys in the coat with #Person2#'s help."),
    ("#Person1#: Would you like tea or coffee?\n#Person2#: Coffee, with milk, please.",
     "#Person2# wants coffee with milk."),
    ("#Person1#: How was the trip to Paris?\n#Person2#: Lovely, though it rained every day.",
     "#Person2# enjoyed Paris despite the rain."),
]


@pytest.fixture(scope='module', autouse=True)
def gpt2_tokenizer_files():
    # tests/conftest.py points TIKTOKEN_CACHE_DIR at ../shared/data/tiktoken_cache:
    # tests must not download
    cache = os.environ.get('TIKTOKEN_CACHE_DIR', '')
    if not os.path.isdir(cache):
        pytest.skip(f"no GPT-2 tokenizer files at TIKTOKEN_CACHE_DIR={cache!r} "
                    f"(offline tests never download them)")




def prepare(tmp_path, name):
    """Raw records like the real files -> tmp_path/data/<name>/ via the dataset's prepare.py;
    returns data_dir."""
    src = tmp_path / 'raw' / name
    if name == 'dialogsum':
        rec = [{'fname': f'd{i}', 'dialogue': d, 'summary': s, 'topic': 't'}
               for i, (d, s) in enumerate(DIALOGUES)]
        write_jsonl(src / 'dialogsum.train.jsonl', rec * 2)
        write_jsonl(src / 'dialogsum.dev.jsonl', rec[:4])
        write_jsonl(src / 'dialogsum.test.jsonl',
                    [{**r, 'summary1': r['summary'], 'summary2': 'Two people talk.',
                      'summary3': r['summary']} for r in rec[:2]])
    else:  # SciTLDR-A: the source is a list of sentences, the target a list of TLDRs
        rec = [{'source': [d.replace('#Person1#:', 'We').replace('#Person2#:', 'Results:'),
                           'It works.'],
                'target': [s, 'A short summary.']} for d, s in DIALOGUES]
        write_jsonl(src / 'train.jsonl', rec * 2)
        write_jsonl(src / 'dev.jsonl', rec[:4])
        write_jsonl(src / 'test.jsonl', rec[:2])
    data_dir = tmp_path / 'data'
    load_script(name).main(['--src', str(src), '--out_dir', str(data_dir / name),
                            '--block_size', str(BLOCK), '--max_answer', str(MAX_ANSWER)])
    return str(data_dir)


def read_log(out):
    with open(os.path.join(out, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]


def fake_gpt2(d, seed=0):
    """A tiny random GPT saved the way GPT-2 is published (config.json + model.safetensors, Conv1D
    weights stored (in, out), no lm_head), so init_from=<this dir> walks GPT-2's loading path."""
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(block_size=BLOCK, vocab_size=50257, n_layer=2, n_head=2, n_embd=16))
    sd = {k: (v.t() if k.endswith(weights.CONV1D) else v).contiguous()
          for k, v in gpt.state_dict().items()
          if k != 'lm_head.weight'}  # tied to wte
    write_safetensors(os.path.join(d, 'model.safetensors'), sd, metadata={'format': 'pt'})
    with open(os.path.join(d, 'config.json'), 'w') as f:
        json.dump({'model_type': 'gpt2', 'n_layer': 2, 'n_head': 2, 'n_embd': 16,
                   'vocab_size': 50257, 'n_positions': BLOCK}, f)
    return str(d)


def test_dialogsum_train_rouge_checkpoint_sample(tmp_path, capsys):
    data_dir = prepare(tmp_path, 'dialogsum')
    meta = json.loads((tmp_path / 'data' / 'dialogsum' / 'meta.json').read_text())
    assert (meta['metric'] == 'rouge' and '{text}' in meta['template']
            and meta['max_answer'] == MAX_ANSWER)

    out = str(tmp_path / 'out')
    last = train.main(TINY + ['--dataset=dialogsum', f'--data_dir={data_dir}', f'--out_dir={out}',
                              '--method=causal', '--max_iters=2', '--eval_interval=2'])
    rows = read_log(out)
    assert rows[-1]['iter'] == 2  # (train.py also logs iteration 0, before training)
    for r in rows:  # ROUGE in percent at every evaluation
        assert all(0 <= r[k] <= 100 for k in ('rouge1', 'rouge2', 'rougeL')), r
    assert last['rougeL'] == rows[-1]['rougeL']
    for f in ('ckpt.pt', 'loss.png', 'metric.png'):
        assert os.path.getsize(os.path.join(out, f)) > 0, f
    printed = capsys.readouterr().out
    # summaries beside refs
    assert 'model: ' in printed and "ref: '#Person1# asks #Person2# for a seat" in printed

    # the checkpoint comes back as the same model, with the dataset's meta (template included)
    model, gpt, ckpt = checkpoint.model_from_checkpoint(os.path.join(out, 'ckpt.pt'))
    assert ckpt['meta']['template'] == meta['template'] and gpt.config.vocab_size == 50257

    # batched greedy generation on left-padded prompts of different lengths, with the KV cache,
    # gives what each prompt gives alone (float64, so near-ties cannot flip an argmax)
    val = [json.loads(line)
           for line in (tmp_path / 'data' / 'dialogsum' / 'val.jsonl').read_text().splitlines()]
    assert len({len(ex['prompt']) for ex in val}) > 1
    model.double()
    together = generate_answers(model, val, ckpt['meta'], 'cpu', batch_size=4, max_new_tokens=6)
    alone = [generate_answers(model, [ex], ckpt['meta'], 'cpu', batch_size=1, max_new_tokens=6)[0]
             for ex in val]
    assert together == alone

    # sample.py summarizes a dialogue given as a file, wrapped in the training template
    dialogue = tmp_path / 'dialogue.txt'
    dialogue.write_text(DIALOGUES[1][0] + '\n')
    answers = sample.main([f'--ckpt={out}/ckpt.pt', f'--start=FILE:{dialogue}',
                           '--max_new_tokens=5'])
    printed = capsys.readouterr().out
    assert len(answers) == 1 and isinstance(answers[0], str)
    assert printed.startswith(meta['template'].format(text=DIALOGUES[1][0]))


def test_the_lab_configs_pass_the_checks_and_each_method_gets_its_own_out_dir():
    from types import SimpleNamespace
    for ds in ('dialogsum', 'scitldr'):
        cfg = os.path.join(ROOT, 'config', f'{ds}_gpt2.py')
        for m in ('causal', 'bitune', 'bai'):
            c = SimpleNamespace(**configure(train.DEFAULTS, [cfg, f'--method={m}']))
            check_train_config(c, train.DEFAULTS)
            assert c.dataset == ds and c.method == m and c.out_dir == f'out-{ds}-gpt2-{m}'
            assert (c.init_from, c.peft, c.lora_r, c.adam_eps, c.decay) == (
                'gpt2', 'lora', 8, 1e-6, 'linear')
            assert c.warmup_iters * 10 == c.max_iters  # 10% warm-up
    tiny = configure(train.DEFAULTS, [os.path.join(ROOT, 'config', 'dialogsum_tiny_cpu.py')])
    check_train_config(SimpleNamespace(**tiny), train.DEFAULTS)
    assert (tiny['init_from'], tiny['peft'], tiny['dataset']) == ('scratch', 'none', 'dialogsum')


@pytest.mark.parametrize('name, method', [('dialogsum', 'bitune'), ('scitldr', 'bai')])
def test_gpt2_lab_config_on_a_tiny_stand_in_for_gpt2(tmp_path, capsys, name, method):
    """The lab's own config file, with only the size of the run overridden: LoRA on a loaded
    base, ROUGE at evaluation, an adapter-only checkpoint, and (DialogSum) sample.py on it."""
    data_dir = prepare(tmp_path, name)
    base = fake_gpt2(tmp_path)
    out = str(tmp_path / 'out')
    cfg = os.path.join(ROOT, 'config', f'{name}_gpt2.py')
    train.main([cfg, f'--method={method}', f'--init_from={base}', f'--data_dir={data_dir}',
                f'--out_dir={out}', '--max_iters=2', '--eval_interval=2', '--eval_iters=1',
                '--eval_examples=3', '--batch_size=3', '--warmup_iters=1', '--device=cpu'])
    row = read_log(out)[-1]
    assert row['iter'] == 2 and {'rouge1', 'rouge2', 'rougeL', 'val_loss'} <= set(row)
    assert ('alpha_k' in row) == (method == 'bitune') and ('bai_loss' in row) == (method == 'bai')
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    assert ckpt['adapter_only'] and all('lora_' in k or 'mix_' in k for k in ckpt['model'])
    if name == 'dialogsum':  # a Bitune checkpoint samples with its two-pass prefill
        capsys.readouterr()
        dialogue = tmp_path / 'dialogue.txt'
        dialogue.write_text(DIALOGUES[0][0])
        answers = sample.main([f'--ckpt={out}/ckpt.pt', f'--start=FILE:{dialogue}',
                               '--max_new_tokens=4'])
        assert len(answers) == 1 and 'Summary:' in capsys.readouterr().out
