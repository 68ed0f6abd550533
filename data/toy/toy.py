"""
Toy instruction tasks over a tiny character vocabulary, in the spirit of
minGPT's adder: seeded, instant to make, and scored by exact match.

An example asks for one operation on a short string of data symbols:
    C  copy         31415 -> 31415
    R  reverse      31415 -> 51413
    S  sort         31415 -> 11345
    D  deduplicate  31415 -> 3145   (keep each symbol's first occurrence, in order)
Reverse, sort and deduplicate cannot be answered from a prefix of the data:
the model has to read the whole string before it writes the first answer token.

Where the operation goes is a switch, and it is the point of the toy:
    op_position='after'  (default)  prompt = ^ 3 1 4 1 5 R =
    op_position='before'            prompt = ^ R 3 1 4 1 5 =
    answer (both)                   5 1 4 1 3 $
With the op after the data, a causal model reads the data without knowing what
it will be asked to do; prompt tokens that can attend to each other both ways
(Bitune, arXiv 2405.14862) can. Comparing the two layouts asks where
bidirectionality helps (see also BAI, arXiv 2408.13959).

Special tokens (each one printable character, so a decoded sequence is readable):
    '.' PAD (id 0)   '^' BOS   '=' SEP (ends the prompt)   '$' EOS (ends the answer)

Run `python data/toy/toy.py` to see the vocabulary and a few examples.
Other files use make_toy_task() through tasks.load_task('toy', ...).
"""
import random

PAD, BOS, SEP, EOS = '.', '^', '=', '$'
OPS = 'CRSD'  # every op is always in the vocabulary, so `ops=` never changes token ids
ALPHABET = '0123456789abcdefghijklmnopqrstuvwxyz'  # data symbols: the first n_symbols of these
OP_NAMES = {'C': 'copy', 'R': 'reverse', 'S': 'sort', 'D': 'deduplicate'}

def apply_op(op, data):
    """The right answer (without EOS) for op applied to the data string."""
    if op == 'C':
        return data
    if op == 'R':
        return data[::-1]
    if op == 'S':
        return ''.join(sorted(data, key=ALPHABET.index))  # ALPHABET order, so '9' < 'a'
    if op == 'D':
        return ''.join(dict.fromkeys(data))  # dicts keep insertion order: first occurrences win
    raise ValueError(f"unknown toy op {op!r}: choose from {OPS!r}")

def toy_meta(n_symbols=10, op_position='after', **extra):
    """The task's meta dict (see data/tasks.py). itos = specials, ops, data symbols."""
    if not 1 <= n_symbols <= len(ALPHABET):
        raise ValueError(f"n_symbols={n_symbols}: must be between 1 and {len(ALPHABET)}")
    if op_position not in ('after', 'before'):
        raise ValueError(f"op_position={op_position!r}: must be 'after' or 'before'")
    itos = [PAD, BOS, SEP, EOS] + list(OPS) + list(ALPHABET[:n_symbols])
    return dict(name='toy', tokenizer='char', vocab_size=len(itos), itos=itos,
                pad=0, bos=1, sep=2, eos=3, metric='exact_match',
                n_symbols=n_symbols, op_position=op_position, **extra)

def make_example(op, data, meta):
    """One example dict from an op and a data string."""
    stoi = {s: i for i, s in enumerate(meta['itos'])}
    body = data + op if meta['op_position'] == 'after' else op + data
    prompt = [meta['bos']] + [stoi[s] for s in body] + [meta['sep']]
    answer = [stoi[s] for s in apply_op(op, data)] + [meta['eos']]
    return {'prompt': prompt, 'answer': answer, 'op': op}

def make_toy_task(seed=1337, n_train=10000, n_val=500, ops=OPS, min_len=4, max_len=12,
                  n_symbols=10, op_position='after'):
    """A task dict {'meta', 'train', 'val'} of random toy examples, the same for the same arguments.

    Ops take turns (example i gets ops[i % len(ops)]) so every op is equally
    represented; data lengths are uniform in [min_len, max_len]. No prompt
    appears twice anywhere, so train and val never share an example. Val is
    drawn first: it depends only on (seed, n_val, and the task settings), not on n_train.
    """
    if not ops or any(op not in OPS for op in ops) or len(set(ops)) != len(ops):
        raise ValueError(f"ops={ops!r}: give distinct letters from {OPS!r}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    meta = toy_meta(n_symbols, op_position, ops=ops, min_len=min_len, max_len=max_len, seed=seed)
    # count the distinct prompts, so an impossible request fails now instead of looping forever
    n_possible = len(ops) * sum(n_symbols ** L for L in range(min_len, max_len + 1))
    if n_train + n_val > n_possible:
        raise ValueError(f"asked for {n_train + n_val} distinct toy examples but ops={ops!r}, "
                         f"lengths {min_len}..{max_len} over {n_symbols} symbols "
                         f"give only {n_possible}: "
                         f"lower n_train/n_val, or raise max_len or n_symbols")
    rng = random.Random(seed)  # our own RNG: never touches or depends on the global one
    seen, examples = set(), []
    while len(examples) < n_val + n_train:
        op = ops[len(examples) % len(ops)]
        length = rng.randint(min_len, max_len)
        data = ''.join(rng.choice(ALPHABET[:n_symbols]) for _ in range(length))
        if (op, data) not in seen:  # a repeat is redrawn, so the split below cannot overlap
            seen.add((op, data))
            examples.append(make_example(op, data, meta))
    return {'meta': meta, 'val': examples[:n_val], 'train': examples[n_val:]}

# -----------------------------------------------------------------------------
# text <-> examples, for sample.py and for printing

def _text(tokens, meta):
    """Tokens as characters; an id outside the vocabulary shows as '?'."""
    itos = meta['itos']
    return ''.join(itos[t] if 0 <= t < len(itos) else '?' for t in tokens)

def parse_prompt(text, meta):
    """Plain text like "31415 R" (or "R 31415") -> prompt token ids in the task's layout."""
    s = ''.join(text.split())  # spaces are for people; the vocabulary has none
    ops = [c for c in s if c in OPS]
    if len(ops) != 1 or (s[0] not in OPS and s[-1] not in OPS):
        raise ValueError(f"toy prompt {text!r}: write data then one op, e.g. '31415 R' "
                         f"(ops: {OPS})")
    data = s[1:] if s[0] in OPS else s[:-1]
    symbols = meta['itos'][4 + len(OPS):]
    bad = sorted(set(c for c in data if c not in symbols))
    if not data or bad:
        raise ValueError(f"toy prompt {text!r}: data must be one or more of {''.join(symbols)!r}"
                         + (f", got {''.join(bad)!r}" if bad else ""))
    return make_example(ops[0], data, meta)['prompt']

def format_prompt(prompt, meta):
    """Prompt token ids -> "31415 R" (data first, whatever the layout)."""
    body = _text(prompt, meta).strip(BOS + SEP)
    op, data = (body[-1], body[:-1]) if meta['op_position'] == 'after' else (body[0], body[1:])
    return f"{data} {op}"

def format_answer(tokens, meta):
    """Answer token ids -> text, cut at the first EOS (the EOS itself not shown)."""
    tokens = list(tokens)
    return _text(tokens[:tokens.index(meta['eos'])] if meta['eos'] in tokens else tokens, meta)

# -----------------------------------------------------------------------------
# exact-match evaluation; the generating is done by train.py / model.generate

def exact_match_by_op(examples, predictions, meta, n_show=5):
    """Score generated answers against the examples' answers.

    predictions: one list of token ids per example, what the model generated
    after the prompt. Everything from the first EOS on is ignored, in both the
    prediction and the truth, so a prediction is right iff it spells the
    answer exactly and then stops (or runs out of tokens).
    Returns {'acc': overall fraction right, 'per_op': {op: fraction right},
             'n': number scored,
             'mistakes': up to n_show lines "31415 R -> model 51431, truth 51413"}.
    """
    if len(examples) != len(predictions) or not examples:
        raise ValueError(f"need one prediction per example, "
                         f"got {len(predictions)} for {len(examples)} examples")
    right, total, mistakes = {}, {}, []
    for ex, pred in zip(examples, predictions):
        guess, truth = format_answer(pred, meta), format_answer(ex['answer'], meta)
        ok = guess == truth
        right[ex['op']] = right.get(ex['op'], 0) + ok
        total[ex['op']] = total.get(ex['op'], 0) + 1
        if not ok and len(mistakes) < n_show:
            mistakes.append(f"{format_prompt(ex['prompt'], meta)} -> model {guess}, truth {truth}")
    per_op = {op: right[op] / total[op] for op in sorted(total, key=OPS.index)}
    return {'acc': sum(right.values()) / len(examples), 'per_op': per_op,
            'n': len(examples), 'mistakes': mistakes}

if __name__ == '__main__':
    task = make_toy_task(n_train=1000, n_val=100)
    meta = task['meta']
    print(f"vocab ({meta['vocab_size']}): {''.join(meta['itos'])!r}")
    print(f"specials: PAD {PAD!r}={meta['pad']} BOS {BOS!r}={meta['bos']} "
          f"SEP {SEP!r}={meta['sep']} EOS {EOS!r}={meta['eos']}")
    print(f"train {len(task['train'])}, val {len(task['val'])} examples; ops {meta['ops']}, "
          f"data length {meta['min_len']}..{meta['max_len']}, op_position {meta['op_position']!r}")
    for ex in task['train'][:4]:
        print(f"  {format_prompt(ex['prompt'], meta):>15} -> "
              f"{format_answer(ex['answer'], meta):<13}"
              f" tokens {_text(ex['prompt'], meta)}{_text(ex['answer'], meta)}")
    before = make_toy_task(n_train=4, n_val=0, op_position='before')
    print("op_position='before':", ' '.join(_text(ex['prompt'] + ex['answer'], before['meta'])
                                            for ex in before['train']))

# prints:
# vocab (18): '.^=$CRSD0123456789'
# specials: PAD '.'=0 BOS '^'=1 SEP '='=2 EOS '$'=3
# train 1000, val 100 examples; ops CRSD, data length 4..12, op_position 'after'
#          482347 C -> 482347        tokens ^482347C=482347$
#         8045770 R -> 0775408       tokens ^8045770R=0775408$
#      7514411474 S -> 1114444577    tokens ^7514411474S=1114444577$
#        06383301 D -> 06381         tokens ^06383301D=06381$
# op_position='before': ^C599256546351=599256546351$ ^R6185664059=9504665816$ ^S73259=23579$
#     ^D94381899016=9438106$
