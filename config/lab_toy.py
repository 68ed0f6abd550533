# Shared settings of every lab run: labs/labs.py passes this file first, then the arm's settings,
# then your --key=value overrides. Every arm of a lab gets the same data and model; only the method
# settings differ. labs.py then sets each run's iterations (max_iters here for the equal-steps view,
# more for cheaper arms in the equal-compute view), its seed, and eval_interval (five evaluations
# per run, for the learning curves).
#
# At 500 iterations a causal run is well short of 100% exact match, so the arms have room to
# differ. How long each lab takes on a 2-core laptop: labs/README.md.
dataset = 'toy'
toy_ops = 'CRSD'           # copy, reverse, sort, deduplicate: exact match is reported per op too
toy_op_position = 'after'  # the 'op_before' lab switches this
toy_min_len = 4
toy_max_len = 12
toy_n_symbols = 10
toy_n_train = 20000
toy_n_val = 500
toy_seed = 1337            # the same data for every run; `seed` (set by labs.py) varies training
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
# float32 on every device (a GPU's 'auto' would pick bfloat16 or float16): the toy model needs no
# autocast, and a class pools runs made on any machine as one experiment (labs/handin.py)
dtype = 'float32'
# evaluation: the whole val set (125 examples per op); labs.py sets eval_interval
eval_examples = 500
