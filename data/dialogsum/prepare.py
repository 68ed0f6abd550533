"""
DialogSum (Chen et al., 2021, "DialogSum: A Real-Life Scenario Dialogue Summarization
Dataset") as a prompt -> summary task for the GPT-2 tokenizer, evaluated with ROUGE.

    python data/dialogsum/prepare.py              # downloads the three files
    python data/dialogsum/prepare.py --src DIR    # offline: dialogsum.{train,dev,test}.jsonl in DIR
    python data/dialogsum/prepare.py --limit 200  # small copy for a quick lab

Writes data/dialogsum/meta.json and train/val/test.jsonl (val = the dev split). Each
prompt is the template below with the dialogue filled in; the answer is " " + summary +
<|endoftext|>. val examples carry refs = [summary]; test ones the three human summaries.
See data/prepare_common.py for how over-long examples are dropped (train) or cut (val/test).
"""
import os
import sys

# for data/prepare_common.py
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from prepare_common import prepare, read_jsonl, run_script

# pinned commit, so everyone gets the same dev/test files
URL = ('https://raw.githubusercontent.com/cylnlp/dialogsum/'
       '514112e9668ef16bc6997545f59c7b86e9ef5994/DialogSum_Data/')
URLS = {f'dialogsum.{s}.jsonl': URL + f'dialogsum.{s}.jsonl' for s in ('train', 'dev', 'test')}
# an instruction, the dialogue (turns on separate lines, speakers written #Person1#, #Person2#),
# then the cue
TEMPLATE = "Summarize the dialogue.\n\n{text}\n\nSummary:"


def load_records(paths, limit):
    one, three = ({'dialogue': str, 'summary': str},
                  {'dialogue': str, **{f'summary{i}': str for i in (1, 2, 3)}})
    train, dev, test = (read_jsonl(paths[f'dialogsum.{s}.jsonl'], limit, fields)
                        for s, fields in (('train', one), ('dev', one), ('test', three)))
    return {'train': [(r['dialogue'].strip(), [r['summary']]) for r in train],
            'val': [(r['dialogue'].strip(), [r['summary']]) for r in dev],
            'test': [(r['dialogue'].strip(), [r[f'summary{i}'] for i in (1, 2, 3)]) for r in test]}


def main(argv=None):
    return prepare('dialogsum', __doc__, URLS, TEMPLATE, load_records, argv)


if __name__ == '__main__':
    run_script(main)  # a failure or Ctrl-C prints one line, `error: ...`

# python data/dialogsum/prepare.py --src ../shared/data/dialogsum prints (today's upstream train
# file differs from that copy in some quote characters, so a download may drop one or two more or
# fewer):
# train: 12460 records -> 12442 examples; 18 dropped (prompt + answer > 1024 tokens)
# val  : 500 records -> 500 examples; 0 prompts cut to 896 tokens, 0 answers cut to 128
# test : 500 records -> 500 examples; 2 prompts cut to 896 tokens, 0 answers cut to 128
# wrote meta.json and train.jsonl, val.jsonl, test.jsonl to data/dialogsum
