#!/usr/bin/python3
"""PyTorch CPU anchor for the seeMoE training step and caption generation.

The performance bar for the C++ library is a ratio against this script, measured
side by side in one run on the same machine. It builds the same model family as
the library (ViT encoder -> MLP projector -> causal decoder whose FFNs are sparse
noisy top-k MoE layers) with the reference hyperparameters by default, and times:
  * full training steps (forward + backward + Adam) on random inputs of the
    reference shapes (B=16 images of 96x96, 32 text tokens + 1 image token);
  * greedy caption generation with a KV cache, batch 1.

Variants:
  fast : what a careful PyTorch user writes for CPU: pre-LN blocks, fused QKV,
         batched heads, index_select/index_add expert dispatch, head-dim scaling.
  seed : structured like the original seeMoE.py: one Linear per attention head,
         boolean-mask expert dispatch, residual taken after ln2.

This copy lives in the seemoe repository as bench/torch_anchor.py.
Requires Debian's python3-torch (run with /usr/bin/python3) and, for a fair
anchor, an optimised BLAS: apt-get install -y python3-torch libopenblas0-pthread.
By default it uses the fastest thread setting measured on a 2-core machine:
one intra-op thread for torch and two OpenBLAS threads (torch's own OpenMP pool
fighting OpenBLAS's threads was 2-3x slower). Override with --threads and
OPENBLAS_NUM_THREADS.

Prints one JSON object. Example:
  /usr/bin/python3 torch_anchor.py --steps 10
  /usr/bin/python3 torch_anchor.py --experts 32 --steps 5
"""
import argparse, json, os, resource, time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--variant", default="fast", choices=["fast", "seed"])
p.add_argument("--steps", type=int, default=10, help="timed training steps")
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
p.add_argument("--batch", type=int, default=16)
p.add_argument("--text_len", type=int, default=32)
p.add_argument("--img", type=int, default=96)
p.add_argument("--patch", type=int, default=16)
p.add_argument("--vit_dim", type=int, default=512)
p.add_argument("--vit_blocks", type=int, default=3)
p.add_argument("--heads", type=int, default=8)
p.add_argument("--n_embd", type=int, default=128)
p.add_argument("--n_layer", type=int, default=8)
p.add_argument("--experts", type=int, default=8)
p.add_argument("--top_k", type=int, default=2)
p.add_argument("--vocab", type=int, default=66)
p.add_argument("--dropout", type=float, default=0.1)
p.add_argument("--gen_tokens", type=int, default=32, help="greedy tokens per caption (0 = skip)")
p.add_argument("--gen_reps", type=int, default=5)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
SEED = a.variant == "seed"


class Attn(nn.Module):
    def __init__(self, d, h, causal):
        super().__init__()
        self.h, self.causal = h, causal
        if SEED:
            hs = d // h
            self.q = nn.ModuleList(nn.Linear(d, hs, bias=False) for _ in range(h))
            self.k = nn.ModuleList(nn.Linear(d, hs, bias=False) for _ in range(h))
            self.v = nn.ModuleList(nn.Linear(d, hs, bias=False) for _ in range(h))
        else:
            self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d)
        self.drop = nn.Dropout(a.dropout)

    def forward(self, x, cache=None):
        B, T, C = x.shape
        if SEED:
            outs = []
            mask = torch.tril(torch.ones(T, T, dtype=torch.bool)) if self.causal else None
            for qh, kh, vh in zip(self.q, self.k, self.v):
                q, k, v = qh(x), kh(x), vh(x)
                w = q @ k.transpose(-2, -1) * C ** -0.5
                if mask is not None:
                    w = w.masked_fill(~mask, float("-inf"))
                outs.append(self.drop(F.softmax(w, dim=-1)) @ v)
            return self.drop(self.proj(torch.cat(outs, dim=-1)))
        q, k, v = self.qkv(x).view(B, T, 3, self.h, C // self.h).permute(2, 0, 3, 1, 4)  # (B,H,T,hs)
        if cache is not None:  # generation: append to the KV cache
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        w = (q @ k.transpose(-2, -1)) * (C // self.h) ** -0.5
        if self.causal and T > 1:
            S = k.size(2)
            w = w.masked_fill(torch.ones(T, S, dtype=torch.bool).triu(S - T + 1), float("-inf"))
        y = (self.drop(F.softmax(w, dim=-1)) @ v).transpose(1, 2).reshape(B, T, C)
        return self.drop(self.proj(y))


def mlp(d_in, d_hidden, d_out, act):
    return nn.Sequential(nn.Linear(d_in, d_hidden), act(), nn.Linear(d_hidden, d_out), nn.Dropout(a.dropout))


class MoE(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.route, self.noise = nn.Linear(d, a.experts), nn.Linear(d, a.experts)
        self.experts = nn.ModuleList(mlp(d, 4 * d, d, nn.ReLU) for _ in range(a.experts))

    def forward(self, x):
        logits = self.route(x)
        if self.training or SEED:  # the original keeps the noise on in eval too
            logits = logits + torch.randn_like(logits) * F.softplus(self.noise(x))
        topv, topi = logits.topk(a.top_k, dim=-1)
        gates = F.softmax(torch.full_like(logits, float("-inf")).scatter(-1, topi, topv), dim=-1)
        flat, g, ti = x.reshape(-1, x.size(-1)), gates.reshape(-1, a.experts), topi.reshape(-1, a.top_k)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            hit = (ti == e).any(dim=-1)
            if SEED:
                if hit.any():
                    out[hit] += expert(flat[hit]) * g[hit, e].unsqueeze(1)
            else:
                rows = hit.nonzero(as_tuple=True)[0]
                if rows.numel():
                    out.index_add_(0, rows, expert(flat.index_select(0, rows)) * g.index_select(0, rows)[:, e:e + 1])
        return out.view_as(x)


class Block(nn.Module):
    def __init__(self, d, causal, ffn):
        super().__init__()
        self.ln1, self.ln2, self.attn, self.ffn = nn.LayerNorm(d), nn.LayerNorm(d), Attn(d, a.heads, causal), ffn

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln1(x), cache)
        if SEED:  # original quirk: the FFN residual starts from the normalised stream
            x = self.ln2(x)
            return x + self.ffn(x)
        return x + self.ffn(self.ln2(x))


class ViT(nn.Module):
    def __init__(self):
        super().__init__()
        d, n = a.vit_dim, (a.img // a.patch) ** 2
        self.patch = nn.Conv2d(3, d, a.patch, a.patch)
        self.cls, self.pos = nn.Parameter(torch.zeros(1, 1, d)), nn.Parameter(torch.randn(1, n + 1, d) * 0.02)
        self.drop = nn.Dropout(a.dropout)
        act = nn.ReLU if SEED else nn.GELU
        self.blocks = nn.ModuleList(Block(d, False, mlp(d, 4 * d, d, act)) for _ in range(a.vit_blocks))
        self.ln = nn.LayerNorm(d)

    def forward(self, img):
        x = self.patch(img).flatten(2).transpose(1, 2)  # (B,P,D)
        x = self.drop(torch.cat([self.cls.expand(x.size(0), -1, -1), x], 1) + self.pos)
        for b in self.blocks:
            x = b(x)
        return self.ln(x[:, 0])  # CLS token -> one visual token


class VLM(nn.Module):
    def __init__(self):
        super().__init__()
        d = a.n_embd
        self.vit, self.proj = ViT(), mlp(a.vit_dim, 4 * a.vit_dim, d, nn.GELU)
        self.tok, self.pos = nn.Embedding(a.vocab, d), nn.Embedding(1000, d)
        self.blocks = nn.ModuleList(Block(d, True, MoE(d)) for _ in range(a.n_layer))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, a.vocab)

    def decode(self, x, start, caches=None):
        x = x + self.pos(torch.arange(start, start + x.size(1)))
        for i, b in enumerate(self.blocks):
            x = b(x, None if caches is None else caches[i])
        return self.head(self.ln(x))

    def forward(self, img, idx, targets):
        x = torch.cat([self.proj(self.vit(img)).unsqueeze(1), self.tok(idx)], 1)
        logits = self.decode(x, 0)
        t = torch.cat([torch.full((idx.size(0), 1), -100, dtype=torch.long), targets], 1)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), t.view(-1), ignore_index=-100)

    @torch.no_grad()
    def caption(self, img, n):
        caches = [dict() for _ in self.blocks]
        logits = self.decode(self.proj(self.vit(img)).unsqueeze(1), 0, caches)
        out = []
        for t in range(n):
            nxt = logits[:, -1].argmax(-1)
            out.append(int(nxt))
            logits = self.decode(self.tok(nxt).unsqueeze(1), t + 1, caches)
        return out


def forward_flops():
    """Multiply-add FLOPs (2 per MAC) of one forward pass over the batch, matrix products only."""
    B, d, D, P, T = a.batch, a.n_embd, a.vit_dim, (a.img // a.patch) ** 2, a.text_len + 1
    vit = B * P * 3 * a.patch ** 2 * D * 2
    vit += a.vit_blocks * B * (P + 1) * (4 * D * D + 8 * D * D) * 2 + a.vit_blocks * B * 2 * (P + 1) ** 2 * D * 2
    proj = B * (D * 4 * D + 4 * D * d) * 2
    dec = a.n_layer * B * T * (4 * d * d + 2 * d * a.experts + a.top_k * 8 * d * d) * 2
    dec += a.n_layer * B * 2 * T * T * d * 2 + B * T * d * a.vocab * 2
    return vit + proj + dec


model = VLM()
for m in model.modules():
    if isinstance(m, nn.Linear):
        nn.init.kaiming_normal_(m.weight)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
img = torch.randn(a.batch, 3, a.img, a.img)
idx = torch.randint(0, a.vocab, (a.batch, a.text_len))
tgt = torch.randint(0, a.vocab, (a.batch, a.text_len))
times = []
for s in range(a.warmup + a.steps):
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = model(img, idx, tgt)
    loss.backward()
    opt.step()
    if s >= a.warmup:
        times.append(time.perf_counter() - t0)
times.sort()
med = times[len(times) // 2]
train_flops = 3 * forward_flops()
res = {"impl": f"torch-{torch.__version__}-{a.variant}", "torch_threads": a.threads,
       "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
       "params": sum(p.numel() for p in model.parameters()),
       "step_ms_median": round(med * 1e3, 2), "step_ms_min": round(times[0] * 1e3, 2),
       "train_tokens_per_s": round(a.batch * (a.text_len + 1) / med, 1),
       "train_gflop_per_step": round(train_flops / 1e9, 2),
       "train_gflop_per_s": round(train_flops / med / 1e9, 1)}
if a.gen_tokens > 0 and not SEED:
    model.eval()
    one = img[:1]
    model.caption(one, a.gen_tokens)
    g = []
    for _ in range(a.gen_reps):
        t0 = time.perf_counter()
        model.caption(one, a.gen_tokens)
        g.append(time.perf_counter() - t0)
    g.sort()
    res["caption_ms_median"] = round(g[len(g) // 2] * 1e3, 2)
    res["gen_tokens_per_s"] = round(a.gen_tokens / g[len(g) // 2], 1)
res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
print(json.dumps(res))
