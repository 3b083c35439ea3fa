"""SASRec, the content-aware SASRec, BPR-MF and A-LLMRec stage 1 in torch,
plus the exported wrappers.

``forward``-style training code and the inference wrappers are kept apart:
the wrappers (:class:`UserEncoder`, :class:`CandidateScorer`,
:class:`TextToJoint`) take tensors and return tensors, so ONNX export is a
pure function of tensors. Masks are built from ``arange`` comparisons (no
``eye``/``tril``), which export cleanly to onnxruntime's CPU provider.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "BPRMF",
    "ALLMRecStage1",
    "CandidateScorer",
    "ContentSASRec",
    "SASRec",
    "SASRecPair",
    "ServedModel",
    "TextToJoint",
    "UserEncoder",
]


class _Block(nn.Module):
    """One SASRec block: pre-LN causal self-attention + point-wise FFN."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(dim, eps=1e-8)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim, eps=1e-8)
        self.ff1 = nn.Linear(dim, dim)
        self.ff2 = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, allowed: torch.Tensor, *, last_only: bool = False
    ) -> torch.Tensor:
        """Outputs [B, L, d]; ``last_only``: the last position's alone [B, 1, d],
        attending over every position all the same."""
        b, length, dim = x.shape
        h = self.n_heads
        if last_only:
            x_q, allowed = x[:, -1:], allowed[:, :, -1:]
        else:
            x_q = x
        # Queries come from the normalised input, keys/values from the raw one (as SASRec).
        q_in = self.ln1(x_q)
        queries = q_in.shape[1]
        q = self.q(q_in)
        k, v = self.kv(x).split(dim, dim=-1)
        q = q.view(b, queries, h, dim // h).transpose(1, 2)
        k = k.view(b, length, h, dim // h).transpose(1, 2)
        v = v.view(b, length, h, dim // h).transpose(1, 2)
        att = q @ k.transpose(-1, -2) / math.sqrt(dim // h)
        # A large finite negative, not -inf: fully masked (padding) rows stay finite.
        att = att.masked_fill(~allowed, -1e9).softmax(dim=-1)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(b, queries, dim)
        x = q_in + self.drop(self.out(y))
        z = self.ln2(x)
        out: torch.Tensor = z + self.drop(self.ff2(self.drop(F.relu(self.ff1(z)))))
        return out


class SASRec(nn.Module):
    """Causal self-attention over the last ``max_len`` items (Kang & McAuley, 2018).

    Histories are left-padded with 0; the user representation is the output at
    the last position. Items are scored by dot product with the item table.
    """

    def __init__(
        self,
        n_items: int,
        dim: int = 64,
        max_len: int = 50,
        *,
        n_blocks: int = 2,
        n_heads: int = 1,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.dim, self.max_len = dim, max_len
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(dim, n_heads, dropout) for _ in range(n_blocks))
        self.ln = nn.LayerNorm(dim, eps=1e-8)
        nn.init.normal_(self.item_emb.weight, std=dim**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def _inputs(
        self, hist: torch.Tensor, table: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embedded inputs [B, L, d], keep mask [B, L, 1], attention mask [B, 1, L, L])."""
        length = hist.shape[1]
        positions = torch.arange(length, device=hist.device)
        x = table[hist] * math.sqrt(self.dim) + self.pos_emb(positions + (self.max_len - length))
        keep = (hist > 0).unsqueeze(-1).to(x.dtype)
        causal = positions.unsqueeze(0) <= positions.unsqueeze(1)  # [L(query), L(key)]
        allowed = causal.unsqueeze(0).unsqueeze(0) & (hist > 0).unsqueeze(1).unsqueeze(1)
        return self.drop(x) * keep, keep, allowed

    def sequence(self, hist: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L, d] for histories [B, L] using input item ``table``."""
        x, keep, allowed = self._inputs(hist, table)
        for block in self.blocks:
            x = block(x, allowed) * keep
        out: torch.Tensor = self.ln(x)
        return out

    def last_state(self, hist: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """``sequence(hist, table)[:, -1]`` [B, d], the user vector, computing the
        final block for the last position only (serving: the other positions'
        outputs of the last block are never read; about a third less work)."""
        x, keep, allowed = self._inputs(hist, table)
        *inner, final = self.blocks
        for block in inner:
            x = block(x, allowed) * keep
        x = final(x, allowed, last_only=True) * keep[:, -1:]
        out: torch.Tensor = self.ln(x)[:, -1]
        return out

    def forward(self, hist: torch.Tensor) -> torch.Tensor:
        return self.sequence(hist, self.item_emb.weight)

    def user(self, hist: torch.Tensor) -> torch.Tensor:
        return self.forward(hist)[:, -1, :]


class ContentSASRec(SASRec):
    """SASRec whose item vector is an ID embedding plus the item's projected text.

    ``vector(i) = keep(i) * e_i + W t_i + b``, with ``t_i`` the item's MiniLM
    embedding (a buffer) and ``keep(i)`` 0 for items without a trained ID
    (cold items, padding) and for a random ``id_dropout`` share of the items
    at each training batch. Dropping IDs trains the text path to stand in for
    an item the model has never seen, in the *same* softmax as the items it
    knows, so a text-only item is scored on the same scale as a warm one. The
    one table serves both as the input table (items in a history) and as the
    output table (candidates), as in SASRec.
    """

    def __init__(
        self,
        n_items: int,
        text: torch.Tensor,
        id_mask: torch.Tensor,
        dim: int = 64,
        max_len: int = 50,
        *,
        n_blocks: int = 2,
        n_heads: int = 1,
        dropout: float = 0.2,
    ) -> None:
        super().__init__(n_items, dim, max_len, n_blocks=n_blocks, n_heads=n_heads, dropout=dropout)
        self.text_proj = nn.Linear(text.shape[1], dim)
        self.register_buffer("text", text.float().clone())
        self.register_buffer("id_mask", id_mask.float().clone())

    # Buffers (typed here: nn.Module's attribute lookup is Tensor | Module).
    text: torch.Tensor
    id_mask: torch.Tensor

    @property
    def similarity_dim(self) -> int:
        """Leading item-row columns that carry text: all of them."""
        return self.dim

    def text_vectors(self, text: torch.Tensor) -> torch.Tensor:
        """Text-only item vectors (cold items, items added at run time)."""
        out: torch.Tensor = self.text_proj(text)
        return out

    def table(self, drop: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """Item vectors [N + 1, d]; ``drop`` > 0 drops that share of IDs (training)."""
        keep = self.id_mask
        if drop > 0:
            keep = keep * (torch.rand(keep.shape, generator=generator) >= drop).float()
        table = keep.unsqueeze(1) * self.item_emb.weight + self.text_vectors(self.text)
        return torch.cat([torch.zeros_like(table[:1]), table[1:]])

    def forward(self, hist: torch.Tensor) -> torch.Tensor:
        return self.sequence(hist, self.table())


class SASRecPair(nn.Module):
    """The served model of the full recipe: the content-aware SASRec and the
    ID-only SASRec as one model whose score is the mean of theirs.

    ``score(u, i) = 0.5 <u_content, v_content(i)> + 0.5 <u_id, e_id(i)>``, as
    one dot product over concatenated halves: an item row is
    ``[v_content(i), e_id(i)]`` and the user vector is
    ``[0.5 u_content, 0.5 u_id]``. Each half reads its own half of the table
    when it encodes a history. The ID half of a text-only item (cold, or
    added at run time) is zero, so it is scored by its text alone, on the
    scale of the content half. Two models trained apart from different
    initialisations make different errors; their mean ranks better than
    either (docs/model.md, table (a)), and the ID model, trained where text
    can never stand in, is the sharper on warm items.

    The first ``content.dim`` columns are the ones that carry text: the
    joint-space neighbours (items, chat queries) are taken over those only
    (``similarity_dim``).
    """

    def __init__(self, content: ContentSASRec, collaborative: SASRec) -> None:
        super().__init__()
        if content.max_len != collaborative.max_len:
            raise ValueError("the two halves must read histories of the same length")
        self.content, self.collaborative = content, collaborative

    @property
    def similarity_dim(self) -> int:
        """Leading item-row columns that carry text: the content half."""
        return self.content.dim

    def text_vectors(self, text: torch.Tensor) -> torch.Tensor:
        """Text-only item rows: the content half's vector, a zero ID half."""
        v = self.content.text_vectors(text)
        return torch.cat([v, v.new_zeros(v.shape[0], self.collaborative.dim)], dim=1)

    def table(self) -> torch.Tensor:
        """Item rows [N + 1, d_content + d_id]; items without a trained ID get a zero ID half."""
        ids = self.collaborative.item_emb.weight * self.content.id_mask.unsqueeze(1)
        return torch.cat([self.content.table(), ids], dim=1)

    @staticmethod
    def _user_halves(content: torch.Tensor, collaborative: torch.Tensor) -> torch.Tensor:
        """[0.5 u_content, 0.5 u_id]: its dot product with an item row is the mean score."""
        return torch.cat([0.5 * content, 0.5 * collaborative], dim=-1)

    def sequence(self, hist: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        d = self.content.dim
        return self._user_halves(
            self.content.sequence(hist, table[:, :d]),
            self.collaborative.sequence(hist, table[:, d:]),
        )

    def last_state(self, hist: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """The user vector [B, d] alone (each half's ``last_state``)."""
        d = self.content.dim
        return self._user_halves(
            self.content.last_state(hist, table[:, :d]),
            self.collaborative.last_state(hist, table[:, d:]),
        )

    def forward(self, hist: torch.Tensor) -> torch.Tensor:
        return self.sequence(hist, self.table())

    def user(self, hist: torch.Tensor) -> torch.Tensor:
        return self.forward(hist)[:, -1, :]


ServedModel = ContentSASRec | SASRecPair
"""What ``recstream train`` serves: the pair (full recipe) or the content
model alone (``--no-eval``, ``--set serve_pair=false``)."""


class BPRMF(nn.Module):
    """Matrix factorisation trained with the BPR pairwise loss (Rendle et al., 2009)."""

    def __init__(self, n_users: int, n_items: int, dim: int = 64) -> None:
        super().__init__()
        self.user_emb = nn.Embedding(n_users, dim)
        self.item_emb = nn.Embedding(n_items + 1, dim)
        nn.init.normal_(self.user_emb.weight, std=0.1)
        nn.init.normal_(self.item_emb.weight, std=0.1)

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        u = self.user_emb(users)
        diff = (u * (self.item_emb(pos) - self.item_emb(neg))).sum(-1)
        return -F.logsigmoid(diff).mean()

    def scores(self, users: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.user_emb(users) @ self.item_emb.weight.T
        return out


class ALLMRecStage1(nn.Module):
    """A-LLMRec stage 1 (Kim et al., KDD 2024): aligning collaborative and text spaces.

    Item autoencoder over the frozen recommender's item vectors and text
    autoencoder over the MiniLM text embeddings, both into a ``joint_dim``
    space with a sigmoid (as the paper's code). Losses: matching (MSE between
    the two encodings) + alpha * item reconstruction + beta * text
    reconstruction + recommendation (softmax cross-entropy of the frozen user
    representation against the decoded joint embeddings of all training
    items, for both the item path and the text path).

    What it is used for: the *joint space* (the sigmoid codes) where an item
    known by its interactions and an item or a query known only by text meet
    (cold items, chat queries, explanations). It does not score candidates:
    the served scores come from :class:`SASRecPair` (or :class:`ContentSASRec`
    alone), whose content item vectors already mix ID and text.
    ``train_stage1`` early-stops on the text path's validation NDCG@10
    (``joint_from_text``), the path text-only inputs take.
    """

    def __init__(self, item_dim: int, text_dim: int = 384, joint_dim: int = 128) -> None:
        super().__init__()
        self.item_enc = nn.Linear(item_dim, joint_dim)
        self.item_dec = nn.Linear(joint_dim, item_dim)
        self.text_enc = nn.Linear(text_dim, joint_dim)
        self.text_dec = nn.Linear(joint_dim, text_dim)

    def encode_item(self, emb: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.item_enc(emb))

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.text_enc(text))

    def joint_from_text(self, text: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.item_dec(self.encode_text(text))
        return out

    def joint_from_item(self, emb: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.item_dec(self.encode_item(emb))
        return out


class UserEncoder(nn.Module):
    """Exported: (histories [B, L] int64, item_input [N, d]) -> user vectors [B, d]."""

    def __init__(self, model: SASRec | SASRecPair) -> None:
        super().__init__()
        self.model = model

    def forward(self, histories: torch.Tensor, item_input: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model.last_state(histories, item_input)
        return out


class CandidateScorer(nn.Module):
    """Exported: (histories [B, L], candidates [B, C], item_input [N, d], item_joint [N, d+1])
    -> scores [B, C] = <user, item_joint[c, :d]> + item_joint[c, d].

    The last column of the joint table is a per-item prior: 0 for trained
    items, the validation-fitted offset for text-only ones (cold, or added at
    run time), whose vector columns are also scaled by the fitted scale.
    """

    def __init__(self, model: SASRec | SASRecPair) -> None:
        super().__init__()
        self.encoder = UserEncoder(model)

    def forward(
        self,
        histories: torch.Tensor,
        candidates: torch.Tensor,
        item_input: torch.Tensor,
        item_joint: torch.Tensor,
    ) -> torch.Tensor:
        user: torch.Tensor = self.encoder(histories, item_input)
        rows = item_joint[candidates]
        dim = user.shape[-1]
        return (rows[..., :dim] * user.unsqueeze(1)).sum(-1) + rows[..., dim]


class TextToJoint(nn.Module):
    """Exported: text embeddings [N, 384] -> (item_input [N, d], item_joint [N, d+1]).

    The rows a worker appends for a new item known only by its text: the
    served model's text-only vector ``v`` (``W t + b``; for the pair, that
    followed by a zero ID half) is both what the
    sequence encoder reads when the item appears in a history (``item_input``)
    and, scaled, what it is scored with (``item_joint = [scale * v, prior]``).
    ``scale`` and ``prior`` are the text-only items' scale and offset
    calibrated after training (see ``fit_calibration``); warm items' rows are
    ``[v, popularity prior]`` instead.
    """

    def __init__(self, model: ServedModel, prior: float, scale: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.prior = float(prior)
        self.scale = float(scale)

    def forward(self, text_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.model.text_vectors(text_embeddings)
        prior = torch.zeros_like(v[:, :1]) + self.prior
        return v, torch.cat([v * self.scale, prior], dim=1)
