"""Graph layers of Vision GNN: dilated kNN graphs over image patches and max-relative graph convolution.

Paper: Han et al., "Vision GNN: An Image is Worth Graph of Nodes", NeurIPS 2022
(https://arxiv.org/abs/2206.00272), Sec. 3.1-3.2 (graph construction by k nearest neighbours in
feature space, Grapher module with max-relative graph convolution from DeepGCNs, Li et al. 2019,
https://arxiv.org/abs/1904.03751), Sec. 3.3 (pyramid ViG: keys downsampled for the graph and a
relative position term added to the node distances). Official code: huawei-noah/Efficient-AI-Backbones,
``vig_pytorch/gcn_lib`` (``torch_edge.py``: dense dilated kNN, ``torch_vertex.py``: ``MRConv2d``,
``DyGraphConv2d``; ``pos_embed.py``: the relative position table).

What is computed is the official algorithm; how it is computed differs where that is cheaper:

* kNN: the official code builds the full squared-distance matrix ``|x|^2 - 2 x.y + |y|^2`` and takes
  ``topk(-dist)``. ``|x_i|^2`` is constant along a row, so it cannot change which keys are nearest;
  :func:`knn_graph` ranks by ``2 x.y - |y|^2 - rel`` with one fused ``baddbmm`` and one ``topk``, in
  row chunks when the matrix would be large, and under ``no_grad`` (indices carry no gradient).
* Max-relative aggregation: ``max_j (y_j - x_i) == max_j (y_j) - x_i`` exactly (rounding is monotonic),
  so the neighbours are gathered once from a channels-last copy of the keys and reduced, instead of
  materialising ``(B, C, N, k)`` tensors for both ``x_j`` and ``x_i``.
* Relative position: the official table is ``2 P P^T / C`` for the 2-D sine-cosine embedding ``P`` of
  the node grid. Since ``sin a sin b + cos a cos b = cos(a - b)``, it is a sum of two per-axis cosine
  tables, built in ``O(N^2)`` for any grid ``(H, W)`` rather than only for the square 224-px grid the
  official code stores.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MaxRelativeGraphConv",
    "knn_graph",
    "max_relative_features",
    "num_keys",
    "relative_position_bias",
]

# Above this many score elements (B * N * M) the kNN scores are computed in row chunks.
_KNN_CHUNK_ELEMENTS = 1 << 25


def knn_graph(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    k: int = 9,
    dilation: int = 1,
    relative_pos: torch.Tensor | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Dilated k-nearest-neighbour graph of query nodes ``x`` over key nodes ``y`` (ViG Sec. 3.1).

    Args:
        x: query node features ``(B, C, N)``.
        y: key node features ``(B, C, M)``; ``x`` itself when ``None`` (each node is its own nearest).
        k: neighbours per node. dilation: take every ``dilation``-th of the ``k * dilation`` nearest
            (DeepGCNs' dilated kNN). Both are clamped so that ``k * dilation <= M`` (small inputs).
        relative_pos: ``(N, M)`` or ``(1 | B, N, M)`` added to the squared distances (pyramid ViG).
        normalize: L2-normalise features first, as the official code does (cosine-like distance).

    Returns:
        ``(B, N, k)`` int64 indices into the ``M`` keys, nearest first.
    """
    with torch.no_grad():
        if normalize:
            x = F.normalize(x, dim=1)
            y = x if y is None else F.normalize(y, dim=1)
        elif y is None:
            y = x
        B, _, N = x.shape
        M = y.shape[-1]
        k = min(k, M)
        dilation = max(1, min(dilation, M // k))
        if relative_pos is not None and relative_pos.ndim == 2:
            relative_pos = relative_pos.unsqueeze(0)
        neg_sq_y = -(y * y).sum(dim=1, keepdim=True)  # (B, 1, M)
        xt = x.transpose(1, 2)  # (B, N, C), a view: bmm reads it strided
        rows = max(1, _KNN_CHUNK_ELEMENTS // max(1, B * M))
        parts = []
        for start in range(0, N, rows):
            stop = min(N, start + rows)
            # score = |x_i|^2 - dist(i, j): same order along each row as -dist.
            score = torch.baddbmm(neg_sq_y, xt[:, start:stop], y, alpha=2.0)
            if relative_pos is not None:
                score = score.sub_(relative_pos[:, start:stop])
            parts.append(score.topk(k * dilation, dim=-1).indices[..., ::dilation])
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def max_relative_features(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Max-relative aggregation ``max_{j in N(i)} (y_j - x_i)`` (DeepGCNs' MRConv, ViG Eq. 5).

    Args:
        x: node features ``(B, C, N)``. y: key features ``(B, C, M)``. idx: ``(B, N, k)`` from
            :func:`knn_graph`.

    Returns:
        ``(B, C, N)``.
    """
    B, C, N = x.shape
    M = y.shape[-1]
    k = idx.shape[-1]
    keys = y.transpose(1, 2).reshape(B * M, C)  # channels-last rows: one contiguous read per neighbour
    offsets = torch.arange(B, device=idx.device).mul_(M).view(B, 1, 1)
    neighbours = keys.index_select(0, (idx + offsets).reshape(-1)).view(B, N, k, C)
    return neighbours.amax(dim=2).transpose(1, 2) - x


def _axis_cosine_table(length: int, omega: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(length, dtype=omega.dtype, device=omega.device)
    diff = pos[:, None] - pos[None, :]
    return torch.cos(diff[..., None] * omega).sum(dim=-1)


def relative_position_bias(
    channels: int,
    grid: tuple[int, int],
    reduce_ratio: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The pyramid ViG relative position term added to node distances, ``(1, N, M)``.

    Official recipe (``gcn_lib/pos_embed.py`` and ``Grapher.__init__``): ``P`` is the 2-D sine-cosine
    embedding (MAE style, ``channels`` wide) of the ``H x W`` node grid; the table is
    ``-2 P P^T / channels`` over the ``N = H * W`` nodes, resized bicubically (as a 2-D image, which
    is what the official code does) from ``N`` to ``M = (H // r) * (W // r)`` key columns when the keys
    are pooled by ``r``. Near nodes get the most negative values, i.e. look closer.
    """
    if channels % 4:
        raise ValueError(f"relative position needs channels divisible by 4, got {channels}")
    H, W = grid
    quarter = channels // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64, device=device) / quarter)
    # P_i . P_j = sum over both axes' frequencies of cos(omega * (p_i - p_j)).
    table = _axis_cosine_table(H, omega)[:, None, :, None] + _axis_cosine_table(W, omega)[None, :, None, :]
    table = (table * (2.0 / channels)).reshape(H * W, H * W).to(torch.float32)
    keys = num_keys(grid, reduce_ratio)
    if keys != H * W:
        table = F.interpolate(table[None, None], size=(H * W, keys), mode="bicubic", align_corners=False)[
            0, 0
        ]
    return (-table).unsqueeze(0).to(dtype)


class MaxRelativeGraphConv(nn.Module):
    """Dynamic graph convolution of ViG (official ``DyGraphConv2d`` with ``conv="mr"``).

    Builds the kNN graph of the nodes of a ``(B, C, H, W)`` map on every call (the graph follows the
    features and the input size), aggregates max-relative features, and mixes ``[x_i, max_j(x_j - x_i)]``
    with a grouped 1x1 conv + BN + activation. The two are interleaved per channel
    (``x_0, r_0, x_1, r_1, ...``) as in the official code, so each of the 4 groups sees a node's own
    channels next to their relative features and official weights load unchanged.

    Args:
        in_chs, out_chs: channels. k, dilation: kNN size and dilation. reduce_ratio: keys are the
            node map average-pooled by this factor (pyramid ViG's early stages), queries are all nodes.
        groups: groups of the 1x1 conv (4 in the paper).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        k: int = 9,
        dilation: int = 1,
        reduce_ratio: int = 1,
        groups: int = 4,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.k = k
        self.dilation = dilation
        self.reduce_ratio = reduce_ratio
        self.conv = nn.Conv2d(in_chs * 2, out_chs, 1, groups=groups, bias=bias)
        self.norm = nn.BatchNorm2d(out_chs)
        self.act = act_layer()

    def extra_repr(self) -> str:
        return f"k={self.k}, dilation={self.dilation}, reduce_ratio={self.reduce_ratio}"

    def forward(self, x: torch.Tensor, relative_pos: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        r = self.reduce_ratio
        y = F.avg_pool2d(x, r, r) if num_keys((H, W), r) != H * W else x
        nodes, keys = x.flatten(2), y.flatten(2)
        idx = knn_graph(nodes, None if y is x else keys, self.k, self.dilation, relative_pos)
        rel = max_relative_features(nodes, keys, idx).view(B, C, H, W)
        x = torch.stack((x, rel), dim=2).reshape(B, 2 * C, H, W)
        return self.act(self.norm(self.conv(x)))


def num_keys(grid: tuple[int, int], reduce_ratio: int) -> int:
    """Key nodes after ``reduce_ratio`` pooling of a ``grid`` (no pooling when the grid is smaller)."""
    H, W = grid
    if 1 < reduce_ratio <= min(H, W):
        return (H // reduce_ratio) * (W // reduce_ratio)
    return H * W
