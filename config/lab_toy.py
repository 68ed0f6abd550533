# Shared settings of every lab run: labs/labs.py passes this file first, then the arm's settings,
# then your --key=value overrides. Equal compute: every arm of a lab gets these same
# iterations, batch size, data and model; only the method settings differ.
#
# Budget: train.py's default toy model and data, 500 iterations at batch 64. Measured speeds,
# 1 thread per run (two runs side by side with --jobs=2 on 2 cores): causal ~4.5 it/s,
# Bitune ~2.3 it/s, BAI ~0.8x causal, Bitune+BAI ~0.8x Bitune; plus ~6 s start-up and two
# evaluations per run. From these, the whole 'methods' lab (4 arms x 3 seeds) should take
# about 22 minutes on an otherwise idle 2-core CPU -- an ESTIMATE; a machine busy with
# other work is slower (2-3x when we measured on a shared one).
# At 500 iterations a causal run is well short of 100% exact match (about half at this
# point of a longer run), so the arms have room to differ.
# For a quick look: python labs/labs.py --lab=methods --seeds=1 --max_iters=100
dataset = 'toy'
toy_ops = 'CRSD'           # copy, reverse, sort, deduplicate: exact match is reported per op too
toy_op_position = 'after'  # the 'op_before' lab switches this
toy_min_len = 4
toy_max_len = 12
toy_n_symbols = 10
toy_n_train = 20000
toy_n_val = 500
toy_seed = 1337            # the same data for every run; `seed` (set by labs/labs.py) varies the training
# model: train.py's default toy size
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
dropout = 0.0
# optimizer
max_iters = 500
batch_size = 64
learning_rate = 1e-3       # the 'finetune' lab uses 3e-3 for its LoRA arms
warmup_iters = 50
decay = 'cosine'
min_lr = 1e-4
# evaluation: the whole val set (125 examples per op), at the middle and at the end
eval_interval = 250
eval_examples = 500
