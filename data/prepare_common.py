"""
What data/dialogsum/prepare.py and data/scitldr/prepare.py share: fetch the raw files,
turn (text, summaries) records into prompt/answer token lists with the GPT-2 tokenizer,
fit them into the model's context, and write data/<name>/{meta.json,train,val,test.jsonl}
in the format tasks.load_task reads. Not run by itself.

Fitting into --block_size tokens:
  - train: an example whose prompt + answer does not fit is dropped (and counted), so
    the model never learns from a cut-off text.
  - val/test: the prompt must leave room for --max_answer generated tokens. A longer one
    keeps the template's start and end (so the cue that asks for the summary survives)
    and loses the middle of the text. The answer (used only for the val loss) is cut to
    --max_answer tokens, still ending in <|endoftext|>. Both are counted.
"""
import argparse
import json
import os
import shutil
import sys
import urllib.error
import urllib.request

from tqdm import tqdm

# the repo root, for utils/
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# one error line, as everywhere
from utils.runtime import catch_signals, disk_full, run_main  # noqa: E402

EOS = 50256  # GPT-2's <|endoftext|>; also used as the padding id (GPT-2 has no pad token)
GPT2_META = {'tokenizer': 'gpt2', 'vocab_size': 50257, 'eos': EOS, 'pad': EOS, 'bos': None,
             'metric': 'rouge'}


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line `error: ...` like every other failure, not a usage block
        raise ValueError(f"{message} (see --help)")


def parse_args(doc, argv=None):
    p = ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--src', help="folder that already holds the raw files (no download)")
    p.add_argument('--out_dir', help="where to write meta.json and the .jsonl files "
                                     "(default: this script's folder)")
    p.add_argument('--block_size', type=int, default=1024, help="model context length in tokens")
    p.add_argument('--max_answer', type=int, default=128,
                   help="tokens reserved for generating a summary")
    p.add_argument('--limit', type=int,
                   help="keep only the first N records of each split (quick labs)")
    args = p.parse_args(argv)
    if args.max_answer < 2 or args.block_size <= args.max_answer:
        p.error(f"need 2 <= --max_answer < --block_size, "
                f"got {args.max_answer} and {args.block_size}")
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be at least 1 (records per split), got {args.limit}")
    return args


def download(url, path):
    """Download url to path with a progress bar; write to a .part file first so a broken run
    leaves no half file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(path + '.part', 'wb') as f:
            with tqdm(total=int(r.headers.get('Content-Length') or 0) or None, unit='B',
                      unit_scale=True, desc=os.path.basename(path)) as bar:
                while chunk := r.read(1 << 16):
                    f.write(chunk)
                    bar.update(len(chunk))
    except BaseException as e:
        if os.path.exists(path + '.part'):
            os.remove(path + '.part')
        # Ctrl-C, or a full disk: not the network's fault
        if not isinstance(e, OSError) or disk_full(e):
            raise
        # URLError, timeouts and refused connections are all OSErrors
        raise ConnectionError(f"could not download {url} ({e}). If this machine is offline, "
                              f"get the files elsewhere and pass --src DIR with the folder "
                              f"holding them.") from e
    os.replace(path + '.part', path)


def fetch(urls, src, raw_dir):
    """{file name: url} -> {file name: local path}, from --src if given, else downloaded once into
    raw_dir."""
    paths = {}
    for name, url in urls.items():
        if src:
            paths[name] = os.path.join(src, name)
            if not os.path.exists(paths[name]):
                raise FileNotFoundError(f"--src {src} has no {name}; "
                                        f"expected the files {sorted(urls)}")
        else:
            paths[name] = os.path.join(raw_dir, name)
            if not os.path.exists(paths[name]):
                download(url, paths[name])
    return paths


def read_jsonl(path, limit=None, fields=None):
    """The records of a raw .jsonl file (the first `limit` of them). fields: {name: str or list},
    what each record must hold (a list: of strings, at least one), so a record of another format
    fails here with its line and field, not later as a strange error or, worse, a string read as a
    list of characters."""
    records = []
    with open(path, encoding='utf-8') as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append((i, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {i} is not valid JSON ({e}); "
                                     f"the file is damaged (cut short?): "
                                     f"delete it and download it again") from None
    for i, r in records[:limit]:
        for name, kind in (fields or {}).items():
            value = r.get(name) if isinstance(r, dict) else None
            ok = isinstance(value, str) if kind is str else (
                isinstance(value, list) and value and all(isinstance(v, str) for v in value))
            if not ok:
                want = 'a string' if kind is str else 'a list of strings'
                wrong = (f"the record is a {type(r).__name__}, not an object with {name!r}"
                         if not isinstance(r, dict)
                         else f"the record lacks {name!r} ({want})" if value is None
                         else f"field {name!r} must be {want} "
                              f"(got {type(value).__name__} {json.dumps(value)[:40]})")
                raise ValueError(f"{path} line {i}: {wrong}; "
                                 f"pass the folder with the dataset's original files")
    return [r for _, r in records[:limit]]


def encode_prompt(enc, template, text, max_len=None):
    """
    Token ids of template.format(text=text) and whether the text had to be cut to fit max_len.
    The whitespace before {text} is tokenized with the text and the template's end starts
    with whitespace, so the three pieces meet where GPT-2's pre-tokenizer splits anyway: the
    ids equal encoding the whole string. Cutting inside the text then never changes the
    template's own tokens. An over-long text keeps its first and last tokens, losing the middle.
    """
    head, tail = template.split('{text}')
    start = head.rstrip()
    start_ids = enc.encode_ordinary(start)
    text_ids = enc.encode_ordinary(head[len(start):] + text)
    tail_ids = enc.encode_ordinary(tail)
    total = len(start_ids) + len(text_ids) + len(tail_ids)
    if max_len is None or total <= max_len:
        return start_ids + text_ids + tail_ids, False
    room = max_len - len(start_ids) - len(tail_ids)
    if room < 2:
        raise ValueError(f"the template alone needs {len(start_ids) + len(tail_ids)} tokens; "
                         f"max_len {max_len} leaves no room for text: "
                         f"raise --block_size or lower --max_answer")
    keep_end = room // 2  # > 0, so text_ids[-keep_end:] is really the end and not the whole list
    return start_ids + text_ids[:room - keep_end] + text_ids[-keep_end:] + tail_ids, True


def build_split(records, split, enc, template, block_size, max_answer):
    """
    records: list of (text, [summaries]). Returns (examples, counts).
    train: answer = first summary; val/test: same answer, plus all summaries as 'refs' for ROUGE.
    """
    examples, counts = [], {'records': len(records), 'dropped': 0, 'truncated': 0, 'answers_cut': 0}
    for text, summaries in records:
        # the leading space makes the answer read as a continuation of "Summary:"
        answer = enc.encode_ordinary(' ' + summaries[0].strip()) + [EOS]
        if split == 'train':
            prompt, _ = encode_prompt(enc, template, text)
            if len(prompt) + len(answer) > block_size:
                counts['dropped'] += 1
                continue
            examples.append({'prompt': prompt, 'answer': answer})
        else:
            prompt, cut = encode_prompt(enc, template, text, max_len=block_size - max_answer)
            counts['truncated'] += cut
            if len(answer) > max_answer:
                answer = answer[:max_answer - 1] + [EOS]
                counts['answers_cut'] += 1
            examples.append({'prompt': prompt, 'answer': answer,
                             'refs': [s.strip() for s in summaries]})
    counts['examples'] = len(examples)
    return examples, counts


def prepare(name, doc, urls, template, load_records, argv=None):
    """
    The whole pipeline, shared by the prepare scripts. load_records(paths, limit) returns
    {'train'|'val'|'test': [(text, [summaries])]}. Returns {split: counts} (tests check them).
    """
    args = parse_args(doc, argv)
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    out_dir = args.out_dir or here
    paths = fetch(urls, args.src, os.path.join(here, 'raw'))
    outputs = [os.path.join(out_dir, f)
               for f in ('train.jsonl', 'val.jsonl', 'test.jsonl', 'meta.json')]
    if any(os.path.realpath(p) in map(os.path.realpath, outputs) for p in paths.values()):
        raise ValueError(f"--src and --out_dir are both {out_dir}: "
                         f"the outputs would overwrite the raw files")
    # imported here, not at the top: data.tasks loads torch, which takes seconds, and a prepare
    # script first sets up its Ctrl-C line (run_script) so an interrupt meanwhile prints one line
    from data.tasks import file_hash, gpt2_encoding  # one place finds GPT-2's BPE files
    enc = gpt2_encoding()
    splits = load_records(paths, args.limit)
    # All or nothing: every file is written into tmp first; only when all of them are complete do
    # they replace the old ones, meta.json removed first and renamed into place last. meta.json
    # lists a hash of each split, and tasks.load_task reads no split that does not match it, so a
    # prepare.py stopped anywhere (an error, Ctrl-C, a full disk, a kill between two renames)
    # leaves the old dataset, no dataset ("not prepared"), or the new one, never train.jsonl of one
    # preparation with val.jsonl of another. (Renaming one whole folder would be a single step, but
    # out_dir is the user's folder.)
    tmp = os.path.join(out_dir, '.prepare-tmp')
    shutil.rmtree(tmp, ignore_errors=True)  # what a killed earlier run left
    os.makedirs(tmp)
    try:
        stats, hashes = {}, {}
        for split, records in splits.items():
            examples, c = build_split(records, split, enc, template, args.block_size,
                                      args.max_answer)
            if not examples:
                raise ValueError(f"{split}: the raw file has no records" if not c['records'] else
                                 f"{split}: none of the {c['records']} records fits in "
                                 f"--block_size {args.block_size} tokens; raise it")
            text = ''.join(json.dumps(ex) + '\n' for ex in examples).encode()
            with open(os.path.join(tmp, f'{split}.jsonl'), 'wb') as f:
                f.write(text)
            hashes[f'{split}.jsonl'] = file_hash(text)
            stats[split] = c
            print(f"{split:5s}: {c['records']} records -> {c['examples']} examples; "
                  + (f"{c['dropped']} dropped (prompt + answer > {args.block_size} tokens)"
                     if split == 'train' else
                     f"{c['truncated']} prompts cut to {args.block_size - args.max_answer} tokens, "
                     f"{c['answers_cut']} answers cut to {args.max_answer}"))
        # block_size/max_answer tell train.py how the val/test prompts were fitted and how long to
        # generate; the template lets sample.py turn a raw text into a prompt the model was
        # trained on
        meta = {'name': name, **GPT2_META, 'block_size': args.block_size,
                'max_answer': args.max_answer, 'template': template, 'files': hashes}
        with open(os.path.join(tmp, 'meta.json'), 'w') as f:
            json.dump(meta, f, indent=1)
        if os.path.exists(outputs[-1]):
            os.remove(outputs[-1])
        for file in [*hashes, 'meta.json']:
            os.replace(os.path.join(tmp, file), os.path.join(out_dir, file))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote meta.json and {', '.join(hashes)} to {os.path.relpath(out_dir)}")
    return stats


def run_script(main):
    """A prepare script's __main__: Ctrl-C or a failure prints one line (utils/runtime.py)."""
    catch_signals("the dataset in the output folder is unchanged; run it again")
    run_main(main)
