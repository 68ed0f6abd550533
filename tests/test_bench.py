"""bench.py end to end with --quick on a tiny model: every section is there with positive numbers.
No timing is asserted: speed depends on the machine and on what else runs on it."""
import errno
import json

import pytest

import bench
import configurator

TINY = ['--quick=True', '--n_layer=2', '--n_head=2', '--n_embd=32', '--batch_size=4', '--gen_batch_size=2',
        '--device=cpu', '--threads=1']


def test_quick_bench_writes_every_section(tmp_path):
    out = tmp_path / 'bench.json'
    bench.main(TINY + [f'--out={out}'])
    r = json.loads(out.read_text())
    for key in ('machine', 'config', 'token_ratio', 'train', 'generate', 'lora', 'targets'):
        assert key in r, key
    assert r["token_ratio"] == pytest.approx((11 + 11 + 9) / 21)  # prefix 11 twice + answer 9, over 21

    assert {(t['method'], t['peft']) for t in r['train']} == {(m, p) for m in ('causal', 'bitune', 'bai')
                                                             for p in ('none', 'lora', 'dora', 'ia3')}
    assert {(g['method'], g['new_tokens']) for g in r['generate']} == {(m, n) for m in ('causal', 'bitune', 'no_cache')
                                                                      for n in (4, 8)}
    assert {l['case'] for l in r['lora']} == {'plain', 'unmerged', 'merged'}
    numbers = [(t, ('ms_per_step', 'tokens_per_s', 'peak_mem_mb', 'vs_causal')) for t in r['train']]
    numbers += [(g, ('prefill_ms', 'decode_tokens_per_s', 'peak_mem_mb')) for g in r['generate']]
    numbers += [(l, ('ms', 'tokens_per_s', 'peak_mem_mb')) for l in r['lora']]
    for row, keys in numbers:
        for k in keys:
            assert row[k] > 0, (row, k)
    assert len(r['targets']) == 8 and all(t['value'] > 0 and isinstance(t['ok'], bool) for t in r['targets'])


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
    assert {t['method'] for t in r['train']} == {'causal', 'bitune', 'bai'} and r['config']['n_layer'] == 1


@pytest.mark.parametrize('where, message', [('missing/b.json', 'does not exist'), ('', 'is a folder')])
def test_an_unwritable_out_fails_before_any_benchmark(tmp_path, monkeypatch, where, message):
    monkeypatch.setattr(bench, 'bench_train', lambda *a: pytest.fail('benchmarked before checking --out'))
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
    assert configurator.describe(e.value).startswith(f"the disk is full (writing {out}): free space on it")
    assert out.read_text() == '{"old": 1}' and not (tmp_path / 'bench.json.tmp').exists()
