"""
BAI: Bidirectional Awareness Induction, for a decoder-only GPT.
Hu, Cavicchioli, Capotondi, "Bidirectional Awareness Induction in Autoregressive
Seq2Seq Models", arXiv 2408.13959.

Idea: some elements of the network, the Pivots, are trained to reconstruct the whole target
sequence. Nothing at inference depends on that target, so the model stays autoregressive: BAI
adds a training loss only, no parameters, and leaves generate() untouched.

No code for BAI was released. This file is our reconstruction from the paper's published
summary. Our choices, each a switch with its default:
  1. pivots E = hidden states at the prompt positions of layer `layer`, from the same causal
     forward that gives the CE loss. Prompt positions never attend to the answer, so nothing
     leaks. Default -2: the output of the block before the last; -1 is the final state after
     ln_f (the tied embedding space), 0..n_layer-1 any block. Why -2: in lab 4 (labs/README.md)
     pivots from block 2 were ahead of causal on every seed, pivots after ln_f showed nothing
     measurable. A hypothesis: the final state must predict the next token, and rebuilding the
     answer competes with that. Measured on one toy model, so -1 stays one switch away.
  2. target embeddings D = wte(answer tokens), detached (`detach_target=True`).
  3. length equalization by scaled dot-product attention of D over E (summary's wording).
  4. loss `kind`: 'mse' (default; the summary names a mean-square loss), 'cosine', 'ce'.
  5. the weight schedule Lambda(t): the paper has one with parameters eta, gamma,
     phi whose form we do not know; `schedule` offers constant / linear / exp.
  6. with Bitune (train.py's bitune_bai), the pivots come from one of its prompt passes
     (`bai_pivots`: 'A' bidirectional, the default, or 'B' causal), at layer `layer` of it.

Use (train.py):   weight = bai_lambda * bai.schedule(it, ...)
                  loss, ce, l_bai = bai.compute_loss(model, batch, weight=weight)
"""

import math

import torch
import torch.nn.functional as F

KINDS = ('mse', 'cosine', 'ce')
SCHEDULES = ('constant', 'linear', 'exp')

# -----------------------------------------------------------------------------
# 1-2. Pivots E and answer tokens, cut out of a right-padded training batch (data.tasks.collate)


def pivots(hidden, batch):
    """hidden (B, T, C) from the causal forward over the batch -> the prompt positions:
    E (B, Pm, C) and pivot_valid (B, Pm), Pm = the longest prompt."""
    P = batch['prompt_len']
    Pm = int(P.max())
    E = hidden[:, :Pm]                                                   # (B, Pm, C)
    return E, torch.arange(Pm, device=P.device)[None] < P[:, None]      # valid: col < P_i


def answer_tokens(batch):
    """The answer tokens (B, Am) and answer_valid (B, Am), Am = the longest answer; no loop."""
    P, A, targets = batch['prompt_len'], batch['answer_len'], batch['targets']
    # example i predicts its answer from column P_i - 1 on: targets[i, P_i-1+j] = answer_i[j]
    j = torch.arange(int(A.max()), device=P.device)[None]               # (1, Am)
    cols = (P[:, None] - 1 + j).clamp(max=targets.size(1) - 1)          # (B, Am); clamped: masked
    answer_valid = j < A[:, None]                                       # (B, Am)
    tokens = targets.gather(1, cols).masked_fill(~answer_valid, 0)      # 0: any real id, unscored
    if (tokens < 0).any():
        raise ValueError("answer tokens not found where expected: the batch must be right-padded "
                         "with targets[i, P_i-1 : P_i-1+A_i] = the answer "
                         "(data.tasks.collate's layout)")
    return tokens, answer_valid

# -----------------------------------------------------------------------------
# 3. Length equalization: the pivots, re-read in the answer's length


def equalize(D, E, pivot_valid):
    """S = softmax(D E^T / sqrt(d)) over the pivot axis;  E_hat = S E.

    D (B, A, C) target embeddings, E (B, P, C) pivots, pivot_valid (B, P).
    Returns E_hat (B, A, C), one mix of the pivots per answer token, and S (B, A, P).
    """
    if not pivot_valid.any(1).all():
        raise ValueError("an example has no valid pivot (e.g. a 1-token prompt has an empty "
                         "Bitune prefix); use prompts of at least 2 tokens")
    # padding pivots: exactly nothing flows in or out
    E = E.masked_fill(~pivot_valid[..., None], 0.0)
    scores = D @ E.transpose(1, 2) / math.sqrt(D.size(-1))          # (B, A, P)
    scores = scores.masked_fill(~pivot_valid[:, None, :], float('-inf'))
    S = scores.softmax(dim=-1)                                      # (B, A, P): each row sums to 1
    return S @ E, S                                                 # (B, A, C)

# -----------------------------------------------------------------------------
# 4. Bidirectional awareness loss: rebuild the answer from E_hat alone


def awareness_loss(E_hat, D, answer_tokens, answer_valid, kind='mse', lm_head=None):
    """L_BAI over the real answer positions only, token-weighted like the CE loss:
    every real answer position in the batch weighs the same, so long answers weigh more.

      'mse':    mean over positions and embedding dims of (E_hat - D)^2
      'cosine': mean over positions of 1 - cos(E_hat, D)    (ignores scale; MSE does not)
      'ce':     mean over positions of -log softmax(lm_head(E_hat))[answer token]
    """
    m = answer_valid.to(E_hat.dtype)                     # (B, A)
    n = m.sum().clamp(min=1)
    if kind == 'mse':
        per_pos = (E_hat - D).square().mean(-1)          # (B, A)
    elif kind == 'cosine':
        per_pos = 1 - F.cosine_similarity(E_hat, D, dim=-1)
    elif kind == 'ce':
        if lm_head is None:
            raise ValueError("kind='ce' needs lm_head (the model's output layer)")
        logits = lm_head(E_hat)                          # (B, A, V)
        per_pos = F.cross_entropy(logits.transpose(1, 2), answer_tokens,
                                  reduction='none')      # (B, A)
    else:
        raise ValueError(f"unknown BAI loss kind {kind!r}; choose one of {KINDS}")
    # where() rather than * m: a NaN/inf at a padding position must not reach the sum
    return torch.where(answer_valid, per_pos, 0.0).sum() / n


def awareness_from_pivots(E, pivot_valid, batch, model, kind='mse', detach_target=True):
    """Steps 2-4 from any pivots: the causal forward's prompt hiddens, or one of Bitune's
    prefix passes (aux['bidir_hidden'] or aux['causal_hidden'], with aux['prefix_valid'])."""
    tokens, answer_valid = answer_tokens(batch)
    D = model.transformer.wte(tokens)                    # (B, A, C)
    if detach_target:
        D = D.detach()  # D is a fixed target: the gradient reaches the pivots only, not wte
    E_hat, _ = equalize(D, E, pivot_valid)
    return awareness_loss(E_hat, D, tokens, answer_valid, kind, lm_head=model.lm_head)

# -----------------------------------------------------------------------------
# 5. Weight schedule Lambda(t) and the total loss


def schedule(step, kind='constant', eta=1.0, gamma=0.5, phi=1000, max_iters=None):
    """Lambda(t). The form is ours; the paper's eta/gamma/phi function is not available.
      'constant': 1      'linear': 1 - t / max_iters, 1 at t=0 down to 0 at max_iters
      'exp':      eta * gamma^(t / phi), e.g. halves every phi steps with gamma=0.5
    """
    if kind == 'constant':
        return 1.0
    if kind == 'linear':
        if not max_iters or max_iters <= 0:
            raise ValueError("schedule 'linear' needs max_iters > 0 "
                             "(the step where the weight reaches 0)")
        return max(0.0, 1.0 - step / max_iters)
    if kind == 'exp':
        if phi <= 0:
            raise ValueError(f"schedule 'exp' needs phi > 0, got {phi}")
        return eta * gamma ** (step / phi)
    raise ValueError(f"unknown BAI schedule {kind!r}; choose one of {SCHEDULES}")


def compute_loss(model, batch, *, weight, layer=-2, kind='mse', detach_target=True):
    """total = CE + weight * L_BAI, with weight = lambda * Lambda(t).

    One forward gives both the CE loss and the pivots. Returns (total, ce, bai);
    with weight == 0 BAI is skipped entirely (bai is None) and this is exactly the
    baseline's call, so lambda = 0 reproduces the baseline bit for bit.
    """
    # The batch is right-padded, so the causal mask alone keeps real tokens from seeing padding:
    # the very call train.py makes for the causal baseline (and SDPA's fast path).
    out = model.body(batch['idx'])
    ce = model.answer_loss(out.x, batch['targets'])
    if weight == 0:
        return ce, ce, None
    E, pivot_valid = pivots(out.at(layer), batch)
    l_bai = awareness_from_pivots(E, pivot_valid, batch, model, kind, detach_target)
    return ce + weight * l_bai, ce, l_bai
