# GPT-2 (124M) learns to write one-sentence TL;DRs of paper abstracts (SciTLDR-A),
# with LoRA adapters on the frozen model.
# One file for the three arms of the lab; the method comes from the command line:
#
#   python data/scitldr/prepare.py                          # once (add --src DIR when offline)
#   python train.py config/scitldr_gpt2.py --method=causal  # the baseline: plain LoRA fine-tuning
#   python train.py config/scitldr_gpt2.py --method=bitune  # Bitune (arXiv 2405.14862)
#   python train.py config/scitldr_gpt2.py --method=bai     # BAI (arXiv 2408.13959, our version)
#
# takes: data/scitldr/ prepared with the default --block_size 1024 --max_answer 128, and
#        GPT-2's weights (downloaded once, about 500 MB, into ~/.cache/nanobidir/gpt2)
# gives: out-scitldr-gpt2-<method>/log.jsonl with val loss and ROUGE-1/2/L (greedy summaries of
#        200 val abstracts) at every evaluation, loss.png, metric.png, ckpt.pt (adapters only)
# time:  not measured; our estimate for one A100/H100-class GPU, evaluations included: about
#        4 minutes for LoRA and BAI, about 7 for Bitune (it reads each prompt twice).

method = 'bitune'        # Bitune: variant 'full', theta_init 0.01 (train.py's defaults, see
                         # bitune.py). BAI: lambda 1, constant schedule, MSE on the states of the
                         # block before the last (train.py's untuned defaults; watch bai_loss in
                         # the log and lower bai_lambda if it dominates)
# train.py fills in {method}, so the three arms never share a folder
out_dir = 'out-scitldr-gpt2-{method}'

# data and evaluation
dataset = 'scitldr'
eval_interval = 200      # 5 evaluations in a run
eval_iters = 20          # val loss over 20 batches of 10 = 200 examples
eval_examples = 200      # val examples summarized (greedy, KV cache) and scored with ROUGE
eval_max_new_tokens = 0  # 0 = meta['max_answer'] = 128 tokens; generation stops at <|endoftext|>

# model: GPT-2 small, whose 1024-token context is what prepare.py fitted the examples into
init_from = 'gpt2'
block_size = 1024        # only used for models built from scratch; GPT-2 brings its own (1024)
dropout = 0.0
peft = 'lora'            # GPT-2 frozen; only the adapters (and Bitune's 24 mixing scalars) train
lora_r = 8
lora_alpha = 1           # scale alpha / r = 1/8 with LR 1e-3, as the Bitune authors ran it;
                         # the usual alpha = r (scale 1) moves the adapters 8x faster at this LR
lora_dropout = 0.0
lora_targets = 'c_attn,c_proj,c_fc'  # every linear layer of every block (c_proj: attention and MLP)

# optimizer: the Bitune authors' downstream-task settings, but the batch is one batch of 10
learning_rate = 1e-3
max_iters = 1000         # 10,000 examples, ~5 passes over the 1,992; the authors' 3000 steps
                         # would be 15 passes over so small a set (--max_iters=3000 to try)
batch_size = 10          # 10 examples per step, like the authors' 1 x 10 accumulation, in one batch
gradient_accumulation_steps = 1  # short of GPU memory? batch_size=5 with 2 here is the same step
weight_decay = 0.0       # adapters never get weight decay, and the frozen base has nothing to decay
beta1 = 0.9
beta2 = 0.999            # AdamW's usual default
adam_eps = 1e-6
grad_clip = 1.0
warmup_iters = 100       # 10% of the run, then a straight line down to 0
decay = 'linear'
min_lr = 0.0

# system
device = 'auto'
dtype = 'auto'           # bfloat16 autocast on a GPU that supports it, else float32
compile = False
seed = 1337
