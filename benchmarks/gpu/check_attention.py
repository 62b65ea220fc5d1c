"""GPU check: the varlen (flash) and flex attention paths give the sdpa path's loss and gradients
on a packed BERT-base-sized batch in bf16, and how long each takes (forward + backward)."""

import time

import torch

from domainlm.pretrain.attention import document_attention
from domainlm.pretrain.bert import Bert, BertConfig


def main() -> None:
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = Bert(BertConfig(vocab_size=30522, dropout=0.0)).to(device)  # BERT-base shape
    B, T = 16, 512
    lengths = torch.randint(20, 400, (B, 8))
    segments = torch.full((B, T), -1, dtype=torch.long)
    positions = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        col = 0
        for s, n in enumerate(lengths[b].tolist()):
            n = min(n, T - col)
            segments[b, col : col + n], positions[b, col : col + n] = s, torch.arange(n)
            col += n
            if col == T:
                break
    pad = segments < 0
    segments = torch.where(pad, -2 - torch.arange(T).expand(B, T), segments)
    ids = torch.randint(5, 30522, (B, T))
    labels = torch.where((torch.rand(B, T) < 0.15) & ~pad, ids, -100)
    results = {}
    for kind in ("sdpa", "flex", "varlen"):
        model.zero_grad(set_to_none=True)
        attn = document_attention(segments, positions, kind, device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.mlm_loss(ids.to(device), positions.to(device), attn, labels.to(device))
        loss.backward()
        grad = model.blocks[0].qkv.weight.grad.float().clone()
        for _ in range(3):  # warm
            with torch.autocast("cuda", dtype=torch.bfloat16):
                model.mlm_loss(ids.to(device), positions.to(device), attn, labels.to(device)).backward()
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(10):
            attn = document_attention(segments, positions, kind, device)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                model.mlm_loss(ids.to(device), positions.to(device), attn, labels.to(device)).backward()
        torch.cuda.synchronize()
        results[kind] = (float(loss), grad, (time.perf_counter() - started) / 10)
    base_loss, base_grad, _ = results["sdpa"]
    for kind, (loss, grad, seconds) in results.items():
        rel = float((grad - base_grad).norm() / base_grad.norm())
        print(f"{kind:>6}: loss {loss:.4f} (sdpa {base_loss:.4f}), grad rel. diff {rel:.2e}, "
              f"{1000 * seconds:.1f} ms per forward+backward (eager)")
        assert abs(loss - base_loss) < 2e-2 and rel < 5e-2, kind


if __name__ == "__main__":
    main()
