# A tiny GPT, trained from scratch, that walks the whole summarization path on a CPU:
# train -> greedy summaries of val dialogues scored with ROUGE -> checkpoint -> sample.py.
# It checks the plumbing; it does not summarize. After 600 dialogues a 2-layer model strings
# together #Person1#, #Person2#, 's and the like, and ROUGE says little.
# The GPT-2 labs (config/dialogsum_gpt2.py) are where summaries happen.
#
#   python data/dialogsum/prepare.py --src ../shared/data/dialogsum   # or without --src: download
#   python train.py config/dialogsum_tiny_cpu.py
#   python sample.py --ckpt=out-dialogsum-tiny/ckpt.pt --start=FILE:dialogue.txt
#
# takes: data/dialogsum/ as prepared above (the same files the GPT-2 labs use)
# gives: out-dialogsum-tiny/log.jsonl (val loss, ROUGE-1/2/L at iterations 0, 75 and 150),
#        loss.png, metric.png, ckpt.pt (the whole model, ~40 MB)
# time:  about a minute on a laptop CPU (measured: docs/timings.md). Training runs the output
#        layer (50,257 logits) on summary tokens only, so the two small blocks are not
#        dwarfed by it.

out_dir = 'out-dialogsum-tiny'
dataset = 'dialogsum'
eval_interval = 75
eval_iters = 5           # val loss over 5 batches of 4
eval_examples = 20       # val dialogues summarized (greedy, up to 128 tokens each) and scored
eval_max_new_tokens = 0  # 0 = meta['max_answer'] = 128

init_from = 'scratch'
method = 'causal'        # --method=bitune or --method=bai run the same path
peft = 'none'            # a random model has nothing worth freezing: train every weight
n_layer = 2
n_head = 2
n_embd = 64
block_size = 1024        # prepare.py fits every example into 1024 tokens
                         # (val prompts: 896 + 128 to generate)
dropout = 0.0

learning_rate = 6e-3     # high, because the run is short; much higher makes the loss spike
max_iters = 150
batch_size = 4
gradient_accumulation_steps = 1
weight_decay = 0.1
warmup_iters = 15
decay = 'cosine'
min_lr = 6e-4

device = 'cpu'
dtype = 'float32'        # bfloat16 autocast brings little on most CPUs
compile = False
