"""bench.py end to end with --quick on a tiny model: every section is there with positive numbers.
No timing is asserted: speed depends on the machine and on what else runs on it."""
import errno
import json

import pytest

import bench
from utils import runtime
from model import GPT, GPTConfig

TINY = ['--quick=True', '--n_layer=2', '--n_head=2', '--n_embd=32', '--batch_size=4',
        '--gen_batch_size=2', '--device=cpu', '--threads=1']


def test_quick_bench_writes_every_section(tmp_path):
    out = tmp_path / 'bench.json'
    bench.main(TINY + [f'--out={out}'])
    r = json.loads(out.read_text())
    for key in ('machine', 'config', 'token_ratio', 'train', 'generate', 'lora', 'targets'):
        assert key in r, key
    # prefix 11 twice + answer 9, over 21
    assert r["token_ratio"] == pytest.approx((11 + 11 + 9) / 21)

    assert {(t['method'], t['peft']) for t in r['train']} == {
        (m, p) for m in ('causal', 'bitune', 'bai') for p in ('none', 'lora', 'dora', 'ia3')}
    assert {(g['method'], g['new_tokens']) for g in r['generate']} == {
        (m, n) for m in ('causal', 'bitune', 'no_cache') for n in (4, 8)}
    assert {l['case'] for l in r['lora']} == {'plain', 'unmerged', 'merged'}
    numbers = [(t, ('ms_per_step', 'tokens_per_s', 'mfu_pct', 'peak_mem_mb', 'vs_causal'))
               for t in r['train']]
    numbers += [(g, ('prefill_ms', 'decode_tokens_per_s', 'mfu_pct', 'peak_mem_mb'))
                for g in r['generate']]
    numbers += [(l, ('ms', 'tokens_per_s', 'peak_mem_mb')) for l in r['lora']]
    for row, keys in numbers:
        for k in keys:
            assert row[k] > 0, (row, k)
    assert r['config']['peak_tflops'] > 0 and 'matmul timed here' in r['machine']['peak_from']
    assert len(r['targets']) == 8 and all(t['value'] > 0 and isinstance(t['ok'], bool)
                                          for t in r['targets'])


def test_bad_settings_fail_with_a_clear_message(tmp_path):
    with pytest.raises(ValueError, match='prompt_len'):
        bench.main(TINY + ['--prompt_len=1', f'--out={tmp_path / "b.json"}'])
    with pytest.raises(ValueError, match='gpt2-shape'):
        bench.main(TINY + ['--model=gpt3', f'--out={tmp_path / "b.json"}'])
    with pytest.raises(ValueError, match='peft'):
        bench.main(TINY + ['--peft=none,qlora', f'--out={tmp_path / "b.json"}'])


def test_a_one_block_model_benchmarks_bai_with_its_pivots_after_ln_f(tmp_path):
    out = tmp_path / 'bench.json'
    bench.main(TINY + ['--n_layer=1', '--peft=none', f'--out={out}'])
    r = json.loads(out.read_text())
    assert ({t['method'] for t in r['train']} == {'causal', 'bitune', 'bai'}
            and r['config']['n_layer'] == 1)


@pytest.mark.parametrize('where, message', [('missing/b.json', 'does not exist'),
                                            ('', 'is a folder')])
def test_an_unwritable_out_fails_before_any_benchmark(tmp_path, monkeypatch, where, message):
    monkeypatch.setattr(bench, 'bench_train',
                        lambda *a: pytest.fail('benchmarked before checking --out'))
    with pytest.raises(ValueError, match=f'out=.*{message}; pass --out=FILE.json'):
        bench.main(TINY + [f'--out={tmp_path / where}'])


def test_bench_json_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    out = tmp_path / 'bench.json'
    out.write_text('{"old": 1}')

    def disk_full(obj, f, **kw):
        f.write('{"machine": ')
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(bench.json, 'dump', disk_full)
    with pytest.raises(OSError) as e:
        bench.main(TINY + ['--peft=none', '--gen_tokens=4', f'--out={out}'])
    assert runtime.describe(e.value).startswith(f"the disk is full (writing {out}): "
                                                f"free space on it")
    assert out.read_text() == '{"old": 1}' and not (tmp_path / 'bench.json.tmp').exists()


def test_model_flops_count_every_weight_but_the_position_table_and_attention_per_key():
    c = dict(n_layer=3, n_head=2, n_embd=16, vocab_size=11)
    gpt = GPT(GPTConfig(**c, block_size=32))
    weights = sum(p.numel() for p in gpt.parameters()) - gpt.transformer.wpe.weight.numel()
    assert bench.model_flops(c, 1, 0, train=False) == 2 * weights      # a forward: 2 per weight
    assert bench.model_flops(c, 5, 0, train=True) == 5 * 6 * weights   # + 4 backward, per token
    assert bench.model_flops(c, 1, 0, train=True, frozen=True) == 4 * weights  # no weight gradients
    # attention: q.k and the weighted sum of v, 2 * n_embd each per key and layer; x3 with backward
    assert bench.model_flops(c, 1, 7, train=False) - 2 * weights == 4 * 3 * 16 * 7
    assert bench.model_flops(c, 1, 7, train=True) - 6 * weights == 3 * 4 * 3 * 16 * 7


def test_a_given_peak_is_used_for_mfu(tmp_path):
    out = tmp_path / 'bench.json'
    bench.main(TINY + ['--peft=none', '--gen_tokens=4', '--peak_tflops=1e-6', f'--out={out}'])
    r = json.loads(out.read_text())
    assert r['config']['peak_tflops'] == 1e-6 and r['machine']['peak_from'] == '--peak_tflops'
    row = next(t for t in r['train'] if t['method'] == 'causal')
    flops = bench.model_flops(r['config'], r['config']['batch_size'] * 21, 21, train=True)
    assert row['mfu_pct'] == pytest.approx(100 * flops / (row['ms_per_step'] / 1e3) / 1e6)
