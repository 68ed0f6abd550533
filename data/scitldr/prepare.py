"""
SciTLDR-A (Cachola et al., 2020, "TLDR: Extreme Summarization of Scientific Documents")
as a prompt -> one-sentence summary task for the GPT-2 tokenizer, evaluated with ROUGE.
The "A" variant's source is a paper's abstract, as a list of sentences.

    python data/scitldr/prepare.py               # downloads the three files
    python data/scitldr/prepare.py --src DIR     # offline: DIR holds {train,dev,test}.jsonl
    python data/scitldr/prepare.py --limit 200   # small copy for a quick lab

Files: https://raw.githubusercontent.com/allenai/scitldr/master/SciTLDR-Data/SciTLDR-A/
(the master branch; expect 1992/619/618 records). Downloads go to data/scitldr/raw/, as
their names clash with the outputs. Writes data/scitldr/meta.json and train/val/test.jsonl
(val = the dev split). The prompt is the template below with the source sentences joined
by spaces; the answer is " " + the first TLDR + <|endoftext|>; val/test refs = all TLDRs.
See data/prepare_common.py for how over-long examples are dropped (train) or cut (val/test).
"""
import os
import sys

# for data/prepare_common.py
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from prepare_common import prepare, read_jsonl, run_script

URL = 'https://raw.githubusercontent.com/allenai/scitldr/master/SciTLDR-Data/SciTLDR-A/'
URLS = {f'{s}.jsonl': URL + f'{s}.jsonl' for s in ('train', 'dev', 'test')}
TEMPLATE = "Summarize the paper in one sentence.\n\n{text}\n\nTL;DR:"


def load_records(paths, limit):
    def pairs(split):
        # sentences sometimes carry stray spaces; train records have one target, dev/test several
        return [(' '.join(s.strip() for s in r['source']), r['target'])
                for r in read_jsonl(paths[f'{split}.jsonl'], limit,
                                    {'source': list, 'target': list})]
    return {'train': pairs('train'), 'val': pairs('dev'), 'test': pairs('test')}


def main(argv=None):
    return prepare('scitldr', __doc__, URLS, TEMPLATE, load_records, argv)


if __name__ == '__main__':
    run_script(main)  # a failure or Ctrl-C prints one line, `error: ...`

# python data/scitldr/prepare.py --src ../shared/data/scitldr prints:
# train: 1992 records -> 1992 examples; 0 dropped (prompt + answer > 1024 tokens)
# val  : 619 records -> 619 examples; 0 prompts cut to 896 tokens, 0 answers cut to 128
# test : 618 records -> 618 examples; 0 prompts cut to 896 tokens, 0 answers cut to 128
# wrote meta.json and train.jsonl, val.jsonl, test.jsonl to data/scitldr
