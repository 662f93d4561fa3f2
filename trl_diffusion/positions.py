"""Position ids of padded rows: positions count real tokens only, so padding never shifts them.

The native models, the sampler and the log-probability estimators all give a left- or right-padded row the
positions of the same row without padding, so that its logits at real positions do not depend on the padding.
"""

import torch


def position_ids_from_mask(attention_mask: torch.Tensor | None, batch_size: int, length: int, device) -> torch.Tensor:
    """
    Position ids that count real tokens only: `cumsum(mask) - 1` (clamped at 0 on left padding), so that padding
    does not shift the positions of real tokens. Without a mask: `0 .. length - 1`.

    Returns:
        (B, L) long tensor.
    """
    if attention_mask is None or attention_mask.dim() != 2:
        return torch.arange(length, device=device).unsqueeze(0).expand(batch_size, -1)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
