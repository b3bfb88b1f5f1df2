"""Cross-modal layers of the hf-vlp fusion encoder: cross encoders, bridges, ITM and MLM heads.

A cross encoder runs the tokens of one modality (the *query* stream) through `num_fusion_layers` blocks of
self-attention, cross-attention to the other modality's tokens (the *context*) and a feed-forward layer. ALBEF
has one (text queries, image context); R2D2 adds the mirror one (image queries, text context).

Layer norm placement: **post-LN** (`h = LayerNorm(h + sublayer(h))`), as BERT, ALBEF's xbert and BridgeTower.
The query stream enters already post-LN-normalised from a BERT-style tower, the stacks are shallow (<= 6
layers) so post-LN trains stably, and the blocks keep BERT's layout should one want to start them from BERT
layers as ALBEF does.

Attention goes through `transformers.modeling_utils.ALL_ATTENTION_FUNCTIONS` (SDPA by default) with a local
eager fallback; attention maps, which fused kernels do not return, are computed eagerly when asked for (e.g. by
cross-modal attention distillation). Shipped with saved models (Hub custom code): imports torch and
transformers only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput


__all__ = [
    "CrossEncoderOutput",
    "CrossModalEncoder",
    "CrossModalEncoderOutput",
    "FusionAttention",
    "FusionBridge",
    "FusionLayer",
    "MaskedLMHead",
    "additive_attention_mask",
    "eager_attention_forward",
]


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain attention with the `ALL_ATTENTION_FUNCTIONS` signature: (B, H, L, d) in, (B, L, H, d) out + weights."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def additive_attention_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, L) 1/0 key mask -> (B, 1, 1, L) additive mask (0 for real keys, the dtype's minimum for padding)."""
    if mask is None:
        return None
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class FusionAttention(nn.Module):
    """Multi-head attention from `hidden_size` queries to `context_size` keys/values (self- or cross-attention).

    Keys and values are projected straight from the context's own width, so image tokens of any tower width are
    attended without an extra projection (as BERT's `encoder_width` cross-attention).
    """

    def __init__(self, config, hidden_size: int, context_size: int):
        super().__init__()
        self.config = config
        self.num_heads = config.fusion_num_attention_heads
        self.head_dim = hidden_size // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(context_size, hidden_size)
        self.v_proj = nn.Linear(context_size, hidden_size)
        self.o_proj = nn.Linear(hidden_size, hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        key = self.k_proj(context).view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(context).view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
        if output_attentions:
            interface = eager_attention_forward  # fused kernels do not return the attention map
        else:
            interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        output, weights = interface(
            self,
            query,
            key,
            value,
            context_mask,
            dropout=self.config.fusion_attention_dropout_prob if self.training else 0.0,
            scaling=self.scaling,
        )
        return self.o_proj(output.reshape(batch, length, -1)), weights


class FusionLayer(GradientCheckpointingLayer):
    """Post-LN block: self-attention over the query stream, cross-attention to the context, feed-forward."""

    def __init__(self, config, hidden_size: int, context_size: int):
        super().__init__()
        self.self_attention = FusionAttention(config, hidden_size, hidden_size)
        self.self_attention_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.cross_attention = FusionAttention(config, hidden_size, context_size)
        self.cross_attention_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(hidden_size, config.fusion_intermediate_size)
        self.activation = ACT2FN[config.fusion_hidden_act]
        self.output = nn.Linear(config.fusion_intermediate_size, hidden_size)
        self.output_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.fusion_hidden_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Masks are additive (B, 1, 1, L); returns the new states and the self- and cross-attention maps."""
        attended, self_weights = self.self_attention(hidden_states, hidden_states, attention_mask, output_attentions)
        hidden_states = self.self_attention_norm(hidden_states + self.dropout(attended))
        attended, cross_weights = self.cross_attention(hidden_states, context, context_mask, output_attentions)
        hidden_states = self.cross_attention_norm(hidden_states + self.dropout(attended))
        fed = self.output(self.activation(self.intermediate(hidden_states)))
        hidden_states = self.output_norm(hidden_states + self.dropout(fed))
        return hidden_states, self_weights, cross_weights


class FusionBridge(nn.Module):
    """BridgeTower bridge: `LayerNorm(h + Linear(u))`, injecting a uni-modal layer's output `u` into the stream."""

    def __init__(self, tower_size: int, hidden_size: int, eps: float):
        super().__init__()
        self.projection = nn.Linear(tower_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, hidden_states: torch.Tensor, unimodal_states: torch.Tensor) -> torch.Tensor:
        return self.norm(hidden_states + self.projection(unimodal_states))


@dataclass
class CrossModalEncoderOutput(ModelOutput):
    """Output of one [`CrossModalEncoder`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch, query_tokens, fusion_hidden_size)`).
        itm_logits (`torch.FloatTensor` of shape `(batch, 2)`): [no match, match] logits from the first token.
        cross_attentions (`tuple(torch.FloatTensor)`, *optional*): per layer, (batch, heads, query, context) maps.
    """

    last_hidden_state: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


class CrossModalEncoder(nn.Module):
    """One cross encoder with its ITM head: query tokens of one modality fused with the other's tokens.

    The query stream is projected to `fusion_hidden_size` when the tower is wider or narrower; the context keeps
    its tower width (each attention projects it). ITM reads the first query token (BERT's [CLS], ViT's class
    token), as ALBEF and R2D2 do.
    """

    def __init__(self, config, query_size: int, context_size: int):
        super().__init__()
        hidden = config.fusion_hidden_size
        self.input_projection = nn.Linear(query_size, hidden) if query_size != hidden else nn.Identity()
        self.bridges = (
            nn.ModuleList(
                FusionBridge(query_size, hidden, config.layer_norm_eps) for _ in range(config.num_fusion_layers)
            )
            if config.use_bridges
            else None
        )
        self.layers = nn.ModuleList(FusionLayer(config, hidden, context_size) for _ in range(config.num_fusion_layers))
        self.itm_head = nn.Linear(hidden, 2)

    def forward(
        self,
        query_states: torch.Tensor,
        query_mask: torch.Tensor | None,
        context_states: torch.Tensor,
        context_mask: torch.Tensor | None,
        bridge_states: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> CrossModalEncoderOutput:
        """Fuse `query_states` (B, Lq, Dq) with `context_states` (B, Lc, Dc); masks are (B, L) 1/0.

        `bridge_states` (B, N, Lq, Dq) holds the query tower's top N layer outputs, required with bridges.
        """
        if self.bridges is not None and bridge_states is None:
            raise ValueError("this fusion encoder uses bridges: pass the towers' top layer states (bridge_states)")
        hidden = self.input_projection(query_states)
        self_mask = additive_attention_mask(query_mask, hidden.dtype)
        cross_mask = additive_attention_mask(context_mask, hidden.dtype)
        cross_attentions = []
        for index, layer in enumerate(self.layers):
            if self.bridges is not None:
                hidden = self.bridges[index](hidden, bridge_states[:, index])
            hidden, _, cross_weights = layer(hidden, self_mask, context_states, cross_mask, output_attentions)
            cross_attentions.append(cross_weights)
        return CrossModalEncoderOutput(
            last_hidden_state=hidden,
            itm_logits=self.itm_head(hidden[:, 0]),
            cross_attentions=tuple(cross_attentions) if output_attentions else None,
        )


@dataclass
class CrossEncoderOutput(ModelOutput):
    """What the fusion model's cross encoder(s) say about a batch of (image, text) pairs.

    Args:
        itm_logits (`torch.FloatTensor` of shape `(batch, 2)`): [no match, match] logits; in two-way mode the
            mean of both cross encoders' logits.
        text_itm_logits (`torch.FloatTensor` of shape `(batch, 2)`): from the text-query cross encoder.
        image_itm_logits (`torch.FloatTensor` of shape `(batch, 2)`, *optional*): from the image-query one.
        text_hidden_state (`torch.FloatTensor` of shape `(batch, text_tokens, fusion_hidden_size)`): fused text.
        image_hidden_state (`torch.FloatTensor`, *optional*): fused image tokens (two-way mode).
        text_cross_attentions (`tuple(torch.FloatTensor)`, *optional*): per layer (batch, heads, text, image)
            text-to-image attention maps, with `output_attentions=True`.
        image_cross_attentions (`tuple(torch.FloatTensor)`, *optional*): per layer (batch, heads, image, text).
    """

    itm_logits: torch.FloatTensor | None = None
    text_itm_logits: torch.FloatTensor | None = None
    image_itm_logits: torch.FloatTensor | None = None
    text_hidden_state: torch.FloatTensor | None = None
    image_hidden_state: torch.FloatTensor | None = None
    text_cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    image_cross_attentions: tuple[torch.FloatTensor, ...] | None = None


class MaskedLMHead(nn.Module):
    """BERT's MLM head on the fused text: transform (dense, activation, LayerNorm), then the tied decoder.

    The transform maps the fusion width to the text embedding width, so the decoder can share its weight with
    the text tower's word embeddings whatever the fusion width.
    """

    def __init__(self, config, hidden_size: int, embedding_size: int, vocab_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, embedding_size)
        self.activation = ACT2FN[config.fusion_hidden_act]
        self.norm = nn.LayerNorm(embedding_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(embedding_size, vocab_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.activation(self.dense(hidden_states))))
