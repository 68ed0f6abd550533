"""configurator.py: overrides from the command line and from config files, with type checks."""
import pytest

from configurator import configure

DEFAULTS = {'max_iters': 100, 'learning_rate': 1e-3, 'compile': False, 'method': 'causal',
            'top_k': None}


def test_overrides_parse_to_the_defaults_types():
    c = configure(DEFAULTS, ['--max_iters=7', '--learning_rate=1', '--compile=True',
                             '--method=bitune', '--top_k=5'])
    assert c == {'max_iters': 7, 'learning_rate': 1.0, 'compile': True, 'method': 'bitune',
                 'top_k': 5}
    assert type(c['learning_rate']) is float and DEFAULTS['max_iters'] == 100  # defaults untouched


def test_config_file_then_command_line(tmp_path):
    f = tmp_path / 'x.py'
    f.write_text("import math\nmax_iters = 3  # comment\nmethod = 'bai'\n_private = 1\n")
    c = configure(DEFAULTS, [str(f), '--max_iters=9'])
    assert c['max_iters'] == 9 and c['method'] == 'bai'  # later arguments win


@pytest.mark.parametrize('argv, message', [
    (['--max_itres=5'], "unknown config key 'max_itres'.*did you mean max_iters"),
    (['--max_iters=0.5'], "must be int"),
    (['--compile=yes'], "must be bool"),
    (['--max_iters'], "--key=value"),
    (['nope.py'], "not found"),
])
def test_bad_overrides_are_rejected_clearly(argv, message):
    with pytest.raises(ValueError, match=message):
        configure(DEFAULTS, argv)


def test_help_lists_every_setting_and_exits(capsys):
    with pytest.raises(SystemExit) as e:
        configure(DEFAULTS, ['--max_iters=3', '--help'])
    out = capsys.readouterr().out
    assert (e.value.code == 0 and all(f'--{k}=' in out for k in DEFAULTS)
            and "--method='causal'" in out)
